//! The MongoDB store, on the official `mongodb` driver.
//!
//! * A collection is a MongoDB collection of the database named in the URI (default
//!   `zeroservices`); a document's `_id` is the resource id, a string. Documents that already
//!   exist with an ObjectId `_id` are served under its 24-hex-digit string: a get, patch,
//!   replace or delete by such a string finds the document whichever of the two it holds.
//! * Filters, updates, sort, skip and limit are passed to MongoDB natively (after the same
//!   validation the other stores apply, so a malformed request is refused identically
//!   everywhere); [`Query::text`] becomes `$text`, which needs the text index declared on the
//!   resource (`ensure_collection`). Sort ties are broken by `_id` ascending, as the other
//!   stores break them by id.
//! * The version ([`super::VERSION_FIELD`]) is a field of the stored document: a change bumps
//!   it with `$inc` in the same update, and a compare-and-set puts the expected version in the
//!   filter (`find_one_and_update`, `replace_one`, `find_one_and_delete`), so the server
//!   decides atomically; a miss is then told apart (gone, or another version) by a read.
//!   Version 0 (a document written before versions) is matched as "no `_version` field".
//! * JSON integers are stored as 64-bit integers and floats as doubles, so both come back as
//!   they went in.
//! * The store's fingerprint ([`Store::fingerprint`]) is the document `{_id: "store"}` of the
//!   collection `zeroservices_meta` (a name reserved for it), created
//!   once with an upsert and `$setOnInsert`: every node over the same database reads the same
//!   random id, and announces `mongodb:<database>:<random id>`.
//! * A server that is down, or goes away, gives [`Error::Unavailable`] within the request
//!   timeout (the driver's server selection and connect timeouts are set a bit under it, and
//!   every call has a deadline); the driver reconnects by itself when the server is back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, doc, oid::ObjectId};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde_json::{Map, Number, Value};

use super::{
    Claim, RequestRecord, Store, VERSION_FIELD, check_version, new_id, new_resource_id, now_ms,
    refuse_version_paths,
};
use crate::changes::{LogAfter, LogEntry, LogPage, Logged, current_note, expired};
use crate::{Error, Patch, Query, Result};

/// The collection of the store's own metadata (its fingerprint).
pub const META_COLLECTION: &str = "zeroservices_meta";

/// Expired request records are deleted once every this many claims (by the expiry index).
const SWEEP_EVERY: u64 = 256;

/// The database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "zeroservices";

/// Server error codes that mean the request itself is wrong (a bad filter or update, an update
/// that does not apply to the document), not the server.
const BAD_REQUEST_CODES: &[i32] = &[
    2,     // BadValue
    9,     // FailedToParse
    14,    // TypeMismatch
    28,    // PathNotViable
    40,    // ConflictingUpdateOperators
    52,    // DollarPrefixedFieldName
    56,    // EmptyFieldName
    57,    // DottedFieldName
    66,    // ImmutableField
    10334, // BSONObjectTooLarge
    16837, // legacy "cannot use the part ... to traverse the element"
    17419, // document too large after update
];

/// Server error codes that mean the server cannot serve now (shutting down, stepping down).
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// Resources kept in a MongoDB database; see the [module docs](self).
pub struct MongoStore {
    db: Database,
    /// The deadline of every call.
    deadline: Duration,
    /// Text indexes that could not be created yet (server down at start-up): retried later.
    pending_text: Mutex<HashMap<String, Vec<String>>>,
    describe: String,
    claims: AtomicU64,
    /// This instance's change log: `mongodb:<database>#<random id>` (a new one per process).
    log: String,
    /// The last sequence number written per collection, held while an entry is written, so
    /// entries are written in order.
    heads: tokio::sync::Mutex<HashMap<String, u64>>,
    /// Log writes since the last trim.
    log_writes: AtomicU64,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("db", &self.describe)
            .finish_non_exhaustive()
    }
}

impl MongoStore {
    /// Connects to the MongoDB server at `uri` (`mongodb://host:port/database?options`),
    /// with the request timeout of `ZS_REQUEST_TIMEOUT_MS` (default 5 s).
    ///
    /// Does not wait for the server: a server that is down now is reported by the calls, as
    /// [`Error::Unavailable`], until it is up.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed URI or a malformed `ZS_REQUEST_TIMEOUT_MS`.
    pub async fn connect(uri: &str) -> Result<Self> {
        Self::connect_with_timeout(uri, super::request_timeout_from_env()?).await
    }

    /// As [`MongoStore::connect`], with an explicit request timeout: every call answers within
    /// it. Server selection and connection time out at 80% of it, unless the URI sets
    /// `serverSelectionTimeoutMS` / `connectTimeoutMS`.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a malformed URI.
    pub async fn connect_with_timeout(uri: &str, request_timeout: Duration) -> Result<Self> {
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| Error::bad_request(format!("invalid MongoDB URI: {e}")))?;
        let budget = request_timeout.mul_f64(0.8).max(Duration::from_millis(100));
        options.server_selection_timeout.get_or_insert(budget);
        options.connect_timeout.get_or_insert(budget);
        // Notice a server that came back quickly (the driver's default is 10 s).
        options
            .heartbeat_freq
            .get_or_insert(Duration::from_millis(500).max(budget / 4));
        options
            .app_name
            .get_or_insert_with(|| "zeroservices".to_owned());
        let name = options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
        let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
        let client = Client::with_options(options)
            .map_err(|e| Error::bad_request(format!("invalid MongoDB options: {e}")))?;
        Ok(Self {
            deadline: request_timeout.mul_f64(0.9),
            pending_text: Mutex::new(HashMap::new()),
            describe: format!("mongodb://{}/{name}", hosts.join(",")),
            claims: AtomicU64::new(0),
            log: format!("mongodb:{name}#{}", new_id()),
            heads: tokio::sync::Mutex::new(HashMap::new()),
            log_writes: AtomicU64::new(0),
            db: client.database(&name),
        })
    }

    /// The database this store uses.
    pub fn database(&self) -> &Database {
        &self.db
    }

    fn collection(&self, name: &str) -> Collection<Document> {
        self.db.collection(name)
    }

    /// Awaits `fut` within the deadline, converting its error.
    async fn run<T>(
        &self,
        fut: impl IntoFuture<Output = mongodb::error::Result<T>>,
        context: impl FnOnce(mongodb::error::Error) -> Error,
    ) -> Result<T> {
        match tokio::time::timeout(self.deadline, fut.into_future()).await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(context(e)),
            Err(_) => Err(self.late()),
        }
    }

    /// The error for a call that missed its deadline.
    fn late(&self) -> Error {
        Error::unavailable(format!(
            "MongoDB ({}) did not answer within {} ms",
            self.describe,
            self.deadline.as_millis()
        ))
    }

    /// Writes the change's entry into this instance's log, after the change (MongoDB: not in
    /// the same transaction; see the [module docs](self)), and now and then drops what
    /// retention no longer keeps.
    async fn log_change(&self, collection: &str, id: &str, doc: Option<&Value>, version: u64) {
        let Some(note) = current_note(collection) else {
            return;
        };
        let event = note.event(id, doc, version);
        let coll = self.collection(CHANGES);
        let mut heads = self.heads.lock().await;
        let seq = heads.get(collection).copied().unwrap_or(0) + 1;
        if seq == 1 {
            let index = IndexModel::builder()
                .keys(doc! {"log": 1, "c": 1, "seq": 1})
                .build();
            if let Err(e) = self.run(coll.create_index(index), convert).await {
                tracing::debug!(error = %e, "could not index the change log");
            }
        }
        let at_ms = now_ms();
        let entry = doc! {
            "_id": format!("{}|{collection}|{seq:020}", self.log),
            "log": &self.log,
            "c": collection,
            "seq": seq as i64,
            "at": at_ms as i64,
            "topic": &event.topic,
            "data": event.data.to_string(),
        };
        if let Err(e) = self.run(coll.insert_one(entry), convert).await {
            // The change is made; its entry is not: the event goes out unlogged.
            tracing::warn!(collection, id, error = %e, "a change could not be logged");
            return;
        }
        heads.insert(collection.to_owned(), seq);
        drop(heads);
        note.logged(Logged::new(event, &self.log, seq, at_ms));
        let writes = self.log_writes.fetch_add(1, Ordering::Relaxed) + 1;
        if writes.is_multiple_of(LOG_TRIM_EVERY) {
            let floor = seq.saturating_sub(note.retention.max_entries);
            let oldest = note.retention.oldest_ms(at_ms) as i64;
            let mine = doc! {"log": &self.log, "c": collection, "seq": {"$lte": floor as i64}};
            // Old entries of every log of the database: those of owners gone too.
            let old = doc! {"at": {"$lt": oldest}};
            for filter in [mine, old] {
                if let Err(e) = self.trim(filter).await {
                    tracing::debug!(error = %e, "could not trim the change log");
                }
            }
        }
    }

    /// Deletes (up to a batch of) the log entries `filter` selects, first recording, per log,
    /// the last one dropped (what tells a reader its position expired).
    async fn trim(&self, filter: Document) -> Result<()> {
        let coll = self.collection(CHANGES);
        let find = coll
            .find(filter)
            .projection(doc! {"log": 1, "c": 1, "seq": 1, "at": 1})
            .limit(LOG_TRIM_BATCH);
        let found: Vec<Document> = self
            .run(async move { find.await?.try_collect().await }, convert)
            .await?;
        if found.is_empty() {
            return Ok(());
        }
        let mut last: HashMap<String, (i64, i64)> = HashMap::new();
        let mut ids = Vec::new();
        for d in &found {
            let (Ok(log), Ok(c)) = (d.get_str("log"), d.get_str("c")) else {
                continue;
            };
            let seq = int_of(d, "seq").unwrap_or(0);
            let at = int_of(d, "at").unwrap_or(0);
            let slot = last.entry(format!("{log}|{c}")).or_insert((0, 0));
            if seq > slot.0 {
                *slot = (seq, at);
            }
            if let Some(id) = d.get("_id") {
                ids.push(id.clone());
            }
        }
        let trims = self.collection(LOG_TRIMS);
        for (key, (seq, at)) in last {
            let record = doc! {"_id": &key, "seq": seq, "at": at};
            match self.run(trims.insert_one(record), convert).await {
                Ok(_) => {}
                Err(_) => {
                    // Moved on only forward (another owner may trim the same log).
                    let newer = doc! {"_id": &key, "seq": {"$lt": seq}};
                    self.run(
                        trims.update_one(newer, doc! {"$set": {"seq": seq, "at": at}}),
                        convert,
                    )
                    .await?;
                }
            }
        }
        self.run(coll.delete_many(doc! {"_id": {"$in": ids}}), convert)
            .await
            .map(drop)
    }

    async fn create_text_index(&self, collection: &str, fields: &[String]) -> Result<()> {
        let mut keys = Document::new();
        for field in fields {
            keys.insert(field.clone(), "text");
        }
        let model = IndexModel::builder().keys(keys).build();
        let coll = self.collection(collection);
        self.run(coll.create_index(model), |e| match convert(e) {
            Error::Unavailable { message } => Error::Unavailable { message },
            other => Error::internal(format!(
                "cannot create the text index on {fields:?} of {collection}: {other}; MongoDB \
                 allows one text index per collection: drop an existing one over other fields"
            )),
        })
        .await
        .map(drop)
    }

    /// The version of a stored document; [`Error::NotFound`] when there is none.
    async fn current_version(&self, collection: &str, id: &str) -> Result<u64> {
        let coll = self.collection(collection);
        let found = self
            .run(
                coll.find_one(id_filter(id))
                    .projection(doc! {"_id": 1, VERSION_FIELD: 1}),
                convert,
            )
            .await?;
        match found {
            Some(doc) => Ok(stored_version(&doc)),
            None => Err(Error::not_found(collection, id)),
        }
    }

    /// Why a change selected no document: it is gone ([`Error::NotFound`]), it is at another
    /// version than `expect` ([`Error::PreconditionFailed`]), or the update does not apply to it
    /// (a bad request).
    async fn explain_miss(&self, collection: &str, id: &str, expect: Option<u64>) -> Error {
        let actual = match self.current_version(collection, id).await {
            Ok(actual) => actual,
            Err(e) => return e,
        };
        match check_version(collection, id, actual, expect) {
            Err(e) => e,
            Ok(()) => {
                Error::bad_request(format!("the update cannot be applied to {collection} {id}"))
            }
        }
    }

    /// Creates the text indexes that could not be created at start-up.
    async fn retry_pending(&self, collection: &str) -> Result<()> {
        let fields = {
            let pending = self.pending_text.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(collection) {
                None => return Ok(()),
                Some(fields) => fields.clone(),
            }
        };
        self.create_text_index(collection, &fields).await?;
        self.pending_text
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(collection);
        Ok(())
    }
}

/// The filter selecting resource `id`: its string, or the ObjectId it spells.
fn id_filter(id: &str) -> Document {
    match ObjectId::parse_str(id) {
        Ok(oid) if id.len() == 24 => doc! {"_id": {"$in": [id, oid]}},
        _ => doc! {"_id": id},
    }
}

/// The filter selecting resource `id` at version `expect` (at any version when `None`).
fn versioned_filter(id: &str, expect: Option<u64>) -> Document {
    let mut filter = id_filter(id);
    match expect {
        None => {}
        Some(0) => {
            filter.insert(VERSION_FIELD, doc! {"$exists": false});
        }
        Some(v) => {
            filter.insert(VERSION_FIELD, i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
    filter
}

/// The version a stored document holds (0 without one).
fn stored_version(doc: &Document) -> u64 {
    match doc.get(VERSION_FIELD) {
        Some(Bson::Int64(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Int32(v)) => u64::try_from(*v).unwrap_or(0),
        Some(Bson::Double(v)) if *v >= 0.0 => *v as u64,
        _ => 0,
    }
}

/// How many times a `replace` without an expected version retries its compare-and-set when
/// another writer got in between.
const REPLACE_RETRIES: usize = 16;

/// A JSON value as BSON: integers as Int64, other numbers as doubles; strings stay strings.
pub(crate) fn to_bson(v: &Value) -> Bson {
    match v {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(map) => Bson::Document(to_document(map)),
    }
}

fn to_document(map: &Map<String, Value>) -> Document {
    map.iter().map(|(k, v)| (k.clone(), to_bson(v))).collect()
}

/// A BSON value as JSON: numbers as numbers (integers stay integers), ObjectIds as their hex
/// string, dates as RFC 3339 strings, decimals as strings, anything else as relaxed
/// extended JSON.
pub(crate) fn to_json(b: Bson) -> Value {
    match b {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(b),
        Bson::Int32(i) => Value::from(i),
        Bson::Int64(i) => Value::from(i),
        Bson::Double(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
        Bson::String(s) | Bson::Symbol(s) => Value::String(s),
        Bson::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Bson::Document(d) => Value::Object(d.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Bson::ObjectId(oid) => Value::String(oid.to_hex()),
        Bson::DateTime(t) => t
            .try_to_rfc3339_string()
            .map_or_else(|_| Value::from(t.timestamp_millis()), Value::String),
        Bson::Decimal128(d) => Value::String(d.to_string()),
        other => other.into_relaxed_extjson(),
    }
}

/// A stored document as `(resource id, fields without _id)`.
fn split_id(mut doc: Document) -> (String, Value) {
    let id = match doc.remove("_id") {
        Some(Bson::String(s)) => s,
        Some(Bson::ObjectId(oid)) => oid.to_hex(),
        Some(other) => match to_json(other) {
            Value::String(s) => s,
            v => v.to_string(),
        },
        None => String::new(),
    };
    (id, to_json(Bson::Document(doc)))
}

fn object(doc: &Value) -> Result<&Map<String, Value>> {
    doc.as_object()
        .ok_or_else(|| Error::bad_request(format!("a document must be a JSON object, got {doc}")))
}

/// The fields of `doc`, with `_id` set to `id`.
fn with_id(id: Option<&str>, doc: &Value) -> Result<Document> {
    let mut out = Document::new();
    if let Some(id) = id {
        out.insert("_id", id);
    }
    for (k, v) in object(doc)? {
        if k != "_id" {
            out.insert(k.clone(), to_bson(v));
        }
    }
    Ok(out)
}

/// Converts a driver error.
fn convert(e: mongodb::error::Error) -> Error {
    let unavailable =
        |e: &mongodb::error::Error| Error::unavailable(format!("MongoDB is unreachable: {e}"));
    let code = match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. } => return unavailable(&e),
        ErrorKind::Command(c) => Some((c.code, c.message.clone())),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some((w.code, w.message.clone())),
        _ => None,
    };
    match code {
        Some((code, message)) if BAD_REQUEST_CODES.contains(&code) => {
            Error::bad_request(format!("MongoDB refused the request: {message}"))
        }
        Some((27, message)) => Error::bad_request(format!(
            "{message}: a text search needs the resource to declare a text index \
             (#[resource(text_index(...))])"
        )),
        Some((code, _)) if UNAVAILABLE_CODES.contains(&code) => unavailable(&e),
        _ if e.contains_label("RetryableWriteError")
            || e.contains_label("TransientTransactionError") =>
        {
            unavailable(&e)
        }
        _ => Error::internal(format!("MongoDB: {e}")),
    }
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ensure_collection(&self, collection: &str, text_index: &[String]) -> Result<()> {
        if text_index.is_empty() {
            return Ok(());
        }
        match self.create_text_index(collection, text_index).await {
            Err(Error::Unavailable { message }) => {
                tracing::warn!(
                    collection,
                    "MongoDB unavailable, text index creation postponed: {message}"
                );
                self.pending_text
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(collection.to_owned(), text_index.to_vec());
                Ok(())
            }
            other => other,
        }
    }

    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String> {
        let id = id.map_or_else(new_resource_id, str::to_owned);
        let mut document = with_id(Some(&id), &doc)?;
        document.insert(VERSION_FIELD, 1_i64);
        let coll = self.collection(collection);
        self.run(coll.insert_one(document), |e| {
            if is_duplicate_key(&e) {
                Error::DuplicateId {
                    collection: collection.to_owned(),
                    id: id.clone(),
                }
            } else {
                convert(e)
            }
        })
        .await?;
        self.log_change(collection, &id, Some(&doc), 1).await;
        Ok(id)
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>> {
        let coll = self.collection(collection);
        let found = self.run(coll.find_one(id_filter(id)), convert).await?;
        Ok(found.map(|d| split_id(d).1))
    }

    async fn replace(
        &self,
        collection: &str,
        id: &str,
        doc: Value,
        expect: Option<u64>,
    ) -> Result<u64> {
        let mut document = with_id(None, &doc)?;
        let coll = self.collection(collection);
        for _ in 0..REPLACE_RETRIES {
            let expected = match expect {
                Some(v) => v,
                None => self.current_version(collection, id).await?,
            };
            document.insert(
                VERSION_FIELD,
                i64::try_from(expected + 1).unwrap_or(i64::MAX),
            );
            let result = self
                .run(
                    coll.replace_one(versioned_filter(id, Some(expected)), document.clone()),
                    convert,
                )
                .await?;
            if result.matched_count == 1 {
                self.log_change(collection, id, Some(&doc), expected + 1)
                    .await;
                return Ok(expected + 1);
            }
            if expect.is_some() {
                return Err(self.explain_miss(collection, id, expect).await);
            }
        }
        Err(Error::conflict(format!(
            "{collection} {id} changed under {REPLACE_RETRIES} replacements in a row; try again"
        )))
    }

    async fn patch(
        &self,
        collection: &str,
        id: &str,
        patch: &Patch,
        expect: Option<u64>,
    ) -> Result<Value> {
        // Validated as the other stores do (operators, conflicts, `_id`, `_version`), then sent
        // as is, with the version's `$inc` added.
        let compiled = patch.compile()?;
        refuse_version_paths(&compiled)?;
        let mut update = match to_bson(patch.as_value()) {
            Bson::Document(d) => d,
            _ => return Err(Error::internal("a compiled patch is always an object")),
        };
        match update.get_mut("$inc") {
            Some(Bson::Document(inc)) => {
                inc.insert(VERSION_FIELD, 1_i64);
            }
            _ => {
                update.insert("$inc", doc! {VERSION_FIELD: 1_i64});
            }
        }
        let coll = self.collection(collection);
        let after = self
            .run(
                coll.find_one_and_update(versioned_filter(id, expect), update)
                    .return_document(ReturnDocument::After),
                convert,
            )
            .await?;
        match after {
            Some(doc) => {
                let doc = split_id(doc).1;
                let version = super::version_of(&doc);
                self.log_change(collection, id, Some(&doc), version).await;
                Ok(doc)
            }
            // No document, another version, or (on servers that report failed updates as "no
            // match") an update that does not apply to it.
            None => Err(self.explain_miss(collection, id, expect).await),
        }
    }

    async fn delete(&self, collection: &str, id: &str, expect: Option<u64>) -> Result<u64> {
        let coll = self.collection(collection);
        let deleted = self
            .run(
                coll.find_one_and_delete(versioned_filter(id, expect))
                    .projection(doc! {VERSION_FIELD: 1}),
                convert,
            )
            .await?;
        match deleted {
            Some(doc) => {
                let version = stored_version(&doc);
                self.log_change(collection, id, None, version + 1).await;
                Ok(version)
            }
            None => Err(self.explain_miss(collection, id, expect).await),
        }
    }

    async fn list(&self, collection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        // The same validation as the other stores: filter, text search and sort keys.
        query.apply(std::iter::empty())?;
        self.retry_pending(collection).await?;
        let mut filter = match &query.filter {
            Value::Object(map) => to_document(map),
            _ => Document::new(),
        };
        if let Some(text) = &query.text {
            if filter.contains_key("$text") {
                return Err(Error::bad_request(
                    "give the text search either as `text` or as `$text` in the filter, not both",
                ));
            }
            filter.insert("$text", doc! {"$search": text.as_str()});
        }
        let mut sort = Document::new();
        for key in &query.sort {
            let dir = match key.order {
                crate::Order::Asc => 1,
                crate::Order::Desc => -1,
            };
            sort.insert(key.field.clone(), dir);
        }
        if !sort.contains_key("_id") {
            sort.insert("_id", 1);
        }
        let coll = self.collection(collection);
        let mut find = coll.find(filter).sort(sort);
        if let Some(skip) = query.skip.filter(|s| *s > 0) {
            find = find.skip(skip.min(i64::MAX as u64));
        }
        if let Some(limit) = query.limit.filter(|l| *l > 0) {
            find = find.limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let docs: Vec<Document> = self
            .run(async move { find.await?.try_collect().await }, convert)
            .await?;
        Ok(docs.into_iter().map(split_id).collect())
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn fingerprint(&self) -> Result<Option<String>> {
        let meta = self.collection(META_COLLECTION);
        // The document holds the random id; the fingerprint also names the database, as this
        // node reaches it (two databases are two stores even where a server shares documents
        // between them).
        let fresh = new_id();
        let store = doc! {"_id": "store"};
        let raced = |e: mongodb::error::Error| {
            if is_duplicate_key(&e) {
                Error::DuplicateId {
                    collection: META_COLLECTION.to_owned(),
                    id: "store".to_owned(),
                }
            } else {
                convert(e)
            }
        };
        // Created once: the first node over the database writes it, every other one reads it.
        // Two nodes creating it at once: one insert wins, the other gets a duplicate key.
        let upsert = meta
            .update_one(
                store.clone(),
                doc! {"$setOnInsert": {"fingerprint": fresh.clone()}},
            )
            .upsert(true);
        match self.run(upsert, raced).await {
            Ok(_) | Err(Error::DuplicateId { .. }) => {}
            Err(e) => return Err(e),
        }
        let read = |found: Option<Document>| {
            found.and_then(|d| {
                d.get_str("fingerprint")
                    .ok()
                    .map(|id| format!("mongodb:{}:{id}", self.db.name()))
            })
        };
        let found = self.run(meta.find_one(store.clone()), convert).await?;
        if let Some(fingerprint) = read(found) {
            return Ok(Some(fingerprint));
        }
        // A server that upserted without `$setOnInsert` (some wire-compatible servers), or a
        // document without it: set it only where still absent, so racing nodes agree.
        let set = meta.update_one(
            doc! {"_id": "store", "fingerprint": {"$exists": false}},
            doc! {"$set": {"fingerprint": fresh}},
        );
        self.run(set, convert).await?;
        let found = self.run(meta.find_one(store), convert).await?;
        match read(found) {
            Some(fingerprint) => Ok(Some(fingerprint)),
            None => Err(Error::internal(format!(
                "{}: the document {{_id: \"store\"}} of {META_COLLECTION} has no string \
                 `fingerprint`; remove it to have a new one written",
                self.describe
            ))),
        }
    }

    async fn claim_request(
        &self,
        collection: &str,
        request_id: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim> {
        let coll = self.collection(REQUESTS);
        let key = format!("{collection}/{request_id}");
        let now = now_ms() as i64;
        let claims = self.claims.fetch_add(1, Ordering::Relaxed);
        if claims == 0 {
            // The sweep below finds the expired records by this index, not by a scan.
            let index = IndexModel::builder().keys(doc! {"expires_ms": 1}).build();
            if let Err(e) = self.run(coll.create_index(index), convert).await {
                tracing::debug!(error = %e, "could not index request records by expiry");
            }
        }
        if claims.is_multiple_of(SWEEP_EVERY) {
            let expired = doc! {"expires_ms": {"$lte": now}};
            if let Err(e) = self.run(coll.delete_many(expired), convert).await {
                tracing::debug!(error = %e, "could not sweep expired request records");
            }
        }
        let expires = now.saturating_add(lease.as_millis() as i64);
        // Insert the claim; if a record exists, read it; if it expired, take it over with a
        // compare-and-set on its expiry (another claimant may be doing the same).
        for _ in 0..4 {
            let claim = doc! {"_id": &key, "fingerprint": fingerprint, "expires_ms": expires};
            match tokio::time::timeout(self.deadline, coll.insert_one(claim).into_future()).await {
                Ok(Ok(_)) => return Ok(Claim::New),
                Ok(Err(e)) if is_duplicate_key(&e) => {}
                Ok(Err(e)) => return Err(convert(e)),
                Err(_) => return Err(self.late()),
            }
            let Some(found) = self.run(coll.find_one(doc! {"_id": &key}), convert).await? else {
                continue;
            };
            let record = record_of(&found);
            if let Some(found) = record.claim(now as u64) {
                return Ok(found);
            }
            let stale = doc! {"_id": &key, "expires_ms": record.expires_ms as i64};
            let take = doc! {
                "$set": {"fingerprint": fingerprint, "expires_ms": expires},
                "$unset": {"reply": ""},
            };
            let taken = self.run(coll.update_one(stale, take), convert).await?;
            if taken.matched_count == 1 {
                return Ok(Claim::New);
            }
        }
        Ok(Claim::InProgress {
            fingerprint: String::new(),
        })
    }

    async fn complete_request(
        &self,
        collection: &str,
        request_id: &str,
        reply: &Value,
        keep: Duration,
    ) -> Result<()> {
        let coll = self.collection(REQUESTS);
        let key = format!("{collection}/{request_id}");
        let expires = (now_ms() as i64).saturating_add(keep.as_millis() as i64);
        // The reply as JSON text: it comes back exactly as it went in.
        let done = doc! {"$set": {"reply": reply.to_string(), "expires_ms": expires}};
        self.run(coll.update_one(doc! {"_id": key}, done), convert)
            .await
            .map(drop)
    }

    async fn release_request(&self, collection: &str, request_id: &str) -> Result<()> {
        let coll = self.collection(REQUESTS);
        let key = format!("{collection}/{request_id}");
        self.run(coll.delete_one(doc! {"_id": key}), convert)
            .await
            .map(drop)
    }

    fn log_id(&self) -> Option<String> {
        Some(self.log.clone())
    }

    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: LogAfter,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        // Every owner's log over this database lives in it: any owner reads them all.
        let ours = format!("mongodb:{}#", self.db.name());
        if !log.starts_with(&ours) {
            return Ok(None);
        }
        let trims = self.collection(LOG_TRIMS);
        let trimmed = self
            .run(
                trims.find_one(doc! {"_id": format!("{log}|{collection}")}),
                convert,
            )
            .await?
            .map_or((0, 0), |d| {
                let n = |k| int_of(&d, k).unwrap_or(0).max(0) as u64;
                (n("seq"), n("at"))
            });
        let mut filter = doc! {"log": log, "c": collection};
        match after {
            LogAfter::Seq(seq) => filter.insert("seq", doc! {"$gt": seq as i64}),
            LogAfter::Time(ms) => filter.insert("at", doc! {"$gte": ms as i64}),
        };
        let coll = self.collection(CHANGES);
        let find = coll
            .find(filter)
            .sort(doc! {"seq": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let found: Vec<Document> = self
            .run(async move { find.await?.try_collect().await }, convert)
            .await?;
        let entries: Vec<LogEntry> = found.iter().filter_map(entry_of).collect();
        let head = match entries.last() {
            Some(last) => last.seq,
            None => {
                let newest = coll
                    .find_one(doc! {"log": log, "c": collection})
                    .sort(doc! {"seq": -1});
                let newest = self.run(newest, convert).await?;
                newest
                    .and_then(|d| int_of(&d, "seq"))
                    .map_or(trimmed.0, |s| s.max(0) as u64)
            }
        };
        Ok(Some(LogPage {
            entries,
            head,
            expired: expired(after, trimmed),
        }))
    }
}

/// The MongoDB collection of the change logs: one document per entry, of every owner's log.
pub const CHANGES: &str = "zs_changes";
/// The MongoDB collection of what each log dropped last (`_id` = `<log>|<collection>`).
pub const LOG_TRIMS: &str = "zs_change_trims";
/// A trim runs once every this many logged changes of an instance.
const LOG_TRIM_EVERY: u64 = 64;
/// Entries deleted at most per trim.
const LOG_TRIM_BATCH: i64 = 1024;

/// An integer field, however the server chose to store it (some wire-compatible servers give
/// small 64-bit integers back as 32-bit ones).
fn int_of(d: &Document, key: &str) -> Option<i64> {
    match d.get(key)? {
        Bson::Int64(n) => Some(*n),
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// A stored log entry; one that cannot be read is skipped (logged).
fn entry_of(d: &Document) -> Option<LogEntry> {
    let read = || {
        Some(LogEntry {
            seq: int_of(d, "seq")?.max(0) as u64,
            at_ms: int_of(d, "at")?.max(0) as u64,
            topic: d.get_str("topic").ok()?.to_owned(),
            data: serde_json::from_str(d.get_str("data").ok()?).ok()?,
        })
    };
    let entry = read();
    if entry.is_none() {
        tracing::warn!(id = ?d.get("_id"), "an unreadable change log entry skipped");
    }
    entry
}

/// The MongoDB collection of claimed requests (`_id` = `<collection>/<request id>`).
pub const REQUESTS: &str = "zs_requests";

/// A stored request record; fields that cannot be read make it an expired one (taken over).
fn record_of(doc: &Document) -> RequestRecord {
    let expires_ms = match doc.get("expires_ms") {
        Some(Bson::Int64(n)) => (*n).max(0) as u64,
        Some(Bson::Int32(n)) => (*n).max(0) as u64,
        Some(Bson::Double(f)) => f.max(0.0) as u64,
        _ => 0,
    };
    let reply = match doc.get("reply") {
        Some(Bson::String(text)) => match serde_json::from_str(text) {
            Ok(reply) => Some(reply),
            Err(_) => {
                return RequestRecord {
                    fingerprint: String::new(),
                    reply: None,
                    applied: None,
                    expires_ms: 0,
                };
            }
        },
        _ => None,
    };
    RequestRecord {
        fingerprint: doc.get_str("fingerprint").unwrap_or_default().to_owned(),
        reply,
        applied: None,
        expires_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_round_trips_through_bson_keeping_number_types() {
        let v = json!({
            "i": 5, "big": i64::MAX, "f": 2.0, "s": "x", "b": true, "n": null,
            "a": [1, 1.5, {"k": []}], "o": {"p": {"q": -1}}
        });
        let b = to_bson(&v);
        let Bson::Document(d) = &b else {
            panic!("not a document")
        };
        assert_eq!(d.get("i"), Some(&Bson::Int64(5)));
        assert_eq!(d.get("f"), Some(&Bson::Double(2.0)));
        let back = to_json(b);
        assert_eq!(back, v);
        assert!(back["f"].is_f64() && back["i"].is_i64());
    }

    #[test]
    fn object_ids_read_as_hex_and_are_found_by_it() {
        let oid = ObjectId::new();
        let (id, doc) = split_id(doc! {"_id": oid, "v": 1_i32});
        assert_eq!(id, oid.to_hex());
        assert_eq!(doc, json!({"v": 1}));
        assert_eq!(
            id_filter(&id),
            doc! {"_id": {"$in": [Bson::String(id.clone()), Bson::ObjectId(oid)]}}
        );
        assert_eq!(id_filter("plain"), doc! {"_id": "plain"});
        // 24 characters that are not hex: a plain string id.
        assert_eq!(
            id_filter("zzzzzzzzzzzzzzzzzzzzzzzz"),
            doc! {"_id": "zzzzzzzzzzzzzzzzzzzzzzzz"}
        );
    }

    #[test]
    fn documents_get_the_resource_id() {
        let d = with_id(Some("a"), &json!({"_id": "ignored", "v": 1})).unwrap();
        assert_eq!(d, doc! {"_id": "a", "v": 1_i64});
        assert!(with_id(None, &json!([1])).is_err());
    }
}
