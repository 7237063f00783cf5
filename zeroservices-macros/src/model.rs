//! `#[model]`: the serde and schemars derives for a type used inside a resource or as an
//! action's argument, through zeroservices' re-exports.
//!
//! Small enough for one file, in the same phases as the other macros: [`ModelAttrs`] parses
//! the attribute, [`Input`] checks the item, [`expand_model`] adds the derives. Every error is
//! recorded in the [`Ctxt`] and reported together.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::parse::Parser;
use syn::{Attribute, Item, ItemEnum, ItemStruct, Path};

use crate::attr::{Attr, default_crate_path, parse_crate_path, path_to_string, skip_value};
use crate::ctxt::Ctxt;
use crate::symbol::CRATE;
use crate::{derives, item};

const OWNER: &str = "#[model]";

/// The whole pipeline. Never fails: errors are emitted next to the user's item and, when the
/// item itself is fine, next to the full expansion, so that code using the type gets no
/// follow-on errors.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<Item>(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#err #input);
        }
    };
    let cx = Ctxt::new();
    let attrs = ModelAttrs::from_tokens(&cx, args);
    let output = match Input::from_item(&cx, &item) {
        Some(input) => {
            // `#[derive(Serialize)]` next to `#[model]` would implement the trait twice.
            derives::check_not_listed(&cx, OWNER, &derives::listed(input.attrs()));
            let krate = attrs.krate.unwrap_or_else(default_crate_path);
            expand_model(&input, &krate)
        }
        None => item.into_token_stream(),
    };
    cx.finish(output)
}

/// The keys of `#[model(...)]`.
struct ModelAttrs {
    /// `crate = "..."`.
    krate: Option<Path>,
}

impl ModelAttrs {
    fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut krate = Attr::none(cx, OWNER, CRATE);
        let parser = syn::meta::parser(|meta| {
            if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta, OWNER, CRATE)? {
                    krate.set(&meta.path, path);
                }
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format_args!(
                        "unknown key `{}` in #[model]; the only key is `crate = \"...\"`",
                        path_to_string(&meta.path)
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(args) {
            cx.syn_error(err);
        }
        ModelAttrs { krate: krate.get() }
    }
}

/// A struct or an enum, borrowed from the syn tree.
enum Input<'a> {
    Struct(&'a ItemStruct),
    Enum(&'a ItemEnum),
}

impl<'a> Input<'a> {
    /// `None` (with the error recorded) when the item cannot be a model.
    fn from_item(cx: &Ctxt, item: &'a Item) -> Option<Self> {
        match item {
            Item::Struct(item) => Some(Input::Struct(item)),
            Item::Enum(item) => Some(Input::Enum(item)),
            other => {
                cx.error_spanned_by(
                    item::keyword(other),
                    format_args!(
                        "#[model] belongs on a struct or an enum used inside a resource or as \
                         an action argument; this is {}",
                        item::kind(other)
                    ),
                );
                None
            }
        }
    }

    fn attrs(&self) -> &'a [Attribute] {
        match self {
            Input::Struct(item) => &item.attrs,
            Input::Enum(item) => &item.attrs,
        }
    }
}

/// The derives, then the item without any of them it listed itself (already reported).
fn expand_model(input: &Input<'_>, krate: &Path) -> TokenStream {
    let attrs = derives::without_ours(input.attrs());
    let item = match *input {
        Input::Struct(item) => ItemStruct {
            attrs,
            ..item.clone()
        }
        .into_token_stream(),
        Input::Enum(item) => ItemEnum {
            attrs,
            ..item.clone()
        }
        .into_token_stream(),
    };
    let derive_attrs = derives::derive_attrs(krate);
    quote! {
        #derive_attrs
        #item
    }
}
