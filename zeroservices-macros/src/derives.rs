//! The derives `#[resource]` and `#[model]` add ([`DERIVED_BY_RESOURCE`]): generating them,
//! reporting the ones the user wrote as well, and taking those out of the re-emitted item.

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{Attribute, Path, Token};

use crate::attr::path_to_string;
use crate::ctxt::Ctxt;
use crate::symbol::{DERIVE, DERIVED_BY_RESOURCE, Symbol};

/// `#[derive(Serialize, Deserialize, JsonSchema)]` through `krate`'s re-exports, with the
/// `crate = ...` attributes that make the derived code use them.
pub(crate) fn derive_attrs(krate: &Path) -> TokenStream {
    let serde_crate = format!("{}::__private::serde", path_to_string(krate));
    let schemars_crate = format!("{}::__private::schemars", path_to_string(krate));
    quote! {
        #[derive(
            #krate::__private::serde::Serialize,
            #krate::__private::serde::Deserialize,
            #krate::__private::schemars::JsonSchema
        )]
        #[serde(crate = #serde_crate)]
        #[schemars(crate = #schemars_crate)]
    }
}

/// Every path listed in `attrs`' own `#[derive(...)]` attributes.
pub(crate) fn listed(attrs: &[Attribute]) -> Vec<Path> {
    attrs
        .iter()
        .filter(|attr| attr.path() == DERIVE)
        .filter_map(|attr| {
            attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
                .ok()
        })
        .flatten()
        .collect()
}

/// Records an error for each derive in `derives` that `owner` adds itself: deriving it twice
/// would implement the trait twice.
pub(crate) fn check_not_listed(cx: &Ctxt, owner: &str, derives: &[Path]) {
    for path in derives {
        if let Some(derived) = ours(path) {
            cx.error_spanned_by(
                path,
                format_args!(
                    "{owner} derives `{derived}` already; remove `{}` from this derive",
                    path_to_string(path)
                ),
            );
        }
    }
}

/// `attrs` minus any of our derives in their `#[derive(...)]` (reported by
/// [`check_not_listed`]; removing them avoids conflicting impls on top of that error).
pub(crate) fn without_ours(attrs: &[Attribute]) -> Vec<Attribute> {
    attrs.iter().filter_map(attr_without_ours).collect()
}

/// Which of [`DERIVED_BY_RESOURCE`] `path` names (by its last segment), if any.
fn ours(path: &Path) -> Option<Symbol> {
    let last = path.segments.last()?;
    DERIVED_BY_RESOURCE
        .iter()
        .copied()
        .find(|derived| last.ident == *derived)
}

fn attr_without_ours(attr: &Attribute) -> Option<Attribute> {
    if attr.path() != DERIVE {
        return Some(attr.clone());
    }
    let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated) else {
        return Some(attr.clone());
    };
    if !paths.iter().any(|path| ours(path).is_some()) {
        return Some(attr.clone());
    }
    let kept: Vec<&Path> = paths.iter().filter(|path| ours(path).is_none()).collect();
    if kept.is_empty() {
        return None;
    }
    let pound = attr.pound_token;
    let bracket = attr.bracket_token;
    let mut attr: Attribute = syn::parse_quote!(#[derive(#(#kept),*)]);
    attr.pound_token = pound;
    attr.bracket_token = bracket;
    Some(attr)
}
