//! Generates the derives and the `Resource` impl. Reads only the validated [`Resource`] and
//! cannot fail.

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

use super::valid::Resource;
use crate::derives;

pub(crate) fn expand(resource: &Resource<'_>) -> TokenStream {
    let krate = &resource.krate;
    let item = without_our_derives(resource.input.original);
    let ident = &item.ident;
    let derive_attrs = derives::derive_attrs(krate);
    let collection = &resource.collection;
    let text_index = &resource.text_index;

    quote! {
        #derive_attrs
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

/// The user's struct, minus any of our derives in its `#[derive(...)]` (already reported by
/// `valid.rs`; removing them avoids conflicting impls on top of that error).
fn without_our_derives(original: &ItemStruct) -> ItemStruct {
    let mut item = original.clone();
    item.attrs = derives::without_ours(&original.attrs);
    item
}
