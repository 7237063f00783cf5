//! Generates the derives and the `Resource` impl. Reads only the validated [`Resource`] and
//! cannot fail.

use proc_macro2::TokenStream;
use quote::quote;
use syn::punctuated::Punctuated;
use syn::{Attribute, ItemStruct, Path, Token};

use super::valid::Resource;
use crate::attr::path_to_string;
use crate::symbol::{DERIVE, DERIVED_BY_RESOURCE};

pub(crate) fn expand(resource: &Resource<'_>) -> TokenStream {
    let krate = &resource.krate;
    let item = without_our_derives(resource.input.original);
    let ident = &item.ident;
    let serde_crate = format!("{}::__private::serde", path_to_string(krate));
    let schemars_crate = format!("{}::__private::schemars", path_to_string(krate));
    let collection = &resource.collection;
    let text_index = &resource.text_index;

    quote! {
        #[derive(
            #krate::__private::serde::Serialize,
            #krate::__private::serde::Deserialize,
            #krate::__private::schemars::JsonSchema
        )]
        #[serde(crate = #serde_crate)]
        #[schemars(crate = #schemars_crate)]
        #item

        // The schemars derive expands to `serde_json::json!`, which calls `.into()`: bring
        // `Into` into scope (anonymously) so that it also compiles under `no_implicit_prelude`.
        #[allow(unused_imports)]
        use ::core::convert::Into as _;

        const _: () = {
            #[automatically_derived]
            impl #krate::__private::Resource for #ident {
                const COLLECTION: &'static str = #collection;

                fn actions() -> &'static [#krate::__private::ActionDef<Self>] {
                    // An `#[actions]` block adds an inherent `__zs_actions`, which takes
                    // precedence over this blanket trait's empty table.
                    #[allow(unused_imports)]
                    use #krate::__private::NoActions as _;
                    <Self>::__zs_actions()
                }

                fn text_index() -> &'static [&'static str] {
                    &[#(#text_index),*]
                }
            }
        };
    }
}

/// The user's struct, minus any `Serialize`/`Deserialize`/`JsonSchema` in its derives (already
/// reported by `valid.rs`; removing them avoids conflicting impls on top of that error).
fn without_our_derives(original: &ItemStruct) -> ItemStruct {
    let mut item = original.clone();
    item.attrs = original.attrs.iter().filter_map(without_ours).collect();
    item
}

fn without_ours(attr: &Attribute) -> Option<Attribute> {
    if attr.path() != DERIVE {
        return Some(attr.clone());
    }
    let Ok(paths) = attr.parse_args_with(Punctuated::<Path, Token![,]>::parse_terminated) else {
        return Some(attr.clone());
    };
    let ours = |path: &Path| {
        path.segments
            .last()
            .is_some_and(|last| DERIVED_BY_RESOURCE.iter().any(|s| last.ident == *s))
    };
    if !paths.iter().any(ours) {
        return Some(attr.clone());
    }
    let kept: Vec<&Path> = paths.iter().filter(|path| !ours(path)).collect();
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
