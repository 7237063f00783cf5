//! `#[service(name = "...", resources(A), http(...))] async fn main(node: Node) -> Result<()>`:
//! [`attr`] and [`ast`] parse, [`valid`] checks the attribute and the signature, [`expand`]
//! generates the program's `fn main` over `zeroservices::App`.

mod ast;
mod attr;
mod expand;
mod valid;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

use crate::ctxt::Ctxt;

/// The whole pipeline. Never fails: errors are emitted next to the expansion (with
/// placeholders for bad values) or, when the function's signature is wrong, next to the user's
/// function wrapped in a stub `main`, so that the body is still checked without follow-on
/// errors.
pub(crate) fn expand(args: TokenStream, input: TokenStream) -> TokenStream {
    let item = match syn::parse2::<syn::Item>(input.clone()) {
        Ok(item) => item,
        Err(err) => {
            let err = err.to_compile_error();
            return quote!(#err #input);
        }
    };
    let cx = Ctxt::new();
    let attrs = attr::ServiceAttrs::from_tokens(&cx, args);
    let output = match ast::Input::from_item(&cx, &item) {
        Some(input) => expand::expand(&valid::validate(&cx, &attrs, &input)),
        None => item.into_token_stream(),
    };
    cx.finish(output)
}
