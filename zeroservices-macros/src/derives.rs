//! The derives `#[resource]` and `#[model]` add, and the check that the user did not add them
//! already.

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{Attribute, Path, Token};

/// `#[derive(Serialize, Deserialize, JsonSchema)]` through `krate`'s re-exports, with the
/// `crate = ...` attributes that make the derived code use them.
pub(crate) fn derive_attrs(krate: &Path) -> TokenStream {
    let serde_path = format!("{}::__private::serde", path_string(krate));
    let schemars_path = format!("{}::__private::schemars", path_string(krate));
    quote! {
        #[derive(#krate::__private::serde::Serialize, #krate::__private::serde::Deserialize, #krate::__private::schemars::JsonSchema)]
        #[serde(crate = #serde_path)]
        #[schemars(crate = #schemars_path)]
    }
}

fn path_string(path: &Path) -> String {
    let mut s = String::new();
    if path.leading_colon.is_some() {
        s.push_str("::");
    }
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|seg| seg.ident.to_string())
        .collect();
    s.push_str(&segments.join("::"));
    s
}

/// Errors for `#[derive(Serialize | Deserialize | JsonSchema)]` the user wrote themselves.
pub(crate) fn reject_own_derives(attrs: &[Attribute], macro_name: &str) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    for attr in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated)
        else {
            continue;
        };
        for path in paths {
            let Some(last) = path.segments.last() else {
                continue;
            };
            let name = last.ident.to_string();
            if matches!(name.as_str(), "Serialize" | "Deserialize" | "JsonSchema") {
                errors.push(syn::Error::new_spanned(
                    &path,
                    format!("{macro_name} derives `{name}` already; remove it from this derive"),
                ));
            }
        }
    }
    errors
}
