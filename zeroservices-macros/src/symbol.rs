//! The keywords the macros understand, as typed constants (after serde_derive's `symbol.rs`).

use std::fmt::{self, Display};

use syn::{Ident, Path};

/// An attribute keyword.
#[derive(Copy, Clone)]
pub(crate) struct Symbol(pub(crate) &'static str);

// `#[resource(...)]`
pub(crate) const COLLECTION: Symbol = Symbol("collection");
pub(crate) const TEXT_INDEX: Symbol = Symbol("text_index");
pub(crate) const CRATE: Symbol = Symbol("crate");

// `#[action(...)]`
pub(crate) const ACTION: Symbol = Symbol("action");
pub(crate) const NAME: Symbol = Symbol("name");

// Other names the macros look for.
pub(crate) const DERIVE: Symbol = Symbol("derive");
pub(crate) const DOC: Symbol = Symbol("doc");
pub(crate) const CONTEXT: Symbol = Symbol("Context");

/// The traits `#[resource]` and `#[model]` derive themselves (`derives.rs`); a user's own
/// derive of one of them is an error.
pub(crate) const DERIVED_BY_RESOURCE: [Symbol; 3] = [
    Symbol("Serialize"),
    Symbol("Deserialize"),
    Symbol("JsonSchema"),
];

/// Actions every resource has built in; custom actions cannot take these names.
pub(crate) const BUILT_IN_ACTIONS: [&str; 8] = [
    "create",
    "get",
    "patch",
    "delete",
    "list",
    "add_link",
    "follow_links",
    "incoming_links",
];

impl PartialEq<Symbol> for Ident {
    fn eq(&self, word: &Symbol) -> bool {
        self == word.0
    }
}

impl PartialEq<Symbol> for &Ident {
    fn eq(&self, word: &Symbol) -> bool {
        *self == word.0
    }
}

impl PartialEq<Symbol> for Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl PartialEq<Symbol> for &Path {
    fn eq(&self, word: &Symbol) -> bool {
        self.is_ident(word.0)
    }
}

impl Display for Symbol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.0)
    }
}

/// Whether `name` is a valid collection or action name: non-empty, lowercase ascii letters,
/// digits, `_` and `-` (it appears in URLs and event topics).
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
