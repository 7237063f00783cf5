//! Checks each `#[action]` method's signature and resolves it into an [`Action`]: its name,
//! kind (from the receiver), context parameter, argument and result types.
//!
//! Every method is checked (all errors are reported together); the actions with an error are
//! left out of the table, which is still generated so that the resource keeps compiling.

use std::collections::HashSet;

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{FnArg, ImplItemFn, Path, Receiver, ReturnType, Signature, Type};

use super::ast::{Input, Method};
use super::attr::ActionsAttrs;
use crate::attr::default_crate_path;
use crate::ctxt::Ctxt;
use crate::symbol::{BUILT_IN_ACTIONS, CONTEXT, DOC, is_valid_name};

/// The checked `#[actions]` block.
pub(crate) struct Actions<'a> {
    pub(crate) input: &'a Input<'a>,
    pub(crate) krate: Path,
    pub(crate) actions: Vec<Action<'a>>,
}

/// What the receiver says about an action.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    /// `&self`.
    Read,
    /// `&mut self`.
    Mutate,
    /// `#[action(collection)]`, no receiver.
    Collection,
}

/// How the method takes the `Context`; the type is kept for spans.
pub(crate) enum ContextParam<'a> {
    ByRef(&'a Type),
    ByValue(&'a Type),
}

/// One valid action.
pub(crate) struct Action<'a> {
    pub(crate) method: &'a ImplItemFn,
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) context: Option<ContextParam<'a>>,
    /// The argument type, if the action takes one.
    pub(crate) arg: Option<&'a Type>,
    /// The return type (`Result<T>`).
    pub(crate) output: &'a Type,
    /// The doc comment: trimmed lines joined with `\n`.
    pub(crate) doc: String,
}

pub(crate) fn validate<'a>(cx: &Ctxt, attrs: ActionsAttrs, input: &'a Input<'a>) -> Actions<'a> {
    let mut names = HashSet::new();
    let mut actions = Vec::new();
    for method in &input.methods {
        if !method.attr.ok {
            continue;
        }
        let errors_before = cx.error_count();
        let name = name(cx, method);
        if let Some((name, span)) = &name
            && !names.insert(name.clone())
        {
            cx.error_spanned_by(
                span,
                format_args!("duplicate action name `{name}`: another action of this block has it"),
            );
        }
        let action = signature(cx, method);
        if let (Some((name, _)), Some(mut action)) = (name, action)
            && cx.error_count() == errors_before
        {
            action.name = name;
            actions.push(action);
        }
    }
    Actions {
        input,
        krate: attrs.krate.unwrap_or_else(default_crate_path),
        actions,
    }
}

/// The action's name (`name = "..."` or the method name) and the tokens to blame for it.
fn name(cx: &Ctxt, method: &Method<'_>) -> Option<(String, TokenStream)> {
    let (name, tokens) = match &method.attr.name {
        Some(lit) => (lit.value(), lit.to_token_stream()),
        None => {
            let ident = &method.original.sig.ident;
            (ident.unraw().to_string(), ident.to_token_stream())
        }
    };
    if BUILT_IN_ACTIONS.contains(&name.as_str()) {
        cx.error_spanned_by(
            &tokens,
            format_args!(
                "`{name}` is a built-in action of every resource ({}); give this one another \
                 name, or rename it with #[action(name = \"...\")]",
                BUILT_IN_ACTIONS.join(", ")
            ),
        );
        return None;
    }
    if !is_valid_name(&name) {
        cx.error_spanned_by(
            &tokens,
            format_args!(
                "invalid action name `{name}`: use only lowercase ascii letters, digits, `_` and \
                 `-`, or rename it with #[action(name = \"...\")]"
            ),
        );
        return None;
    }
    Some((name, tokens))
}

/// Checks the signature; `None` when it has an error (already recorded). Every part is
/// checked, so that all the mistakes of a method are reported together.
fn signature<'a>(cx: &Ctxt, method: &Method<'a>) -> Option<Action<'a>> {
    let errors_before = cx.error_count();
    let sig = &method.original.sig;
    check_header(cx, sig);
    let mut inputs = sig.inputs.iter().peekable();
    let receiver = match inputs.peek() {
        Some(FnArg::Receiver(receiver)) => {
            inputs.next();
            Some(receiver)
        }
        _ => None,
    };
    let kind = kind(cx, method, receiver);
    let (context, arg) = params(cx, inputs);
    let output = output(cx, method.original);
    if cx.error_count() != errors_before {
        return None;
    }
    Some(Action {
        method: method.original,
        name: String::new(),
        kind,
        context,
        arg,
        output: output?,
        doc: doc(method.original),
    })
}

/// `async`, not `unsafe`, not generic.
fn check_header(cx: &Ctxt, sig: &Signature) {
    if sig.asyncness.is_none() {
        cx.error_spanned_by(sig.fn_token, "an action must be an `async fn`");
    }
    if let Some(unsafety) = &sig.unsafety {
        cx.error_spanned_by(unsafety, "an action cannot be `unsafe`");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        let (generics, where_clause) = (&sig.generics, &sig.generics.where_clause);
        cx.error_spanned_by(
            quote::quote!(#generics #where_clause),
            "an action cannot be generic: its argument and result types must be concrete",
        );
    }
}

/// The kind of action, from `#[action(collection)]` and the receiver.
fn kind(cx: &Ctxt, method: &Method<'_>, receiver: Option<&Receiver>) -> Kind {
    match (&method.attr.collection, receiver) {
        (Some(_), None) => Kind::Collection,
        (Some(_), Some(receiver)) => {
            cx.error_spanned_by(
                receiver,
                "a collection action takes no `self`: remove the receiver, or remove \
                 `collection` to make it an action on one resource (`&self` or `&mut self`)",
            );
            Kind::Collection
        }
        (None, Some(receiver)) if is_ref_receiver(receiver) => {
            if receiver.mutability.is_some() {
                Kind::Mutate
            } else {
                Kind::Read
            }
        }
        (None, receiver) => {
            let msg = "a resource action takes `&self` or `&mut self`; for an action on the \
                       whole collection write `#[action(collection)]`";
            match receiver {
                Some(receiver) => cx.error_spanned_by(receiver, msg),
                // No receiver: point at the parameter list.
                None => cx.error_at(method.original.sig.paren_token.span.join(), msg),
            }
            Kind::Read
        }
    }
}

/// The parameters after the receiver: an optional context, then at most one argument.
fn params<'a>(
    cx: &Ctxt,
    inputs: impl Iterator<Item = &'a FnArg>,
) -> (Option<ContextParam<'a>>, Option<&'a Type>) {
    let mut context = None;
    let mut arg: Option<&Type> = None;
    for input in inputs {
        let typed = match input {
            FnArg::Typed(typed) => typed,
            FnArg::Receiver(receiver) => {
                cx.error_spanned_by(receiver, "`self` must be the first parameter");
                continue;
            }
        };
        let ty = &*typed.ty;
        if let Some(param) = context_param(ty) {
            if arg.is_some() {
                cx.error_spanned_by(
                    typed,
                    "the `Context` parameter comes before the argument: \
                     `ctx: &Context, args: Args`",
                );
            } else if context.is_some() {
                cx.error_spanned_by(typed, "an action takes at most one `Context` parameter");
            } else if matches!(ty, Type::Reference(r) if r.mutability.is_some()) {
                cx.error_spanned_by(typed, "take the context as `&Context` or `Context`");
            } else {
                context = Some(param);
            }
        } else if arg.is_some() {
            cx.error_spanned_by(
                typed,
                "an action takes at most one argument; group them in a struct",
            );
        } else if let Type::Reference(reference) = ty {
            cx.error_spanned_by(
                reference,
                "take the action argument by value (it is deserialised from the request), \
                 like `args: Args`",
            );
        } else if let Type::ImplTrait(impl_trait) = ty {
            cx.error_spanned_by(
                impl_trait,
                "an action cannot be generic: its argument type must be concrete",
            );
        } else {
            arg = Some(ty);
        }
    }
    (context, arg)
}

/// The return type, which must be written (`Result<T>`; its trait is checked by rustc).
fn output<'a>(cx: &Ctxt, method: &'a ImplItemFn) -> Option<&'a Type> {
    match &method.sig.output {
        ReturnType::Type(_, ty) if matches!(**ty, Type::ImplTrait(_)) => {
            cx.error_spanned_by(ty, "an action must return `Result<T>`, not `impl Trait`");
            None
        }
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            // Where the missing return type belongs: right after the parameter list.
            cx.error_at(
                method.sig.paren_token.span.close(),
                "an action must return `Result<T>`",
            );
            None
        }
    }
}

/// `&self` or `&mut self` (with or without a lifetime), in the short form.
fn is_ref_receiver(receiver: &Receiver) -> bool {
    receiver.reference.is_some() && receiver.colon_token.is_none()
}

/// `Context`, `&Context`, `zeroservices::Context`... by the last path segment.
fn context_param(ty: &Type) -> Option<ContextParam<'_>> {
    fn is_context(ty: &Type) -> bool {
        match ty {
            Type::Path(path) => {
                path.qself.is_none()
                    && path
                        .path
                        .segments
                        .last()
                        .is_some_and(|last| last.ident == CONTEXT && last.arguments.is_empty())
            }
            Type::Group(group) => is_context(&group.elem),
            Type::Paren(paren) => is_context(&paren.elem),
            _ => false,
        }
    }
    match ty {
        Type::Reference(reference) if is_context(&reference.elem) => Some(ContextParam::ByRef(ty)),
        _ if is_context(ty) => Some(ContextParam::ByValue(ty)),
        _ => None,
    }
}

/// The doc comment, as the action's description.
fn doc(method: &ImplItemFn) -> String {
    let mut lines = Vec::new();
    for attr in &method.attrs {
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
