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
//! # Ids
//!
//! An insert without an id gets a [`new_resource_id`]: 32 lowercase hex digits, time-ordered
//! (UUIDv7), so inserts land at the end of each backend's ordered index. [`new_id`] is the
//! random one (UUIDv4), for names any slice of which must be random.
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
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::changes::{LogAfter, LogPage};
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

    /// Claims mutating request `request_id` of `collection` before it runs (exactly-once
    /// effects, see [`Claim`]): records it as in progress for `lease` unless a live record of it
    /// exists, atomically (two claims of one id never both get [`Claim::New`]). `fingerprint`
    /// names what the request asks (its action, id and arguments).
    async fn claim_request(
        &self,
        collection: &str,
        request_id: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim>;

    /// Records the reply of a claimed request, kept for `keep`: a later claim of the same id
    /// gets it ([`Claim::Done`]).
    async fn complete_request(
        &self,
        collection: &str,
        request_id: &str,
        reply: &Value,
        keep: Duration,
    ) -> Result<()>;

    /// Forgets a claimed request that failed without changing anything, so a retry runs it.
    async fn release_request(&self, collection: &str, request_id: &str) -> Result<()>;
    /// An id of the data set behind this store, the same for every process that opens the same
    /// data and stable across restarts: an embedded store's random id written once into its
    /// file, a MongoDB database's id written once into it (every node over that database reads
    /// the same), a memory store's random id per instance (never shared between processes).
    ///
    /// A node announces it for each collection it owns; a second owner of a collection over
    /// another data set is refused at start-up (see [`crate::NodeBuilder::start`]). `None`
    /// (the default, for stores that cannot tell) turns that check off for this store.
    ///
    /// # Errors
    /// When the store cannot be read (a MongoDB server that is down).
    async fn fingerprint(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// The id of the change log this store writes ([`crate::changes`]), the same across
    /// restarts where the store is (the embedded store's fingerprint); `None` (the default) for
    /// a store that keeps none.
    ///
    /// A store that keeps a log writes, in the same atomic step as every `insert`, `replace`,
    /// `patch` and `delete` it is given a change note for (the owner sets one), an entry with
    /// the change's event and the next sequence number of the collection's log, and drops
    /// the entries that the note's retention no longer keeps.
    fn log_id(&self) -> Option<String> {
        None
    }

    /// Up to `limit` entries of `collection`'s change log `log` after `after`, in order;
    /// `None` when this store does not hold that log (another owner's).
    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: LogAfter,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        let _ = (collection, log, after, limit);
        Ok(None)
    }
}

/// What [`Store::claim_request`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// Not seen (or its record expired): the caller runs it, then completes or releases it.
    New,
    /// Another attempt is running it (its lease has not expired); `fingerprint` is what that
    /// attempt asked.
    InProgress {
        /// What the running attempt asked.
        fingerprint: String,
    },
    /// Its change was made (recorded in the same transaction, by a backend that can) but its
    /// reply was not recorded: the process serving it stopped in between. The caller answers
    /// from what is stored now.
    Applied {
        /// What the request asked.
        fingerprint: String,
        /// The resource it changed (a create's new id).
        resource_id: Option<String>,
    },
    /// Already served: what it asked and its reply.
    Done {
        /// What the served request asked.
        fingerprint: String,
        /// Its reply.
        reply: Value,
    },
}

/// The record a store keeps of a claimed request (the memory and embedded backends store it
/// as JSON; the MongoDB backend as a document with the same fields).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct RequestRecord {
    pub(crate) fingerprint: String,
    /// `None` while in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reply: Option<Value>,
    /// Set in the transaction of the change itself (backends that can): the change was made,
    /// on this resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) applied: Option<Applied>,
    /// Milliseconds since the epoch after which the record is forgotten.
    pub(crate) expires_ms: u64,
}

impl RequestRecord {
    /// What a claim finds in `self` at `now_ms`: `None` when it is expired (the claim wins).
    pub(crate) fn claim(&self, now_ms: u64) -> Option<Claim> {
        if self.expires_ms <= now_ms {
            return None;
        }
        Some(match &self.reply {
            None => match &self.applied {
                Some(applied) => Claim::Applied {
                    fingerprint: self.fingerprint.clone(),
                    resource_id: applied.resource_id.clone(),
                },
                None => Claim::InProgress {
                    fingerprint: self.fingerprint.clone(),
                },
            },
            Some(reply) => Claim::Done {
                fingerprint: self.fingerprint.clone(),
                reply: reply.clone(),
            },
        })
    }

    pub(crate) fn pending(fingerprint: &str, lease: Duration) -> Self {
        Self {
            fingerprint: fingerprint.to_owned(),
            reply: None,
            applied: None,
            expires_ms: now_ms().saturating_add(lease.as_millis() as u64),
        }
    }
}

/// What the change's own transaction records of the request making it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Applied {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) resource_id: Option<String>,
}

/// The request a store write belongs to: set by the owner around the serving of a request that
/// is remembered ([`Store::claim_request`]), so a backend with transactions records, in the
/// transaction of the change, that the change was made (and the reply when it is known
/// before, as an action's). Requests served inside another (a nested call of an action) have
/// their own scope.
#[derive(Debug, Clone)]
// Only a backend with transactions (embedded) writes it; the others only carry it.
#[cfg_attr(not(feature = "embedded"), allow(dead_code))]
pub(crate) struct Mark {
    pub(crate) collection: String,
    pub(crate) key: String,
    pub(crate) fingerprint: String,
    pub(crate) keep: Duration,
    /// The reply, when known before the write (an action's result).
    pub(crate) reply: Arc<std::sync::Mutex<Option<Value>>>,
}

tokio::task_local! {
    pub(crate) static MARK: Option<Mark>;
}

/// The mark of the request being served on this task for `collection`, if any.
pub(crate) fn current_mark(collection: &str) -> Option<Mark> {
    MARK.try_with(|mark| mark.clone())
        .ok()
        .flatten()
        .filter(|m| m.collection == collection)
}

impl Mark {
    /// The record the change's transaction writes: applied to `resource_id`.
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn applied(&self, resource_id: &str) -> RequestRecord {
        let reply = self.reply.lock().unwrap_or_else(|e| e.into_inner()).clone();
        RequestRecord {
            fingerprint: self.fingerprint.clone(),
            reply,
            applied: Some(Applied {
                resource_id: Some(resource_id.to_owned()),
            }),
            expires_ms: now_ms().saturating_add(self.keep.as_millis() as u64),
        }
    }
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Expired records deleted by one claim at most (the embedded and memory stores sweep a few at
/// every claim, in expiry order, so the work per claim stays small whatever the number kept).
pub(crate) const SWEEP_BATCH: usize = 64;

/// Request records a memory store keeps at most; past it the ones closest to expiry go first
/// (counted and logged), so a flood of writes cannot grow the process without bound.
pub(crate) const MAX_MEMORY_RECORDS: usize = 1_000_000;

/// Request records in memory, with their expiry order: what [`MemoryStore`] keeps.
#[derive(Default)]
pub(crate) struct RequestMemory {
    records: std::collections::HashMap<(String, String), RequestRecord>,
    /// `(expires_ms, key)` for every record write; an entry whose record has since expired
    /// later (a completed claim) is skipped when it comes up.
    expiries: std::collections::BTreeSet<(u64, (String, String))>,
    /// Records dropped before their expiry because of [`MAX_MEMORY_RECORDS`].
    pub(crate) evicted: u64,
}

impl RequestMemory {
    /// Deletes up to [`SWEEP_BATCH`] expired records (and as many as needed to stay under the
    /// cap).
    fn sweep(&mut self, now: u64) {
        let mut swept = 0;
        while let Some(&(expires, _)) = self.expiries.first() {
            let over = self.records.len() > MAX_MEMORY_RECORDS;
            if !over && (expires > now || swept >= SWEEP_BATCH) {
                break;
            }
            let Some((expires, key)) = self.expiries.pop_first() else {
                break;
            };
            if self
                .records
                .get(&key)
                .is_some_and(|r| r.expires_ms == expires)
            {
                self.records.remove(&key);
                if over && expires > now {
                    if self.evicted == 0 {
                        tracing::warn!(
                            "over {MAX_MEMORY_RECORDS} request records in a memory store: the \
                             ones closest to expiry are forgotten early"
                        );
                    }
                    self.evicted += 1;
                }
            }
            swept += 1;
        }
    }

    fn put(&mut self, key: (String, String), record: RequestRecord) {
        self.expiries.insert((record.expires_ms, key.clone()));
        self.records.insert(key, record);
    }

    pub(crate) fn claim(
        &mut self,
        key: (String, String),
        fingerprint: &str,
        lease: Duration,
    ) -> Claim {
        let now = now_ms();
        self.sweep(now);
        if let Some(found) = self.records.get(&key).and_then(|r| r.claim(now)) {
            return found;
        }
        self.put(key, RequestRecord::pending(fingerprint, lease));
        Claim::New
    }

    pub(crate) fn complete(&mut self, key: (String, String), reply: &Value, keep: Duration) {
        if let Some(record) = self.records.get_mut(&key) {
            record.reply = Some(reply.clone());
            record.expires_ms = now_ms().saturating_add(keep.as_millis() as u64);
            self.expiries.insert((record.expires_ms, key));
        }
    }

    pub(crate) fn release(&mut self, key: &(String, String)) {
        self.records.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.records.len(), self.expiries.len())
    }
}

/// A fresh random id: 32 lowercase hex digits (a UUIDv4), every digit but one random. For
/// names that must not collide (fingerprints, node ids, test prefixes): any slice of it is
/// random. Resources created without an id get a [`new_resource_id`] instead.
pub fn new_id() -> String {
    hex_id(uuid::Uuid::new_v4())
}

/// The id a store gives a resource created without one: 32 lowercase hex digits, like
/// [`new_id`], but time-ordered (a UUIDv7: the creation time in milliseconds, then a counter
/// started at a random value each millisecond and random bits), so the ids one process makes
/// sort in the order they were made and inserts land at the end of every ordered index (the
/// memory store's map, the embedded store's table, MongoDB's `_id` index) instead of at random
/// places in it. An id says when its resource was created; it is not a secret.
pub fn new_resource_id() -> String {
    hex_id(uuid::Uuid::now_v7())
}

/// 32 lowercase hex digits of `id`.
fn hex_id(id: uuid::Uuid) -> String {
    let mut text = [0u8; uuid::fmt::Simple::LENGTH];
    id.simple().encode_lower(&mut text).to_owned()
}

#[cfg(feature = "mongodb")]
pub(crate) use crate::config::request_timeout_from_env;

/// The default of `ZS_STORE_BATCH_MAX`: the most durable writes the embedded store commits
/// together (group commit: see the embedded store's `commit` module).
pub const DEFAULT_BATCH_MAX: usize = 256;

/// How a store is opened, beyond where it is (the `Storage` settings other than `ZS_STORE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// The embedded store commits at most this many writes together, in one transaction and one
    /// `fsync` (`ZS_STORE_BATCH_MAX`, at least 1; 1: every write commits alone).
    pub batch_max: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            batch_max: DEFAULT_BATCH_MAX,
        }
    }
}

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

    /// Opens the store, with the default [`StoreOptions`].
    ///
    /// # Errors
    /// What [`EmbeddedStore::open`] and `MongoStore::connect` return.
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        self.open_with(StoreOptions::default()).await
    }

    /// Opens the store with `options`.
    ///
    /// # Errors
    /// What [`EmbeddedStore::open`] and `MongoStore::connect` return.
    #[cfg_attr(not(feature = "embedded"), allow(unused_variables))]
    pub async fn open_with(&self, options: StoreOptions) -> Result<Arc<dyn Store>> {
        Ok(match self {
            Self::Memory => Arc::new(MemoryStore::new()),
            #[cfg(feature = "embedded")]
            Self::Embedded(dir) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(dir))
                    .await
                    .map_err(|e| Error::internal(format!("opening the embedded store: {e}")))??;
                Arc::new(store.with_batch_max(options.batch_max))
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
    use serde_json::json;

    #[test]
    fn request_records_expire_a_few_at_a_time() {
        let mut memory = RequestMemory::default();
        let key = |n: usize| ("c".to_owned(), format!("r{n}"));
        let short = Duration::from_millis(1);
        let lease = Duration::from_millis(100);
        for n in 0..200 {
            assert_eq!(memory.claim(key(n), "f", lease), Claim::New);
        }
        // Completing one moves its expiry later: its first expiry entry becomes stale.
        memory.complete(key(0), &json!(1), Duration::from_secs(60));
        let until = std::time::Instant::now() + Duration::from_millis(150);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        // Each claim deletes at most a batch of expired ones, never a live one.
        assert_eq!(memory.claim(key(1000), "f", short), Claim::New);
        let (records, _) = memory.len();
        assert!(
            records > 200 - SWEEP_BATCH - 1 && records < 200,
            "{records}"
        );
        for n in 1001..1010 {
            memory.claim(key(n), "f", Duration::from_secs(60));
            std::thread::sleep(short);
        }
        let (records, expiries) = memory.len();
        assert_eq!(
            records,
            1 + 9,
            "the completed one and the live ones (r1000 expired and swept)"
        );
        assert!(expiries >= records);
        assert!(matches!(
            memory.claim(key(0), "f", short),
            Claim::Done { .. }
        ));
    }

    use super::*;

    #[test]
    fn resource_ids_are_time_ordered_and_random_ids_are_not() {
        let hex = |id: &str| {
            id.len() == 32
                && id
                    .bytes()
                    .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        };
        let ordered: Vec<String> = (0..2000).map(|_| new_resource_id()).collect();
        assert!(ordered.iter().all(|id| hex(id) && &id[12..13] == "7"));
        assert!(
            ordered.windows(2).all(|w| w[0] < w[1]),
            "made in one millisecond or across several, they sort in the order made"
        );
        // `new_id` stays random in every digit but its version: a slice of it (a node id's
        // 12 digits, a test prefix's 8) does not repeat for ids made in the same millisecond.
        let random: Vec<String> = (0..2000).map(|_| new_id()).collect();
        assert!(random.iter().all(|id| hex(id) && &id[12..13] == "4"));
        let prefixes: std::collections::HashSet<&str> = random.iter().map(|id| &id[..8]).collect();
        assert!(prefixes.len() > 1990, "{} distinct", prefixes.len());
    }

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
