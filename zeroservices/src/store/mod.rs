//! Where resources live: the [`Store`] trait over JSON documents, and its backends.
//!
//! Every backend speaks the same filter language ([`crate::query`]) and update language
//! ([`crate::patch`]); the memory backend evaluates them with the shared implementation.

use async_trait::async_trait;
use serde_json::Value;

use crate::{Patch, Query, Result};

mod memory;

pub use memory::MemoryStore;

/// A document store: one namespace of collections, each a map from resource id to a JSON
/// document (the resource's fields, without its id).
///
/// Implementations must be atomic per call: a `patch` that fails leaves the document unchanged.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Prepares a collection (indexes, tables). Called once per resource when a node registers
    /// it; `text_index` lists the fields to index for full-text search.
    async fn ensure_collection(&self, collection: &str, text_index: &[String]) -> Result<()> {
        let _ = (collection, text_index);
        Ok(())
    }

    /// Inserts a document. With `id`, a taken id gives [`crate::Error::DuplicateId`]; without,
    /// the store picks a fresh one. Returns the id.
    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String>;

    /// Reads one document, `None` when the id is unknown.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>>;

    /// Replaces a whole document; [`crate::Error::NotFound`] if it does not exist.
    async fn replace(&self, collection: &str, id: &str, doc: Value) -> Result<()>;

    /// Applies an update document atomically and returns the new document;
    /// [`crate::Error::NotFound`] if it does not exist.
    async fn patch(&self, collection: &str, id: &str, patch: &Patch) -> Result<Value>;

    /// Deletes a document; [`crate::Error::NotFound`] if it does not exist.
    async fn delete(&self, collection: &str, id: &str) -> Result<()>;

    /// Lists `(id, document)` pairs matching the query, sorted, skipped and limited.
    async fn list(&self, collection: &str, query: &Query) -> Result<Vec<(String, Value)>>;

    /// A short name for logs (`memory`, `embedded:/path`, `mongodb`).
    fn describe(&self) -> String;
}

/// A fresh resource id: 32 lowercase hex digits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}
