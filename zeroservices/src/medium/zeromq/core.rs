//! What every task of one medium shares: its settings, its wire, its counters, what this node
//! and its peers want, the sync markers waited for, and the PUB socket.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ::zeromq::{Endpoint, SocketOptions};

use super::interest::RemoteInterests;
use super::publish::Publisher;
use super::stats::{Counters, ZmqStats};
use super::subscriptions::LocalInterest;
use super::sync::Markers;
use super::wire::{Rejection, Wire};
use crate::config::NetworkConfig;
use crate::medium::Inbound;

pub(crate) struct Core {
    pub(crate) config: NetworkConfig,
    pub(crate) wire: Wire,
    /// What this node wants from its peers (the SUBs subscribe to it).
    pub(crate) local: LocalInterest,
    /// What each peer said it wants from this node.
    pub(crate) remote: RemoteInterests,
    /// Sync markers waited for.
    pub(crate) markers: Markers,
    /// The PUB socket.
    pub(crate) publisher: Publisher,
    /// Unique per medium instance: DEALER identities are `zs-<instance>-<n>`, sync markers
    /// `$sync.<instance>.<n>`.
    pub(crate) instance: String,
    pub(crate) node_id: OnceLock<String>,
    pub(crate) inbound: OnceLock<Arc<dyn Inbound>>,
    pub(crate) next_request: AtomicU64,
    pub(crate) next_connection: AtomicU64,
    pub(crate) counters: Counters,
}

impl Core {
    pub(crate) fn new(config: NetworkConfig) -> Self {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        Self {
            wire: Wire::with_window(
                config.cluster_key.clone(),
                config.max_message_bytes,
                config.replay_window,
            ),
            local: LocalInterest::new(),
            remote: RemoteInterests::new(config.max_peers),
            markers: Markers::new(&instance),
            publisher: Publisher::default(),
            instance,
            node_id: OnceLock::new(),
            inbound: OnceLock::new(),
            next_request: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            counters: Counters::default(),
            config,
        }
    }

    /// This node's id ("" before `start`).
    pub(crate) fn node_id(&self) -> &str {
        self.node_id.get().map(String::as_str).unwrap_or("")
    }

    /// Counts and logs a dropped message.
    pub(crate) fn reject(&self, sender: &str, what: &str, rejection: &Rejection) {
        self.counters.reject(sender, what, rejection);
    }

    /// The plain body of a message (its `body` and `seal` frames, of seal `kind`, bound to
    /// `context`); counts and logs the drop when it does not open, is stale or was seen before.
    pub(crate) fn opened<'a>(
        &self,
        sender: &str,
        what: &str,
        kind: u8,
        context: &[u8],
        body: &'a [u8],
        seal: &[u8],
    ) -> Option<std::borrow::Cow<'a, [u8]>> {
        match self.wire.open(kind, context, body, seal) {
            Ok(plain) => Some(plain),
            Err(rejection) => {
                self.reject(sender, what, &rejection);
                None
            }
        }
    }

    /// Options of every socket of this medium: a frame header that would take a message (the
    /// sum of its frames) over `max_message_bytes` closes that connection before anything is
    /// allocated for the frame (the vendored `zeromq`, see `third_party/zeromq/PATCHES.md`),
    /// counted and logged once per peer address; the PUB queues at most
    /// `max_subscriber_queue` events for one subscriber.
    pub(crate) fn socket_options(&self) -> SocketOptions {
        let mut options = SocketOptions::default();
        options.max_message_size(self.config.max_message_bytes);
        options.pub_subscriber_queue(self.config.max_subscriber_queue.max(1));
        let log = self.counters.oversized_frames.clone();
        let limit = self.config.max_message_bytes;
        options.on_message_too_large(move |peer, announced| {
            let peer = match peer {
                Some(Endpoint::Tcp(host, _)) => host.to_string(),
                Some(other) => other.to_string(),
                None => "unknown".to_owned(),
            };
            log.drop_from(
                &peer,
                "zeromq connection",
                &format!(
                    "closed: a frame header announced a message of {announced} bytes, over the {limit} byte limit"
                ),
            );
        });
        options
    }

    /// How long a DEALER or SUB waits for a connect.
    pub(crate) fn connect_timeout(&self) -> Duration {
        (self.config.request_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    pub(crate) fn stats(&self) -> ZmqStats {
        ZmqStats {
            events_undelivered: self.publisher.undelivered(),
            ..self.counters.snapshot()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::medium::zeromq::wire;
    use crate::security::ClusterKey;

    #[test]
    fn the_connect_timeout_follows_the_request_timeout_within_bounds() {
        let core = |ms| {
            Core::new(NetworkConfig {
                request_timeout: Duration::from_millis(ms),
                ..NetworkConfig::default()
            })
        };
        assert_eq!(core(2000).connect_timeout(), Duration::from_secs(1));
        assert_eq!(core(10).connect_timeout(), Duration::from_millis(100));
        assert_eq!(core(60_000).connect_timeout(), Duration::from_secs(2));
    }

    #[test]
    fn forged_and_replayed_messages_are_counted_once_each() {
        let core = Core::new(NetworkConfig {
            cluster_key: Some(ClusterKey::new("k")),
            ..NetworkConfig::default()
        });
        let [body, seal] = core.wire.seal(wire::SEAL_CALL, b"", b"body".to_vec());
        let open = |body: &[u8], seal: &[u8]| {
            core.opened("a", "request", wire::SEAL_CALL, b"", body, seal)
                .is_some()
        };
        assert!(!open(&body, b""));
        assert!(!open(b"other", &seal));
        assert!(open(&body, &seal));
        assert!(!open(&body, &seal));
        assert_eq!(core.stats().dropped_unsigned, 2);
        assert_eq!(core.stats().dropped_replayed, 1);
        assert_eq!(core.node_id(), "");
    }
}
