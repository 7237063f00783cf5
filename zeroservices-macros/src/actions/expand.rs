//! Generates, for an `#[actions]` block: one dispatcher per action (parse the JSON argument,
//! call the method, serialise the reply) and the action table `Resource::actions` returns.
//! Reads only the validated [`Actions`] and cannot fail.
//!
//! Everything is generated inside `impl Power { ... }` (in a `const _` block) rather than as
//! free functions, so that `Self` in the user's argument and result types keeps its meaning.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, Lifetime, Path};

use super::ast::is_action_attr;
use super::valid::{Action, Actions, ContextParam, Kind};

pub(crate) fn expand(actions: &Actions<'_>) -> TokenStream {
    let krate = &actions.krate;
    let item = without_action_attrs(actions.input.original);
    let self_ty = actions.input.self_ty;
    let dispatchers = actions.actions.iter().map(|a| dispatcher(krate, a));
    let entries = actions.actions.iter().map(|a| entry(krate, a));
    // `Power` must be a #[resource]: the runtime trait's `on_unimplemented` says so, on `Power`.
    let assert_resource =
        quote_spanned!(self_ty.span()=> #krate::__private::assert_resource::<#self_ty>());

    quote! {
        #item

        const _: () = {
            #[automatically_derived]
            impl #self_ty {
                #(#dispatchers)*

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

fn dispatcher_name(action: &Action<'_>) -> Ident {
    format_ident!("__zs_call_{}", action.method.sig.ident.unraw())
}

/// `fn __zs_call_square<'a>(this: &'a mut Self, ctx: Context, args: Value)
///     -> BoxFuture<'a, Result<Value>>`
fn dispatcher(krate: &Path, action: &Action<'_>) -> TokenStream {
    let name = dispatcher_name(action);
    let method = &action.method.sig.ident;
    // Locals are hygienic: they cannot clash with (or capture) the user's names.
    let this = Ident::new("this", Span::mixed_site());
    let ctx = Ident::new("ctx", Span::mixed_site());
    let args = Ident::new("args", Span::mixed_site());
    let parsed = Ident::new("__args", Span::mixed_site());
    let lt = Lifetime::new("'__zs", Span::mixed_site());

    let (generics, receiver_param, receiver_arg, future_lt) = match action.kind {
        Kind::Read => (quote!(<#lt>), quote!(#this: &#lt Self,), quote!(#this,), quote!(#lt)),
        Kind::Mutate => (
            quote!(<#lt>),
            quote!(#this: &#lt mut Self,),
            quote!(#this,),
            quote!(#lt),
        ),
        Kind::Collection => (quote!(), quote!(), quote!(), quote!('static)),
    };
    let (ctx_pat, ctx_arg) = match &action.context {
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

    quote! {
        #[doc(hidden)]
        fn #name #generics(
            #receiver_param
            #ctx_pat: #krate::__private::Context,
            #args: #krate::__private::Value,
        ) -> #krate::__private::BoxFuture<
            #future_lt,
            #krate::__private::Result<#krate::__private::Value>,
        > {
            ::std::boxed::Box::pin(async move {
                #parse_args
                #into_reply(Self::#method(#receiver_arg #ctx_arg #arg_arg).await)
            })
        }
    }
}

/// One `ActionDef { name, doc, args_schema, result_schema, call }` of the table.
fn entry(krate: &Path, action: &Action<'_>) -> TokenStream {
    let name = &action.name;
    let doc = &action.doc;
    let dispatcher = dispatcher_name(action);
    let args_schema = match action.arg {
        Some(ty) => {
            let schema = quote_spanned!(ty.span()=> #krate::__private::args_schema::<#ty>);
            quote!(::core::option::Option::Some(#schema))
        }
        None => quote!(::core::option::Option::None),
    };
    let output = action.output;
    let result_schema =
        quote_spanned!(output.span()=> #krate::__private::result_schema::<#output>);
    let variant = match action.kind {
        Kind::Read => quote!(Read),
        Kind::Mutate => quote!(Mutate),
        Kind::Collection => quote!(Collection),
    };
    quote! {
        #krate::__private::ActionDef {
            name: #name,
            doc: #doc,
            args_schema: #args_schema,
            result_schema: #result_schema,
            call: #krate::__private::ActionCall::#variant(Self::#dispatcher),
        }
    }
}
