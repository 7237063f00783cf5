//! [`UdpDiscovery`]: nodes find each other by UDP multicast on a LAN, or through a static list of
//! seed peers where multicast is absent (containers, clouds).
//!
//! # Sockets
//!
//! - The **group socket** (multicast on): bound to the group address and port with
//!   `SO_REUSEADDR` + `SO_REUSEPORT`, so several processes on one host share the group port, and
//!   joined to the group on [`NetworkConfig::interface`] (`0.0.0.0`: the default interface). It
//!   only receives announcements sent to the group.
//! - The **unicast socket**: bound to `interface:discovery_port` (default: an ephemeral port). It
//!   sends everything (multicast with `IP_MULTICAST_IF` = the interface, TTL 1, loop on) and
//!   receives direct replies, seed-peer traffic and goodbyes. A datagram to the shared group port
//!   would reach only one of the processes sharing it, hence this second socket. Its address is
//!   announced as `reply_to` (with interface `0.0.0.0`, the local address the OS would route to
//!   the group from, found with a connected UDP socket; no packet is sent for that).
//!
//! # Datagram format (a contract, version 2)
//!
//! Without a cluster key a datagram is one compact JSON object:
//!
//! ```text
//! {"v":2,"type":"announce","reply_to":"127.0.0.1:40123","node":{<NodeInfo>},"peers":["127.0.0.1:40124"]}
//! ```
//!
//! - `v`: the discovery protocol version, [`DISCOVERY_VERSION`]; others are dropped.
//! - `type`: `announce` (a heartbeat or a newcomer; answered with a `reply` when the sender is
//!   new or its information changed), `reply` (a direct answer to an announce; never answered),
//!   or `goodbye` (the sender stops; `node` then carries only its id, name and kind).
//! - `reply_to`: the `ip:port` of the sender's unicast socket, where direct answers go.
//! - `node`: the sender's [`NodeInfo`] as serialised by serde (its `insecure: true` only for a
//!   node open beyond loopback without a key, `ZS_INSECURE`; absent otherwise).
//! - `peers` (optional, unicast datagrams only): the `reply_to` addresses of peers the sender
//!   knows, at most 64. A receiver announces itself to those it does not know yet, which makes a
//!   static (seed-list) cluster converge: a node that only knows one seed learns everyone.
//!
//! Unknown fields are ignored. Version 1 appended an HMAC to the JSON with a cluster key;
//! version 2 seals it. With a cluster key the datagram is binary: the 33-byte clear header
//! `version (1 byte, 2) | key id (4) | session (12) | timestamp (8, ms since the epoch, big-endian) | counter (8, big-endian)`
//! then the JSON above encrypted with AES-256-GCM and its 16-byte tag, exactly as in the wire
//! format (see [`medium::zeromq`](crate::medium::zeromq)) but with the key-generating key of
//! info `zeroservices discovery v2`; the associated data is the byte `d` and the header. Each
//! copy of a datagram (the group, each peer) is sealed on its own, with its own counter. A receiver opens it with the key its id names (any key of its ring), then drops it
//! when the timestamp is outside [`NetworkConfig::replay_window`] (±60 s by default) or the
//! counter was seen before from that session: a captured announcement, reply or goodbye sent again is ignored
//! ([`DiscoveryStats::dropped_replayed`]). A node with a key drops plain and forged datagrams;
//! a node without a key drops sealed ones (a plain datagram starts with `{`, a sealed one
//! with the version byte): nodes with no key in common never see each other. Each drop is
//! counted ([`DiscoveryStats`]) and logged once per sender and kind.
//!
//! Datagrams larger than [`MAX_DATAGRAM_BYTES`] (or [`NetworkConfig::max_message_bytes`] when
//! smaller) are dropped on receipt; an own announcement that would exceed it is not sent and an
//! error naming its size is logged.
//!
//! # Behaviour
//!
//! `start` first refuses an interface other than loopback without a cluster key unless
//! [`NetworkConfig::insecure`] ([`NetworkConfig::check_exposure`]); then it announces to the group and to every seed peer; a new (or changed) peer is reported
//! with [`PeerEvent::Seen`](super::PeerEvent::Seen) and answered directly. Every [`NetworkConfig::heartbeat`] the node
//! re-announces to the group, the seed peers, and by unicast to every known peer not heard on the
//! group lately (so static clusters stay alive). Any announce or reply from a known peer refreshes
//! it; a peer silent past [`NetworkConfig::peer_timeout`] is reported as
//! [`PeerEvent::Left`](super::PeerEvent::Left) with [`LeaveReason::Timeout`](super::LeaveReason::Timeout). `stop` sends `goodbye` to the group, every
//! known peer and every seed, and peers report [`LeaveReason::Goodbye`](super::LeaveReason::Goodbye) at once.
//!
//! # Seed peers given by name
//!
//! A `ZS_PEERS` entry may name its host ([`NetworkConfig::peer_names`], e.g. a Kubernetes
//! headless service). The task looks every name up as it starts and again every
//! [`NetworkConfig::peers_resolve`] (`ZS_PEERS_RESOLVE_MS`, default 30 s), all at once, each
//! lookup bounded by [`PEER_LOOKUP_TIMEOUT`](crate::config::PEER_LOOKUP_TIMEOUT) or the period,
//! one round at a time and beside the sockets, so a slow resolver delays no datagram. Every IPv4
//! address a name resolves to is a seed (at most [`NetworkConfig::max_peers`] per name and in
//! all, the lowest first); an address that appears is announced to at once, one that
//! disappears is no longer a seed (a peer met through it stays while it lives and times out as
//! any peer). A lookup that fails or times out keeps the name's last addresses and is warned
//! about once per change of the name's state. [`UdpDiscovery::seeds`] lists the seeds now.
//!
//! When the interface is a loopback address, datagrams are only ever sent to loopback addresses
//! (and the group, which `IP_MULTICAST_IF` keeps on loopback): an announcement naming another
//! `reply_to` is dropped as malformed.
//!
//! A node tracks at most [`NetworkConfig::max_peers`] peers (`ZS_MAX_PEERS`, default 1024):
//! announcements and replies from a new node id beyond it are dropped, counted
//! ([`DiscoveryStats::dropped_over_peer_cap`]) and logged once; known peers keep refreshing,
//! and room frees as peers leave or time out. The other per-sender state is bounded too: ids
//! that said goodbye are remembered only for known peers, gossiped addresses probed per
//! heartbeat at most `max_peers`, and "logged once" sets at 10,000 senders.

//!
//! # Parts
//!
//! `datagram` (the format: encode, seal, open, decode and check), `socket` (the two sockets and the
//! announced address), `peers` (the peer table and failure detection), `targets` (the group,
//! seed peers and the loopback rule), `seeds` (the seed peers' names: lookups and what they
//! change), `shared` (taking and sending datagrams, and the task).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::net::UdpSocket;

use self::shared::Shared;
use self::socket::{advertised_addr, multicast_socket, unicast_socket};
use super::{Discovery, PeerSink};
use crate::config::NetworkConfig;
use crate::{Error, NodeInfo, Result};

mod datagram;
pub(crate) use self::datagram::seal as seal_datagram;
mod peers;
mod seeds;
mod shared;
mod socket;
mod targets;

/// The version of the discovery datagram format (the `v` field).
pub const DISCOVERY_VERSION: u64 = 2;

/// The largest datagram sent or accepted. IPv4 UDP carries at most 65,507 bytes; anything above
/// the path MTU (about 1,470 bytes on Ethernet) travels as IP fragments.
pub const MAX_DATAGRAM_BYTES: usize = 60 * 1024;

/// At most this many peer addresses are gossiped in one datagram.
const MAX_GOSSIP_PEERS: usize = 64;

/// Counters of a [`UdpDiscovery`], for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Datagrams received on either socket (own multicast echoes included).
    pub received: u64,
    /// Dropped: not UTF-8 JSON, not the expected shape, or a bad `reply_to`.
    pub dropped_malformed: u64,
    /// Dropped: not sealed or not opening (forged, another key) while a cluster key is set, or
    /// sealed while none is.
    pub dropped_unsigned: u64,
    /// Dropped: sealed right, but outside the replay window or seen before (a replay).
    pub dropped_replayed: u64,
    /// Dropped: a `v` other than [`DISCOVERY_VERSION`].
    pub dropped_version: u64,
    /// Dropped: larger than the datagram limit.
    pub dropped_oversized: u64,
    /// Dropped: an announcement or reply from a new node id while [`NetworkConfig::max_peers`]
    /// peers are known already.
    pub dropped_over_peer_cap: u64,
    /// Peers known now.
    pub peers: usize,
    /// Seed peers now: the `ZS_PEERS` addresses, and those its names resolve to.
    pub seeds: usize,
}

/// Announces this node by UDP multicast and/or to static seed peers, and hears the others.
/// See the [module documentation](self) for the sockets, the datagram format and the behaviour.
///
/// ```no_run
/// # async fn f(info: zeroservices::NodeInfo, sink: std::sync::Arc<dyn zeroservices::discovery::PeerSink>) -> zeroservices::Result<()> {
/// use zeroservices::config::NetworkConfig;
/// use zeroservices::discovery::{Discovery, UdpDiscovery};
/// let discovery = UdpDiscovery::new(NetworkConfig::from_env()?);
/// discovery.start(info, sink).await?;
/// println!("listening on {:?}", discovery.local_addr());
/// discovery.stop().await;
/// # Ok(()) }
/// ```
pub struct UdpDiscovery {
    shared: Arc<Shared>,
}

impl UdpDiscovery {
    /// A discovery with these settings; nothing is bound before [`Discovery::start`].
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            shared: Arc::new(Shared::new(config)),
        }
    }

    /// [`UdpDiscovery::new`] looking the seed peers' names up with `resolver` (tests).
    #[cfg(test)]
    pub(crate) fn with_resolver(config: NetworkConfig, resolver: Arc<dyn seeds::Resolve>) -> Self {
        Self {
            shared: Arc::new(Shared::with_resolver(config, resolver)),
        }
    }

    /// The seed peers now: the `ZS_PEERS` addresses and what its names resolve to.
    pub fn seeds(&self) -> Vec<SocketAddr> {
        self.shared.seed_addrs()
    }

    /// Counters: datagrams received and dropped, peers known.
    pub fn stats(&self) -> DiscoveryStats {
        self.shared.stats()
    }

    /// The address of the unicast socket as announced to peers (`reply_to`), once started. Seed
    /// peers of other nodes (`ZS_PEERS`) point here.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.shared.reply_to.get().copied()
    }

    /// Stops without saying goodbye, as if the process had been killed: peers drop this node
    /// only after their peer timeout. For tests.
    #[doc(hidden)]
    pub fn kill(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(task) = self.shared.take_task() {
            task.abort();
        }
    }
}

impl Drop for UdpDiscovery {
    fn drop(&mut self) {
        if let Some(task) = self.shared.take_task() {
            task.abort();
        }
    }
}

#[async_trait]
impl Discovery for UdpDiscovery {
    async fn start(&self, me: NodeInfo, sink: Arc<dyn PeerSink>) -> Result<()> {
        let shared = &self.shared;
        if shared.started.swap(true, Ordering::SeqCst) {
            return Err(Error::internal("udp discovery started twice"));
        }
        let config = &shared.config;
        // Nothing binds beyond loopback without a key, unless asked to.
        config.check_exposure()?;
        let unicast = unicast_socket(config).map_err(|e| {
            let msg = format!(
                "discovery: cannot bind the unicast socket on {}:{}: {e}",
                config.interface,
                config.discovery_port.unwrap_or(0)
            );
            tracing::error!("{msg}");
            Error::unavailable(msg)
        })?;
        let bound = unicast
            .local_addr()
            .map_err(|e| Error::unavailable(format!("discovery: unicast socket address: {e}")))?;
        let reply_to = advertised_addr(config, bound);
        let multicast = if config.multicast {
            match multicast_socket(config) {
                Ok(socket) => Some(socket),
                Err(msg) if !config.peers.is_empty() || !config.peer_names.is_empty() => {
                    tracing::error!("{msg}; going on with the seed peers only");
                    None
                }
                Err(msg) => {
                    tracing::error!("{msg}");
                    return Err(Error::unavailable(msg));
                }
            }
        } else {
            None
        };
        let unicast = Arc::new(
            UdpSocket::from_std(unicast)
                .map_err(|e| Error::unavailable(format!("discovery: unicast socket: {e}")))?,
        );
        let multicast = match multicast {
            Some(s) => Some(
                UdpSocket::from_std(s)
                    .map_err(|e| Error::unavailable(format!("discovery: group socket: {e}")))?,
            ),
            None => None,
        };
        shared
            .multicast_active
            .store(multicast.is_some(), Ordering::SeqCst);
        let _ = shared.unicast.set(unicast.clone());
        let _ = shared.reply_to.set(reply_to);
        tracing::info!(
            node = %me.id,
            %reply_to,
            group = %config.multicast_group,
            multicast = multicast.is_some(),
            seeds = config.peers.len(),
            seed_names = config.peer_names.len(),
            "udp discovery started"
        );
        shared.set_me(me);
        let task = tokio::spawn(shared::run(shared.clone(), unicast, multicast, sink));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        shared.announce_everywhere().await;
        Ok(())
    }

    /// [`NetworkConfig::discovery_warmup`]: a peer's reply to this node's first announcement
    /// takes a round trip; its next heartbeat comes within one heartbeat period, in case that
    /// reply was lost.
    fn warm_up(&self) -> std::time::Duration {
        self.shared.config.discovery_warmup()
    }

    async fn announce(&self, me: NodeInfo) -> Result<()> {
        let shared = &self.shared;
        shared.set_me(me);
        if shared.stopped.load(Ordering::SeqCst) || shared.unicast.get().is_none() {
            return Ok(());
        }
        shared.announce_everywhere().await;
        Ok(())
    }

    async fn stop(&self) {
        let shared = &self.shared;
        if shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // End the task first, so no announcement can follow the goodbye.
        if let Some(task) = shared.take_task() {
            task.abort();
            // An aborted task ends at its next await; bounded all the same.
            if tokio::time::timeout(std::time::Duration::from_secs(1), task)
                .await
                .is_err()
            {
                tracing::warn!("udp discovery: its task did not end within 1 s of the abort");
            }
        }
        let Some(socket) = shared.unicast.get() else {
            return;
        };
        let sends = shared.goodbyes();
        for (to, bytes) in sends {
            shared.send(socket, to, &bytes).await;
        }
        tracing::info!(reply_to = ?shared.reply_to.get(), "udp discovery stopped");
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn health(&self) -> std::result::Result<(), String> {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::SeqCst) {
            return Err("udp discovery is stopped".into());
        }
        let task = shared.task.lock().unwrap_or_else(|e| e.into_inner());
        match task.as_ref() {
            None => Err("udp discovery is not started".into()),
            Some(task) if task.is_finished() => Err("udp discovery's task has ended".into()),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The seed peers' names re-resolved while discovery runs, through a fake resolver whose
    //! answer changes: real sockets, on loopback only.

    use std::net::Ipv4Addr;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::seeds::fake::{Answer, Fake};
    use super::*;
    use crate::config::PeerName;
    use crate::discovery::{LeaveReason, PeerEvent};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<PeerEvent>>);

    impl PeerSink for Recorder {
        fn peer_event(&self, event: PeerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    impl Recorder {
        fn seen(&self, id: &str) -> bool {
            self.0
                .lock()
                .unwrap()
                .iter()
                .any(|e| matches!(e, PeerEvent::Seen(info) if info.id == id))
        }

        fn left(&self, id: &str) -> Option<LeaveReason> {
            self.0.lock().unwrap().iter().find_map(|e| match e {
                PeerEvent::Left { id: left, reason } if left == id => Some(*reason),
                _ => None,
            })
        }
    }

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    fn config(names: Vec<PeerName>) -> NetworkConfig {
        NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            multicast: false,
            peer_names: names,
            peers_resolve: Duration::from_millis(50),
            heartbeat: Duration::from_millis(100),
            peer_timeout: Duration::from_millis(600),
            ..NetworkConfig::default()
        }
    }

    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn seeds_follow_what_their_name_resolves_to() {
        let name = PeerName {
            host: "seeds.zs.svc".into(),
            port: 1,
        };
        let fake = Fake::new(Answer::Fail);
        let a = UdpDiscovery::with_resolver(config(vec![name]), fake.clone());
        let a_sink = Arc::new(Recorder::default());
        a.start(info("a"), a_sink.clone()).await.unwrap();
        let b = UdpDiscovery::new(config(Vec::new()));
        let b_sink = Arc::new(Recorder::default());
        b.start(info("b"), b_sink.clone()).await.unwrap();
        let b_addr = b.local_addr().unwrap();

        // The name does not resolve yet: looked up again and again, never a crash, no seed.
        wait_until("three failed lookups", || fake.calls() >= 3).await;
        assert!(a.seeds().is_empty());
        assert!(!a_sink.seen("b") && !b_sink.seen("a"));

        // b's address appears (with an IPv6 one, skipped): a contacts it, they meet.
        fake.answer(Answer::Addrs(vec![b_addr, "[::1]:1".parse().unwrap()]));
        wait_until("a and b to meet", || a_sink.seen("b") && b_sink.seen("a")).await;
        assert_eq!(a.seeds(), [b_addr]);
        assert_eq!(a.stats().seeds, 1);

        // Lookups hang: each times out, the sockets keep working (b's heartbeats arrive) and
        // the last addresses stay.
        fake.answer(Answer::Hang);
        let calls = fake.calls();
        let received = a.stats().received;
        wait_until("two hung lookups to time out", || fake.calls() >= calls + 2).await;
        wait_until("b's heartbeats meanwhile", || {
            a.stats().received >= received + 3
        })
        .await;
        assert_eq!(a.seeds(), [b_addr]);

        // The address disappears: no longer a seed, but b, met through it, stays a peer while
        // it lives, and times out as any peer when it dies.
        fake.answer(Answer::Addrs(Vec::new()));
        wait_until("b's address to go", || a.seeds().is_empty()).await;
        let received = a.stats().received;
        wait_until("b's heartbeats", || a.stats().received >= received + 3).await;
        assert_eq!(a_sink.left("b"), None);
        b.kill();
        wait_until("b to time out", || {
            a_sink.left("b") == Some(LeaveReason::Timeout)
        })
        .await;
        assert_eq!(a.stats().peers, 0);
        a.stop().await;
    }
}
