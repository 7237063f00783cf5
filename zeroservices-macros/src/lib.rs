//! The attribute macros of [zeroservices](https://docs.rs/zeroservices): `#[resource]`,
//! `#[actions]` and `#[action]`.
//!
//! Use them through `zeroservices` (`use zeroservices::prelude::*;`), which documents them
//! with runnable examples; this crate is an implementation detail. Each macro is split by
//! phase: `attr.rs`/`ast.rs` parse, `valid.rs` checks (collecting every error in a
//! serde-style `Ctxt`), `expand.rs` generates code that only calls into
//! `zeroservices::__private`.

mod actions;
mod attr;
mod ctxt;
mod derives;
mod item;
mod model;
mod resource;
mod symbol;

use proc_macro::TokenStream;

/// Makes a struct with named fields a resource stored in a collection.
///
/// Derives `Serialize`, `Deserialize` and `JsonSchema` (through zeroservices: the crate needs
/// no serde dependency; doc comments become schema descriptions, `#[serde(...)]` and
/// `#[schemars(...)]` attributes work) and implements `zeroservices::Resource`.
///
/// ```ignore
/// use zeroservices::prelude::*;
///
/// /// A number to square.
/// #[resource(collection = "power", text_index(description))]
/// pub struct Power {
///     pub value: i64,
///     pub description: String,
/// }
/// ```
///
/// Keys: `collection = "..."` (required; lowercase ascii letters, digits, `_`, `-`),
/// `text_index(field, ...)` (fields with a full-text index), `crate = "..."` (the path of
/// zeroservices, default `::zeroservices`).
#[proc_macro_attribute]
pub fn resource(args: TokenStream, input: TokenStream) -> TokenStream {
    resource::expand(args.into(), input.into()).into()
}

/// Declares the custom actions of a resource: the `#[action]` methods of an impl block.
///
/// ```ignore
/// #[actions]
/// impl Power {
///     /// Squares the value.
///     #[action]
///     async fn square(&mut self, ctx: &Context) -> Result<i64> { ... }
///
///     /// Resets every power.
///     #[action(collection, name = "reset-all")]
///     async fn reset(ctx: &Context, args: ResetArgs) -> Result<u64> { ... }
/// }
/// ```
///
/// An action is an `async fn` taking `&self` (reads one resource), `&mut self` (changes one
/// resource) or, with `#[action(collection)]`, no receiver (acts on the collection); then an
/// optional `&Context` or `Context`, then at most one argument (`Deserialize + JsonSchema`);
/// it returns `Result<T>` with `T: Serialize + JsonSchema`. Its doc comment describes it.
/// Methods without `#[action]` stay plain methods. Key: `crate = "..."`.
#[proc_macro_attribute]
pub fn actions(args: TokenStream, input: TokenStream) -> TokenStream {
    actions::expand(args.into(), input.into()).into()
}

/// Marks a method of an `#[actions]` block as an action: `#[action]`,
/// `#[action(collection)]`, `#[action(name = "other")]`.
///
/// ```ignore
/// #[action(name = "square-it")]
/// async fn square(&mut self) -> Result<i64> { ... }
/// ```
///
/// `#[actions]` reads and removes it; anywhere else it is an error.
#[proc_macro_attribute]
pub fn action(_args: TokenStream, input: TokenStream) -> TokenStream {
    actions::misplaced_action(input.into()).into()
}

/// The serde and schemars derives for a type used inside a resource (an enum, a nested
/// struct) or as an action's argument, through zeroservices' re-exports: the crate needs no
/// serde or schemars dependency.
///
/// ```ignore
/// #[model]
/// #[derive(Debug, Clone, Copy, PartialEq, Default)]
/// #[serde(rename_all = "lowercase")]
/// pub enum Status { #[default] Pending, Done }
/// ```
///
/// Key: `crate = "..."` (the path of zeroservices, default `::zeroservices`).
#[proc_macro_attribute]
pub fn model(args: TokenStream, input: TokenStream) -> TokenStream {
    model::expand(args.into(), input.into()).into()
}
