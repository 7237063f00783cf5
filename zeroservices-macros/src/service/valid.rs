//! Checks of `#[service]`: the function must be a non-generic `async fn main` taking nothing or
//! the `Node`; the attribute's name, port and host must be well formed. Resolves the attribute
//! into the values the expansion uses.
//!
//! Whether a listed type is a `#[resource]` and whether the return type is `()` or
//! `Result<()>` are trait questions: the expansion asks rustc, spanned on the user's types.

use std::collections::HashSet;
use std::net::IpAddr;

use quote::ToTokens;
use syn::{FnArg, ItemFn, Pat, Path, ReturnType, Signature, Type};

use super::ast::Input;
use super::attr::{HttpAttrs, ServiceAttrs};
use crate::attr::default_crate_path;
use crate::ctxt::Ctxt;
use crate::symbol::{DOC, Symbol};

const MAIN: &str = "main";
const NODE: Symbol = Symbol("Node");

/// The checked service: everything `expand.rs` needs.
pub(crate) struct Service<'a> {
    pub(crate) original: &'a ItemFn,
    /// The service (node) name; a placeholder when it was missing or bad.
    pub(crate) name: String,
    pub(crate) resources: Vec<&'a Type>,
    pub(crate) http: Option<Http>,
    pub(crate) krate: Path,
    /// The function takes the node.
    pub(crate) takes_node: bool,
    /// The return type, if written.
    pub(crate) output: Option<&'a Type>,
    /// The doc comment, as the program's `--help` description.
    pub(crate) doc: String,
    /// The function is an `async fn main` of the right shape: the full expansion can call it.
    /// Otherwise only a stub `main` is generated around it, so that its body is still checked
    /// without follow-on errors.
    pub(crate) callable: bool,
}

/// The checked `http(...)`.
pub(crate) struct Http {
    /// Default 5001.
    pub(crate) port: Option<u16>,
    /// The address, checked.
    pub(crate) host: Option<String>,
    pub(crate) allowed_origins: Option<String>,
}

pub(crate) fn validate<'a>(
    cx: &Ctxt,
    attrs: &'a ServiceAttrs,
    input: &'a Input<'a>,
) -> Service<'a> {
    let original = input.original;
    let name = name(cx, attrs, original);
    let resources = resources(cx, attrs);
    let http = attrs.http.as_ref().map(|http| self::http(cx, http));
    let errors_before = cx.error_count();
    check_header(cx, &original.sig);
    let takes_node = params(cx, &original.sig);
    let callable = cx.error_count() == errors_before;
    Service {
        original,
        name,
        resources,
        http,
        krate: attrs.krate.clone().unwrap_or_else(default_crate_path),
        takes_node,
        output: match &original.sig.output {
            ReturnType::Type(_, ty) => Some(ty),
            ReturnType::Default => None,
        },
        doc: doc(original),
        callable,
    }
}

fn name(cx: &Ctxt, attrs: &ServiceAttrs, original: &ItemFn) -> String {
    const PLACEHOLDER: &str = "service";
    let Some(lit) = &attrs.name else {
        if !attrs.name_written {
            let msg = "#[service] needs the service's name, like \
                       `#[service(name = \"power_service\")]`";
            if attrs.args.is_empty() {
                cx.error_spanned_by(&original.sig.ident, msg);
            } else {
                cx.error_spanned_by(&attrs.args, msg);
            }
        }
        return PLACEHOLDER.to_owned();
    };
    let name = lit.value();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !valid {
        cx.error_spanned_by(
            lit,
            format_args!(
                "invalid service name {:?}: use ascii letters, digits, `_`, `-` and `.`, like \
                 \"power_service\"",
                name
            ),
        );
        return PLACEHOLDER.to_owned();
    }
    name
}

fn resources<'a>(cx: &Ctxt, attrs: &'a ServiceAttrs) -> Vec<&'a Type> {
    let mut seen = HashSet::new();
    let mut resources = Vec::new();
    for ty in &attrs.resources {
        let key = ty.to_token_stream().to_string();
        if !seen.insert(key.clone()) {
            cx.error_spanned_by(
                ty,
                format_args!("duplicate resource `{key}`: a service owns each collection once"),
            );
            continue;
        }
        resources.push(ty);
    }
    resources
}

fn http(cx: &Ctxt, attrs: &HttpAttrs) -> Http {
    let port = attrs.port.as_ref().and_then(|lit| {
        match lit.base10_parse::<u16>() {
            Ok(0) => cx.error_spanned_by(
                lit,
                "port 0 is not a fixed port: choose one from 1 to 65535 (to take any free port, \
                 run with ZS_HTTP_PORT=0)",
            ),
            Ok(port) => return Some(port),
            Err(_) => cx.error_spanned_by(
                lit,
                "`port` takes a port number from 1 to 65535, like `port = 5001`",
            ),
        }
        None
    });
    let host = attrs.host.as_ref().and_then(|lit| {
        let host = lit.value();
        if host.parse::<IpAddr>().is_ok() {
            Some(host)
        } else {
            cx.error_spanned_by(
                lit,
                format_args!(
                    "`host` takes the IP address HTTP binds to, like `host = \"127.0.0.1\"` \
                     (the default) or `host = \"0.0.0.0\"`; {host:?} is not one"
                ),
            );
            None
        }
    });
    Http {
        port,
        host,
        allowed_origins: attrs.allowed_origins.as_ref().map(|lit| lit.value()),
    }
}

/// `async fn main`, not generic, not `unsafe`, `const` or `extern`.
fn check_header(cx: &Ctxt, sig: &Signature) {
    if sig.ident != MAIN {
        cx.error_spanned_by(
            &sig.ident,
            format_args!(
                "#[service] turns the function into the program's entry point, so it must be \
                 named `main`: `async fn main()`, not `{}`",
                sig.ident
            ),
        );
    }
    if sig.asyncness.is_none() {
        cx.error_spanned_by(
            sig.fn_token,
            "#[service] needs an `async fn main`: add `async` (the macro builds the runtime)",
        );
    }
    if let Some(constness) = &sig.constness {
        cx.error_spanned_by(constness, "#[service] main cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(unsafety, "#[service] main cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        cx.error_spanned_by(abi, "#[service] main cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let (generics, where_clause) = (&sig.generics, &sig.generics.where_clause);
        cx.error_spanned_by(
            quote::quote!(#generics #where_clause),
            "#[service] main cannot be generic",
        );
    }
    if let Some(variadic) = &sig.variadic {
        cx.error_spanned_by(variadic, "#[service] main cannot be variadic");
    }
}

/// No parameter, or one: the node (`node: Node`). Whether it takes the node.
fn params(cx: &Ctxt, sig: &Signature) -> bool {
    let mut inputs = sig.inputs.iter();
    let Some(first) = inputs.next() else {
        return false;
    };
    for extra in inputs {
        cx.error_spanned_by(
            extra,
            "#[service] main takes at most one parameter, the node: \
             `async fn main(node: Node) -> Result<()>`",
        );
    }
    match first {
        FnArg::Typed(typed) => {
            if !is_node(&typed.ty) {
                cx.error_spanned_by(
                    &typed.ty,
                    "the parameter of a #[service] main is the node, taken by value: \
                     `node: Node`",
                );
            } else if !matches!(&*typed.pat, Pat::Ident(_) | Pat::Wild(_)) {
                cx.error_spanned_by(&typed.pat, "name the node with an identifier: `node: Node`");
            }
        }
        FnArg::Receiver(receiver) => {
            cx.error_spanned_by(
                receiver,
                "#[service] main is a free function: remove `self`",
            );
        }
    }
    true
}

/// `Node`, `zeroservices::Node`...: by the last path segment.
fn is_node(ty: &Type) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|last| last.ident == NODE && last.arguments.is_empty())
        }
        Type::Group(group) => is_node(&group.elem),
        Type::Paren(paren) => is_node(&paren.elem),
        _ => false,
    }
}

/// The doc comment: trimmed lines joined with `\n`.
fn doc(original: &ItemFn) -> String {
    let mut lines = Vec::new();
    for attr in &original.attrs {
        if attr.path() != DOC {
            continue;
        }
        if let syn::Meta::NameValue(meta) = &attr.meta
            && let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(lit),
                ..
            }) = &meta.value
        {
            lines.extend(lit.value().lines().map(|line| line.trim().to_owned()));
        }
    }
    lines.join("\n").trim().to_owned()
}
