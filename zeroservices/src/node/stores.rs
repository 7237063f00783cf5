//! One store per collection: the owners of a collection must share one store, or its creates
//! would be split between data sets that never meet.
//!
//! Every owner announces, per collection, the fingerprint of the store behind it
//! ([`NodeInfo::stores`], [`Store::fingerprint`](crate::store::Store::fingerprint)). At start-up a
//! node that owns collections listens for the owners already there (the discovery warm-up)
//! before it announces its own, then compares ([`compare`]) and decides ([`refuses`]):
//!
//! | the other owner's store | it answers a ping | verdict |
//! |---|---|---|
//! | the same fingerprint (a restart on the same data, a shared MongoDB database) | – | shared: both serve, requests are balanced |
//! | no fingerprint (an older node, a store that cannot tell) | – | not checked |
//! | another fingerprint | yes | refused: [`Error::StoreConflict`] (a `#[service]` process exits 2) |
//! | another fingerprint | no (a dead predecessor still listed) | ignored |
//!
//! Running, a node that meets an owner of one of its collections over another store (a healed
//! partition) logs an error and counts it ([`Conflicts`], `NodeStats::store_conflicts`), once
//! per peer and collection; it goes on serving and requests stay balanced between both until
//! one of them is stopped and pointed at the right store.

use std::collections::{BTreeMap, HashSet};

use super::{NodeInfo, StoreInfo};
use crate::Error;

/// How another owner's store compares with this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    /// The same data.
    Same,
    /// One of the two announces no fingerprint: nothing to compare.
    Unknown,
    /// Two data sets.
    Different,
}

/// Compares two announced stores.
pub(super) fn compare(mine: Option<&StoreInfo>, theirs: Option<&StoreInfo>) -> Comparison {
    match (mine, theirs) {
        (Some(mine), Some(theirs)) if mine.fingerprint == theirs.fingerprint => Comparison::Same,
        (Some(_), Some(_)) => Comparison::Different,
        _ => Comparison::Unknown,
    }
}

/// Whether an owner over a store compared so refuses this node the collection: only a live
/// one over another store does.
pub(super) fn refuses(comparison: Comparison, alive: bool) -> bool {
    comparison == Comparison::Different && alive
}

/// The start-up refusal: which collection, which nodes and stores, and what to do.
pub(super) fn conflict(
    collection: &str,
    me: (&str, &str),
    mine: &StoreInfo,
    other: &NodeInfo,
    theirs: &StoreInfo,
) -> Error {
    let (my_id, my_name) = me;
    Error::StoreConflict {
        collection: collection.to_owned(),
        message: format!(
            "node {my_id} ({my_name}) refuses to own collection `{collection}`: node {} ({}) \
             owns it already over another store (theirs: {}, fingerprint {}; this node's: {}, \
             fingerprint {}). Two owners over two stores would split the collection between \
             two data sets. Point both nodes at the same store with ZS_STORE (e.g. \
             ZS_STORE=mongodb://host:27017/db), or give the collection one owner",
            other.id,
            other.name,
            shown(&theirs.store),
            theirs.fingerprint,
            shown(&mine.store),
            mine.fingerprint,
        ),
    }
}

fn shown(store: &str) -> &str {
    if store.is_empty() { "unnamed" } else { store }
}

/// The collections `peer` owns over another store than this node's `mine`: `(collection,
/// mine, theirs)`.
pub(super) fn differing<'a>(
    mine: &'a BTreeMap<String, StoreInfo>,
    peer: &'a NodeInfo,
) -> Vec<(&'a str, &'a StoreInfo, &'a StoreInfo)> {
    peer.stores
        .iter()
        .filter(|(collection, _)| peer.resources.iter().any(|r| &r.name == *collection))
        .filter_map(|(collection, theirs)| {
            let ours = mine.get(collection)?;
            (compare(Some(ours), Some(theirs)) == Comparison::Different).then_some((
                collection.as_str(),
                ours,
                theirs,
            ))
        })
        .collect()
}

/// The most `(peer, collection)` pairs remembered as logged.
const MAX_REMEMBERED: usize = 10_000;

/// Owners met while running over another store: counted, each pair logged once.
#[derive(Default)]
pub(crate) struct Conflicts {
    seen: HashSet<(String, String)>,
    count: u64,
}

impl Conflicts {
    /// Records a conflict with `peer` over `collection`; true the first time (log it).
    pub(super) fn record(&mut self, peer: &str, collection: &str) -> bool {
        let key = (peer.to_owned(), collection.to_owned());
        if self.seen.contains(&key) || self.seen.len() >= MAX_REMEMBERED {
            return false;
        }
        self.seen.insert(key);
        self.count += 1;
        true
    }

    /// Conflicts recorded.
    pub(super) fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::ResourceInfo;

    fn store(fingerprint: &str) -> StoreInfo {
        StoreInfo {
            log: None,
            fingerprint: fingerprint.into(),
            store: format!("embedded:/data/{fingerprint}"),
        }
    }

    fn owner(id: &str, stores: &[(&str, &str)]) -> NodeInfo {
        let mut info: NodeInfo =
            serde_json::from_value(serde_json::json!({"id": id, "name": "power_service"})).unwrap();
        for (collection, fingerprint) in stores {
            info.resources.push(ResourceInfo {
                name: (*collection).into(),
                schema: serde_json::Value::Null,
                actions: Vec::new(),
                text_index: Vec::new(),
            });
            info.stores.insert((*collection).into(), store(fingerprint));
        }
        info
    }

    #[test]
    fn the_same_fingerprint_is_never_a_conflict() {
        let c = compare(Some(&store("a")), Some(&store("a")));
        assert_eq!(c, Comparison::Same);
        assert!(!refuses(c, true));
        assert!(!refuses(c, false));
    }

    #[test]
    fn another_fingerprint_refuses_only_when_its_owner_is_alive() {
        let c = compare(Some(&store("a")), Some(&store("b")));
        assert_eq!(c, Comparison::Different);
        assert!(refuses(c, true), "different + alive: refused");
        assert!(!refuses(c, false), "different + dead: a listed corpse");
    }

    #[test]
    fn no_fingerprint_is_not_checked() {
        for c in [
            compare(None, Some(&store("a"))),
            compare(Some(&store("a")), None),
            compare(None, None),
        ] {
            assert_eq!(c, Comparison::Unknown);
            assert!(!refuses(c, true));
        }
    }

    #[test]
    fn only_shared_collections_with_other_stores_differ() {
        let mine: BTreeMap<String, StoreInfo> = [
            ("power".to_owned(), store("a")),
            ("user".to_owned(), store("a")),
        ]
        .into();
        let peer = owner("p-1", &[("power", "b"), ("user", "a"), ("chat", "c")]);
        let found = differing(&mine, &peer);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "power");
        assert_eq!(found[0].2.fingerprint, "b");
        // A store announced for a collection the peer does not own is ignored.
        let mut odd = owner("p-2", &[]);
        odd.stores.insert("power".into(), store("z"));
        assert!(differing(&mine, &odd).is_empty());
    }

    #[test]
    fn the_refusal_says_why_and_what_to_do() {
        let other = owner("power_service-1", &[("power", "b")]);
        let e = conflict(
            "power",
            ("power_service-2", "power_service"),
            &store("a"),
            &other,
            &store("b"),
        );
        assert_eq!(e.kind(), "store_conflict");
        let text = e.to_string();
        for part in [
            "`power`",
            "power_service-1",
            "embedded:/data/a",
            "embedded:/data/b",
            "ZS_STORE",
            "one owner",
        ] {
            assert!(text.contains(part), "{part} missing from {text}");
        }
    }

    #[test]
    fn running_conflicts_are_counted_once_per_peer_and_collection() {
        let mut conflicts = Conflicts::default();
        assert!(conflicts.record("p", "power"));
        assert!(!conflicts.record("p", "power"));
        assert!(conflicts.record("p", "user"));
        assert!(conflicts.record("q", "power"));
        assert_eq!(conflicts.count(), 3);
    }
}
