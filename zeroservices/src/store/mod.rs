//! Where resources live: the [`Store`] trait over JSON documents, and its backends.
//!
//! Every backend speaks the same filter language ([`crate::query`](mod@crate::query)) and update language
//! ([`crate::patch`](mod@crate::patch)); the memory and embedded backends evaluate them with the shared
//! implementation, the MongoDB backend passes them to the server natively.
//!
//! | `ZS_STORE`                     | backend                                              |
//! |--------------------------------|------------------------------------------------------|
//! | unset, empty or `embedded`     | [`EmbeddedStore`] in `./data/<node name>` (default)  |
//! | `embedded:<dir>`               | [`EmbeddedStore`] in `<dir>`                         |
//! | `memory`                       | [`MemoryStore`]: gone when the process ends          |
//! | `mongodb://host:port/db?opts`  | `MongoStore` (feature `mongodb`) (database from the path, default `zeroservices`) |
//!
//! [`StoreConfig`] parses these; [`open`] opens one.
//!
//! # Versions and compare-and-set
//!
//! Every stored document has a version, kept by the store in the reserved field
//! [`VERSION_FIELD`] (`_version`) of the document: `insert` sets it to 1 and every change
//! (`patch`, `replace`) adds exactly one. A document written before versions existed has no
//! such field and counts as version 0 ([`version_of`]). `get` and `list` return the field with
//! the document; the service moves it out of `resource_data` into the reply's `version`.
//!
//! `patch`, `replace` and `delete` take `expect: Option<u64>`: with `Some(v)`, the change is a
//! compare-and-set, made only if the stored version is still `v` (checked and written in one
//! atomic step: under the memory store's lock, inside the embedded store's write transaction,
//! in the MongoDB filter), otherwise [`Error::PreconditionFailed`] and nothing changes. This is
//! what keeps two owners of one database from losing each other's updates.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::{Error, Patch, Query, Result};

#[cfg(feature = "embedded")]
pub mod embedded;
mod memory;
#[cfg(feature = "mongodb")]
pub mod mongo;

#[cfg(feature = "embedded")]
pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
#[cfg(feature = "mongodb")]
pub use mongo::MongoStore;

/// The reserved field of a stored document that holds its version (see the
/// [module docs](self#versions-and-compare-and-set)). Resources cannot declare it and patches
/// cannot touch it.
pub const VERSION_FIELD: &str = "_version";

/// The version of a stored document: its [`VERSION_FIELD`], 0 when it has none (written before
/// versions existed).
pub fn version_of(doc: &Value) -> u64 {
    doc.get(VERSION_FIELD).and_then(Value::as_u64).unwrap_or(0)
}

/// Removes the [`VERSION_FIELD`] from a stored document and returns the version it held (0
/// when it had none).
pub fn take_version(doc: &mut Value) -> u64 {
    doc.as_object_mut()
        .and_then(|map| map.remove(VERSION_FIELD))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Whether a dotted path is the version field or inside it.
pub fn is_version_path(path: &str) -> bool {
    path == VERSION_FIELD
        || path
            .strip_prefix(VERSION_FIELD)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// Sets a document's version (a document that is not an object is left as it is: the stores
/// refuse those before).
pub(crate) fn set_version(doc: &mut Value, version: u64) {
    if let Value::Object(map) = doc {
        map.insert(VERSION_FIELD.to_owned(), Value::from(version));
    }
}

/// The compare of a compare-and-set: `Ok` when nothing is expected or the stored version is the
/// expected one, [`Error::PreconditionFailed`] otherwise.
pub(crate) fn check_version(
    collection: &str,
    id: &str,
    actual: u64,
    expect: Option<u64>,
) -> Result<()> {
    match expect {
        Some(expected) if expected != actual => Err(Error::PreconditionFailed {
            collection: collection.to_owned(),
            id: id.to_owned(),
            expected,
            actual,
        }),
        _ => Ok(()),
    }
}

/// A patch may not touch the version, which only the store keeps.
pub(crate) fn refuse_version_paths(update: &crate::patch::Update) -> Result<()> {
    match update.fields().into_iter().find(|f| is_version_path(f)) {
        Some(path) => Err(Error::bad_request(format!(
            "`{path}`: `{VERSION_FIELD}` is kept by the store and cannot be patched"
        ))),
        None => Ok(()),
    }
}

/// A document store: one namespace of collections, each a map from resource id to a JSON
/// document (the resource's fields, without its id).
///
/// Implementations must be atomic per call: a `patch` that fails leaves the document unchanged.
/// Every document carries its version in [`VERSION_FIELD`], kept by the store: every change
/// adds one, and a change with `expect: Some(v)` is a compare-and-set on it (see the
/// [module docs](self#versions-and-compare-and-set)).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Prepares a collection (indexes, tables). Called once per resource when a node registers
    /// it; `text_index` lists the fields to index for full-text search.
    async fn ensure_collection(&self, collection: &str, text_index: &[String]) -> Result<()> {
        let _ = (collection, text_index);
        Ok(())
    }

    /// Inserts a document at version 1 (a [`VERSION_FIELD`] it holds is overwritten). With
    /// `id`, a taken id gives [`crate::Error::DuplicateId`]; without, the store picks a fresh
    /// one. Returns the id.
    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String>;

    /// Reads one document with its [`VERSION_FIELD`] (absent: version 0), `None` when the id is
    /// unknown.
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>>;

    /// Replaces a whole document (a [`VERSION_FIELD`] in `doc` is ignored) and returns its new
    /// version, one more than the old; [`crate::Error::NotFound`] if it does not exist,
    /// [`crate::Error::PreconditionFailed`] (and nothing changed) if `expect` is given and is not
    /// the stored version.
    async fn replace(
        &self,
        collection: &str,
        id: &str,
        doc: Value,
        expect: Option<u64>,
    ) -> Result<u64>;

    /// Applies an update document atomically, adds one to the version, and returns the new
    /// document (with its [`VERSION_FIELD`]); [`crate::Error::NotFound`] if it does not exist,
    /// [`crate::Error::PreconditionFailed`] (and nothing changed) if `expect` is given and is
    /// not the stored version. An update that touches [`VERSION_FIELD`] is a bad request.
    async fn patch(
        &self,
        collection: &str,
        id: &str,
        patch: &Patch,
        expect: Option<u64>,
    ) -> Result<Value>;

    /// Deletes a document and returns the version it had; [`crate::Error::NotFound`] if it does
    /// not exist, [`crate::Error::PreconditionFailed`] (and nothing deleted) if `expect` is
    /// given and is not the stored version.
    async fn delete(&self, collection: &str, id: &str, expect: Option<u64>) -> Result<u64>;

    /// Lists `(id, document)` pairs matching the query, sorted, skipped and limited; each
    /// document with its [`VERSION_FIELD`].
    async fn list(&self, collection: &str, query: &Query) -> Result<Vec<(String, Value)>>;

    /// A short name for logs (`memory`, `embedded:/path`, `mongodb`).
    fn describe(&self) -> String;
}

/// A fresh resource id: 32 lowercase hex digits.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[cfg(feature = "mongodb")]
pub(crate) use crate::config::request_timeout_from_env;

/// Which store a node uses: the parsed form of `ZS_STORE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// `memory`: a [`MemoryStore`].
    Memory,
    /// `embedded:<dir>`: an [`EmbeddedStore`] in this data dir.
    Embedded(PathBuf),
    /// `mongodb://...` or `mongodb+srv://...`: a `MongoStore` (feature `mongodb`) at this URI.
    MongoDb(String),
}

impl StoreConfig {
    /// Parses a store spec: `memory`, `embedded:<dir>`, or a `mongodb://` / `mongodb+srv://`
    /// URI.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming the spec and the accepted forms.
    pub fn parse(spec: &str) -> Result<Self> {
        let spec = spec.trim();
        let bad = || {
            Error::bad_request(format!(
                "ZS_STORE={spec:?}: expected `memory`, `embedded:<dir>` or a `mongodb://` URI"
            ))
        };
        if spec == "memory" {
            Ok(Self::Memory)
        } else if let Some(dir) = spec.strip_prefix("embedded:") {
            if dir.trim().is_empty() {
                return Err(bad());
            }
            Ok(Self::Embedded(PathBuf::from(dir.trim())))
        } else if spec.starts_with("mongodb://") || spec.starts_with("mongodb+srv://") {
            Ok(Self::MongoDb(spec.to_owned()))
        } else {
            Err(bad())
        }
    }

    /// The default for a node: the embedded store in `./data/<node name>` (relative to the
    /// working directory; characters other than letters, digits, `-`, `_` and `.` in the name
    /// become `_`). Built without the `embedded` feature: the memory store.
    pub fn default_for(node_name: &str) -> Self {
        if cfg!(not(feature = "embedded")) {
            return Self::Memory;
        }
        let safe: String = node_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let safe = match safe.trim_matches('.') {
            "" => "node".to_owned(),
            _ => safe,
        };
        Self::Embedded(PathBuf::from("data").join(safe))
    }

    /// `ZS_STORE` for a node named `node_name`: unset, empty or `embedded` gives
    /// [`StoreConfig::default_for`], anything else is [parsed](StoreConfig::parse).
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed `ZS_STORE`.
    pub fn from_env(node_name: &str) -> Result<Self> {
        Ok(crate::settings::Settings::from_env()?.store(node_name, true))
    }

    /// Opens the store.
    ///
    /// # Errors
    /// What [`EmbeddedStore::open`] and `MongoStore::connect` return.
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        Ok(match self {
            Self::Memory => Arc::new(MemoryStore::new()),
            #[cfg(feature = "embedded")]
            Self::Embedded(dir) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(dir))
                    .await
                    .map_err(|e| Error::internal(format!("opening the embedded store: {e}")))??;
                Arc::new(store)
            }
            #[cfg(feature = "mongodb")]
            Self::MongoDb(uri) => Arc::new(MongoStore::connect(uri).await?),
            #[cfg(not(feature = "embedded"))]
            Self::Embedded(_) => return Err(missing_feature(self, "embedded")),
            #[cfg(not(feature = "mongodb"))]
            Self::MongoDb(_) => return Err(missing_feature(self, "mongodb")),
        })
    }
}

impl std::fmt::Display for StoreConfig {
    /// The spec, as `ZS_STORE` writes it (a MongoDB URI without its credentials).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
            Self::MongoDb(uri) => match uri.split_once("://") {
                Some((scheme, rest)) => {
                    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                    write!(f, "{scheme}://{rest}")
                }
                None => f.write_str(uri),
            },
        }
    }
}

/// The error for a store this build was compiled without.
#[cfg(any(not(feature = "embedded"), not(feature = "mongodb")))]
fn missing_feature(config: &StoreConfig, feature: &str) -> Error {
    Error::bad_request(format!(
        "ZS_STORE={config}: this build of zeroservices has no {feature} store \
         (enable its Cargo feature `{feature}`)"
    ))
}

/// Opens the store a spec names (see [`StoreConfig::parse`]).
///
/// # Errors
/// A malformed spec, or what opening the store returns.
pub async fn open(spec: &str) -> Result<Arc<dyn Store>> {
    StoreConfig::parse(spec)?.open().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        assert_eq!(StoreConfig::parse("memory").unwrap(), StoreConfig::Memory);
        assert_eq!(
            StoreConfig::parse(" embedded:/var/zs ").unwrap(),
            StoreConfig::Embedded("/var/zs".into())
        );
        assert_eq!(
            StoreConfig::parse("mongodb://u:p@h:27017/db").unwrap(),
            StoreConfig::MongoDb("mongodb://u:p@h:27017/db".into())
        );
        assert_eq!(
            StoreConfig::parse("mongodb://u:p@h:27017/db")
                .unwrap()
                .to_string(),
            "mongodb://h:27017/db"
        );
        for bad in ["", "embedded:", "embedded", "redis://x", "mem"] {
            let e = StoreConfig::parse(bad).unwrap_err();
            assert!(e.to_string().contains("ZS_STORE"), "{e}");
        }
    }

    #[test]
    fn versions_read_from_the_reserved_field() {
        use serde_json::json;
        // Written before versions existed: version 0.
        assert_eq!(version_of(&json!({"n": 1})), 0);
        assert_eq!(version_of(&json!({"n": 1, "_version": 3})), 3);
        let mut doc = json!({"n": 1, "_version": 3});
        assert_eq!(take_version(&mut doc), 3);
        assert_eq!(doc, json!({"n": 1}));
        assert_eq!(take_version(&mut doc), 0);
        assert!(is_version_path("_version") && is_version_path("_version.x"));
        assert!(!is_version_path("_versions") && !is_version_path("a._version"));
        assert!(check_version("c", "1", 2, None).is_ok());
        assert!(check_version("c", "1", 2, Some(2)).is_ok());
        let e = check_version("c", "1", 2, Some(1)).unwrap_err();
        assert_eq!(e.kind(), "precondition_failed");
        assert!(e.to_string().contains("version 2"), "{e}");
    }

    #[test]
    fn default_is_embedded_under_data() {
        assert_eq!(
            StoreConfig::default_for("power"),
            StoreConfig::Embedded(PathBuf::from("data/power"))
        );
        assert_eq!(
            StoreConfig::default_for("a b/../c"),
            StoreConfig::Embedded(PathBuf::from("data/a_b_.._c"))
        );
        assert_eq!(
            StoreConfig::default_for(".."),
            StoreConfig::Embedded(PathBuf::from("data/node"))
        );
    }
}
