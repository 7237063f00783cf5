//! Sync markers: how a node makes sure a peer applies its subscriptions. The SUB task applies
//! the current interest and subscribes to a fresh marker topic `$sync.<instance>.<n>`; the
//! peer is asked (a `sync` message over the DEALER) to publish that marker until it arrives.
//! Subscriptions reach a PUB in order on one connection, so once the marker arrives every
//! earlier subscription is in effect there. Markers are never handed to the node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::core::Core;
use super::publish::publish_event;
use super::subscriptions::SubCommand;
use super::wire::{Interest, Outgoing};
use super::{State, call_peer, lock};
use crate::{Error, NodeInfo, Result};

/// Topics of sync markers: `$sync.<medium instance>.<n>`.
pub(crate) const SYNC_PREFIX: &str = "$sync.";
/// The longest marker topic a peer may ask for.
const MAX_MARKER_BYTES: usize = 256;
/// How long a sync waits for a marker before asking the peer again.
const SYNC_RETRY: Duration = Duration::from_millis(25);

/// The sync markers waited for, by topic.
pub(crate) struct Markers {
    prefix: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

impl Markers {
    /// Markers of the medium instance `instance`.
    pub(crate) fn new(instance: &str) -> Self {
        Self {
            prefix: format!("{SYNC_PREFIX}{instance}."),
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh marker topic, and what fires when it arrives.
    pub(crate) fn register(&self) -> (String, oneshot::Receiver<()>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{}{n}", self.prefix);
        let (seen, arrived) = oneshot::channel();
        lock(&self.waiting).insert(marker.clone(), seen);
        (marker, arrived)
    }

    /// Whether `topic` is a sync marker (never an event for the node).
    pub(crate) fn is_marker(&self, topic: &[u8]) -> bool {
        topic.starts_with(SYNC_PREFIX.as_bytes())
    }

    /// Marker `topic` arrived: its sync learns it. False when nobody waits for it (a repeat,
    /// a marker of a sync that ended, someone else's).
    pub(crate) fn arrived(&self, topic: &[u8]) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        match lock(&self.waiting).remove(topic) {
            Some(seen) => seen.send(()).is_ok(),
            None => false,
        }
    }

    /// The sync of `marker` ended.
    pub(crate) fn forget(&self, marker: &str) {
        lock(&self.waiting).remove(marker);
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// Whether a peer may ask this node to publish `topic` as a marker.
fn valid_marker(topic: &str) -> bool {
    topic.starts_with(SYNC_PREFIX) && topic.len() <= MAX_MARKER_BYTES
}

/// Serves a peer's `sync`: records what it wants (when given), then publishes its marker.
pub(crate) fn serve(
    core: &Core,
    from: &str,
    topic: &str,
    interest: Option<Interest>,
) -> Result<()> {
    if let Some(interest) = interest {
        core.remote.record(from, interest)?;
    }
    if !valid_marker(topic) {
        return Err(Error::bad_request(format!(
            "sync needs a \"topic\" starting with {SYNC_PREFIX}, at most {MAX_MARKER_BYTES} bytes"
        )));
    }
    publish_event(core, topic, &Value::Null)
}

/// Makes sure `peer` sends this node what it wants now (see the module documentation).
/// Returns whether the peer confirmed before `deadline`; a peer that answers with an error is
/// simply not confirmed.
pub(crate) async fn sync_peer(
    core: &Arc<Core>,
    state: &Mutex<State>,
    peer: &NodeInfo,
    commands: &mpsc::UnboundedSender<SubCommand>,
    deadline: tokio::time::Instant,
) -> bool {
    let (marker, mut seen) = core.markers.register();
    let mut confirmed = false;
    if commands.send(SubCommand::Mark(marker.clone())).is_ok() {
        let wanted = core.local.snapshot();
        let call = Outgoing::Sync {
            topic: &marker,
            interest: &wanted,
        };
        loop {
            match tokio::time::timeout_at(deadline, call_peer(core, state, peer, call)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer.id, error = %e, "peer cannot confirm subscriptions");
                    break;
                }
                Err(_) => break,
            }
            let retry = (tokio::time::Instant::now() + SYNC_RETRY).min(deadline);
            match tokio::time::timeout_at(retry, &mut seen).await {
                Ok(Ok(())) => {
                    confirmed = true;
                    break;
                }
                Ok(Err(_)) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => break,
                Err(_) => {}
            }
        }
    }
    core.markers.forget(&marker);
    let _ = commands.send(SubCommand::Forget(marker));
    if !confirmed {
        tracing::debug!(peer = %peer.id, "subscriptions not confirmed by the peer in time");
    }
    confirmed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetworkConfig;

    #[test]
    fn a_marker_completes_its_sync_once() {
        let markers = Markers::new("abc");
        let (one, mut seen_one) = markers.register();
        let (two, mut seen_two) = markers.register();
        assert!(one.starts_with("$sync.abc."));
        assert_ne!(one, two);
        assert!(markers.is_marker(one.as_bytes()));
        assert!(!markers.is_marker(b"power.create.1"));
        assert!(markers.arrived(one.as_bytes()));
        assert_eq!(seen_one.try_recv(), Ok(()));
        assert!(seen_two.try_recv().is_err(), "the other sync still waits");
        // A repeat of the marker finds nobody.
        assert!(!markers.arrived(one.as_bytes()));
        assert!(!markers.arrived(b"$sync.someone-else.1"));
        assert!(!markers.arrived(b"$sync.\xff"));
        markers.forget(&two);
        assert_eq!(markers.waiting(), 0);
        assert!(!markers.arrived(two.as_bytes()));
    }

    #[test]
    fn a_marker_whose_sync_gave_up_is_not_an_error() {
        let markers = Markers::new("abc");
        let (marker, seen) = markers.register();
        drop(seen);
        assert!(!markers.arrived(marker.as_bytes()));
        assert_eq!(markers.waiting(), 0);
    }

    #[test]
    fn peers_may_only_ask_for_marker_topics() {
        assert!(valid_marker("$sync.x.1"));
        assert!(!valid_marker("power.create.1"));
        assert!(!valid_marker("$syncx"));
        assert!(!valid_marker(&format!("$sync.{}", "x".repeat(300))));
        let core = Core::new(NetworkConfig::default());
        assert!(matches!(
            serve(&core, "a", "power.create.1", None),
            Err(Error::BadRequest { .. })
        ));
        // A valid marker, but the medium is not running: no PUB socket to publish on.
        assert!(matches!(
            serve(&core, "a", "$sync.x.1", None),
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn a_sync_records_the_interest_it_carries() {
        let core = Core::new(NetworkConfig::default());
        let interest = Interest {
            version: 4,
            prefixes: vec!["power".to_owned()],
        };
        let _ = serve(&core, "a", "$sync.x.1", Some(interest.clone()));
        assert_eq!(core.remote.of("a"), Some(interest));
    }
}
