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
//! # Datagram format (a contract, version 1)
//!
//! Without a cluster key a datagram is one compact JSON object:
//!
//! ```text
//! {"v":1,"type":"announce","reply_to":"127.0.0.1:40123","node":{<NodeInfo>},"peers":["127.0.0.1:40124"]}
//! ```
//!
//! - `v`: the discovery protocol version, [`DISCOVERY_VERSION`]; others are dropped.
//! - `type`: `announce` (a heartbeat or a newcomer; answered with a `reply` when the sender is
//!   new or its information changed), `reply` (a direct answer to an announce; never answered),
//!   or `goodbye` (the sender stops; `node` then carries only its id, name and kind).
//! - `reply_to`: the `ip:port` of the sender's unicast socket, where direct answers go.
//! - `node`: the sender's [`NodeInfo`] as serialised by serde.
//! - `peers` (optional, unicast datagrams only): the `reply_to` addresses of peers the sender
//!   knows, at most 64. A receiver announces itself to those it does not know yet, which makes a
//!   static (seed-list) cluster converge: a node that only knows one seed learns everyone.
//!
//! Unknown fields are ignored. With a cluster key the datagram is the same JSON, a newline
//! (`\n`, which compact JSON never contains), and 64 lowercase hex digits:
//! `ClusterKey::sign(&[MAC_CONTEXT, json])`, the HMAC-SHA256 of the JSON bytes (each part
//! length-prefixed, see [`ClusterKey::sign`]). A node with a key drops unsigned and forged
//! datagrams; a node without a key drops signed ones: nodes with different keys never see each
//! other. Each drop is counted ([`DiscoveryStats`]) and logged once per sender and kind.
//!
//! Datagrams larger than [`MAX_DATAGRAM_BYTES`] (or [`NetworkConfig::max_message_bytes`] when
//! smaller) are dropped on receipt; an own announcement that would exceed it is not sent and an
//! error naming its size is logged.
//!
//! # Behaviour
//!
//! `start` announces to the group and to every seed peer; a new (or changed) peer is reported
//! with [`PeerEvent::Seen`] and answered directly. Every [`NetworkConfig::heartbeat`] the node
//! re-announces to the group, the seed peers, and by unicast to every known peer not heard on the
//! group lately (so static clusters stay alive). Any announce or reply from a known peer refreshes
//! it; a peer silent past [`NetworkConfig::peer_timeout`] is reported as
//! [`PeerEvent::Left`] with [`LeaveReason::Timeout`]. `stop` sends `goodbye` to the group, every
//! known peer and every seed, and peers report [`LeaveReason::Goodbye`] at once.
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

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Discovery, LeaveReason, PeerEvent, PeerSink};
use crate::config::NetworkConfig;
use crate::security::{ClusterKey, DropLog};
use crate::{Error, NodeInfo, Result};

/// The version of the discovery datagram format (the `v` field).
pub const DISCOVERY_VERSION: u64 = 1;

/// The largest datagram sent or accepted. IPv4 UDP carries at most 65,507 bytes; anything above
/// the path MTU (about 1,470 bytes on Ethernet) travels as IP fragments.
pub const MAX_DATAGRAM_BYTES: usize = 60 * 1024;

/// The first part signed with the cluster key, before the JSON bytes, so a discovery datagram
/// can never pass for another kind of signed message.
pub const MAC_CONTEXT: &[u8] = b"zeroservices-discovery/1";

/// At most this many peer addresses are gossiped in one datagram.
const MAX_GOSSIP_PEERS: usize = 64;
/// Larger than any UDP payload, so the kernel never truncates a datagram silently.
const RECV_BUFFER: usize = 65_536;
/// The multicast TTL: announcements never cross a router.
const MULTICAST_TTL: u32 = 1;

/// Counters of a [`UdpDiscovery`], for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiscoveryStats {
    /// Datagrams received on either socket (own multicast echoes included).
    pub received: u64,
    /// Dropped: not UTF-8 JSON, not the expected shape, or a bad `reply_to`.
    pub dropped_malformed: u64,
    /// Dropped: unsigned or forged while a cluster key is set, or signed while none is.
    pub dropped_unsigned: u64,
    /// Dropped: a `v` other than [`DISCOVERY_VERSION`].
    pub dropped_version: u64,
    /// Dropped: larger than the datagram limit.
    pub dropped_oversized: u64,
    /// Dropped: an announcement or reply from a new node id while [`NetworkConfig::max_peers`]
    /// peers are known already.
    pub dropped_over_peer_cap: u64,
    /// Peers known now.
    pub peers: usize,
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
        let limit = config.max_message_bytes.min(MAX_DATAGRAM_BYTES);
        Self {
            shared: Arc::new(Shared {
                config,
                limit,
                started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                unicast: OnceLock::new(),
                reply_to: OnceLock::new(),
                multicast_active: AtomicBool::new(false),
                task: Mutex::new(None),
                state: Mutex::new(State::default()),
                received: AtomicU64::new(0),
                malformed: DropLog::new(),
                unsigned: DropLog::new(),
                version: DropLog::new(),
                oversized: DropLog::new(),
                over_cap: DropLog::new(),
                send_failures: DropLog::new(),
                oversize_logged: AtomicUsize::new(0),
            }),
        }
    }

    /// Counters: datagrams received and dropped, peers known.
    pub fn stats(&self) -> DiscoveryStats {
        let s = &self.shared;
        DiscoveryStats {
            received: s.received.load(Ordering::Relaxed),
            dropped_malformed: s.malformed.count(),
            dropped_unsigned: s.unsigned.count(),
            dropped_version: s.version.count(),
            dropped_oversized: s.oversized.count(),
            dropped_over_peer_cap: s.over_cap.count(),
            peers: s.lock().peers.len(),
        }
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
                Err(msg) if !config.peers.is_empty() => {
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
            "udp discovery started"
        );
        shared.lock().me = Some(me);
        let task = tokio::spawn(run(shared.clone(), unicast, multicast, sink));
        *shared.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        shared.announce_everywhere().await;
        Ok(())
    }

    async fn announce(&self, me: NodeInfo) -> Result<()> {
        let shared = &self.shared;
        shared.lock().me = Some(me);
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
            let _ = task.await;
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Announce,
    Reply,
    Goodbye,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u64,
    #[serde(rename = "type")]
    kind: Kind,
    reply_to: SocketAddr,
    node: &'a NodeInfo,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    peers: &'a [SocketAddr],
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Kind,
    reply_to: SocketAddr,
    node: NodeInfo,
    #[serde(default)]
    peers: Vec<SocketAddr>,
}

/// Why a datagram was dropped.
#[derive(Debug, PartialEq)]
enum Rejection {
    Oversized(usize),
    Malformed(String),
    Unsigned(&'static str),
    Version(String),
}

/// Splits `<json>\n<64 hex>` into the JSON and the MAC; anything else is all JSON.
fn split_mac(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let n = bytes.len();
    if n > 65 && bytes[n - 65] == b'\n' {
        (&bytes[..n - 65], Some(&bytes[n - 64..]))
    } else {
        (bytes, None)
    }
}

fn decode(bytes: &[u8], key: Option<&ClusterKey>, limit: usize) -> Result<Incoming, Rejection> {
    if bytes.len() > limit {
        return Err(Rejection::Oversized(bytes.len()));
    }
    let (json, mac) = split_mac(bytes);
    let json = match (key, mac) {
        (Some(_), None) => return Err(Rejection::Unsigned("unsigned")),
        (Some(key), Some(mac)) => {
            if !key.verify(&[MAC_CONTEXT, json], mac) {
                return Err(Rejection::Unsigned(
                    "bad signature (forged, or another cluster key)",
                ));
            }
            json
        }
        (None, Some(mac)) if mac.iter().all(u8::is_ascii_hexdigit) => {
            return Err(Rejection::Unsigned(
                "signed with a cluster key, and this node has none",
            ));
        }
        (None, _) => bytes,
    };
    let value: Value =
        serde_json::from_slice(json).map_err(|e| Rejection::Malformed(format!("not JSON: {e}")))?;
    match value.get("v").and_then(Value::as_u64) {
        Some(DISCOVERY_VERSION) => {}
        Some(_) => return Err(Rejection::Version(value["v"].to_string())),
        None if value.get("v").is_some() => return Err(Rejection::Version(value["v"].to_string())),
        None => return Err(Rejection::Malformed("no version field `v`".to_owned())),
    }
    let msg: Incoming = serde_json::from_value(value)
        .map_err(|e| Rejection::Malformed(format!("bad shape: {e}")))?;
    let ip = msg.reply_to.ip();
    if !msg.reply_to.is_ipv4()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip == IpAddr::V4(Ipv4Addr::BROADCAST)
        || msg.reply_to.port() == 0
    {
        return Err(Rejection::Malformed(format!(
            "unusable reply_to {}",
            msg.reply_to
        )));
    }
    if msg.node.id.is_empty() {
        return Err(Rejection::Malformed("empty node id".to_owned()));
    }
    Ok(msg)
}

/// Serialises and signs one datagram.
fn encode(
    kind: Kind,
    node: &NodeInfo,
    reply_to: SocketAddr,
    peers: &[SocketAddr],
    key: Option<&ClusterKey>,
) -> io::Result<Vec<u8>> {
    let msg = Outgoing {
        v: DISCOVERY_VERSION,
        kind,
        reply_to,
        node,
        peers,
    };
    let mut bytes = serde_json::to_vec(&msg)?;
    if let Some(key) = key {
        let mac = key.sign(&[MAC_CONTEXT, &bytes]);
        bytes.push(b'\n');
        bytes.extend_from_slice(mac.as_bytes());
    }
    Ok(bytes)
}

struct PeerState {
    info: NodeInfo,
    reply_to: SocketAddr,
    last_seen: Instant,
    /// When it was last heard on the group socket: peers not heard there get unicast heartbeats.
    last_group: Option<Instant>,
}

#[derive(Default)]
struct State {
    me: Option<NodeInfo>,
    peers: HashMap<String, PeerState>,
    /// Ids that said goodbye, ignored for a peer timeout so a late heartbeat cannot revive them.
    gone: HashMap<String, Instant>,
    /// Gossiped addresses announced to lately, so each is probed at most once per heartbeat.
    probed: HashMap<SocketAddr, Instant>,
}

type Sends = Vec<(SocketAddr, Vec<u8>)>;

struct Shared {
    config: NetworkConfig,
    /// The largest datagram accepted.
    limit: usize,
    started: AtomicBool,
    stopped: AtomicBool,
    unicast: OnceLock<Arc<UdpSocket>>,
    reply_to: OnceLock<SocketAddr>,
    multicast_active: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
    state: Mutex<State>,
    received: AtomicU64,
    malformed: DropLog,
    unsigned: DropLog,
    version: DropLog,
    oversized: DropLog,
    /// New ids beyond `max_peers`: counted, logged once (one key: a flood of forged ids from
    /// many addresses still logs one line).
    over_cap: DropLog,
    send_failures: DropLog,
    /// The size of the last own datagram reported as too large, to log each size once.
    oversize_logged: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Each update of the state is a handful of inserts and removes: a poisoned lock is
        // still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn key(&self) -> Option<&ClusterKey> {
        self.config.cluster_key.as_ref()
    }

    fn group(&self) -> SocketAddr {
        SocketAddr::V4(self.config.multicast_group)
    }

    /// Whether this node may send to `to`: on a loopback interface, only loopback addresses
    /// and the group (kept on loopback by `IP_MULTICAST_IF`).
    fn allowed(&self, to: SocketAddr) -> bool {
        if to.port() == 0 || to.ip().is_unspecified() {
            return false;
        }
        if to.ip().is_multicast() {
            return to == self.group();
        }
        !self.config.interface.is_loopback() || to.ip().is_loopback()
    }

    /// One datagram of ours, or `None` (logged) when it cannot be built or is too large.
    fn datagram(&self, kind: Kind, me: &NodeInfo, peers: &[SocketAddr]) -> Option<Vec<u8>> {
        let reply_to = *self.reply_to.get()?;
        let bytes = match encode(kind, me, reply_to, peers, self.key()) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(node = %me.id, "discovery: cannot serialise our announcement: {e}");
                return None;
            }
        };
        if bytes.len() > self.limit {
            if self.oversize_logged.swap(bytes.len(), Ordering::Relaxed) != bytes.len() {
                tracing::error!(
                    node = %me.id,
                    size = bytes.len(),
                    limit = self.limit,
                    "discovery: our {kind:?} is {} bytes, over the {}-byte datagram limit; it is \
                     not sent and peers will not see this node (smaller JSON schemas, or fewer \
                     resources per node, fix it)",
                    bytes.len(),
                    self.limit
                );
            }
            return None;
        }
        Some(bytes)
    }

    /// Known peers' addresses, for gossip.
    fn gossip(state: &State) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = state.peers.values().map(|p| p.reply_to).collect();
        peers.sort();
        peers.dedup();
        peers.truncate(MAX_GOSSIP_PEERS);
        peers
    }

    /// Announcements to the group, every seed, and every known peer not heard on the group
    /// within a peer timeout.
    fn announcements(&self) -> Sends {
        let state = self.lock();
        let Some(me) = state.me.as_ref() else {
            return Vec::new();
        };
        let now = Instant::now();
        let mut sends = Vec::new();
        if self.multicast_active.load(Ordering::Relaxed)
            && let Some(bytes) = self.datagram(Kind::Announce, me, &[])
        {
            sends.push((self.group(), bytes));
        }
        let mut targets: Vec<SocketAddr> = self.config.peers.clone();
        targets.extend(
            state
                .peers
                .values()
                .filter(|p| {
                    p.last_group
                        .is_none_or(|t| now.duration_since(t) > self.config.peer_timeout)
                })
                .map(|p| p.reply_to),
        );
        targets.sort();
        targets.dedup();
        targets.retain(|t| Some(t) != self.reply_to.get());
        if !targets.is_empty()
            && let Some(bytes) = self.datagram(Kind::Announce, me, &Self::gossip(&state))
        {
            sends.extend(targets.into_iter().map(|t| (t, bytes.clone())));
        }
        sends
    }

    async fn announce_everywhere(&self) {
        let Some(socket) = self.unicast.get() else {
            return;
        };
        for (to, bytes) in self.announcements() {
            self.send(socket, to, &bytes).await;
        }
    }

    /// Goodbyes to the group, every known peer and every seed.
    fn goodbyes(&self) -> Sends {
        let state = self.lock();
        let Some(me) = state.me.as_ref() else {
            return Vec::new();
        };
        // Only who is leaving: a goodbye stays small whatever the node owns.
        let bare = NodeInfo {
            id: me.id.clone(),
            name: me.name.clone(),
            kind: me.kind,
            protocol: me.protocol,
            endpoints: Default::default(),
            resources: Vec::new(),
            watches: Vec::new(),
        };
        let Some(bytes) = self.datagram(Kind::Goodbye, &bare, &[]) else {
            return Vec::new();
        };
        let mut targets: Vec<SocketAddr> = self.config.peers.clone();
        targets.extend(state.peers.values().map(|p| p.reply_to));
        targets.sort();
        targets.dedup();
        if self.multicast_active.load(Ordering::Relaxed) {
            targets.insert(0, self.group());
        }
        targets.retain(|t| Some(t) != self.reply_to.get());
        targets.into_iter().map(|t| (t, bytes.clone())).collect()
    }

    async fn send(&self, socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) {
        if !self.allowed(to) {
            self.send_failures.drop_from(
                &to.to_string(),
                "discovery send",
                &format!("not reachable from interface {}", self.config.interface),
            );
            return;
        }
        if let Err(e) = socket.send_to(bytes, to).await {
            tracing::debug!(%to, "discovery: send failed: {e}");
            self.send_failures
                .drop_from(&to.to_string(), "discovery send", &e.to_string());
        }
    }

    fn reject(&self, rejection: Rejection, from: SocketAddr) {
        let sender = from.to_string();
        tracing::debug!(%from, ?rejection, "discovery: dropped a datagram");
        match rejection {
            Rejection::Oversized(n) => self.oversized.drop_from(
                &sender,
                "oversized discovery datagram",
                &format!("{n} bytes, over the {}-byte limit", self.limit),
            ),
            Rejection::Malformed(reason) => {
                self.malformed
                    .drop_from(&sender, "malformed discovery datagram", &reason)
            }
            Rejection::Unsigned(reason) => {
                self.unsigned
                    .drop_from(&sender, "unsigned discovery datagram", reason)
            }
            Rejection::Version(v) => self.version.drop_from(
                &sender,
                "discovery datagram of another version",
                &format!("version {v}, expected {DISCOVERY_VERSION}"),
            ),
        }
    }

    /// Takes one datagram: updates the peers, reports to the sink, answers.
    async fn handle(&self, bytes: &[u8], from: SocketAddr, via_group: bool, sink: &dyn PeerSink) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let msg = match decode(bytes, self.key(), self.limit) {
            Ok(msg) => msg,
            Err(rejection) => return self.reject(rejection, from),
        };
        if !self.allowed(msg.reply_to) {
            return self.reject(
                Rejection::Malformed(format!(
                    "reply_to {} is not reachable from interface {}",
                    msg.reply_to, self.config.interface
                )),
                from,
            );
        }
        let (events, sends) = self.apply(msg, via_group);
        for event in events {
            sink.peer_event(event);
        }
        if let Some(socket) = self.unicast.get() {
            for (to, bytes) in sends {
                self.send(socket, to, &bytes).await;
            }
        }
    }

    fn apply(&self, msg: Incoming, via_group: bool) -> (Vec<PeerEvent>, Sends) {
        let mut events = Vec::new();
        let mut sends = Vec::new();
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(me) = state.me.clone() else {
            return (events, sends);
        };
        let id = msg.node.id.clone();
        if id == me.id {
            return (events, sends);
        }
        let now = Instant::now();
        if msg.kind == Kind::Goodbye {
            // Remembered only for known peers (a late heartbeat of theirs must not revive them),
            // so forged goodbyes cannot grow this map beyond the peer cap.
            if state.peers.contains_key(&id) && state.gone.len() < self.config.max_peers {
                state.gone.insert(id.clone(), now);
            }
            if state.peers.remove(&id).is_some() {
                events.push(PeerEvent::Left {
                    id,
                    reason: LeaveReason::Goodbye,
                });
            }
            return (events, sends);
        }
        if state.gone.contains_key(&id) {
            return (events, sends);
        }
        let full = state.peers.len() >= self.config.max_peers;
        let changed = match state.peers.get_mut(&id) {
            Some(peer) => {
                peer.last_seen = now;
                peer.reply_to = msg.reply_to;
                if via_group {
                    peer.last_group = Some(now);
                }
                if peer.info != msg.node {
                    peer.info = msg.node.clone();
                    true
                } else {
                    false
                }
            }
            None if full => {
                self.over_cap.drop_from(
                    "",
                    "discovery announcement",
                    &format!(
                        "{} peers known already (max_peers): announcements from new node ids \
                         are dropped (first: {id} from {}; this is logged once)",
                        state.peers.len(),
                        msg.reply_to
                    ),
                );
                return (events, sends);
            }
            None => {
                state.peers.insert(
                    id.clone(),
                    PeerState {
                        info: msg.node.clone(),
                        reply_to: msg.reply_to,
                        last_seen: now,
                        last_group: via_group.then_some(now),
                    },
                );
                true
            }
        };
        if changed {
            tracing::debug!(node = %me.id, peer = %id, reply_to = %msg.reply_to, "discovery: peer seen");
            events.push(PeerEvent::Seen(msg.node));
        }
        let gossip = Self::gossip(state);
        if changed
            && msg.kind == Kind::Announce
            && let Some(bytes) = self.datagram(Kind::Reply, &me, &gossip)
        {
            sends.push((msg.reply_to, bytes));
        }
        // Introduce ourselves to the peers the sender knows and we do not.
        let known: HashSet<SocketAddr> = state.peers.values().map(|p| p.reply_to).collect();
        let fresh: Vec<SocketAddr> = msg
            .peers
            .into_iter()
            .filter(|a| {
                Some(a) != self.reply_to.get()
                    && !known.contains(a)
                    && self.allowed(*a)
                    && !a.ip().is_multicast()
                    && state
                        .probed
                        .get(a)
                        .is_none_or(|t| now.duration_since(*t) >= self.config.heartbeat)
            })
            .take(MAX_GOSSIP_PEERS)
            .collect();
        if !fresh.is_empty()
            && let Some(bytes) = self.datagram(Kind::Announce, &me, &gossip)
        {
            for addr in fresh {
                // Bounded like the peers: beyond it, gossiped addresses wait for the reaper.
                if state.probed.len() >= self.config.max_peers {
                    break;
                }
                state.probed.insert(addr, now);
                sends.push((addr, bytes.clone()));
            }
        }
        (events, sends)
    }

    /// Drops the peers silent past the timeout.
    fn reap(&self, sink: &dyn PeerSink) {
        let now = Instant::now();
        let timeout = self.config.peer_timeout;
        let expired: Vec<String> = {
            let mut state = self.lock();
            let expired: Vec<String> = state
                .peers
                .iter()
                .filter(|(_, p)| now.duration_since(p.last_seen) > timeout)
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                state.peers.remove(id);
            }
            state.gone.retain(|_, t| now.duration_since(*t) <= timeout);
            let heartbeat = self.config.heartbeat;
            state
                .probed
                .retain(|_, t| now.duration_since(*t) < heartbeat);
            expired
        };
        for id in expired {
            tracing::debug!(peer = %id, "discovery: peer timed out");
            sink.peer_event(PeerEvent::Left {
                id,
                reason: LeaveReason::Timeout,
            });
        }
    }
}

async fn recv_or_pending(
    socket: Option<&UdpSocket>,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The discovery's one task: both sockets, the heartbeat and the reaper, so peer events are
/// reported in order.
async fn run(
    shared: Arc<Shared>,
    unicast: Arc<UdpSocket>,
    multicast: Option<UdpSocket>,
    sink: Arc<dyn PeerSink>,
) {
    let mut unicast_buf = vec![0u8; RECV_BUFFER];
    let mut group_buf = vec![0u8; RECV_BUFFER];
    let beat = shared.config.heartbeat.max(Duration::from_millis(1));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reap_every = (shared.config.peer_timeout / 5)
        .min(beat)
        .max(Duration::from_millis(1));
    let mut reaper = tokio::time::interval_at(Instant::now() + reap_every, reap_every);
    reaper.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = unicast.recv_from(&mut unicast_buf) => match r {
                Ok((n, from)) => shared.handle(&unicast_buf[..n], from, false, &*sink).await,
                Err(e) => recv_failed(&e).await,
            },
            r = recv_or_pending(multicast.as_ref(), &mut group_buf) => match r {
                Ok((n, from)) => shared.handle(&group_buf[..n], from, true, &*sink).await,
                Err(e) => recv_failed(&e).await,
            },
            _ = heartbeat.tick() => shared.announce_everywhere().await,
            _ = reaper.tick() => shared.reap(&*sink),
        }
    }
}

async fn recv_failed(e: &io::Error) {
    // Some systems report an ICMP "port unreachable" of an earlier send on the next receive;
    // never fatal, but do not spin on a persistent error.
    tracing::debug!("discovery: receive failed: {e}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

fn unicast_socket(config: &NetworkConfig) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if config.multicast && config.discovery_port == Some(config.multicast_group.port()) {
        // Shares its port with the group socket.
        socket.set_reuse_address(true)?;
    }
    let port = config.discovery_port.unwrap_or(0);
    socket.bind(&SocketAddrV4::new(config.interface, port).into())?;
    socket.set_multicast_ttl_v4(MULTICAST_TTL)?;
    socket.set_multicast_loop_v4(true)?;
    if !config.interface.is_unspecified() {
        socket.set_multicast_if_v4(&config.interface)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The group socket, or an error message that says what failed and how to fix it.
fn multicast_socket(config: &NetworkConfig) -> std::result::Result<StdUdpSocket, String> {
    let group = config.multicast_group;
    let interface = config.interface;
    let bind =
        |e: io::Error| format!("discovery: cannot bind the multicast socket to {group}: {e}");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    socket.set_reuse_address(true).map_err(bind)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true).map_err(bind)?;
    // Bound to the group address, the socket hears only this group (Linux would otherwise
    // deliver every group joined by anyone on this port). Windows cannot bind to a group.
    let ip = if cfg!(windows) {
        Ipv4Addr::UNSPECIFIED
    } else {
        *group.ip()
    };
    socket
        .bind(&SocketAddrV4::new(ip, group.port()).into())
        .map_err(bind)?;
    socket
        .join_multicast_v4(group.ip(), &interface)
        .map_err(|e| {
            format!(
                "discovery: cannot join multicast group {} on interface {interface}: {e}. On \
             loopback, check that `ip link set lo multicast on` and `ip route add 224.0.0.0/4 dev \
             lo` are in place; where multicast is unavailable set ZS_MULTICAST=off and list seed \
             peers in ZS_PEERS",
                group.ip()
            )
        })?;
    socket.set_multicast_loop_v4(true).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    Ok(socket.into())
}

/// The address peers reach the unicast socket at: the bound one, or with interface `0.0.0.0`
/// the local address the OS routes from toward the group (or the first seed).
fn advertised_addr(config: &NetworkConfig, bound: SocketAddr) -> SocketAddr {
    if !config.interface.is_unspecified() {
        return bound;
    }
    let targets =
        std::iter::once(SocketAddr::V4(config.multicast_group)).chain(config.peers.iter().copied());
    for target in targets {
        // Connecting a UDP socket only picks a route and a source address; nothing is sent.
        let local = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect(target).and_then(|()| s.local_addr()));
        if let Ok(local) = local
            && !local.ip().is_unspecified()
        {
            return SocketAddr::new(local.ip(), bound.port());
        }
    }
    tracing::warn!(
        "discovery: no route to {} nor to any seed peer; announcing 127.0.0.1 (set \
         ZS_DISCOVERY_INTERFACE)",
        config.multicast_group
    );
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    #[test]
    fn round_trips_with_and_without_key() {
        let key = ClusterKey::new("k");
        let peers = [addr()];
        for k in [None, Some(&key)] {
            let bytes = encode(Kind::Announce, &info("a"), addr(), &peers, k).unwrap();
            let msg = decode(&bytes, k, MAX_DATAGRAM_BYTES).unwrap();
            assert_eq!(msg.kind, Kind::Announce);
            assert_eq!(msg.node, info("a"));
            assert_eq!(msg.peers, peers);
        }
        let plain = encode(Kind::Reply, &info("a"), addr(), &[], None).unwrap();
        let text = std::str::from_utf8(&plain).unwrap();
        assert!(text.starts_with(r#"{"v":1,"type":"reply","reply_to":"127.0.0.1:4000","node":{"#));
        assert!(!text.contains("peers"));
    }

    #[test]
    fn any_interface_announces_a_routable_address() {
        // Connecting a UDP socket sends nothing: this only asks the routing table.
        let config = NetworkConfig {
            interface: Ipv4Addr::UNSPECIFIED,
            ..NetworkConfig::default()
        };
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let addr = advertised_addr(&config, bound);
        assert!(!addr.ip().is_unspecified());
        assert_eq!(addr.port(), 4000);
        let loopback = NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            ..NetworkConfig::default()
        };
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertised_addr(&loopback, bound), bound);
    }

    #[test]
    fn keys_must_match() {
        let key = ClusterKey::new("k");
        let signed = encode(Kind::Announce, &info("a"), addr(), &[], Some(&key)).unwrap();
        let plain = encode(Kind::Announce, &info("a"), addr(), &[], None).unwrap();
        let other = ClusterKey::new("other");
        let unsigned = |r| matches!(r, Err(Rejection::Unsigned(_)));
        assert!(unsigned(decode(&plain, Some(&key), 70_000)));
        assert!(unsigned(decode(&signed, Some(&other), 70_000)));
        assert!(unsigned(decode(&signed, None, 70_000)));
        let mut forged = signed.clone();
        forged[10] ^= 1;
        assert!(unsigned(decode(&forged, Some(&key), 70_000)));
    }

    #[test]
    fn garbage_is_rejected() {
        let malformed = |b: &[u8]| matches!(decode(b, None, 1000), Err(Rejection::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(b"\xff\xfe"));
        assert!(malformed(br#"{"v":1,"type":"announce""#));
        assert!(malformed(br#"{"type":"announce"}"#));
        assert!(malformed(
            br#"{"v":1,"type":"shout","reply_to":"127.0.0.1:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":1,"type":"announce","reply_to":"0.0.0.0:1","node":{"id":"a","name":"b"}}"#
        ));
        assert!(malformed(
            br#"{"v":1,"type":"announce","reply_to":"127.0.0.1:1","node":{"id":"","name":"b"}}"#
        ));
        assert!(malformed(b"[1,2]"));
        assert!(matches!(
            decode(br#"{"v":2,"type":"announce"}"#, None, 1000),
            Err(Rejection::Version(_))
        ));
        assert!(matches!(
            decode(br#"{"v":"1"}"#, None, 1000),
            Err(Rejection::Version(_))
        ));
        assert_eq!(
            decode(&[b' '; 1001], None, 1000).err(),
            Some(Rejection::Oversized(1001))
        );
    }
}
