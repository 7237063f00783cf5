//! The in-memory store: a map per collection, behind one lock. For tests and throwaway nodes.
//! A compare-and-set on the version is checked and written under that lock, and so is each
//! change's change-log entry (in the order of the changes). An insert's entry (its event) is
//! made before the lock, and the entry retention drops is freed after it: under the lock, only
//! the entry's sequence number and cursor.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::RwLock;

use super::{
    Claim, RequestMemory, Store, check_version, new_id, new_resource_id, now_ms,
    refuse_version_paths, set_version, version_of,
};
use crate::changes::{LogAfter, LogNote, LogPage, Ring, current_note};
use crate::{Error, Event, Patch, Query, Result};

/// Resources kept in memory; gone when the process ends.
pub struct MemoryStore {
    collections: RwLock<HashMap<String, BTreeMap<String, Value>>>,
    /// Claimed requests by (collection, request id).
    requests: std::sync::Mutex<RequestMemory>,
    /// Random per instance: two memory stores never hold the same data.
    fingerprint: String,
    /// The change log of each collection (written under the `collections` lock, so in the
    /// order of the changes).
    logs: std::sync::Mutex<HashMap<String, Ring>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            collections: RwLock::default(),
            requests: Default::default(),
            fingerprint: format!("memory:{}", new_id()),
            logs: Default::default(),
        }
    }
}

impl MemoryStore {
    fn requests(&self) -> std::sync::MutexGuard<'_, RequestMemory> {
        self.requests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The entry of a change of `collection` when its owner gave a note: its note and event,
    /// made before the write lock when the document is known (an insert's).
    fn prepare(
        collection: &str,
        id: &str,
        doc: Option<&Value>,
        version: u64,
    ) -> Option<(Arc<LogNote>, Event)> {
        let note = current_note(collection)?;
        let event = note.event(id, doc, version);
        Some((note, event))
    }

    /// Logs a prepared entry (call under the write lock, so in the order of the changes);
    /// returns the entry retention dropped, for the caller to free once its locks are released.
    fn commit(
        &self,
        collection: &str,
        prepared: Option<(Arc<LogNote>, Event)>,
    ) -> Option<Arc<Event>> {
        let (note, event) = prepared?;
        let at_ms = now_ms();
        let (logged, dropped) = {
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            let ring = match logs.get_mut(collection) {
                Some(ring) => ring,
                None => logs.entry(collection.to_owned()).or_default(),
            };
            ring.push(event, &self.fingerprint, at_ms, note.retention)
        };
        note.logged(logged);
        dropped
    }

    /// Logs a change of `collection` when its owner gave a note (call under the write lock).
    fn log(&self, collection: &str, id: &str, doc: Option<&Value>, version: u64) {
        let dropped = self.commit(collection, Self::prepare(collection, id, doc, version));
        drop(dropped);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => new_resource_id(),
        };
        // The log entry is made before the lock (the document is known): under it, only its
        // sequence number and cursor.
        let prepared = Self::prepare(collection, &id, Some(&doc), 1);
        let mut doc = doc;
        set_version(&mut doc, 1);
        let mut all = self.collections.write().await;
        // The collection's name is copied only the first time.
        let docs = match all.get_mut(collection) {
            Some(docs) => docs,
            None => all.entry(collection.to_owned()).or_default(),
        };
        match docs.entry(id) {
            Entry::Occupied(slot) => Err(Error::DuplicateId {
                collection: collection.to_owned(),
                id: slot.key().clone(),
            }),
            Entry::Vacant(slot) => {
                let id = slot.key().clone();
                slot.insert(doc);
                let dropped = self.commit(collection, prepared);
                // What retention dropped is freed after the lock.
                drop(all);
                drop(dropped);
                Ok(id)
            }
        }
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>> {
        let all = self.collections.read().await;
        Ok(all.get(collection).and_then(|docs| docs.get(id)).cloned())
    }

    async fn replace(
        &self,
        collection: &str,
        id: &str,
        mut doc: Value,
        expect: Option<u64>,
    ) -> Result<u64> {
        if !doc.is_object() {
            return Err(Error::bad_request(format!(
                "a document must be a JSON object, got {doc}"
            )));
        }
        let mut all = self.collections.write().await;
        match all.get_mut(collection).and_then(|docs| docs.get_mut(id)) {
            Some(slot) => {
                let current = version_of(slot);
                check_version(collection, id, current, expect)?;
                set_version(&mut doc, current + 1);
                *slot = doc;
                self.log(collection, id, Some(slot), current + 1);
                Ok(current + 1)
            }
            None => Err(Error::not_found(collection, id)),
        }
    }

    async fn patch(
        &self,
        collection: &str,
        id: &str,
        patch: &Patch,
        expect: Option<u64>,
    ) -> Result<Value> {
        let update = patch.compile()?;
        refuse_version_paths(&update)?;
        let mut all = self.collections.write().await;
        match all.get_mut(collection).and_then(|docs| docs.get_mut(id)) {
            Some(slot) => {
                let current = version_of(slot);
                check_version(collection, id, current, expect)?;
                update.apply(slot)?;
                set_version(slot, current + 1);
                self.log(collection, id, Some(slot), current + 1);
                Ok(slot.clone())
            }
            None => Err(Error::not_found(collection, id)),
        }
    }

    async fn delete(&self, collection: &str, id: &str, expect: Option<u64>) -> Result<u64> {
        let mut all = self.collections.write().await;
        let Some(docs) = all.get_mut(collection) else {
            return Err(Error::not_found(collection, id));
        };
        let current = match docs.get(id) {
            Some(doc) => version_of(doc),
            None => return Err(Error::not_found(collection, id)),
        };
        check_version(collection, id, current, expect)?;
        docs.remove(id);
        self.log(collection, id, None, current + 1);
        Ok(current)
    }

    async fn list(&self, collection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        let filter = query.filter()?;
        // The filter runs here, on references, so that only matching documents are cloned;
        // `apply` then does the rest (text, sort, skip, limit) without filtering again.
        let rest = Query {
            filter: Value::Object(Default::default()),
            ..query.clone()
        };
        let all = self.collections.read().await;
        let docs = all
            .get(collection)
            .into_iter()
            .flat_map(|docs| docs.iter())
            .filter(|(_, doc)| filter.matches(doc))
            .map(|(k, v)| (k.clone(), v.clone()));
        rest.apply(docs)
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }

    async fn claim_request(
        &self,
        collection: &str,
        request_id: &str,
        fingerprint: &str,
        lease: Duration,
    ) -> Result<Claim> {
        let key = (collection.to_owned(), request_id.to_owned());
        Ok(self.requests().claim(key, fingerprint, lease))
    }

    async fn complete_request(
        &self,
        collection: &str,
        request_id: &str,
        reply: &Value,
        keep: Duration,
    ) -> Result<()> {
        let key = (collection.to_owned(), request_id.to_owned());
        self.requests().complete(key, reply, keep);
        Ok(())
    }

    async fn release_request(&self, collection: &str, request_id: &str) -> Result<()> {
        self.requests()
            .release(&(collection.to_owned(), request_id.to_owned()));
        Ok(())
    }

    async fn fingerprint(&self) -> Result<Option<String>> {
        Ok(Some(self.fingerprint.clone()))
    }

    fn log_id(&self) -> Option<String> {
        Some(self.fingerprint.clone())
    }

    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: LogAfter,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        if log != self.fingerprint {
            return Ok(None);
        }
        let logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(match logs.get(collection) {
            Some(ring) => ring.read(after, limit),
            None => LogPage::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_fingerprints_differ_per_instance() {
        let a = MemoryStore::new();
        let b = MemoryStore::new();
        let fa = a.fingerprint().await.unwrap().unwrap();
        assert_eq!(
            a.fingerprint().await.unwrap().unwrap(),
            fa,
            "stable per instance"
        );
        assert_ne!(b.fingerprint().await.unwrap().unwrap(), fa);
        assert!(fa.starts_with("memory:"), "{fa}");
    }
}
