//! [`Directory`]: the peers a node knows, what each owns, and whose turn it is to serve a
//! collection (round robin across owners).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{NodeInfo, Peer};

/// The most collection names a directory remembers as "owned by someone once".
pub(super) const MAX_KNOWN_COLLECTIONS: usize = 65_536;

#[derive(Default)]
pub(super) struct Directory {
    pub(super) peers: HashMap<String, Peer>,
    /// Every collection ever owned by someone: tells "owner gone" from "unknown".
    known: HashSet<String>,
    /// Round-robin cursor per collection.
    cursor: HashMap<String, usize>,
    /// The peers' infos, shared: routing hands these out instead of copying the schemas.
    shared: HashMap<String, Arc<NodeInfo>>,
    /// Peers that announced another wire protocol version, each logged once (bounded like
    /// `known`: a flood of forged ids cannot grow it without end).
    incompatible: HashSet<String>,
    /// Announcements ignored for their protocol version.
    pub(super) incompatible_announcements: u64,
}

impl Directory {
    /// The owners of `collection`, sorted by id.
    pub(super) fn owners(&self, collection: &str) -> Vec<&NodeInfo> {
        let mut owners: Vec<&NodeInfo> = self
            .peers
            .values()
            .filter(|p| p.info.resources.iter().any(|r| r.name == collection))
            .map(|p| &p.info)
            .collect();
        owners.sort_by(|a, b| a.id.cmp(&b.id));
        owners
    }

    /// The owners of `collection` in round-robin order, starting with the next one's turn.
    pub(super) fn pick(&mut self, collection: &str) -> Vec<Arc<NodeInfo>> {
        let mut owners: Vec<Arc<NodeInfo>> = self
            .shared
            .values()
            .filter(|info| info.resources.iter().any(|r| r.name == collection))
            .cloned()
            .collect();
        if owners.is_empty() {
            return owners;
        }
        owners.sort_by(|a, b| a.id.cmp(&b.id));
        let cursor = self.cursor.entry(collection.to_owned()).or_default();
        let start = *cursor % owners.len();
        *cursor = cursor.wrapping_add(1);
        owners.rotate_left(start);
        owners
    }

    /// Whether some peer owned `collection` once (it may have left since).
    pub(super) fn was_known(&self, collection: &str) -> bool {
        self.known.contains(collection)
    }

    /// Counts an announcement of another protocol version (which is otherwise ignored: its
    /// node could not read this node's messages, nor this node its); true the first time
    /// this peer is seen so (log it), until `MAX_KNOWN_COLLECTIONS` such peers are remembered.
    pub(super) fn incompatible(&mut self, info: &NodeInfo) -> bool {
        self.incompatible_announcements += 1;
        if self.incompatible.len() >= MAX_KNOWN_COLLECTIONS || self.incompatible.contains(&info.id)
        {
            return false;
        }
        self.incompatible.insert(info.id.clone())
    }

    /// Records an announcement; true when the peer is new or announced something different.
    pub(super) fn seen(&mut self, info: &NodeInfo) -> bool {
        // Bounded: forged announcements (each peer's are capped by discovery's `max_peers`,
        // but peers come and go) cannot grow it without end.
        for resource in &info.resources {
            if self.known.len() >= MAX_KNOWN_COLLECTIONS {
                break;
            }
            self.known.insert(resource.name.clone());
        }
        self.shared.insert(info.id.clone(), Arc::new(info.clone()));
        let previous = self.peers.insert(
            info.id.clone(),
            Peer {
                info: info.clone(),
                last_seen: SystemTime::now(),
            },
        );
        match previous {
            None => true,
            Some(p) => p.info != *info,
        }
    }

    /// Forgets peer `id`; the peer, when it was known.
    pub(super) fn left(&mut self, id: &str) -> Option<Peer> {
        self.shared.remove(id);
        self.peers.remove(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceInfo;

    fn owner(id: &str, collections: &[&str]) -> NodeInfo {
        NodeInfo {
            id: id.into(),
            name: id.into(),
            kind: Default::default(),
            protocol: crate::medium::PROTOCOL_VERSION,
            endpoints: Default::default(),
            resources: collections
                .iter()
                .map(|name| ResourceInfo {
                    name: (*name).into(),
                    schema: serde_json::Value::Null,
                    actions: Vec::new(),
                    text_index: Vec::new(),
                })
                .collect(),
            watches: Vec::new(),
            insecure: false,
            stores: Default::default(),
        }
    }

    fn ids(owners: &[Arc<NodeInfo>]) -> Vec<&str> {
        owners.iter().map(|o| o.id.as_str()).collect()
    }

    #[test]
    fn owners_take_turns() {
        let mut dir = Directory::default();
        for id in ["c", "a", "b"] {
            assert!(dir.seen(&owner(id, &["power"])));
        }
        assert!(dir.seen(&owner("d", &["chat"])));
        assert_eq!(ids(&dir.pick("power")), ["a", "b", "c"]);
        assert_eq!(ids(&dir.pick("power")), ["b", "c", "a"]);
        assert_eq!(ids(&dir.pick("power")), ["c", "a", "b"]);
        assert_eq!(ids(&dir.pick("power")), ["a", "b", "c"]);
        // Each collection has its own turn.
        assert_eq!(ids(&dir.pick("chat")), ["d"]);
        assert!(dir.pick("nothing").is_empty());
        // One leaves: the others keep taking turns.
        assert!(dir.left("b").is_some());
        assert_eq!(dir.pick("power").len(), 2);
        let owners: Vec<&str> = dir.owners("power").iter().map(|o| o.id.as_str()).collect();
        assert_eq!(owners, ["a", "c"]);
    }

    #[test]
    fn a_repeated_announcement_is_no_join_and_gone_owners_are_remembered() {
        let mut dir = Directory::default();
        assert!(dir.seen(&owner("a", &["power"])));
        assert!(!dir.seen(&owner("a", &["power"])), "a heartbeat is no join");
        assert!(dir.seen(&owner("a", &["power", "chat"])), "a change is");
        assert!(dir.left("a").is_some());
        assert!(dir.left("a").is_none());
        assert!(dir.pick("power").is_empty());
        assert!(dir.was_known("power") && dir.was_known("chat"));
        assert!(!dir.was_known("never"));
    }

    #[test]
    fn known_collections_are_bounded() {
        let mut dir = Directory::default();
        let names: Vec<String> = (0..MAX_KNOWN_COLLECTIONS + 10)
            .map(|i| format!("c{i}"))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        dir.seen(&owner("a", &refs));
        assert_eq!(dir.known.len(), MAX_KNOWN_COLLECTIONS);
    }

    #[test]
    fn another_protocol_is_counted_and_logged_once_per_peer() {
        let mut dir = Directory::default();
        let mut old = owner("old", &["power"]);
        old.protocol = 1;
        assert!(dir.incompatible(&old), "logged the first time");
        assert!(!dir.incompatible(&old), "not again");
        assert!(dir.incompatible(&owner("other", &[])));
        assert_eq!(dir.incompatible_announcements, 3);
        assert!(dir.peers.is_empty() && dir.pick("power").is_empty());
    }
}
