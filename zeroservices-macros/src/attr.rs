//! Attribute-parsing helpers shared by both macros: a value that may be set once, and tolerant
//! readers that record an error and keep going instead of aborting the whole attribute.

use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::{Expr, ExprLit, Lit, LitStr, Path, Token};

use crate::ctxt::Ctxt;
use crate::symbol::Symbol;

/// A key that may appear at most once; the second occurrence is an error on its key.
pub(crate) struct Attr<'c, T> {
    cx: &'c Ctxt,
    owner: &'static str,
    name: Symbol,
    value: Option<T>,
}

impl<'c, T> Attr<'c, T> {
    pub(crate) fn none(cx: &'c Ctxt, owner: &'static str, name: Symbol) -> Self {
        Attr {
            cx,
            owner,
            name,
            value: None,
        }
    }

    pub(crate) fn set<A: ToTokens>(&mut self, obj: A, value: T) {
        if self.value.is_some() {
            self.cx.error_spanned_by(
                obj,
                format_args!("duplicate `{}` key in {}", self.name, self.owner),
            );
        } else {
            self.value = Some(value);
        }
    }

    pub(crate) fn get(self) -> Option<T> {
        self.value
    }
}

/// Skips the value of a key we already reported (`= expr` or `(...)`), so that parsing can go
/// on with the next key.
pub(crate) fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

/// Reads `key = "..."`. A missing `=` or a value that is not a string literal is recorded as
/// an error (on the key or the value) and gives `None`.
pub(crate) fn parse_lit_str(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    owner: &'static str,
    key: Symbol,
    example: &str,
) -> syn::Result<Option<LitStr>> {
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(
            &meta.path,
            format_args!("expected a value for `{key}` in {owner}, like `{key} = {example}`"),
        );
        skip_value(meta)?;
        return Ok(None);
    }
    let value: Expr = meta.value()?.parse()?;
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(Some(lit)),
        other => {
            cx.error_spanned_by(
                other,
                format_args!("`{key}` takes a string literal, like `{key} = {example}`"),
            );
            Ok(None)
        }
    }
}

/// Reads `crate = "path"`, the path under which the generated code finds the runtime.
pub(crate) fn parse_crate_path(
    cx: &Ctxt,
    meta: &ParseNestedMeta<'_>,
    owner: &'static str,
    key: Symbol,
) -> syn::Result<Option<Path>> {
    let Some(lit) = parse_lit_str(cx, meta, owner, key, "\"::zeroservices\"")? else {
        return Ok(None);
    };
    match lit.parse::<Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            cx.error_spanned_by(
                &lit,
                format_args!(
                    "`{}` is not a path; `{key}` names the zeroservices crate, like `{key} = \"::zeroservices\"`",
                    lit.value()
                ),
            );
            Ok(None)
        }
    }
}

/// The default runtime path, `::zeroservices`.
pub(crate) fn default_crate_path() -> Path {
    syn::parse_quote!(::zeroservices)
}

/// A path as the user wrote it, for messages (`serde::Serialize`).
pub(crate) fn path_to_string(path: &Path) -> String {
    let mut out = String::new();
    if path.leading_colon.is_some() {
        out.push_str("::");
    }
    for (i, segment) in path.segments.iter().enumerate() {
        if i > 0 {
            out.push_str("::");
        }
        out.push_str(&segment.ident.to_string());
    }
    out
}
