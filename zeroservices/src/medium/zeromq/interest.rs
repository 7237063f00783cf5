//! What peers want from this node ([`RemoteInterests`]: an event no peer wants is not
//! published at all), and the announcer task that tells peers what this node wants.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::core::Core;
use super::wire::{Interest, Outgoing};
use super::{State, call_peer, lock};
use crate::event::topic_matches;
use crate::{Error, NodeInfo, Result};

/// What each peer said it wants from this node (`interest` and `sync` messages), by node id.
pub(crate) struct RemoteInterests {
    max_peers: usize,
    inner: Mutex<Remote>,
}

#[derive(Default)]
struct Remote {
    wanted: HashMap<String, Interest>,
    /// Peers that left, newest last (at most `max_peers`): an `interest` still in flight when
    /// a peer left is not recorded for it after it left. Cleared when the peer joins again.
    left: VecDeque<String>,
}

impl RemoteInterests {
    pub(crate) fn new(max_peers: usize) -> Self {
        Self {
            max_peers,
            inner: Mutex::new(Remote::default()),
        }
    }

    /// Records what `from` wants, unless a newer version is known already or `from` left.
    /// At most `max_peers` peers are remembered: an id that is not a peer cannot grow this
    /// without end.
    pub(crate) fn record(&self, from: &str, interest: Interest) -> Result<()> {
        let mut remote = lock(&self.inner);
        if remote.left.iter().any(|id| id == from) {
            // Sent before the peer left, arriving after: it wants nothing from here any more.
            tracing::debug!(peer = from, "interest from a node that left, ignored");
            return Ok(());
        }
        let known = remote.wanted.len();
        match remote.wanted.get_mut(from) {
            Some(now) if now.version > interest.version => {}
            Some(now) => *now = interest,
            None if known >= self.max_peers => {
                return Err(Error::unavailable(format!(
                    "interest of {known} peers recorded already (max_peers)"
                )));
            }
            None => {
                remote.wanted.insert(from.to_owned(), interest);
            }
        }
        Ok(())
    }

    /// `peer` joined (again): what it says from now on counts.
    pub(crate) fn joined(&self, peer: &str) {
        lock(&self.inner).left.retain(|id| id != peer);
    }

    /// `peer` left: forget what it wanted, and ignore what it said before leaving that arrives
    /// later.
    pub(crate) fn left(&self, peer: &str) {
        let mut remote = lock(&self.inner);
        if !remote.left.iter().any(|id| id == peer) {
            if remote.left.len() >= self.max_peers.max(1) {
                remote.left.pop_front();
            }
            remote.left.push_back(peer.to_owned());
        }
        // Under the same lock: a concurrent `record` sees either both or neither.
        remote.wanted.remove(peer);
    }

    /// Whether any of `connected` wants `topic`: a peer that has not said what it wants (yet)
    /// gets everything.
    pub(crate) fn wants<'a>(
        &self,
        mut connected: impl Iterator<Item = &'a String>,
        topic: &str,
    ) -> bool {
        let remote = lock(&self.inner);
        if connected.any(|id| !remote.wanted.contains_key(id)) {
            return true;
        }
        remote
            .wanted
            .values()
            .any(|r| r.prefixes.iter().any(|p| topic_matches(p, topic)))
    }

    /// What `peer` said it wants, if anything.
    #[cfg(test)]
    pub(crate) fn of(&self, peer: &str) -> Option<Interest> {
        lock(&self.inner).wanted.get(peer).cloned()
    }
}

/// Tells the peers what this node wants: every peer when that changes (a burst of changes, as
/// websocket clients come and go, is told once: the latest set, when the previous round is
/// done), and each peer that joins. A peer that could not be told (busy, restarting) is told
/// again a second later, until it is or it leaves: otherwise it would keep sending by what it
/// heard last. (A peer never told gets every event.)
pub(crate) async fn run_announcer(
    core: Arc<Core>,
    state: Arc<Mutex<State>>,
    mut joined: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interest = core.local.subscribe();
    interest.borrow_and_update();
    // Peers still to be told, by node id.
    let mut owed: Vec<String> = Vec::new();
    let mut retrying = false;
    loop {
        let retry = async {
            if !retrying {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            changed = interest.changed() => {
                if changed.is_err() {
                    return;
                }
                interest.borrow_and_update();
                owed = lock(&state).subs.keys().cloned().collect();
            }
            peer = joined.recv() => match peer {
                Some(peer) => owed.push(peer),
                None => return,
            },
            () = retry => {}
        }
        let peers: Vec<NodeInfo> = lock(&state)
            .subs
            .values()
            .filter(|sub| owed.contains(&sub.peer.id))
            .map(|sub| sub.peer.clone())
            .collect();
        let wanted = core.local.snapshot();
        let within = core.config.request_timeout;
        let told = futures::future::join_all(peers.iter().map(|peer| {
            let (core, state, wanted) = (&core, &state, &wanted);
            async move {
                let call = call_peer(core, state, peer, Outgoing::Interest(wanted));
                matches!(tokio::time::timeout(within, call).await, Ok(Ok(_)))
            }
        }))
        .await;
        // Peers that left meanwhile are no longer owed anything.
        owed = peers
            .iter()
            .zip(told)
            .filter(|(_, ok)| !ok)
            .map(|(peer, _)| peer.id.clone())
            .collect();
        retrying = !owed.is_empty();
        if retrying {
            tracing::debug!(peers = ?owed, "peers not told this node's interest yet; retrying in 1 s");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interest(version: u64, prefixes: &[&str]) -> Interest {
        Interest {
            version,
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_newest_version_is_kept() {
        let remote = RemoteInterests::new(8);
        remote.record("a", interest(2, &["power"])).unwrap();
        remote.record("a", interest(1, &["chat"])).unwrap();
        assert_eq!(remote.of("a"), Some(interest(2, &["power"])));
        remote.record("a", interest(2, &["again"])).unwrap();
        assert_eq!(remote.of("a"), Some(interest(2, &["again"])));
        remote.record("a", interest(5, &[])).unwrap();
        assert_eq!(remote.of("a"), Some(interest(5, &[])));
    }

    #[test]
    fn an_interest_arriving_after_its_peer_left_is_ignored_until_it_joins_again() {
        let remote = RemoteInterests::new(8);
        remote.record("a", interest(1, &["power"])).unwrap();
        remote.left("a");
        assert_eq!(remote.of("a"), None);
        // Late: sent before the peer left.
        remote.record("a", interest(2, &["power"])).unwrap();
        assert_eq!(remote.of("a"), None);
        remote.joined("a");
        remote.record("a", interest(3, &["chat"])).unwrap();
        assert_eq!(remote.of("a"), Some(interest(3, &["chat"])));
    }

    #[test]
    fn peers_recorded_are_bounded_by_max_peers() {
        let remote = RemoteInterests::new(2);
        remote.record("a", interest(1, &[])).unwrap();
        remote.record("b", interest(1, &[])).unwrap();
        assert!(matches!(
            remote.record("c", interest(1, &[])),
            Err(Error::Unavailable { .. })
        ));
        assert_eq!(remote.of("c"), None);
        // Known peers still update.
        remote.record("b", interest(2, &["x"])).unwrap();
        assert_eq!(remote.of("b"), Some(interest(2, &["x"])));
        // Room frees as peers leave.
        remote.left("a");
        remote.record("c", interest(1, &[])).unwrap();
    }

    #[test]
    fn peers_that_left_are_remembered_up_to_max_peers() {
        let remote = RemoteInterests::new(2);
        for id in ["a", "b", "c"] {
            remote.left(id);
        }
        remote.left("c");
        // `a`, the oldest, was forgotten: what it says counts again.
        remote.record("a", interest(1, &[])).unwrap();
        assert!(remote.of("a").is_some());
        remote.record("b", interest(1, &[])).unwrap();
        assert_eq!(remote.of("b"), None);
        let none = RemoteInterests::new(0);
        none.left("x");
        none.record("x", interest(1, &[])).unwrap();
        assert_eq!(none.of("x"), None);
        none.record("y", interest(1, &[])).unwrap_err();
    }

    #[test]
    fn a_topic_is_wanted_by_prefix_or_by_a_peer_not_told_yet() {
        let remote = RemoteInterests::new(8);
        remote.record("a", interest(1, &["power"])).unwrap();
        remote.record("b", interest(1, &["chat.message"])).unwrap();
        let connected = ids(&["a", "b"]);
        assert!(remote.wants(connected.iter(), "power.create.1"));
        assert!(remote.wants(connected.iter(), "chat.message"));
        assert!(!remote.wants(connected.iter(), "powers.create.1"));
        assert!(!remote.wants(connected.iter(), "chat"));
        // `c` is connected and said nothing: it gets everything.
        let more = ids(&["a", "b", "c"]);
        assert!(remote.wants(more.iter(), "anything"));
        remote.record("c", interest(1, &[""])).unwrap();
        assert!(remote.wants(more.iter(), "anything"));
        // Nobody connected, nobody told.
        assert!(!RemoteInterests::new(8).wants(std::iter::empty(), "x"));
    }
}
