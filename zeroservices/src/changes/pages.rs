//! Reading this node's change logs for many followers at once.
//!
//! A follower that fell behind (a websocket client after a burst, a resume) reads the log in
//! pages. When many followers are behind together (a hundred websocket clients after the same
//! burst) they read the same entries: each full page of [`BLOCK`] entries (sequence numbers
//! `k * BLOCK + 1 ..= (k + 1) * BLOCK`) is read from the store once, kept in a small cache of
//! the last [`CACHED_BLOCKS`] pages, and shared ([`Shared`]: the event, and its websocket text
//! made once) by every follower that reads it. A follower still asks the store, for each page,
//! one entry after its own position: that answer says whether its position is still in the
//! log (`cursor_expired` otherwise, exactly as without the cache) and where the log's head is.
//! The entries of a log never change once written, so a cached page is what the store would
//! answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use super::serve::MAX_PAGE;
use super::{LogAfter, LogEntry};
use crate::event::Shared;
use crate::store::Store;
use crate::{Event, Result};

/// The entries of one cached page: aligned blocks of this many sequence numbers.
pub(crate) const BLOCK: u64 = MAX_PAGE as u64;

/// How many full pages are kept, every log of the process together (at most
/// `CACHED_BLOCKS * BLOCK` events, shared, not copied, by their readers).
pub(crate) const CACHED_BLOCKS: usize = 32;

/// One entry of a page: its sequence number and its shared event.
pub(crate) type PageEntry = (u64, Arc<Shared>);

/// A page of a log read by [`read`].
#[derive(Debug, Default)]
pub(crate) struct Page {
    /// The entries after the position asked for, in order.
    pub(crate) entries: Vec<PageEntry>,
    /// The last sequence number written to the log when it was read.
    pub(crate) head: u64,
    /// The position asked for was dropped by retention.
    pub(crate) expired: bool,
    /// Whether entries are left after the last one of `entries`.
    pub(crate) more: bool,
}

/// The full pages kept: `(log key, block)` and its entries.
type Cache = VecDeque<((String, u64), Arc<[PageEntry]>)>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(VecDeque::with_capacity(CACHED_BLOCKS)))
}

fn cached(key: &str, block: u64) -> Option<Arc<[PageEntry]>> {
    let cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    cache
        .iter()
        .rev()
        .find(|((k, b), _)| *b == block && k == key)
        .map(|(_, entries)| entries.clone())
}

fn keep(key: &str, block: u64, entries: Arc<[PageEntry]>) {
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if cache.iter().any(|((k, b), _)| *b == block && k == key) {
        return;
    }
    if cache.len() >= CACHED_BLOCKS {
        cache.pop_front();
    }
    cache.push_back(((key.to_owned(), block), entries));
}

/// A page's entries as shared events.
pub(crate) fn shared(entries: Vec<LogEntry>) -> Vec<PageEntry> {
    entries
        .into_iter()
        .map(|e| {
            let event = Event {
                topic: e.topic,
                data: e.data,
            };
            (e.seq, Arc::new(Shared::new(event)))
        })
        .collect()
}

/// Reads, from `store`, the entries of `collection`'s log `log` (its key in cursors: `key`)
/// after `after`, at most a page: `None` when the store does not hold that log. Reads by
/// sequence number come from (and fill) the page cache; a read by time does not.
pub(crate) async fn read(
    store: &Arc<dyn Store>,
    key: &str,
    collection: &str,
    log: &str,
    after: LogAfter,
) -> Result<Option<Page>> {
    let LogAfter::Seq(seq) = after else {
        let Some(page) = store.read_log(collection, log, after, MAX_PAGE).await? else {
            return Ok(None);
        };
        let more = page.entries.len() >= MAX_PAGE;
        return Ok(Some(Page {
            entries: shared(page.entries),
            head: page.head,
            expired: page.expired,
            more,
        }));
    };
    // Whether the position is still in the log, and where its head is.
    let Some(probe) = store.read_log(collection, log, after, 1).await? else {
        return Ok(None);
    };
    if probe.expired || probe.entries.is_empty() {
        return Ok(Some(Page {
            entries: Vec::new(),
            head: probe.head,
            expired: probe.expired,
            more: false,
        }));
    }
    let block = seq / BLOCK;
    let (entries, head) = match cached(key, block) {
        Some(entries) => (entries, probe.head),
        None => {
            let page = store
                .read_log(collection, log, LogAfter::Seq(block * BLOCK), MAX_PAGE)
                .await?
                .unwrap_or_default();
            let head = page.head.max(probe.head);
            let entries: Arc<[PageEntry]> = shared(page.entries).into();
            let full = entries.len() as u64 == BLOCK
                && entries.first().is_some_and(|e| e.0 == block * BLOCK + 1)
                && entries.last().is_some_and(|e| e.0 == (block + 1) * BLOCK);
            if full {
                keep(key, block, entries.clone());
            }
            (entries, head)
        }
    };
    let entries: Vec<PageEntry> = entries
        .iter()
        .filter(|e| e.0 > seq)
        .map(|(s, e)| (*s, e.clone()))
        .collect();
    let last = entries.last().map_or(seq, |e| e.0);
    Ok(Some(Page {
        more: last < head,
        entries,
        head,
        expired: false,
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn messages_carry_each_streams_cursor() {
        let event = Event {
            topic: "power.create.1".into(),
            data: json!({"cursor": "c1.1.k.1", "resource_id": "1", "n": [1, "\"x\""]}),
        };
        let shared = Shared::new(event);
        for cursor in ["c1.5.a.7", "c1.6.b.8"] {
            let text = shared.message(Some(cursor));
            let v: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                v,
                json!({"type": "event", "topic": "power.create.1",
                       "data": {"cursor": cursor, "resource_id": "1", "n": [1, "\"x\""]}})
            );
        }
        let v: Value = serde_json::from_str(&shared.message(None)).unwrap();
        assert_eq!(v["data"], json!({"resource_id": "1", "n": [1, "\"x\""]}));
        // An object with no other field, and data that is not an object (a user event).
        let only = Shared::new(Event {
            topic: "a".into(),
            data: json!({"cursor": "old"}),
        });
        let v: Value = serde_json::from_str(&only.message(Some("c1.1"))).unwrap();
        assert_eq!(v["data"], json!({"cursor": "c1.1"}));
        let v: Value = serde_json::from_str(&only.message(None)).unwrap();
        assert_eq!(v["data"], json!({}));
        let plain = Shared::new(Event {
            topic: "chat.é".into(),
            data: json!([1, 2]),
        });
        let v: Value = serde_json::from_str(&plain.message(Some("c1.1"))).unwrap();
        assert_eq!(
            v,
            json!({"type": "event", "topic": "chat.é", "data": [1, 2]})
        );
    }
}
