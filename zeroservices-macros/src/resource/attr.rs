//! Parsing `#[resource(collection = "...", text_index(a, b), crate = "...")]`.
//!
//! Nothing here returns a `Result`: every mistake is recorded in the [`Ctxt`] and parsing goes
//! on, so the user sees all errors of the attribute together.

use proc_macro2::TokenStream;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, Ident, LitStr, Path, Token};

use crate::attr::{Attr, parse_crate_path, parse_lit_str, path_to_string, skip_value};
use crate::ctxt::Ctxt;
use crate::symbol::{COLLECTION, CRATE, TEXT_INDEX};

const OWNER: &str = "#[resource]";

/// The keys of `#[resource(...)]`, as written (checked in `valid.rs`).
pub(crate) struct ResourceAttrs {
    /// The tokens of the attribute, to point at when `collection` is missing.
    pub(crate) args: TokenStream,
    /// `collection = "..."`, when given as a string literal.
    pub(crate) collection: Option<LitStr>,
    /// Whether a `collection` key was written at all (valid or not).
    pub(crate) collection_written: bool,
    /// `text_index(a, b)`.
    pub(crate) text_index: Vec<Ident>,
    /// `crate = "..."`.
    pub(crate) krate: Option<Path>,
}

impl ResourceAttrs {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut collection = Attr::none(cx, OWNER, COLLECTION);
        let mut collection_written = false;
        let mut text_index = Attr::none(cx, OWNER, TEXT_INDEX);
        let mut krate = Attr::none(cx, OWNER, CRATE);

        let parser = syn::meta::parser(|meta| {
            if meta.path == COLLECTION {
                collection_written = true;
                if let Some(lit) = parse_lit_str(cx, &meta, OWNER, COLLECTION, "\"power\"")? {
                    collection.set(&meta.path, lit);
                }
            } else if meta.path == TEXT_INDEX {
                if meta.input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let fields = Punctuated::<Expr, Token![,]>::parse_terminated(&content)?;
                    let idents = fields.iter().filter_map(|field| field_ident(cx, field));
                    text_index.set(&meta.path, idents.collect::<Vec<_>>());
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        "`text_index` lists fields of the struct, like `text_index(description)`",
                    );
                    skip_value(&meta)?;
                }
            } else if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta, OWNER, CRATE)? {
                    krate.set(&meta.path, path);
                }
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format_args!(
                        "unknown key `{}` in #[resource]; the supported keys are \
                         `collection = \"...\"`, `text_index(field, ...)` and `crate = \"...\"`",
                        path_to_string(&meta.path)
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(args.clone()) {
            cx.syn_error(err);
        }

        ResourceAttrs {
            args,
            collection: collection.get(),
            collection_written,
            text_index: text_index.get().unwrap_or_default(),
            krate: krate.get(),
        }
    }
}

/// One entry of `text_index(...)`: a field name.
fn field_ident(cx: &Ctxt, field: &Expr) -> Option<Ident> {
    if let Expr::Path(path) = field
        && path.attrs.is_empty()
        && path.qself.is_none()
        && let Some(ident) = path.path.get_ident()
    {
        return Some(ident.clone());
    }
    cx.error_spanned_by(
        field,
        "`text_index` takes field names, like `text_index(description)`",
    );
    None
}
