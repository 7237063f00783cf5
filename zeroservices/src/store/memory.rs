//! The in-memory store: a map per collection, behind one lock. For tests and throwaway nodes.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::RwLock;

use super::{Store, new_id};
use crate::{Error, Patch, Query, Result};

/// Resources kept in memory; gone when the process ends.
pub struct MemoryStore {
    collections: RwLock<HashMap<String, BTreeMap<String, Value>>>,
    /// Random per instance: two memory stores never hold the same data.
    fingerprint: String,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            collections: RwLock::default(),
            fingerprint: format!("memory:{}", new_id()),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn insert(&self, collection: &str, id: Option<&str>, doc: Value) -> Result<String> {
        let id = match id {
            Some(id) => id.to_owned(),
            None => new_id(),
        };
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
                Ok(id)
            }
        }
    }

    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>> {
        let all = self.collections.read().await;
        Ok(all.get(collection).and_then(|docs| docs.get(id)).cloned())
    }

    async fn replace(&self, collection: &str, id: &str, doc: Value) -> Result<()> {
        let mut all = self.collections.write().await;
        match all.get_mut(collection).and_then(|docs| docs.get_mut(id)) {
            Some(slot) => {
                *slot = doc;
                Ok(())
            }
            None => Err(Error::not_found(collection, id)),
        }
    }

    async fn patch(&self, collection: &str, id: &str, patch: &Patch) -> Result<Value> {
        let update = patch.compile()?;
        let mut all = self.collections.write().await;
        match all.get_mut(collection).and_then(|docs| docs.get_mut(id)) {
            Some(slot) => {
                update.apply(slot)?;
                Ok(slot.clone())
            }
            None => Err(Error::not_found(collection, id)),
        }
    }

    async fn delete(&self, collection: &str, id: &str) -> Result<()> {
        let mut all = self.collections.write().await;
        match all.get_mut(collection).and_then(|docs| docs.remove(id)) {
            Some(_) => Ok(()),
            None => Err(Error::not_found(collection, id)),
        }
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

    async fn fingerprint(&self) -> Result<Option<String>> {
        Ok(Some(self.fingerprint.clone()))
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
