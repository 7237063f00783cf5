//! Parsing `#[actions(crate = "...")]` and each method's `#[action]`,
//! `#[action(collection)]`, `#[action(name = "...")]`. Errors are recorded, never returned.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::{Attribute, Ident, LitStr, Meta, Path, Token};

use crate::attr::{Attr, parse_crate_path, parse_lit_str, path_to_string, skip_value};
use crate::ctxt::Ctxt;
use crate::symbol::{COLLECTION, CRATE, NAME};

const ACTIONS: &str = "#[actions]";
const ACTION: &str = "#[action]";

/// The keys of `#[actions(...)]`.
pub(crate) struct ActionsAttrs {
    pub(crate) krate: Option<Path>,
}

impl ActionsAttrs {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut krate = Attr::none(cx, ACTIONS, CRATE);
        let parser = syn::meta::parser(|meta| {
            if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta, ACTIONS, CRATE)? {
                    krate.set(&meta.path, path);
                }
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format_args!(
                        "unknown key `{}` in #[actions]; the only key is `crate = \"...\"` \
                         (per-action keys go on each method's #[action(...)])",
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
        ActionsAttrs { krate: krate.get() }
    }
}

/// The keys of one `#[action(...)]`.
pub(crate) struct ActionAttr {
    /// `collection`: an action on the whole collection (no receiver).
    pub(crate) collection: Option<Ident>,
    /// `name = "..."`: the action name, instead of the method name.
    pub(crate) name: Option<LitStr>,
    /// Whether the attribute parsed without error. When it did not, the method's signature is
    /// not checked: it would be checked against what the user did not manage to say (a
    /// misspelt `collection` would add "takes `&self`" to "unknown key").
    pub(crate) ok: bool,
}

impl ActionAttr {
    pub(crate) fn from_attr(cx: &Ctxt, attr: &Attribute) -> Self {
        let errors_before = cx.error_count();
        let mut collection = Attr::none(cx, ACTION, COLLECTION);
        let mut name = Attr::none(cx, ACTION, NAME);
        match &attr.meta {
            Meta::Path(_) => {}
            Meta::List(list) => {
                let result = list.parse_nested_meta(|meta| {
                    if meta.path == COLLECTION {
                        if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                            cx.error_spanned_by(
                                &meta.path,
                                "`collection` takes no value: write `#[action(collection)]`",
                            );
                            skip_value(&meta)?;
                        } else if let Some(ident) = meta.path.get_ident() {
                            collection.set(&meta.path, ident.clone());
                        }
                    } else if meta.path == NAME {
                        if let Some(lit) = parse_lit_str(cx, &meta, ACTION, NAME, "\"square\"")? {
                            name.set(&meta.path, lit);
                        }
                    } else {
                        cx.error_spanned_by(
                            &meta.path,
                            format_args!(
                                "unknown key `{}` in #[action]; the supported keys are \
                                 `collection` and `name = \"...\"`",
                                path_to_string(&meta.path)
                            ),
                        );
                        skip_value(&meta)?;
                    }
                    Ok(())
                });
                if let Err(err) = result {
                    cx.syn_error(err);
                }
            }
            Meta::NameValue(meta) => {
                let (eq, value) = (&meta.eq_token, &meta.value);
                cx.error_spanned_by(
                    quote::quote!(#eq #value),
                    "expected `#[action]`, `#[action(collection)]` or `#[action(name = \"...\")]`",
                );
            }
        }
        let collection = collection.get();
        let name = name.get();
        ActionAttr {
            collection,
            name,
            ok: cx.error_count() == errors_before,
        }
    }
}
