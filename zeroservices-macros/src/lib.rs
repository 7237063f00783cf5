//! The attribute macros of [zeroservices](https://docs.rs/zeroservices).
//!
//! Use them through `zeroservices` (`use zeroservices::prelude::*;`), which documents them
//! with runnable examples; this crate is an implementation detail, and the code it generates
//! only names `zeroservices` types and calls into `zeroservices::__private`.
//!
//! | Macro | On | Generates |
//! |---|---|---|
//! | [`#[resource]`](macro@resource) | a struct with named fields | the serde and schemars derives and `impl Resource` (collection, text index, action table) |
//! | [`#[model]`](macro@model) | a struct or an enum used inside a resource or as an action argument | the serde and schemars derives |
//! | [`#[actions]`](macro@actions) | the `impl` block of a resource | a dispatcher per `#[action]` method and the resource's action table |
//! | [`#[action]`](macro@action) | a method inside an `#[actions]` block | nothing itself: `#[actions]` reads and removes it |
//! | [`#[service]`](macro@service) | `async fn main` | a `fn main() -> ExitCode` that runs `zeroservices::App` |
//!
//! ```ignore
//! use zeroservices::prelude::*;
//!
//! #[model]
//! #[derive(Debug, Clone, Copy, PartialEq, Default)]
//! #[serde(rename_all = "lowercase")]
//! pub enum Status { #[default] Pending, Done }
//!
//! /// A number to square.
//! #[resource(collection = "power")]
//! pub struct Power {
//!     pub value: i64,
//!     pub status: Status,
//! }
//!
//! #[actions]
//! impl Power {
//!     /// Squares the value.
//!     #[action]
//!     async fn square(&mut self) -> Result<i64> {
//!         self.value *= self.value;
//!         Ok(self.value)
//!     }
//! }
//!
//! /// Squares numbers.
//! #[service(name = "power_service", resources(Power), http(port = 5001))]
//! async fn main(node: Node) -> Result<()> {
//!     Ok(())
//! }
//! ```
//!
//! Each macro is split by phase: `attr.rs`/`ast.rs` parse, `valid.rs` checks (collecting every
//! error in a serde-style `Ctxt`, so the user sees them all at once), `expand.rs` generates code
//! that cannot fail (`#[model]`, much smaller, keeps the same phases in one file). On an error
//! the user's item is always re-emitted, with the full expansion when the item itself is usable,
//! so code using it gets no follow-on errors.

mod actions;
mod attr;
mod ctxt;
mod derives;
mod item;
mod model;
mod resource;
mod service;
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
///
/// Generates the impl block unchanged (minus the `#[action]` attributes) and the resource's
/// action table, which its `Resource::actions` returns: per action its name, doc comment, the
/// JSON schemas of its argument and result, and a function that decodes the argument, calls the
/// method and encodes the result.
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
/// Generates `#[derive(Serialize, Deserialize, JsonSchema)]` (through zeroservices) on the item
/// and nothing else; deriving one of these yourself is an error. Key: `crate = "..."` (the path
/// of zeroservices, default `::zeroservices`).
#[proc_macro_attribute]
pub fn model(args: TokenStream, input: TokenStream) -> TokenStream {
    model::expand(args.into(), input.into()).into()
}

/// Turns `async fn main` into a complete service: a node with resources, discovery, HTTP and
/// a clean goodbye on Ctrl-C / SIGTERM.
///
/// ```ignore
/// use zeroservices::prelude::*;
///
/// /// Squares numbers (this doc comment is the `--help` description).
/// #[service(name = "power_service", resources(Power), http(port = 5001, allowed_origins = "*"))]
/// async fn main(node: Node) -> Result<()> {
///     // optional set-up; the node then serves until Ctrl-C / SIGTERM
///     Ok(())
/// }
/// ```
///
/// Expands to a plain `fn main() -> std::process::ExitCode` that runs `zeroservices::App`:
/// it reads the `ZS_*` environment and the same settings as flags (`--help` lists them; a flag
/// wins over its variable, which wins over the attribute), builds the tokio runtime, opens the
/// store, starts the node and HTTP, runs the body, then serves until a signal.
///
/// Keys: `name = "..."` (required: the service's name in the cluster), `resources(Type, ...)`
/// (the `#[resource]` types this node owns), `http` or `http(port = 5001, host = "127.0.0.1",
/// allowed_origins = "...")` (serve HTTP; default port 5001 on loopback), `crate = "..."`.
///
/// The function is `async fn main()` or `async fn main(node: Node)`, returning `()` or
/// `Result<()>` (any `Result<(), E>` with a displayable `E`).
#[proc_macro_attribute]
pub fn service(args: TokenStream, input: TokenStream) -> TokenStream {
    service::expand(args.into(), input.into()).into()
}
