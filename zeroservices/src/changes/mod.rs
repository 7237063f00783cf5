//! Change logs and cursors: events that are never silently lost.
//!
//! # The change log
//!
//! Every owner keeps, in its store, an ordered log of the changes it makes to each collection
//! ([`Store::read_log`](crate::store::Store::read_log)): the embedded store in a redb table
//! written in the same transaction as the change, the memory store in a ring under the same
//! lock, the MongoDB store in the collection `zs_changes`. An entry is the change's event (its
//! topic and payload) with a sequence number, 1, 2, 3… per collection and log, and the time it
//! was written. A log is named by an id ([`Store::log_id`](crate::store::Store::log_id)): the
//! embedded store's is its fingerprint, so a restarted owner continues the same log.
//!
//! Retention ([`Retention`]): at most `ZS_CHANGE_LOG_MAX` entries (default 100,000) per
//! collection and log, none older than `ZS_CHANGE_LOG_MS` (default 24 h); `ZS_CHANGE_LOG_MAX=0`
//! turns the log off.
//!
//! # Cursors
//!
//! Every event of a logged change carries, in its payload, `version` (the resource's version
//! after the change) and `cursor`: an opaque string ([`Cursor`]) naming a position in every log
//! the stream that delivered it has seen, and the time the stream started. A stream opened
//! with a cursor ([`Node::subscribe_since`](crate::Node::subscribe_since), the websocket's
//! `since`) delivers the entries after it, in order per log, then continues live, with no gap
//! and no duplicate across the switch.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Event, Result};

pub(crate) mod follow;
pub(crate) mod pages;
pub(crate) mod serve;

pub use follow::ResumableStream;

/// The default of [`Retention::max_entries`] (`ZS_CHANGE_LOG_MAX`).
pub const DEFAULT_LOG_MAX_ENTRIES: u64 = 100_000;
/// The default of [`Retention::max_age`] (`ZS_CHANGE_LOG_MS`): 24 hours.
pub const DEFAULT_LOG_MAX_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest cursor accepted, in bytes of its text: a cursor names one position per log, and
/// a client cannot make a node decode or keep more than this.
pub const MAX_CURSOR_BYTES: usize = 16 * 1024;
/// The most logs one cursor may name.
pub const MAX_CURSOR_LOGS: usize = 256;

/// How long a change log keeps its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// The most entries kept per collection and log; 0: no log is written.
    pub max_entries: u64,
    /// The oldest entry kept.
    pub max_age: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_entries: DEFAULT_LOG_MAX_ENTRIES,
            max_age: DEFAULT_LOG_MAX_AGE,
        }
    }
}

impl Retention {
    /// Whether a log is written at all.
    pub fn enabled(&self) -> bool {
        self.max_entries > 0
    }

    /// The time before which entries are dropped, at `now_ms`.
    pub(crate) fn oldest_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.max_age.as_millis() as u64)
    }
}

/// One entry of a change log: the event of a change, its sequence number and when it was
/// written (milliseconds since the epoch, by the owner's clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// 1, 2, 3… per collection and log.
    pub seq: u64,
    /// When the change was written.
    pub at_ms: u64,
    /// The event's topic.
    pub topic: String,
    /// The event's payload (without its `cursor`).
    pub data: Value,
}

/// Where a read of a change log starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogAfter {
    /// The entries after this sequence number (0: from the first).
    Seq(u64),
    /// The entries written at or after this time (milliseconds since the epoch): an entry of
    /// the same millisecond may come before or after the moment meant, and is read.
    Time(u64),
}

/// A page of a change log ([`Store::read_log`](crate::store::Store::read_log)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogPage {
    /// The entries, in order (at most the limit asked for).
    pub entries: Vec<LogEntry>,
    /// The last sequence number written to the log.
    pub head: u64,
    /// Entries after the position asked for were dropped by retention: the reader missed
    /// changes it can no longer read.
    pub expired: bool,
}

/// What the owner's service tells its store about the change being written, so the store logs
/// it in the same transaction (set around one store call by [`with_note`]).
pub(crate) struct LogNote {
    /// The collection's name (a resource type's constant: no copy per change).
    pub(crate) collection: &'static str,
    /// The action's name (a built-in's or a declared action's: no copy per change).
    pub(crate) action: &'static str,
    /// The payload besides `resource_id`, `resource_name`, `action`, `version` and
    /// `resource_data`.
    pub(crate) extra: Map<String, Value>,
    /// Whether the payload carries the document after the change (`resource_data`).
    pub(crate) with_document: bool,
    pub(crate) retention: Retention,
    /// Set by the store once the change and its entry are committed.
    logged: Mutex<Option<Logged>>,
    /// The document after the change when the owner knows it before the write (a create's):
    /// the event takes it instead of a copy of the stored one.
    document: Mutex<Option<Value>>,
}

/// A logged change: its event, with its one-log cursor in its payload, shared between the log
/// that keeps it (the memory store's ring) and the publish (no copy).
#[derive(Debug, Clone)]
pub(crate) struct Logged(pub(crate) Arc<Event>);

impl Logged {
    /// `event` as entry `seq` of `log`, written at `at_ms`.
    // The memory store's ring makes its key once (`keyed`); the others call this.
    #[cfg_attr(not(any(feature = "embedded", feature = "mongodb")), allow(dead_code))]
    pub(crate) fn new(event: Event, log: &str, seq: u64, at_ms: u64) -> Self {
        let key = log_key(&event_collection(&event.topic), log);
        Self::keyed(event, &key, seq, at_ms)
    }

    /// [`Logged::new`] with the log's key ([`log_key`]) already made.
    pub(crate) fn keyed(mut event: Event, key: &str, seq: u64, at_ms: u64) -> Self {
        if let Value::Object(map) = &mut event.data {
            map.insert(
                "cursor".to_owned(),
                Value::from(entry_cursor(key, seq, at_ms)),
            );
        }
        Self(Arc::new(event))
    }
}

tokio::task_local! {
    static NOTE: Option<Arc<LogNote>>;
}

/// Runs one store call with `note`: a store that keeps a log writes the change's entry with it.
pub(crate) async fn with_note<F: std::future::Future>(
    note: Option<Arc<LogNote>>,
    f: F,
) -> F::Output {
    NOTE.scope(note, f).await
}

/// The note of the store call running on this task for `collection`, if any.
pub(crate) fn current_note(collection: &str) -> Option<Arc<LogNote>> {
    NOTE.try_with(|note| note.clone())
        .ok()
        .flatten()
        .filter(|n| n.collection == collection && n.retention.enabled())
}

impl LogNote {
    pub(crate) fn new(
        collection: &'static str,
        action: &'static str,
        extra: Map<String, Value>,
        with_document: bool,
        retention: Retention,
    ) -> Arc<Self> {
        // The context of the span making the change: the entry keeps it, so a worker that
        // reads the change from the log links to it (see `crate::telemetry`).
        let mut extra = extra;
        crate::telemetry::stamp(&mut extra);
        Arc::new(Self {
            collection,
            action,
            extra,
            with_document,
            retention,
            logged: Mutex::new(None),
            document: Mutex::new(None),
        })
    }

    /// Gives the event its document now (a create's, known before the write).
    pub(crate) fn set_document(&self, doc: Value) {
        *self.document.lock().unwrap_or_else(|e| e.into_inner()) = Some(doc);
    }

    /// The change's event: `doc` is the document after it (with or without its version field,
    /// which is left out), `version` the version after it.
    pub(crate) fn event(&self, id: &str, doc: Option<&Value>, version: u64) -> Event {
        // Room for every field the event gets (the document, its version, the three of
        // `Event::resource`, a trace context's two, the cursor): the map grows no more.
        let mut data = Map::with_capacity(self.extra.len() + EVENT_FIELDS);
        data.extend(self.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let known = self
            .document
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(doc) = known {
            data.insert("resource_data".to_owned(), doc);
        } else if self.with_document
            && let Some(doc) = doc
        {
            let mut doc = doc.clone();
            if let Value::Object(map) = &mut doc {
                map.remove(crate::store::VERSION_FIELD);
            }
            data.insert("resource_data".to_owned(), doc);
        }
        data.insert("version".to_owned(), Value::from(version));
        Event::resource(self.collection, self.action, id, data)
    }

    /// Records that the store committed the change as `seq` of `log`.
    pub(crate) fn logged(&self, logged: Logged) {
        *self.logged.lock().unwrap_or_else(|e| e.into_inner()) = Some(logged);
    }

    /// What the store logged, once (the owner publishes it).
    pub(crate) fn take_logged(&self) -> Option<Logged> {
        self.logged.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The fields a logged change's event has besides the note's extra ones: `resource_data`,
/// `version`, `action`, `resource_name`, `resource_id`, `traceparent`, `tracestate`, `cursor`.
const EVENT_FIELDS: usize = 8;

/// The collection of a topic: its first segment.
pub(crate) fn event_collection(topic: &str) -> String {
    topic.split('.').next().unwrap_or("").to_owned()
}

/// The key of a log in a cursor: `<collection>@<log id>`, base64url (so a cursor is URL-safe
/// text and a key is one `.`-free field of it). Followers keep positions by this key as it is:
/// no decoding per event.
pub(crate) fn log_key(collection: &str, log: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{collection}@{log}"))
}

/// The collection and log id of a log key.
pub(crate) fn split_key(key: &str) -> Option<(String, String)> {
    let bytes = URL_SAFE_NO_PAD.decode(key).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (collection, log) = text.split_once('@')?;
    if collection.is_empty() || log.is_empty() {
        return None;
    }
    Some((collection.to_owned(), log.to_owned()))
}

/// The version tag that starts a cursor's text.
const CURSOR_TAG: &str = "c1";

/// A position in the change logs of a cluster: for each log it names, the sequence number of the
/// last entry delivered, and the time (ms since the epoch) the stream that made it started.
/// Clients see it only as an opaque, URL-safe string ([`Cursor::encode`]:
/// `c1.<start ms>(.<log key>.<seq>)*`, a log key being `<collection>@<log id>` in base64url).
///
/// A log the cursor does not name (an owner that had sent nothing yet) is read from the
/// cursor's time on, by the owner's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    pub(crate) at_ms: u64,
    pub(crate) positions: BTreeMap<String, u64>,
}

impl Cursor {
    /// A cursor that names nothing yet, started at `at_ms`.
    pub(crate) fn starting(at_ms: u64) -> Self {
        Self {
            at_ms,
            positions: BTreeMap::new(),
        }
    }

    /// The opaque text of the cursor (URL-safe).
    pub fn encode(&self) -> String {
        use std::fmt::Write;
        let mut text = String::with_capacity(24 + self.positions.len() * 96);
        let _ = write!(text, "{CURSOR_TAG}.{}", self.at_ms);
        for (key, seq) in &self.positions {
            let _ = write!(text, ".{key}.{seq}");
        }
        text
    }

    /// Reads a cursor's text.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a text that is not a cursor, or [`Error::Limit`] for one over
    /// [`MAX_CURSOR_BYTES`] or naming more than [`MAX_CURSOR_LOGS`] logs.
    pub fn parse(text: &str) -> Result<Self> {
        if text.len() > MAX_CURSOR_BYTES {
            return Err(Error::limit(
                "MAX_CURSOR_BYTES",
                MAX_CURSOR_BYTES,
                format!("a cursor is at most {MAX_CURSOR_BYTES} bytes"),
            ));
        }
        let cursor = Self::read(text.trim()).ok_or_else(|| {
            Error::bad_request("malformed cursor: pass back a cursor the server gave")
        })?;
        if cursor.positions.len() > MAX_CURSOR_LOGS {
            return Err(Error::limit(
                "MAX_CURSOR_LOGS",
                MAX_CURSOR_LOGS,
                format!("a cursor names at most {MAX_CURSOR_LOGS} logs"),
            ));
        }
        if cursor.positions.keys().any(|k| split_key(k).is_none()) {
            return Err(Error::bad_request(
                "malformed cursor: pass back a cursor the server gave",
            ));
        }
        Ok(cursor)
    }

    /// The fields of a cursor's text (keys not checked).
    fn read(text: &str) -> Option<Self> {
        let mut fields = text.split('.');
        if fields.next()? != CURSOR_TAG {
            return None;
        }
        let at_ms = fields.next()?.parse().ok()?;
        let mut positions = BTreeMap::new();
        while let Some(key) = fields.next() {
            let seq: u64 = fields.next()?.parse().ok()?;
            if key.is_empty() || positions.len() > MAX_CURSOR_LOGS {
                return None;
            }
            positions.insert(key.to_owned(), seq);
        }
        Some(Self { at_ms, positions })
    }

    /// The logs it names (opaque keys, one per owner log and collection) with the sequence
    /// number of the last entry delivered from each: for diagnostics and tests; clients treat
    /// cursors as opaque.
    pub fn positions(&self) -> impl Iterator<Item = (&str, u64)> {
        self.positions.iter().map(|(k, s)| (k.as_str(), *s))
    }

    /// The position in a log, if named.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        self.positions.get(key).copied()
    }

    /// Moves the position in a log forward (never back).
    pub(crate) fn advance(&mut self, key: &str, seq: u64) {
        match self.positions.get_mut(key) {
            Some(p) => *p = (*p).max(seq),
            None => {
                self.positions.insert(key.to_owned(), seq);
            }
        }
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The text of a one-log cursor (an entry's, as its owner publishes it).
pub(crate) fn entry_cursor(key: &str, seq: u64, at_ms: u64) -> String {
    use std::fmt::Write;
    // Made at its size (two numbers of at most 20 digits, three dots): `format!` would grow it
    // several times.
    let mut text = String::with_capacity(CURSOR_TAG.len() + key.len() + 43);
    let _ = write!(text, "{CURSOR_TAG}.{at_ms}.{key}.{seq}");
    text
}

/// The log position an event carries (its owner's one-log cursor), if any: read without
/// decoding the key.
pub(crate) fn position_of(event: &Event) -> Option<(String, u64)> {
    let text = event.data.get("cursor")?.as_str()?;
    let mut fields = text.split('.');
    if fields.next()? != CURSOR_TAG {
        return None;
    }
    fields.next()?;
    let key = fields.next()?;
    let seq = fields.next()?.parse().ok()?;
    if key.is_empty() || fields.next().is_some() {
        return None;
    }
    Some((key.to_owned(), seq))
}

/// The in-memory change log of one collection (the memory store's).
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// `(seq, at_ms, event)`: consecutive sequence numbers.
    entries: std::collections::VecDeque<(u64, u64, Arc<Event>)>,
    head: u64,
    /// The last entry dropped by retention: its sequence number and time.
    trimmed: (u64, u64),
    /// The key of the ring's log in cursors, made once.
    key: Option<String>,
}

impl Ring {
    /// Appends `event` as the next entry of `log` (its cursor set), drops what retention no
    /// longer keeps, and returns it, with the first entry retention dropped: the caller frees
    /// it once its locks are released (at a full ring, every push drops one; its event is
    /// several allocations, better not freed under the store's lock).
    pub(crate) fn push(
        &mut self,
        event: Event,
        log: &str,
        at_ms: u64,
        retention: Retention,
    ) -> (Logged, Option<Arc<Event>>) {
        self.head += 1;
        let key = self
            .key
            .get_or_insert_with(|| log_key(&event_collection(&event.topic), log));
        let logged = Logged::keyed(event, key, self.head, at_ms);
        self.entries.push_back((self.head, at_ms, logged.0.clone()));
        let oldest = retention.oldest_ms(at_ms);
        let mut dropped = None;
        while let Some(&(seq, at, _)) = self.entries.front() {
            if self.entries.len() as u64 > retention.max_entries || at < oldest {
                self.trimmed = (seq, at);
                let entry = self.entries.pop_front().map(|e| e.2);
                if dropped.is_none() {
                    dropped = entry;
                }
            } else {
                break;
            }
        }
        (logged, dropped)
    }

    /// Up to `limit` entries after `after`.
    pub(crate) fn read(&self, after: LogAfter, limit: usize) -> LogPage {
        let entry = |(seq, at_ms, event): &(u64, u64, Arc<Event>)| LogEntry {
            seq: *seq,
            at_ms: *at_ms,
            topic: event.topic.clone(),
            data: event.data.clone(),
        };
        let entries: Vec<LogEntry> = match after {
            LogAfter::Seq(seq) => {
                // Entries are consecutive: the one after `seq` is at a known index.
                let first = self.entries.front().map_or(self.head + 1, |e| e.0);
                let skip = (seq + 1).saturating_sub(first) as usize;
                self.entries
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(entry)
                    .collect()
            }
            LogAfter::Time(ms) => self
                .entries
                .iter()
                .skip_while(|e| e.1 < ms)
                .take(limit)
                .map(entry)
                .collect(),
        };
        LogPage {
            entries,
            head: self.head,
            expired: expired(after, self.trimmed),
        }
    }
}

/// Whether a read after `after` missed entries that retention dropped: `trimmed` is the last
/// dropped entry's sequence number and time (`(0, 0)`: none dropped).
pub(crate) fn expired(after: LogAfter, trimmed: (u64, u64)) -> bool {
    match after {
        LogAfter::Seq(seq) => seq < trimmed.0,
        LogAfter::Time(ms) => trimmed.0 > 0 && trimmed.1 >= ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let mut c = Cursor::starting(5);
        let power = log_key("power", "embedded:abc");
        c.advance(&power, 3);
        c.advance(&power, 2);
        c.advance(&log_key("tick", "mongodb:db#x"), 9);
        let text = c.encode();
        assert!(
            text.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')),
            "{text}"
        );
        let back = Cursor::parse(&text).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.get(&power), Some(3));
        assert_eq!(
            split_key(&power),
            Some(("power".to_owned(), "embedded:abc".to_owned()))
        );
        // An event's own cursor reads back without decoding.
        let event = Event {
            topic: "power.create.1".into(),
            data: serde_json::json!({"cursor": entry_cursor(&power, 7, 1)}),
        };
        assert_eq!(position_of(&event), Some((power.clone(), 7)));
        for bad in [
            "",
            "!!",
            "c1",
            "c1.x",
            "c2.1",
            "c1.1.k",
            "c1.1..3",
            "c1.1.k.-1",
            "c1.1.k.1",
            &"A".repeat(MAX_CURSOR_BYTES + 1),
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad:.20}");
        }
        // A key that is not `<collection>@<log>` is not one of ours.
        let forged = format!("c1.1.{}.3", URL_SAFE_NO_PAD.encode("nolog"));
        assert!(Cursor::parse(&forged).is_err());
        let mut many = Cursor::starting(0);
        for i in 0..=MAX_CURSOR_LOGS {
            many.advance(&log_key("c", &i.to_string()), 1);
        }
        let e = Cursor::parse(&many.encode()).unwrap_err();
        assert_eq!(e.kind(), "limit", "{e}");
    }

    #[test]
    fn rings_keep_what_retention_says() {
        let retention = Retention {
            max_entries: 3,
            max_age: Duration::from_millis(100),
        };
        let mut ring = Ring::default();
        let event = Event::resource("c", "create", "1", Map::new());
        for at in 0..5 {
            let _ = ring.push(event.clone(), "memory:x", 1000 + at, retention);
        }
        let page = ring.read(LogAfter::Seq(0), 10);
        assert!(page.expired, "entries 1 and 2 are gone");
        assert_eq!(page.head, 5);
        assert_eq!(
            page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        let page = ring.read(LogAfter::Seq(2), 1);
        assert!(!page.expired);
        assert_eq!(page.entries[0].seq, 3);
        let page = ring.read(LogAfter::Seq(5), 10);
        assert!(page.entries.is_empty() && !page.expired);
        // By time: entries from 1004 on.
        let page = ring.read(LogAfter::Time(1004), 10);
        assert_eq!(page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
        assert!(!page.expired);
        // Too old: dropped by age.
        let _ = ring.push(event, "memory:x", 2000, retention);
        assert_eq!(ring.read(LogAfter::Seq(0), 10).entries.len(), 1);
        assert!(
            !ring.read(LogAfter::Time(1500), 10).expired,
            "nothing after 1500 dropped"
        );
        assert!(
            ring.read(LogAfter::Time(1004), 10).expired,
            "1004 was dropped"
        );
        assert!(!ring.read(LogAfter::Seq(5), 10).expired);
    }
}
