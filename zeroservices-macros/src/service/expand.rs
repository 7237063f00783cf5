//! Generates the program's `fn main() -> ExitCode` from a checked [`Service`]: the user's
//! `async fn main` moves, unchanged, inside it (so every span of its body stays the user's),
//! and `zeroservices::App` does the rest: flags, runtime, store, node, HTTP, signals. Reads only
//! the validated [`Service`] and cannot fail.

use proc_macro2::{Ident, Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;

use super::valid::{Http, Service};

/// The items for `service`: the full expansion when the function is callable, otherwise a stub
/// `main` around the user's function (its body is still type-checked; nothing is run).
///
/// The full expansion goes through `zeroservices::__service_main!`, which keeps it when the
/// runtime has its `app` feature and otherwise gives one clear error (naming the feature) and
/// the stub.
pub(crate) fn expand(service: &Service<'_>) -> TokenStream {
    if service.callable {
        let krate = &service.krate;
        let main = entry_point(service);
        let stub = fallback(service);
        quote! {
            #krate::__service_main! { { #main } { #stub } }
        }
    } else {
        fallback(service)
    }
}

/// `fn main() -> ExitCode { async fn main(..) {..} App::new(..)...run(..) }`.
fn entry_point(service: &Service<'_>) -> TokenStream {
    let krate = &service.krate;
    let original = service.original;
    let attrs = &original.attrs;
    let vis = &original.vis;
    let ident = &original.sig.ident;
    let inner = inner_fn(service);
    let name = &service.name;
    let about = (!service.doc.is_empty()).then(|| {
        let doc = &service.doc;
        quote!(.about(#doc))
    });
    let resources = service
        .resources
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> .resource::<#ty>()));
    let http = service.http.as_ref().map(|http| http_config(krate, http));

    // Hygienic: cannot clash with (or capture) the user's names.
    let node = Ident::new("node", Span::mixed_site());
    let (param, call) = if service.takes_node {
        (quote!(#node), quote!(#ident(#node)))
    } else {
        (quote!(_), quote!(#ident()))
    };
    // `()` or `Result<()>`: the runtime trait says so, on the user's return type.
    let output_span = service
        .output
        .map_or_else(|| ident.span(), |output| output.span());
    // The argument carries the return type's span, so that is where a trait error lands.
    let returned = Ident::new("returned", Span::mixed_site().located_at(output_span));
    let check = quote_spanned!(output_span=> #krate::__private::service_output(#returned));

    quote! {
        #(#attrs)*
        #vis fn #ident() -> ::std::process::ExitCode {
            #inner

            #krate::App::new(#name)
                .version(::core::env!("CARGO_PKG_VERSION"))
                #about
                #(#resources)*
                #http
                .run(|#param| async move {
                    let #returned = #call.await;
                    #check
                })
        }
    }
}

/// `.http(HttpConfig)` with the attribute's values (the flags and environment override them).
fn http_config(krate: &syn::Path, http: &Http) -> TokenStream {
    let option = |value: &Option<String>| match value {
        Some(value) => quote!(::core::option::Option::Some(#value)),
        None => quote!(::core::option::Option::None),
    };
    let port = match http.port {
        Some(port) => quote!(::core::option::Option::Some(#port)),
        None => quote!(::core::option::Option::None),
    };
    let host = option(&http.host);
    let allowed_origins = option(&http.allowed_origins);
    quote! {
        .http(#krate::__private::service_http(#port, #host, #allowed_origins))
    }
}

/// The user's function without its attributes (they go on the generated `main`).
fn inner_fn(service: &Service<'_>) -> TokenStream {
    let mut inner = service.original.clone();
    inner.attrs.clear();
    inner.vis = syn::Visibility::Inherited;
    inner.into_token_stream()
}

/// After an error in the signature: the user's function kept as written, inside a stub `main`
/// when it is named `main` (an `async fn main` at the crate root would be another error), and
/// the resource checks.
fn fallback(service: &Service<'_>) -> TokenStream {
    let krate = &service.krate;
    let original = service.original;
    let checks = service
        .resources
        .iter()
        .map(|ty| quote_spanned!(ty.span()=> #krate::__private::assert_resource::<#ty>();));
    if original.sig.ident != "main" {
        return quote! {
            #original
            const _: () = { #(#checks)* };
        };
    }
    let attrs = &original.attrs;
    let vis = &original.vis;
    let inner = inner_fn(service);
    quote! {
        #(#attrs)*
        #vis fn main() -> ::std::process::ExitCode {
            #[allow(dead_code, unused)]
            #inner
            const _: () = { #(#checks)* };
            ::std::process::ExitCode::FAILURE
        }
    }
}
