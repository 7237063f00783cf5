//! Parsing `#[service(name = "...", resources(A, B), http(port = 5001, host = "...",
//! allowed_origins = "..."), crate = "...")]`.
//!
//! Nothing here returns a `Result`: every mistake is recorded in the [`Ctxt`] and parsing goes
//! on, so the user sees all errors of the attribute together.

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, Lit, LitInt, LitStr, Path, Token, Type};

use crate::attr::{Attr, parse_crate_path, parse_lit_str, path_to_string, skip_value};
use crate::ctxt::Ctxt;
use crate::symbol::{CRATE, NAME, Symbol};

const OWNER: &str = "#[service]";
const HTTP_OWNER: &str = "#[service(http(...))]";

pub(crate) const RESOURCES: Symbol = Symbol("resources");
pub(crate) const HTTP: Symbol = Symbol("http");
pub(crate) const PORT: Symbol = Symbol("port");
pub(crate) const HOST: Symbol = Symbol("host");
pub(crate) const ALLOWED_ORIGINS: Symbol = Symbol("allowed_origins");

/// The keys of `#[service(...)]`, as written (checked in `valid.rs`).
pub(crate) struct ServiceAttrs {
    /// The tokens of the attribute, to point at when `name` is missing.
    pub(crate) args: TokenStream,
    /// `name = "..."`, when given as a string literal.
    pub(crate) name: Option<LitStr>,
    /// Whether a `name` key was written at all (valid or not).
    pub(crate) name_written: bool,
    /// `resources(A, B)`.
    pub(crate) resources: Vec<Type>,
    /// `http` or `http(...)`.
    pub(crate) http: Option<HttpAttrs>,
    /// `crate = "..."`.
    pub(crate) krate: Option<Path>,
}

/// The keys of `http(...)`.
#[derive(Default)]
pub(crate) struct HttpAttrs {
    /// `port = 5001`.
    pub(crate) port: Option<LitInt>,
    /// `host = "127.0.0.1"`.
    pub(crate) host: Option<LitStr>,
    /// `allowed_origins = "*"`.
    pub(crate) allowed_origins: Option<LitStr>,
}

impl ServiceAttrs {
    pub(crate) fn from_tokens(cx: &Ctxt, args: TokenStream) -> Self {
        let mut name = Attr::none(cx, OWNER, NAME);
        let mut name_written = false;
        let mut resources = Attr::none(cx, OWNER, RESOURCES);
        let mut http = Attr::none(cx, OWNER, HTTP);
        let mut krate = Attr::none(cx, OWNER, CRATE);

        let parser = syn::meta::parser(|meta| {
            if meta.path == NAME {
                name_written = true;
                if let Some(lit) = parse_lit_str(cx, &meta, OWNER, NAME, "\"power_service\"")? {
                    name.set(&meta.path, lit);
                }
            } else if meta.path == RESOURCES {
                if meta.input.peek(syn::token::Paren) {
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let types = Punctuated::<Type, Token![,]>::parse_terminated(&content)?;
                    resources.set(&meta.path, types.into_iter().collect::<Vec<_>>());
                } else {
                    cx.error_spanned_by(
                        &meta.path,
                        "`resources` lists the #[resource] types this service owns, like \
                         `resources(Power, Other)`",
                    );
                    skip_value(&meta)?;
                }
            } else if meta.path == HTTP {
                if meta.input.peek(Token![=]) {
                    cx.error_spanned_by(
                        &meta.path,
                        "`http` takes its settings in parentheses, like \
                         `http(port = 5001, allowed_origins = \"*\")`, or none: `http`",
                    );
                    skip_value(&meta)?;
                } else {
                    let attrs = if meta.input.peek(syn::token::Paren) {
                        HttpAttrs::from_meta(cx, &meta)?
                    } else {
                        HttpAttrs::default()
                    };
                    http.set(&meta.path, attrs);
                }
            } else if meta.path == CRATE {
                if let Some(path) = parse_crate_path(cx, &meta, OWNER, CRATE)? {
                    krate.set(&meta.path, path);
                }
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format_args!(
                        "unknown key `{}` in #[service]; the supported keys are \
                         `name = \"...\"`, `resources(Type, ...)`, `http(...)` and \
                         `crate = \"...\"`",
                        path_to_string(&meta.path)
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(args.clone()) {
            cx.syn_error(err);
        }

        ServiceAttrs {
            args,
            name: name.get(),
            name_written,
            resources: resources.get().unwrap_or_default(),
            http: http.get(),
            krate: krate.get(),
        }
    }
}

impl HttpAttrs {
    /// Reads the `(...)` after `http` (which may be empty).
    fn from_meta(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Self> {
        let content;
        syn::parenthesized!(content in meta.input);
        let content: TokenStream = content.parse()?;
        let mut port = Attr::none(cx, HTTP_OWNER, PORT);
        let mut host = Attr::none(cx, HTTP_OWNER, HOST);
        let mut allowed_origins = Attr::none(cx, HTTP_OWNER, ALLOWED_ORIGINS);
        let parser = syn::meta::parser(|meta| {
            if meta.path == PORT {
                if let Some(lit) = parse_port(cx, &meta)? {
                    port.set(&meta.path, lit);
                }
            } else if meta.path == HOST {
                if let Some(lit) = parse_lit_str(cx, &meta, HTTP_OWNER, HOST, "\"127.0.0.1\"")? {
                    host.set(&meta.path, lit);
                }
            } else if meta.path == ALLOWED_ORIGINS {
                if let Some(lit) = parse_lit_str(
                    cx,
                    &meta,
                    HTTP_OWNER,
                    ALLOWED_ORIGINS,
                    "\"https://app.example\"",
                )? {
                    allowed_origins.set(&meta.path, lit);
                }
            } else {
                cx.error_spanned_by(
                    &meta.path,
                    format_args!(
                        "unknown key `{}` in http(...); the supported keys are `port = 5001`, \
                         `host = \"127.0.0.1\"` and `allowed_origins = \"...\"` (credentials \
                         go in ZS_BASIC_AUTH or --basic-auth, not in the source)",
                        path_to_string(&meta.path)
                    ),
                );
                skip_value(&meta)?;
            }
            Ok(())
        });
        if let Err(err) = parser.parse2(content) {
            cx.syn_error(err);
        }
        Ok(HttpAttrs {
            port: port.get(),
            host: host.get(),
            allowed_origins: allowed_origins.get(),
        })
    }
}

/// Reads `port = 5001`: an integer literal (its range is checked in `valid.rs`).
fn parse_port(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<LitInt>> {
    const EXPECTED: &str = "`port` takes a port number from 1 to 65535, like `port = 5001`";
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(&meta.path, EXPECTED);
        skip_value(meta)?;
        return Ok(None);
    }
    let value: Expr = meta.value()?.parse()?;
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(other.into_token_stream(), EXPECTED);
            Ok(None)
        }
    }
}
