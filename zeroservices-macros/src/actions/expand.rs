//! Generates, for an `#[actions]` block, the action table `Resource::actions` returns: one
//! entry per action with its name, doc, schemas and dispatcher (parse the JSON argument, call
//! the method, serialise the reply). Reads only the validated [`Actions`] and cannot fail.
//!
//! The table is an associated const of `impl Power { ... }` (in a `const _` block) rather than
//! free items, so that `Self` in the user's argument and result types keeps its meaning.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, Path};

use super::ast::is_action_attr;
use super::valid::{Action, Actions, ContextParam, Kind};

pub(crate) fn expand(actions: &Actions<'_>) -> TokenStream {
    let krate = &actions.krate;
    let item = without_action_attrs(actions.input.original);
    let self_ty = actions.input.self_ty;
    let entries = actions.actions.iter().map(|a| entry(krate, a));
    // `Power` must be a #[resource]: the runtime trait's `on_unimplemented` says so, on `Power`.
    let assert_resource =
        quote_spanned!(self_ty.span()=> #krate::__private::assert_resource::<#self_ty>());

    quote! {
        #item

        const _: () = {
            #[automatically_derived]
            impl #self_ty {
                #[doc(hidden)]
                const __ZS_ACTIONS: &'static [#krate::__private::ActionDef<Self>] = &[
                    #(#entries),*
                ];

                /// The custom actions of this resource; `Resource::actions` returns them.
                #[doc(hidden)]
                pub fn __zs_actions() -> &'static [#krate::__private::ActionDef<Self>] {
                    Self::__ZS_ACTIONS
                }
            }

            #assert_resource
        };
    }
}

/// The user's impl block without the (inert) `#[action]` attributes.
pub(crate) fn without_action_attrs(original: &ItemImpl) -> ItemImpl {
    let mut item = original.clone();
    for impl_item in &mut item.items {
        let attrs = match impl_item {
            ImplItem::Fn(item) => &mut item.attrs,
            ImplItem::Const(item) => &mut item.attrs,
            ImplItem::Type(item) => &mut item.attrs,
            ImplItem::Macro(item) => &mut item.attrs,
            _ => continue,
        };
        attrs.retain(|attr| !is_action_attr(attr));
    }
    item
}

/// One `ActionDef { name, doc, args_schema, result_schema, call }` of the table.
///
/// The dispatcher is a closure (coerced to the runtime's fn-pointer type) rather than a
/// function, so that the whole table is type-checked as one body: a type error in the user's
/// argument or result type is then reported once, not once per use.
fn entry(krate: &Path, action: &Action<'_>) -> TokenStream {
    let name = &action.name;
    let doc = &action.doc;
    let args_schema = match action.arg {
        Some(ty) => {
            let schema = quote_spanned!(ty.span()=> #krate::__private::args_schema::<#ty>);
            quote!(::core::option::Option::Some(#schema))
        }
        None => quote!(::core::option::Option::None),
    };
    let output = action.output;
    let result_schema = quote_spanned!(output.span()=> #krate::__private::result_schema::<#output>);
    let call = dispatcher(krate, action);
    quote! {
        #krate::__private::ActionDef {
            name: #name,
            doc: #doc,
            args_schema: #args_schema,
            result_schema: #result_schema,
            call: #call,
        }
    }
}

/// `ActionCall::Mutate(|this, ctx, args| Box::pin(async move { ... }))`: parses the JSON
/// argument, calls the method, serialises its result.
fn dispatcher(krate: &Path, action: &Action<'_>) -> TokenStream {
    let method = &action.method.sig.ident;
    // Locals are hygienic: they cannot clash with (or capture) the user's names.
    let this = Ident::new("this", Span::mixed_site());
    let ctx = Ident::new("ctx", Span::mixed_site());
    let args = Ident::new("args", Span::mixed_site());
    let parsed = Ident::new("parsed", Span::mixed_site());

    let (variant, this_param, this_arg) = match action.kind {
        Kind::Read => (quote!(Read), quote!(#this,), quote!(#this,)),
        Kind::Mutate => (quote!(Mutate), quote!(#this,), quote!(#this,)),
        Kind::Collection => (quote!(Collection), quote!(), quote!()),
    };
    let (ctx_param, ctx_arg) = match &action.context {
        Some(ContextParam::ByRef(ty)) => (quote!(#ctx), quote_spanned!(ty.span()=> &#ctx,)),
        Some(ContextParam::ByValue(ty)) => (quote!(#ctx), quote_spanned!(ty.span()=> #ctx,)),
        None => (quote!(_), quote!()),
    };
    let (parse_args, arg_arg) = match action.arg {
        Some(ty) => (
            quote_spanned! {ty.span()=>
                let #parsed: #ty = #krate::__private::parse_args::<#ty>(#args)?;
            },
            quote!(#parsed),
        ),
        None => (quote!(#krate::__private::no_args(#args)?;), quote!()),
    };
    let output = action.output;
    let into_reply = quote_spanned!(output.span()=> #krate::__private::into_reply::<#output>);

    // Spanned at the method name: "future cannot be sent between threads safely" points there.
    let future = quote_spanned! {method.span()=>
        ::std::boxed::Box::pin(async move {
            #parse_args
            #into_reply(Self::#method(#this_arg #ctx_arg #arg_arg).await)
        })
    };
    quote! {
        #krate::__private::ActionCall::#variant(|#this_param #ctx_param, #args| #future)
    }
}
