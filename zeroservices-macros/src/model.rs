//! `#[model]`: the serde and schemars derives for a type used inside a resource or as an
//! action's argument, through zeroservices' re-exports. Small enough for one file: parse the
//! optional `crate = "..."` key, check the item, add the derives.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::parse::Parser;
use syn::{Item, LitStr, Path};

/// Expands `#[model(...)]` on `item`; on error, the errors plus the item untouched.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors: Vec<syn::Error> = Vec::new();
    let mut krate: Option<Path> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("crate") {
            let lit: LitStr = meta.value()?.parse()?;
            if krate.is_some() {
                errors.push(meta.error("duplicate `crate` key in #[model]"));
            }
            match lit.parse::<Path>() {
                Ok(path) => krate = Some(path),
                Err(_) => errors.push(syn::Error::new_spanned(
                    &lit,
                    "`crate` must be a path, like \"::zeroservices\"",
                )),
            }
            Ok(())
        } else {
            errors.push(meta.error("unknown key in #[model]; the only key is `crate = \"...\"`"));
            // Skip a value if there is one, so the next keys are still parsed.
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
            Ok(())
        }
    });
    if let Err(e) = parser.parse2(attr) {
        errors.push(e);
    }
    let parsed: Item = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(e) => {
            errors.push(e);
            return with_errors(errors, item);
        }
    };
    let attrs = match &parsed {
        Item::Struct(s) => &s.attrs,
        Item::Enum(e) => &e.attrs,
        Item::Union(u) => {
            errors.push(syn::Error::new_spanned(
                u.union_token,
                "#[model] supports structs and enums; unions are not supported",
            ));
            return with_errors(errors, item);
        }
        other => {
            errors.push(syn::Error::new_spanned(
                other,
                "#[model] belongs on a struct or an enum used inside a resource or as an action argument",
            ));
            return with_errors(errors, item);
        }
    };
    errors.extend(crate::derives::reject_own_derives(attrs, "#[model]"));
    let krate = krate.unwrap_or_else(|| syn::parse_quote!(::zeroservices));
    let derives = crate::derives::derive_attrs(&krate);
    let out = quote! {
        #derives
        #parsed
    };
    if errors.is_empty() {
        out
    } else {
        with_errors(errors, out)
    }
}

fn with_errors(errors: Vec<syn::Error>, item: TokenStream) -> TokenStream {
    let mut out = item;
    for e in errors {
        e.to_compile_error().to_tokens(&mut out);
    }
    out
}
