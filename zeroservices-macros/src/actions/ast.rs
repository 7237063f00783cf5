//! The impl block `#[actions]` is applied to and its `#[action]` methods, borrowed from the
//! syn tree. Checks the shape of the block: an inherent, non-generic impl.

use syn::{Attribute, ImplItem, ImplItemFn, Item, ItemImpl, Type};

use super::attr::ActionAttr;
use crate::ctxt::Ctxt;
use crate::item;
use crate::symbol::ACTION;

/// An inherent impl block of a concrete type.
pub(crate) struct Input<'a> {
    pub(crate) original: &'a ItemImpl,
    pub(crate) self_ty: &'a Type,
    /// The methods marked `#[action]`, in order.
    pub(crate) methods: Vec<Method<'a>>,
}

/// A method marked `#[action]`.
pub(crate) struct Method<'a> {
    pub(crate) original: &'a ImplItemFn,
    pub(crate) attr: ActionAttr,
}

/// `#[action]` or `#[zeroservices::action]`.
pub(crate) fn is_action_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|segment| segment.ident == ACTION)
}

impl<'a> Input<'a> {
    /// `None` (with the errors recorded) when the block cannot carry actions.
    pub(crate) fn from_item(cx: &Ctxt, item: &'a Item) -> Option<Self> {
        let Item::Impl(original) = item else {
            cx.error_spanned_by(
                item::keyword(item),
                format_args!(
                    "#[actions] goes on the impl block of a resource, like \
                     `#[actions] impl Power {{ ... }}`; this is {}",
                    item::kind(item)
                ),
            );
            return None;
        };
        let mut shape_ok = true;
        if let Some((bang, path, for_token)) = &original.trait_ {
            cx.error_spanned_by(
                quote::quote!(#bang #path #for_token),
                "#[actions] goes on an inherent impl block, like `#[actions] impl Power { ... }`, \
                 not on a trait impl",
            );
            shape_ok = false;
        }
        let generics = &original.generics;
        if !generics.params.is_empty() || generics.where_clause.is_some() {
            let where_clause = &generics.where_clause;
            cx.error_spanned_by(
                quote::quote!(#generics #where_clause),
                "#[actions] does not support generic impl blocks: a resource is one concrete \
                 type, like `#[actions] impl Power { ... }`",
            );
            shape_ok = false;
        }

        let mut methods = Vec::new();
        for impl_item in &original.items {
            match impl_item {
                ImplItem::Fn(method) => {
                    let mut attrs = method.attrs.iter().filter(|a| is_action_attr(a));
                    let Some(first) = attrs.next() else {
                        continue;
                    };
                    for duplicate in attrs {
                        cx.error_spanned_by(duplicate, "duplicate #[action] attribute");
                    }
                    methods.push(Method {
                        original: method,
                        attr: ActionAttr::from_attr(cx, first),
                    });
                }
                ImplItem::Const(syn::ImplItemConst { attrs, .. })
                | ImplItem::Type(syn::ImplItemType { attrs, .. })
                | ImplItem::Macro(syn::ImplItemMacro { attrs, .. }) => {
                    for attr in attrs.iter().filter(|a| is_action_attr(a)) {
                        cx.error_spanned_by(
                            attr,
                            "#[action] goes on a method (an `async fn`) of the #[actions] block",
                        );
                    }
                }
                _ => {}
            }
        }

        shape_ok.then_some(Input {
            original,
            self_ty: &original.self_ty,
            methods,
        })
    }
}
