//! `#[resource(collection = "...")]` on a struct: [`attr`] and [`ast`] parse, [`valid`] checks
//! and resolves, [`expand`] generates the derives and the `Resource` impl.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

use crate::ctxt::Ctxt;

/// The whole pipeline. Never fails: errors are emitted next to the user's item and, when the
/// struct itself is fine, next to the full expansion (with placeholders for bad values), so
/// that code using the type gets no follow-on errors.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#err #input);
        }
    };
    let cx = Ctxt::new();
    let attrs = attr::ResourceAttrs::from_tokens(&cx, args);
    let output = match ast::Input::from_item(&cx, &item) {
        Some(input) => expand::expand(&valid::validate(&cx, attrs, &input)),
        None => item.into_token_stream(),
    };
    cx.finish(output)
}
