//! The embedded store: one [`redb`] file per node data dir, the default backend.
//!
//! * The file is `<dir>/zeroservices.redb`; each collection is a table (`collection:<name>`)
//!   mapping the resource id to its document as JSON bytes.
//! * A document's version ([`super::VERSION_FIELD`]) is stored inside its JSON; a
//!   compare-and-set reads, checks and writes it inside one write transaction (redb has one
//!   writer at a time), so two changes can never both pass the check.
//! * Every create, replace, patch and delete is committed with [`Durability::Immediate`] (an
//!   `fsync`) before the call returns: an acknowledged write survives `kill -9` and power loss.
//!   Writes waiting at the same time share one transaction and one commit (group commit, at
//!   most `ZS_STORE_BATCH_MAX` writes a commit; see [`commit`]): each still has its own
//!   outcome, and is answered only after the commit that holds it.
//! * redb is synchronous: every call runs on [`tokio::task::spawn_blocking`].
//! * Filters, sort, skip, limit and text search use the shared [`crate::query`](mod@crate::query) language; rows
//!   stream through the filter, only matching documents are kept.
//! * The table `zeroservices:meta` holds the store's fingerprint (key `fingerprint`): a random
//!   id written once, when the file is created, and read back at every open, so the same data
//!   dir keeps its fingerprint across restarts ([`Store::fingerprint`]).
//! * Opening a data dir that is locked by another process, corrupted or unwritable gives an
//!   error naming the file and what to do, never a panic.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError,
    TableDefinition, TableError, WriteTransaction,
};
use serde_json::{Value, json};

use super::{
    Claim, Mark, RequestRecord, SWEEP_BATCH, Store, check_version, current_mark, new_id,
    new_resource_id, now_ms, refuse_version_paths, set_version, version_of,
};
use crate::changes::{LogAfter, LogEntry, LogNote, LogPage, Logged, current_note, expired};
use crate::query::Filter;
use crate::{Error, Patch, Query, Result};

pub mod commit;

use commit::{Committer, Fail};

/// The name of the database file inside the data dir.
pub const FILE_NAME: &str = "zeroservices.redb";

/// Resources kept in a redb file under a data dir; see the [module docs](self).
///
/// Cloning is cheap: clones share the open database.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    path: Arc<PathBuf>,
    skipped: Arc<AtomicU64>,
    fingerprint: Arc<str>,
    /// The id of its change log: the fingerprint.
    log: Arc<str>,
    /// The queue of its durable writes (group commit).
    committer: Arc<Committer>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The table holding `collection`'s documents.
fn table_name(collection: &str) -> String {
    format!("collection:{collection}")
}

type Table<'a> = TableDefinition<'a, &'static str, &'static [u8]>;

/// The table of the store's own metadata (no collection table name starts like it).
const META_TABLE: &str = "zeroservices:meta";
/// The key of the fingerprint in [`META_TABLE`].
const FINGERPRINT_KEY: &str = "fingerprint";

/// The store's fingerprint: read from the metadata table, or written there now (once, at the
/// file's first open).
fn load_fingerprint(db: &Database, path: &Path) -> Result<String> {
    write(db, path, |txn| {
        let mut table = txn
            .open_table(Table::new(META_TABLE))
            .map_err(|e| storage_error(path, e))?;
        let found = table
            .get(FINGERPRINT_KEY)
            .map_err(|e| storage_error(path, e))?
            .map(|v| String::from_utf8_lossy(v.value()).into_owned());
        if let Some(found) = found {
            return Ok(found);
        }
        let fresh = format!("embedded:{}", new_id());
        table
            .insert(FINGERPRINT_KEY, fresh.as_bytes())
            .map_err(|e| storage_error(path, e))?;
        Ok(fresh)
    })
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir`: the directory and its
    /// `zeroservices.redb` file.
    ///
    /// Blocks while the file is opened and its integrity checked (every page is read, so the
    /// open takes time proportional to the file's size); from async code, call it
    /// through [`tokio::task::spawn_blocking`] (as [`super::StoreConfig::open`] does).
    ///
    /// # Errors
    /// [`Error::Unavailable`], with a message naming the path and what to do, when the dir
    /// cannot be created or written, when another process has the store open, or when the file
    /// is corrupted or not a redb file.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::unavailable(format!(
                "embedded store: cannot create the data dir {}: {e}; check the path and its \
                 permissions, or choose another dir with ZS_STORE=embedded:<dir>",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        // A file damaged outside redb may make it panic rather than fail: the open and the
        // integrity check run under `catch_unwind`, and a panic is reported as corruption.
        let opened = catch_unwind(AssertUnwindSafe(|| {
            let mut db = Database::create(&path)?;
            // Verifies every page's checksum (and repairs what can be): a damaged file is
            // reported now, at start-up, rather than by a later request.
            let clean = db.check_integrity()?;
            Ok::<_, DatabaseError>((db, clean))
        }));
        let db = match opened {
            Ok(Ok((db, clean))) => {
                if !clean {
                    tracing::warn!(path = %path.display(), "embedded store repaired at open");
                }
                db
            }
            Ok(Err(e)) => return Err(open_error(&path, e)),
            Err(_) => return Err(corrupted(&path, "redb could not read it")),
        };
        let fingerprint = load_fingerprint(&db, &path)?;
        let db = Arc::new(db);
        let path = Arc::new(path);
        Ok(Self {
            committer: Committer::new(&db, path.clone(), super::DEFAULT_BATCH_MAX),
            db,
            path,
            skipped: Arc::new(AtomicU64::new(0)),
            log: fingerprint.clone().into(),
            fingerprint: fingerprint.into(),
        })
    }

    /// The database file (`<dir>/zeroservices.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits at most `max` writes together (`ZS_STORE_BATCH_MAX`, at least 1; 1: every write
    /// commits alone). Call it before the first write: clones made earlier keep their queue.
    #[must_use]
    pub fn with_batch_max(mut self, max: usize) -> Self {
        self.committer = Committer::new(&self.db, self.path.clone(), max);
        self
    }

    /// The most writes one commit holds ([`EmbeddedStore::with_batch_max`]).
    pub fn batch_max(&self) -> usize {
        self.committer.batch_max()
    }

    /// The durable commits of creates, replaces, patches and deletes since the store was opened
    /// (through this handle and its clones), and the writes they held: with writes waiting
    /// together, fewer commits than writes.
    pub fn commit_counts(&self) -> (u64, u64) {
        self.committer.counts()
    }

    /// Runs `f` on the blocking pool with the database.
    /// Stored documents that `list` skipped because they could not be read (each logged with
    /// its id).
    pub fn skipped_documents(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database, &Path) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || f(&db, &path))
            .await
            .map_err(|e| Error::internal(format!("embedded store task failed: {e}")))?
    }
}

/// The error for a failed open of `path`.
fn open_error(path: &Path, e: DatabaseError) -> Error {
    let shown = path.display();
    match e {
        DatabaseError::DatabaseAlreadyOpen => Error::unavailable(format!(
            "embedded store: {shown} is already open in another process (another node with \
                 the same data dir?); stop that process, or give this node its own data dir with \
                 ZS_STORE=embedded:<dir>"
        )),
        DatabaseError::Storage(StorageError::Corrupted(why)) => corrupted(path, &why),
        DatabaseError::RepairAborted => corrupted(path, "its repair was aborted"),
        DatabaseError::UpgradeRequired(version) => Error::unavailable(format!(
            "embedded store: {shown} uses the old redb file format {version}; upgrade it with \
             redb's upgrade tool or move it aside to start with an empty store"
        )),
        DatabaseError::Storage(StorageError::Io(io)) => match io.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof => {
                corrupted(path, &format!("not a readable redb file: {io}"))
            }
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                Error::unavailable(format!(
                    "embedded store: cannot open {shown}: {io}; make the data dir and the file \
                     writable by this user, or choose another dir with ZS_STORE=embedded:<dir>"
                ))
            }
            _ => Error::unavailable(format!(
                "embedded store: cannot open {shown}: {io}; check the data dir (writable, space \
                 left), or choose another dir with ZS_STORE=embedded:<dir>"
            )),
        },
        other => Error::unavailable(format!(
            "embedded store: cannot open {shown}: {other}; move the file aside to start with an \
             empty store, or choose another dir with ZS_STORE=embedded:<dir>"
        )),
    }
}

fn corrupted(path: &Path, why: &str) -> Error {
    Error::unavailable(format!(
        "embedded store: {} is corrupted ({why}); restore it from a backup, or move it aside to \
         start with an empty store",
        path.display()
    ))
}

/// Converts a redb error met while serving a request.
fn storage_error(path: &Path, e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    let shown = path.display();
    match e {
        redb::Error::Io(io) => {
            Error::unavailable(format!("embedded store {shown}: I/O error: {io}"))
        }
        redb::Error::ValueTooLarge(n) => Error::bad_request(format!(
            "the document is too large for the embedded store ({n} bytes)"
        )),
        redb::Error::Corrupted(why) => corrupted(path, &why),
        other => Error::internal(format!("embedded store {shown}: {other}")),
    }
}

/// Reads a stored document; one that is not valid JSON (written by hand, or by a version
/// without depth limits) is an error naming its id, never the file.
fn decode(collection: &str, id: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| {
        Error::internal(format!(
            "{collection} {id}: the stored document cannot be read: {e}"
        ))
    })
}

/// A redb error met by a queued write after it may have changed its transaction.
fn broken(path: &Path, e: impl Into<redb::Error>) -> Fail {
    Fail::Broken(storage_error(path, e))
}

/// The stored document `id` of a queued write: absent or unreadable, the write is refused.
fn stored(
    table: &redb::Table<'_, &'static str, &'static [u8]>,
    path: &Path,
    collection: &str,
    id: &str,
) -> std::result::Result<Value, Fail> {
    let found = table.get(id).map_err(|e| broken(path, e))?;
    match found {
        Some(bytes) => decode(collection, id, bytes.value()).map_err(Fail::Refused),
        None => Err(Fail::Refused(Error::not_found(collection, id))),
    }
}

/// Refuses a document that is not a JSON object.
fn require_object(doc: &Value) -> Result<()> {
    if doc.is_object() {
        return Ok(());
    }
    Err(Error::bad_request(format!(
        "a document must be a JSON object, got {doc}"
    )))
}

fn encode(doc: &Value) -> Result<Vec<u8>> {
    require_object(doc)?;
    serde_json::to_vec(doc).map_err(|e| Error::internal(format!("cannot encode document: {e}")))
}

/// Runs `f` in a durable write transaction: commits if it returns `Ok`, aborts otherwise.
fn write<T>(
    db: &Database,
    path: &Path,
    f: impl FnOnce(&WriteTransaction) -> Result<T>,
) -> Result<T> {
    write_with(db, path, Durability::Immediate, f)
}

/// [`write`] with the given durability.
fn write_with<T>(
    db: &Database,
    path: &Path,
    durability: Durability,
    f: impl FnOnce(&WriteTransaction) -> Result<T>,
) -> Result<T> {
    let mut txn = db.begin_write().map_err(|e| storage_error(path, e))?;
    txn.set_durability(durability)
        .map_err(|e| Error::internal(format!("embedded store: {e}")))?;
    match f(&txn) {
        Ok(out) => {
            txn.commit().map_err(|e| storage_error(path, e))?;
            Ok(out)
        }
        Err(e) => {
            // Dropping would abort too; aborting explicitly reports nothing we could act on.
            let _ = txn.abort();
            Err(e)
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ensure_collection(&self, collection: &str, _text_index: &[String]) -> Result<()> {
        let name = table_name(collection);
        self.blocking(move |db, path| {
            write(db, path, |txn| {
                txn.open_table(Table::new(&name))
                    .map_err(|e| storage_error(path, e))?;
                Ok(())
            })
        })
        .await
    }

    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String> {
        let mark = current_mark(collection);
        let note = current_note(collection);
        let log = self.log.clone();
        let mut doc = doc;
        set_version(&mut doc, 1);
        let bytes = encode(&doc)?;
        let name = table_name(collection);
        let collection = collection.to_owned();
        let id = id.map_or_else(new_resource_id, str::to_owned);
        let logs = note.clone();
        // Checks first, changes after (see `commit`): a refused write changes nothing.
        self.committer
            .submit(note, move |txn, path| {
                let mut table = txn
                    .open_table(Table::new(&name))
                    .map_err(|e| broken(path, e))?;
                let taken = table
                    .get(id.as_str())
                    .map_err(|e| broken(path, e))?
                    .is_some();
                if taken {
                    return Err(Fail::Refused(Error::DuplicateId {
                        collection: collection.clone(),
                        id: id.clone(),
                    }));
                }
                mark_applied(txn, path, mark.as_ref(), &id).map_err(Fail::Broken)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| broken(path, e))?;
                let logged = log_change(txn, path, logs.as_deref(), &log, &id, Some(&doc), 1)
                    .map_err(Fail::Broken)?;
                Ok((id.clone(), logged))
            })
            .await
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>> {
        let name = table_name(collection);
        let collection = collection.to_owned();
        let id = id.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| storage_error(path, e))?;
            let table = match txn.open_table(Table::new(&name)) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(storage_error(path, e)),
            };
            let found = table.get(id.as_str()).map_err(|e| storage_error(path, e))?;
            found
                .map(|v| decode(&collection, &id, v.value()))
                .transpose()
        })
        .await
    }

    async fn replace(
        &self,
        collection: &str,
        id: &str,
        doc: Value,
        expect: Option<u64>,
    ) -> Result<u64> {
        let mark = current_mark(collection);
        let note = current_note(collection);
        let log = self.log.clone();
        // Refused before the write transaction; encoded once, inside it, with its version.
        require_object(&doc)?;
        let name = table_name(collection);
        let collection = collection.to_owned();
        let id = id.to_owned();
        let logs = note.clone();
        self.committer
            .submit(note, move |txn, path| {
                let mut table = txn
                    .open_table(Table::new(&name))
                    .map_err(|e| broken(path, e))?;
                let version = {
                    let current = stored(&table, path, &collection, &id)?;
                    let version = version_of(&current);
                    check_version(&collection, &id, version, expect).map_err(Fail::Refused)?;
                    version
                };
                let mut doc = doc.clone();
                set_version(&mut doc, version + 1);
                let bytes = encode(&doc).map_err(Fail::Refused)?;
                mark_applied(txn, path, mark.as_ref(), &id).map_err(Fail::Broken)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| broken(path, e))?;
                let logged = log_change(
                    txn,
                    path,
                    logs.as_deref(),
                    &log,
                    &id,
                    Some(&doc),
                    version + 1,
                )
                .map_err(Fail::Broken)?;
                Ok((version + 1, logged))
            })
            .await
    }

    async fn patch(
        &self,
        collection: &str,
        id: &str,
        patch: &Patch,
        expect: Option<u64>,
    ) -> Result<Value> {
        let mark = current_mark(collection);
        let note = current_note(collection);
        let log = self.log.clone();
        let update = patch.compile()?;
        refuse_version_paths(&update)?;
        let name = table_name(collection);
        let collection = collection.to_owned();
        let id = id.to_owned();
        let logs = note.clone();
        self.committer
            .submit(note, move |txn, path| {
                let mut table = txn
                    .open_table(Table::new(&name))
                    .map_err(|e| broken(path, e))?;
                let mut doc = stored(&table, path, &collection, &id)?;
                let version = version_of(&doc);
                check_version(&collection, &id, version, expect).map_err(Fail::Refused)?;
                // Applied to a copy: on error the stored document is unchanged.
                update.apply(&mut doc).map_err(Fail::Refused)?;
                set_version(&mut doc, version + 1);
                let bytes = encode(&doc).map_err(Fail::Refused)?;
                mark_applied(txn, path, mark.as_ref(), &id).map_err(Fail::Broken)?;
                table
                    .insert(id.as_str(), bytes.as_slice())
                    .map_err(|e| broken(path, e))?;
                let logged = log_change(
                    txn,
                    path,
                    logs.as_deref(),
                    &log,
                    &id,
                    Some(&doc),
                    version + 1,
                )
                .map_err(Fail::Broken)?;
                Ok((doc, logged))
            })
            .await
    }

    async fn delete(&self, collection: &str, id: &str, expect: Option<u64>) -> Result<u64> {
        let mark = current_mark(collection);
        let note = current_note(collection);
        let log = self.log.clone();
        let name = table_name(collection);
        let collection = collection.to_owned();
        let id = id.to_owned();
        let logs = note.clone();
        self.committer
            .submit(note, move |txn, path| {
                let mut table = txn
                    .open_table(Table::new(&name))
                    .map_err(|e| broken(path, e))?;
                let old = table
                    .get(id.as_str())
                    .map_err(|e| broken(path, e))?
                    .map(|v| decode(&collection, &id, v.value()));
                let version = match old {
                    Some(Ok(doc)) => {
                        let version = version_of(&doc);
                        check_version(&collection, &id, version, expect).map_err(Fail::Refused)?;
                        version
                    }
                    // An unreadable document can still be deleted, unconditionally.
                    Some(Err(_)) if expect.is_none() => 0,
                    Some(Err(e)) => return Err(Fail::Refused(e)),
                    None => return Err(Fail::Refused(Error::not_found(&collection, &id))),
                };
                mark_applied(txn, path, mark.as_ref(), &id).map_err(Fail::Broken)?;
                table.remove(id.as_str()).map_err(|e| broken(path, e))?;
                drop(table);
                let logged = log_change(txn, path, logs.as_deref(), &log, &id, None, version + 1)
                    .map_err(Fail::Broken)?;
                Ok((version, logged))
            })
            .await
    }

    async fn list(&self, collection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        // The filter and the text search are applied while streaming the rows; sort, skip and
        // limit by the shared implementation over the matches.
        let filter = match &query.text {
            None => query.filter()?,
            Some(text) => {
                let base = if query.filter.is_null() {
                    json!({})
                } else {
                    query.filter.clone()
                };
                Filter::parse(&json!({"$and": [base, {"$text": {"$search": text}}]}))?
            }
        };
        let rest = Query {
            filter: json!({}),
            text: None,
            ..query.clone()
        };
        // Rows come in id order, the order of an unsorted result: stop once enough matched.
        let enough = match (query.sort.is_empty(), query.limit) {
            (true, Some(limit)) if limit > 0 => {
                let n = query.skip.unwrap_or(0).saturating_add(limit);
                Some(usize::try_from(n).unwrap_or(usize::MAX))
            }
            _ => None,
        };
        let name = table_name(collection);
        let collection = collection.to_owned();
        let skipped = self.skipped.clone();
        let matches = self
            .blocking(move |db, path| {
                let txn = db.begin_read().map_err(|e| storage_error(path, e))?;
                let table = match txn.open_table(Table::new(&name)) {
                    Ok(table) => table,
                    Err(TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                    Err(e) => return Err(storage_error(path, e)),
                };
                let mut out = Vec::new();
                for row in table.iter().map_err(|e| storage_error(path, e))? {
                    if enough.is_some_and(|n| out.len() >= n) {
                        break;
                    }
                    let (key, value) = row.map_err(|e| storage_error(path, e))?;
                    // One unreadable document is skipped (logged, counted), not the list.
                    let doc = match decode(&collection, key.value(), value.value()) {
                        Ok(doc) => doc,
                        Err(e) => {
                            skipped.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(error = %e, "an unreadable stored document skipped");
                            continue;
                        }
                    };
                    if filter.matches(&doc) {
                        out.push((key.value().to_owned(), doc));
                    }
                }
                Ok(out)
            })
            .await?;
        rest.apply(matches)
    }

    fn describe(&self) -> String {
        format!("embedded:{}", self.path.display())
    }

    async fn fingerprint(&self) -> Result<Option<String>> {
        Ok(Some(self.fingerprint.to_string()))
    }

    fn log_id(&self) -> Option<String> {
        Some(self.log.to_string())
    }

    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: LogAfter,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        if log != &*self.log {
            return Ok(None);
        }
        let collection = collection.to_owned();
        self.blocking(move |db, path| {
            let txn = db.begin_read().map_err(|e| storage_error(path, e))?;
            let (head, trimmed, trimmed_at) = match txn.open_table(LOG_HEADS) {
                Ok(heads) => heads
                    .get(collection.as_str())
                    .map_err(|e| storage_error(path, e))?
                    .map_or((0, 0, 0), |v| v.value()),
                Err(TableError::TableDoesNotExist(_)) => (0, 0, 0),
                Err(e) => return Err(storage_error(path, e)),
            };
            let mut page = LogPage {
                entries: Vec::new(),
                head,
                expired: expired(after, (trimmed, trimmed_at)),
            };
            let table = match txn.open_table(LogTable::new(&log_table(&collection))) {
                Ok(table) => table,
                Err(TableError::TableDoesNotExist(_)) => return Ok(Some(page)),
                Err(e) => return Err(storage_error(path, e)),
            };
            let start = match after {
                LogAfter::Seq(seq) => seq.saturating_add(1),
                LogAfter::Time(_) => 0,
            };
            for row in table.range(start..).map_err(|e| storage_error(path, e))? {
                if page.entries.len() >= limit {
                    break;
                }
                let (seq, bytes) = row.map_err(|e| storage_error(path, e))?;
                let Some(entry) = decode_entry(seq.value(), bytes.value()) else {
                    tracing::warn!(
                        collection,
                        seq = seq.value(),
                        "an unreadable change log entry skipped"
                    );
                    continue;
                };
                if let LogAfter::Time(ms) = after
                    && entry.at_ms < ms
                {
                    continue;
                }
                page.entries.push(entry);
            }
            Ok(Some(page))
        })
        .await
    }

    async fn claim_request(
        &self,
        collection: &str,
        request_id: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim> {
        let collection = collection.to_owned();
        let id = request_id.to_owned();
        let pending = RequestRecord::pending(fingerprint, lease);
        self.blocking(move |db, path| {
            // A claim need not survive a crash: the change it guards is what is durable, and
            // the change's own transaction records the request (see `mark_applied`).
            write_with(db, path, Durability::None, |txn| {
                let mut records = Records::open(txn, path, &collection)?;
                let now = now_ms();
                records.sweep(now)?;
                if let Some(found) = records.get(&id)?.and_then(|r| r.claim(now)) {
                    return Ok(found);
                }
                records.put(&id, &pending)?;
                Ok(Claim::New)
            })
        })
        .await
    }

    async fn complete_request(
        &self,
        collection: &str,
        request_id: &str,
        reply: &Value,
        keep: Duration,
    ) -> Result<()> {
        let collection = collection.to_owned();
        let id = request_id.to_owned();
        let reply = reply.clone();
        self.blocking(move |db, path| {
            // Not durable: the change's own transaction recorded that it was made (and an
            // action's reply); a create's, patch's or delete's reply is rebuilt from the store
            // if this one is lost.
            write_with(db, path, Durability::None, |txn| {
                let mut records = Records::open(txn, path, &collection)?;
                let Some(mut record) = records.get(&id)? else {
                    return Ok(());
                };
                record.reply = Some(reply);
                record.expires_ms = now_ms().saturating_add(keep.as_millis() as u64);
                records.put(&id, &record)
            })
        })
        .await
    }

    async fn release_request(&self, collection: &str, request_id: &str) -> Result<()> {
        let collection = collection.to_owned();
        let id = request_id.to_owned();
        self.blocking(move |db, path| {
            write_with(db, path, Durability::None, |txn| {
                let mut records = Records::open(txn, path, &collection)?;
                records
                    .records
                    .remove(id.as_str())
                    .map_err(|e| storage_error(path, e))?;
                Ok(())
            })
        })
        .await
    }
}

/// The expiry order of a collection's request records: `(expires_ms, request key)`.
type ExpiryTable<'a> = TableDefinition<'a, (u64, &'static str), ()>;

/// A collection's request records (`requests:<collection>`, key to record) and their expiry
/// order (`expiries:<collection>`), in one write transaction.
struct Records<'t> {
    records: redb::Table<'t, &'static str, &'static [u8]>,
    expiries: redb::Table<'t, (u64, &'static str), ()>,
    path: &'t Path,
}

impl<'t> Records<'t> {
    fn open(txn: &'t WriteTransaction, path: &'t Path, collection: &str) -> Result<Self> {
        let records = txn
            .open_table(Table::new(&format!("requests:{collection}")))
            .map_err(|e| storage_error(path, e))?;
        let expiries = txn
            .open_table(ExpiryTable::new(&format!("expiries:{collection}")))
            .map_err(|e| storage_error(path, e))?;
        Ok(Self {
            records,
            expiries,
            path,
        })
    }

    fn get(&self, key: &str) -> Result<Option<RequestRecord>> {
        Ok(self
            .records
            .get(key)
            .map_err(|e| storage_error(self.path, e))?
            .and_then(|bytes| decode_record(bytes.value())))
    }

    fn put(&mut self, key: &str, record: &RequestRecord) -> Result<()> {
        let bytes = encode_record(record)?;
        self.records
            .insert(key, bytes.as_slice())
            .map_err(|e| storage_error(self.path, e))?;
        self.expiries
            .insert((record.expires_ms, key), ())
            .map_err(|e| storage_error(self.path, e))?;
        Ok(())
    }

    /// Deletes up to [`SWEEP_BATCH`] expired records, oldest first: the work of one claim stays
    /// small however many records are kept. An expiry entry whose record was since rewritten
    /// with a later expiry only goes itself.
    fn sweep(&mut self, now: u64) -> Result<()> {
        let due: Vec<(u64, String)> = self
            .expiries
            .range::<(u64, &str)>(..(now.saturating_add(1), ""))
            .map_err(|e| storage_error(self.path, e))?
            .take(SWEEP_BATCH)
            .filter_map(|entry| {
                entry
                    .ok()
                    .map(|(k, _)| (k.value().0, k.value().1.to_owned()))
            })
            .collect();
        for (expires, key) in due {
            self.expiries
                .remove((expires, key.as_str()))
                .map_err(|e| storage_error(self.path, e))?;
            if self.get(&key)?.is_some_and(|r| r.expires_ms == expires) {
                self.records
                    .remove(key.as_str())
                    .map_err(|e| storage_error(self.path, e))?;
            }
        }
        Ok(())
    }
}

/// A collection's change log: sequence number to entry (the time it was written, 8 bytes
/// big-endian, then `{"topic", "data"}` as JSON).
type LogTable<'a> = TableDefinition<'a, u64, &'static [u8]>;

/// Each collection's log state: (last sequence number written, last one dropped, the time of
/// the last one dropped).
const LOG_HEADS: TableDefinition<'static, &'static str, (u64, u64, u64)> =
    TableDefinition::new("zeroservices:logs");

/// Entries dropped by retention at most per change (more than one, so the log shrinks back
/// after a lower limit is set; few, so a change stays cheap).
const LOG_TRIM_BATCH: usize = 8;

fn log_table(collection: &str) -> String {
    format!("log:{collection}")
}

#[derive(serde::Serialize)]
struct StoredEntry<'a> {
    topic: &'a str,
    data: &'a Value,
}

#[derive(serde::Deserialize)]
struct ReadEntry {
    topic: String,
    data: Value,
}

fn decode_entry(seq: u64, bytes: &[u8]) -> Option<LogEntry> {
    let (at, json) = bytes.split_at_checked(8)?;
    let at_ms = u64::from_be_bytes(at.try_into().ok()?);
    let entry: ReadEntry = serde_json::from_slice(json).ok()?;
    Some(LogEntry {
        seq,
        at_ms,
        topic: entry.topic,
        data: entry.data,
    })
}

/// Writes the change's entry into its collection's log, in `txn` (the change's own
/// transaction), and drops a few entries that retention no longer keeps.
fn log_change(
    txn: &WriteTransaction,
    path: &Path,
    note: Option<&LogNote>,
    log: &str,
    id: &str,
    doc: Option<&Value>,
    version: u64,
) -> Result<Option<Logged>> {
    let Some(note) = note else {
        return Ok(None);
    };
    let collection = note.collection;
    let event = note.event(id, doc, version);
    let at_ms = now_ms();
    let mut heads = txn
        .open_table(LOG_HEADS)
        .map_err(|e| storage_error(path, e))?;
    let (head, mut trimmed, mut trimmed_at) = heads
        .get(collection)
        .map_err(|e| storage_error(path, e))?
        .map_or((0, 0, 0), |v| v.value());
    let seq = head + 1;
    let mut bytes = at_ms.to_be_bytes().to_vec();
    serde_json::to_writer(
        &mut bytes,
        &StoredEntry {
            topic: &event.topic,
            data: &event.data,
        },
    )
    .map_err(|e| Error::internal(format!("cannot encode a change log entry: {e}")))?;
    let mut table = txn
        .open_table(LogTable::new(&log_table(collection)))
        .map_err(|e| storage_error(path, e))?;
    table
        .insert(seq, bytes.as_slice())
        .map_err(|e| storage_error(path, e))?;
    let keep_from = seq.saturating_sub(note.retention.max_entries) + 1;
    let oldest = note.retention.oldest_ms(at_ms);
    for _ in 0..LOG_TRIM_BATCH {
        let first = table
            .first()
            .map_err(|e| storage_error(path, e))?
            .map(|(k, v)| {
                let at = v
                    .value()
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_be_bytes);
                (k.value(), at)
            });
        match first {
            Some((first, at)) if first < keep_from || at < oldest => {
                table.remove(first).map_err(|e| storage_error(path, e))?;
                (trimmed, trimmed_at) = (first, at);
            }
            _ => break,
        }
    }
    heads
        .insert(collection, (seq, trimmed, trimmed_at))
        .map_err(|e| storage_error(path, e))?;
    Ok(Some(Logged::new(event, log, seq, at_ms)))
}

/// Records in `txn`, the transaction of a change, that the change belongs to the remembered
/// request being served (see [`Mark`]): a copy of it then never runs again, even if its owner
/// stops before recording the reply.
fn mark_applied(
    txn: &WriteTransaction,
    path: &Path,
    mark: Option<&Mark>,
    resource_id: &str,
) -> Result<()> {
    let Some(mark) = mark else {
        return Ok(());
    };
    Records::open(txn, path, &mark.collection)?.put(&mark.key, &mark.applied(resource_id))
}

fn encode_record(record: &RequestRecord) -> Result<Vec<u8>> {
    serde_json::to_vec(record)
        .map_err(|e| Error::internal(format!("cannot encode a request record: {e}")))
}

/// A request record; one that cannot be read counts as absent (it is overwritten).
fn decode_record(bytes: &[u8]) -> Option<RequestRecord> {
    serde_json::from_slice(bytes).ok()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::MARK;

    fn mark(collection: &str, key: &str) -> Mark {
        Mark {
            collection: collection.to_owned(),
            key: key.to_owned(),
            fingerprint: "f".to_owned(),
            keep: Duration::from_secs(60),
            reply: Arc::default(),
        }
    }

    /// The owner stops after the change is committed and before the reply is recorded (the
    /// store is dropped and opened again, as after `kill -9`): the change's transaction
    /// recorded the request, so a copy of it is answered, not run again.
    #[tokio::test]
    async fn a_change_records_its_request_in_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let lease = Duration::from_secs(30);
        {
            let store = EmbeddedStore::open(dir.path()).unwrap();
            assert_eq!(
                store.claim_request("c", "req:1", "f", lease).await.unwrap(),
                Claim::New
            );
            let insert = store.insert("c", Some("x"), json!({"n": 1}));
            MARK.scope(Some(mark("c", "req:1")), insert).await.unwrap();
            // An action's reply, known before its write, is recorded with it.
            assert_eq!(
                store.claim_request("c", "req:2", "f", lease).await.unwrap(),
                Claim::New
            );
            let m = mark("c", "req:2");
            *m.reply.lock().unwrap() = Some(json!(42));
            let replace = store.replace("c", "x", json!({"n": 2}), Some(1));
            MARK.scope(Some(m), replace).await.unwrap();
            // A write that fails records nothing.
            assert_eq!(
                store.claim_request("c", "req:3", "f", lease).await.unwrap(),
                Claim::New
            );
            let dup = store.insert("c", Some("x"), json!({"n": 3}));
            assert!(MARK.scope(Some(mark("c", "req:3")), dup).await.is_err());
            // A write of another collection is not this request's.
            let other = store.insert("d", Some("y"), json!({}));
            MARK.scope(Some(mark("c", "req:4")), other).await.unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(
            store.claim_request("c", "req:1", "f", lease).await.unwrap(),
            Claim::Applied {
                fingerprint: "f".into(),
                resource_id: Some("x".into())
            }
        );
        assert_eq!(
            store.claim_request("c", "req:2", "f", lease).await.unwrap(),
            Claim::Done {
                fingerprint: "f".into(),
                reply: json!(42)
            }
        );
        // No change of theirs was made: these are not answered as done (their claims may have
        // become durable with a later commit, so they may wait out their lease first).
        for key in ["req:3", "req:4"] {
            let claim = store.claim_request("c", key, "f", lease).await.unwrap();
            assert!(
                matches!(claim, Claim::New | Claim::InProgress { .. }),
                "{key}: {claim:?}"
            );
        }
    }
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[tokio::test]
    async fn the_fingerprint_is_written_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path()).unwrap();
        let fingerprint = first.fingerprint().await.unwrap().unwrap();
        assert!(fingerprint.starts_with("embedded:"), "{fingerprint}");
        drop(first);
        let again = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(again.fingerprint().await.unwrap().unwrap(), fingerprint);
        // Another dir is another data set.
        let other_dir = tempfile::tempdir().unwrap();
        let other = EmbeddedStore::open(other_dir.path()).unwrap();
        assert_ne!(other.fingerprint().await.unwrap().unwrap(), fingerprint);
        // The metadata table is no collection.
        assert!(again.list("meta", &Query::all()).await.unwrap().is_empty());
    }
}
