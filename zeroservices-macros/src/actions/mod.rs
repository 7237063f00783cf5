//! `#[actions] impl Power { #[action] async fn ... }`: [`attr`] and [`ast`] parse, [`valid`]
//! checks each action's signature, [`expand`] generates the dispatchers and the action table.
//!
//! `#[action]` itself is inert: `#[actions]` reads and strips it. On its own it only reports
//! that it is misplaced ([`misplaced_action`]).

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};

use crate::ctxt::Ctxt;

/// The whole pipeline. Never fails: errors are emitted next to the user's impl block (with its
/// `#[action]` attributes stripped) and the table of the actions that are valid.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#err #input);
        }
    };
    let cx = Ctxt::new();
    let attrs = attr::ActionsAttrs::from_tokens(&cx, args);
    let output = match ast::Input::from_item(&cx, &item) {
        Some(input) => expand::expand(&valid::validate(&cx, attrs, &input)),
        None => match &item {
            syn::Item::Impl(item) => expand::without_action_attrs(item).into_token_stream(),
            other => other.into_token_stream(),
        },
    };
    cx.finish(output)
}

/// `#[action]` outside an `#[actions]` block: an error on the attribute, and the item unchanged.
pub(crate) fn misplaced_action(input: TokenStream) -> TokenStream {
    // For an attribute macro the call site *is* the `#[action]` attribute: the token to blame.
    let err = syn::Error::new(
        Span::call_site(),
        "#[action] belongs on a method inside an `#[actions] impl` block",
    )
    .to_compile_error();
    quote!(#err #input)
}
