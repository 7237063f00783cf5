//! The struct `#[resource]` is applied to, borrowed from the syn tree.
//!
//! This is where the shape of the item is checked: only a non-generic struct with named fields
//! can be a resource. Any other item is reported and re-emitted unchanged.

use syn::{Fields, Ident, Item, ItemStruct, Path};

use crate::ctxt::Ctxt;
use crate::{derives, item};

const SUPPORTED: &str =
    "#[resource] supports structs with named fields, like `struct Power { value: i64 }`";

/// A struct with named fields and no generics.
pub(crate) struct Input<'a> {
    pub(crate) original: &'a ItemStruct,
    /// The named fields, in order.
    pub(crate) fields: Vec<&'a Ident>,
    /// Every path listed in the struct's own `#[derive(...)]` attributes.
    pub(crate) derives: Vec<Path>,
}

impl<'a> Input<'a> {
    /// `None` (with the error recorded) when the item cannot be a resource.
    pub(crate) fn from_item(cx: &Ctxt, item: &'a Item) -> Option<Self> {
        let Item::Struct(original) = item else {
            cx.error_spanned_by(
                item::keyword(item),
                format_args!("{SUPPORTED}; this is {}", item::kind(item)),
            );
            return None;
        };

        let fields = match &original.fields {
            Fields::Named(fields) => fields.named.iter().filter_map(|f| f.ident.as_ref()),
            Fields::Unnamed(fields) => {
                cx.error_spanned_by(fields, format_args!("{SUPPORTED}; this is a tuple struct"));
                return None;
            }
            Fields::Unit => {
                let (ident, semi) = (&original.ident, &original.semi_token);
                cx.error_spanned_by(
                    quote::quote!(#ident #semi),
                    format_args!("{SUPPORTED}; this is a unit struct"),
                );
                return None;
            }
        };

        let generics = &original.generics;
        if !generics.params.is_empty() || generics.where_clause.is_some() {
            let span = if generics.params.is_empty() {
                let where_clause = &generics.where_clause;
                quote::quote!(#where_clause)
            } else {
                quote::quote!(#generics)
            };
            cx.error_spanned_by(
                span,
                "#[resource] does not support generic structs: a resource is one concrete type \
                 stored in one collection, like `struct Power { value: i64 }`",
            );
            return None;
        }

        Some(Input {
            original,
            fields: fields.collect(),
            derives: derives::listed(&original.attrs),
        })
    }
}
