//! How nodes find each other: the [`Discovery`] trait. A discovery announces this node and
//! tells the node about peers that appear, change and leave.
//!
//! The in-process implementation is [`crate::medium::MemoryCluster::discovery`]; across
//! processes and machines, `UdpDiscovery` (UDP multicast, or static seed peers), or
//! `NatsDiscovery` (heartbeats on a NATS subject, with `ZS_TRANSPORT=nats://...`).

use std::sync::Arc;

use async_trait::async_trait;

use crate::{NodeInfo, Result};

pub use crate::medium::MemoryDiscovery;

#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "nats")]
pub use self::nats::{NatsDiscovery, NatsDiscoveryStats};
#[cfg(feature = "zeromq")]
pub mod udp;
#[cfg(feature = "zeromq")]
pub use udp::{DiscoveryStats, UdpDiscovery};

/// Why a peer left the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// It said goodbye.
    Goodbye,
    /// It fell silent past the heartbeat timeout.
    Timeout,
}

/// What a discovery reports to its node.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// A peer announced itself (first time, or again with possibly new information).
    Seen(NodeInfo),
    /// A peer left.
    Left {
        /// Its node id.
        id: String,
        /// Why.
        reason: LeaveReason,
    },
}

/// Receives peer events; the node implements it. Calls must return quickly.
pub trait PeerSink: Send + Sync + 'static {
    /// Takes one peer event.
    fn peer_event(&self, event: PeerEvent);
}

/// Announces this node and hears the others.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// Announces `me` and starts reporting peers to `sink`. Peers already known to the
    /// discovery are reported before this returns when the discovery can know them at once.
    async fn start(&self, me: NodeInfo, sink: Arc<dyn PeerSink>) -> Result<()>;

    /// How long after [`Discovery::start`] the peers already there take to be reported (the
    /// first round of announcements and replies): a node that owns collections waits this long
    /// before it checks who else owns them and announces its own. Zero (the default) for a
    /// discovery that reports them before `start` returns.
    fn warm_up(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Announces changed information about this node (new resources, new endpoints).
    async fn announce(&self, me: NodeInfo) -> Result<()>;

    /// Says goodbye and stops.
    async fn stop(&self);

    /// Whether the discovery is running (started, not stopped, its tasks alive), for the
    /// readiness probe (`GET /readyz`): `Err` says why not, in words safe to show to anyone (no
    /// address, no host). The default: running.
    fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// The discovery as [`Any`](std::any::Any), for a caller that knows its type (`GET
    /// /metrics` reads the stats of [`UdpDiscovery`] and [`NatsDiscovery`]). The default:
    /// `None`.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
