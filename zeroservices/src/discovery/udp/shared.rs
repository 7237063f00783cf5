//! What the discovery's handle and its task share: the settings, the unicast socket, the peer
//! table and the counters; taking a datagram (checks, table, reports, answers), sending ours,
//! and the task that runs both sockets, the heartbeat and the reaper.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::datagram::{self, Incoming, Kind, Rejection};
use super::peers::{Limits, Table};
use super::seeds::{self, Outcome, Resolve, Seeds, SystemResolver};
use super::{DISCOVERY_VERSION, DiscoveryStats, MAX_DATAGRAM_BYTES, targets};
use crate::NodeInfo;
use crate::config::{NetworkConfig, PEER_LOOKUP_TIMEOUT};
use crate::discovery::{LeaveReason, PeerEvent, PeerSink};
use crate::security::DropLog;
use crate::security::seal::{OVERHEAD, Sealer};

/// Larger than any UDP payload, so the kernel never truncates a datagram silently.
const RECV_BUFFER: usize = 65_536;

type Sends = Vec<(SocketAddr, Vec<u8>)>;

pub(crate) struct Shared {
    pub(crate) config: NetworkConfig,
    /// Seals and opens datagrams, with a cluster key.
    sealer: Option<Sealer>,
    /// The largest datagram accepted.
    limit: usize,
    pub(crate) started: AtomicBool,
    pub(crate) stopped: AtomicBool,
    pub(crate) unicast: OnceLock<Arc<UdpSocket>>,
    pub(crate) reply_to: OnceLock<SocketAddr>,
    pub(crate) multicast_active: AtomicBool,
    pub(crate) task: Mutex<Option<JoinHandle<()>>>,
    table: Mutex<Table>,
    /// The seed peers given by name, and what they resolve to now.
    seeds: Mutex<Seeds>,
    /// Looks their names up.
    resolver: Arc<dyn Resolve>,
    received: AtomicU64,
    malformed: DropLog,
    unsigned: DropLog,
    replayed: DropLog,
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
    pub(crate) fn new(config: NetworkConfig) -> Self {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// [`Shared::new`] with another resolver for the seed peers' names (tests).
    pub(crate) fn with_resolver(config: NetworkConfig, resolver: Arc<dyn Resolve>) -> Self {
        let seeds = Seeds::new(
            config.peer_names.clone(),
            config.max_peers,
            config.peers_resolve,
        );
        let limit = config.max_message_bytes.min(MAX_DATAGRAM_BYTES);
        let sealer = Sealer::for_discovery(
            config.cluster_key.as_ref(),
            DISCOVERY_VERSION,
            config.replay_window,
        );
        Self {
            sealer,
            config,
            limit,
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            unicast: OnceLock::new(),
            reply_to: OnceLock::new(),
            multicast_active: AtomicBool::new(false),
            task: Mutex::new(None),
            table: Mutex::new(Table::default()),
            seeds: Mutex::new(seeds),
            resolver,
            received: AtomicU64::new(0),
            malformed: DropLog::new(),
            unsigned: DropLog::new(),
            replayed: DropLog::new(),
            version: DropLog::new(),
            oversized: DropLog::new(),
            over_cap: DropLog::new(),
            send_failures: DropLog::new(),
            oversize_logged: AtomicUsize::new(0),
        }
    }

    pub(crate) fn stats(&self) -> DiscoveryStats {
        let seeds = self.seed_addrs().len();
        let peers = self.lock().peers.len();
        DiscoveryStats {
            received: self.received.load(Ordering::Relaxed),
            dropped_malformed: self.malformed.count(),
            dropped_unsigned: self.unsigned.count(),
            dropped_replayed: self.replayed.count(),
            dropped_version: self.version.count(),
            dropped_oversized: self.oversized.count(),
            dropped_over_peer_cap: self.over_cap.count(),
            peers,
            seeds,
        }
    }

    fn seeds(&self) -> MutexGuard<'_, Seeds> {
        self.seeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The seed peers now: those given as addresses, and those the names resolve to.
    pub(crate) fn seed_addrs(&self) -> Vec<SocketAddr> {
        let mut addrs = self.config.peers.clone();
        addrs.extend_from_slice(self.seeds().addrs());
        addrs.sort();
        addrs.dedup();
        addrs
    }

    /// Takes one round of lookups of the seeds' names; announcements to the addresses that
    /// appeared (those gone are simply no longer seeds).
    fn resolved(&self, outcomes: Vec<Outcome>) -> Sends {
        let change = self.seeds().apply(outcomes);
        if change.appeared.is_empty() {
            return Vec::new();
        }
        let table = self.lock();
        let Some(me) = table.me.as_ref() else {
            return Vec::new();
        };
        let own = self.reply_to.get().copied();
        let to = targets::announcements(&change.appeared, Vec::new(), own);
        match self.datagram(Kind::Announce, me, &table.gossip()) {
            Some(bytes) if !to.is_empty() => to.into_iter().map(|t| (t, bytes.clone())).collect(),
            _ => Vec::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Each update of the table is a handful of inserts and removes: a poisoned lock is
        // still consistent.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's information, announced from now on.
    pub(crate) fn set_me(&self, me: NodeInfo) {
        self.lock().me = Some(me);
    }

    pub(crate) fn take_task(&self) -> Option<JoinHandle<()>> {
        self.task.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn sealer(&self) -> Option<&Sealer> {
        self.sealer.as_ref()
    }

    fn group(&self) -> SocketAddr {
        SocketAddr::V4(self.config.multicast_group)
    }

    fn limits(&self) -> Limits {
        Limits {
            max_peers: self.config.max_peers,
            peer_timeout: self.config.peer_timeout,
            heartbeat: self.config.heartbeat,
        }
    }

    fn allowed(&self, to: SocketAddr) -> bool {
        targets::allowed(self.config.interface, self.group(), to)
    }

    /// One datagram of ours, or `None` (logged) when it cannot be built or is too large.
    fn datagram(&self, kind: Kind, me: &NodeInfo, peers: &[SocketAddr]) -> Option<Vec<u8>> {
        let reply_to = *self.reply_to.get()?;
        let bytes = match datagram::encode(kind, me, reply_to, peers) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(node = %me.id, "discovery: cannot serialise our announcement: {e}");
                return None;
            }
        };
        let overhead = if self.sealer.is_some() { OVERHEAD } else { 0 };
        if bytes.len() + overhead > self.limit {
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

    /// Announcements to the group, every seed, and every known peer not heard on the group
    /// within a peer timeout.
    fn announcements(&self) -> Sends {
        let seeds = self.seed_addrs();
        let table = self.lock();
        let Some(me) = table.me.as_ref() else {
            return Vec::new();
        };
        let mut sends = Vec::new();
        if self.multicast_active.load(Ordering::Relaxed)
            && let Some(bytes) = self.datagram(Kind::Announce, me, &[])
        {
            sends.push((self.group(), bytes));
        }
        let due = table.not_heard_on_group(Instant::now(), self.config.peer_timeout);
        let to = targets::announcements(&seeds, due, self.reply_to.get().copied());
        if !to.is_empty()
            && let Some(bytes) = self.datagram(Kind::Announce, me, &table.gossip())
        {
            sends.extend(to.into_iter().map(|t| (t, bytes.clone())));
        }
        sends
    }

    pub(crate) async fn announce_everywhere(&self) {
        let Some(socket) = self.unicast.get() else {
            return;
        };
        for (to, bytes) in self.announcements() {
            self.send(socket, to, &bytes).await;
        }
    }

    /// Goodbyes to the group, every known peer and every seed.
    pub(crate) fn goodbyes(&self) -> Sends {
        let seeds = self.seed_addrs();
        let table = self.lock();
        let Some(me) = table.me.as_ref() else {
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
            insecure: me.insecure,
            stores: Default::default(),
        };
        let Some(bytes) = self.datagram(Kind::Goodbye, &bare, &[]) else {
            return Vec::new();
        };
        let group = self
            .multicast_active
            .load(Ordering::Relaxed)
            .then(|| self.group());
        let known = table.peers.values().map(|p| p.reply_to);
        let to = targets::goodbyes(group, &seeds, known, self.reply_to.get().copied());
        to.into_iter().map(|t| (t, bytes.clone())).collect()
    }

    pub(crate) async fn send(&self, socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) {
        if !self.allowed(to) {
            self.send_failures.drop_from(
                &to.to_string(),
                "discovery send",
                &format!("not reachable from interface {}", self.config.interface),
            );
            return;
        }
        // Sealed per destination: each copy has its own nonce, so one received twice (on the
        // group and directly) is not taken for a replay.
        let sealed;
        let bytes = match self.sealer() {
            Some(sealer) => {
                sealed = datagram::seal(bytes, sealer);
                &sealed[..]
            }
            None => bytes,
        };
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
            Rejection::Replayed(reason) => {
                self.replayed
                    .drop_from(&sender, "replayed discovery datagram", reason)
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
        let msg = match datagram::decode(bytes, self.sealer(), self.limit) {
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

    /// Updates the table with one datagram; the events to report and the datagrams to send.
    fn apply(&self, msg: Incoming, via_group: bool) -> (Vec<PeerEvent>, Sends) {
        let sender = msg.reply_to;
        let mut table = self.lock();
        let own = self.reply_to.get().copied();
        let limits = self.limits();
        let applied = table.apply(msg, via_group, Instant::now(), limits, own, |a| {
            self.allowed(a)
        });
        if let Some(line) = &applied.over_cap {
            self.over_cap.drop_from("", "discovery announcement", line);
        }
        let mut sends = Vec::new();
        let Some(me) = table.me.clone() else {
            return (applied.events, sends);
        };
        let gossip = table.gossip();
        if applied.reply
            && let Some(bytes) = self.datagram(Kind::Reply, &me, &gossip)
        {
            sends.push((sender, bytes));
        }
        if !applied.introduce.is_empty()
            && let Some(bytes) = self.datagram(Kind::Announce, &me, &gossip)
        {
            sends.extend(applied.introduce.into_iter().map(|a| (a, bytes.clone())));
        }
        (applied.events, sends)
    }

    /// Drops the peers silent past the timeout.
    fn reap(&self, sink: &dyn PeerSink) {
        let expired = self.lock().reap(Instant::now(), self.limits());
        for id in expired {
            tracing::debug!(peer = %id, "discovery: peer timed out");
            sink.peer_event(PeerEvent::Left {
                id,
                reason: LeaveReason::Timeout,
            });
        }
    }
}

/// One round of lookups of the seeds' names, running beside the sockets.
type Round = std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Outcome>> + Send>>;

async fn round_or_pending(round: Option<&mut Round>) -> Vec<Outcome> {
    match round {
        Some(round) => round.await,
        None => std::future::pending().await,
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

/// The discovery's one task: both sockets, the heartbeat, the reaper and the lookups of the
/// seeds' names (at start, then every `peers_resolve`; one round at a time, each lookup bounded
/// by [`PEER_LOOKUP_TIMEOUT`] or the period, so a slow resolver never holds the sockets up), so
/// peer events are reported in order.
pub(crate) async fn run(
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
    let names = shared.seeds().names().to_vec();
    let every = shared.config.peers_resolve.max(Duration::from_millis(1));
    let timeout = PEER_LOOKUP_TIMEOUT.min(every);
    // The first tick is now: names are resolved as the node starts.
    let mut resolve = tokio::time::interval(every);
    resolve.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut round: Option<Round> = None;
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
            _ = resolve.tick(), if !names.is_empty() && round.is_none() => {
                round = Some(Box::pin(seeds::round(
                    shared.resolver.clone(),
                    names.clone(),
                    timeout,
                )));
            }
            outcomes = round_or_pending(round.as_mut()) => {
                round = None;
                let sends = shared.resolved(outcomes);
                for (to, bytes) in sends {
                    shared.send(&unicast, to, &bytes).await;
                }
            }
        }
    }
}

async fn recv_failed(e: &io::Error) {
    // Some systems report an ICMP "port unreachable" of an earlier send on the next receive;
    // never fatal, but do not spin on a persistent error.
    tracing::debug!("discovery: receive failed: {e}");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::security::ClusterKey;
    use crate::security::seal::Purpose;

    #[derive(Default)]
    struct Sink(Mutex<Vec<PeerEvent>>);

    impl PeerSink for Sink {
        fn peer_event(&self, event: PeerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    /// A started-looking discovery on loopback, with no socket: nothing is sent.
    fn shared(key: Option<&str>) -> Shared {
        let shared = Shared::new(NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            cluster_key: key.map(ClusterKey::new),
            ..NetworkConfig::default()
        });
        let _ = shared.reply_to.set("127.0.0.1:4000".parse().unwrap());
        shared.set_me(info("me"));
        shared
    }

    fn sender(key: &str) -> Sealer {
        Sealer::new(
            ClusterKey::new(key),
            Purpose::Discovery,
            DISCOVERY_VERSION as u8,
            crate::config::DEFAULT_REPLAY_WINDOW,
        )
    }

    fn announce(id: &str, port: u16, key: Option<&Sealer>) -> Vec<u8> {
        let from = SocketAddr::from(([127, 0, 0, 1], port));
        let json = datagram::encode(Kind::Announce, &info(id), from, &[]).unwrap();
        match key {
            Some(sealer) => datagram::seal(&json, sealer),
            None => json,
        }
    }

    #[tokio::test]
    async fn datagrams_are_counted_reported_and_rejected() {
        let shared = shared(Some("k"));
        let key = sender("k");
        let sink = Sink::default();
        let from: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        shared
            .handle(&announce("a", 5000, Some(&key)), from, false, &sink)
            .await;
        shared
            .handle(&announce("b", 5001, None), from, false, &sink)
            .await;
        shared.handle(b"garbage", from, false, &sink).await;
        // A reply_to off loopback is unreachable from a loopback interface.
        let far = datagram::encode(
            Kind::Announce,
            &info("c"),
            "10.0.0.1:5000".parse().unwrap(),
            &[],
        )
        .unwrap();
        let far = datagram::seal(&far, &key);
        shared.handle(&far, from, false, &sink).await;
        assert_eq!(*sink.0.lock().unwrap(), vec![PeerEvent::Seen(info("a"))]);
        let stats = shared.stats();
        assert_eq!(stats.received, 4);
        assert_eq!(stats.dropped_unsigned, 2);
        assert_eq!(stats.dropped_malformed, 1);
        assert_eq!(stats.peers, 1);
    }

    #[test]
    fn a_new_peer_gets_a_reply_and_everyone_a_goodbye() {
        let shared = shared(None);
        let msg = datagram::decode(&announce("a", 5000, None), None, MAX_DATAGRAM_BYTES).unwrap();
        let (events, sends) = shared.apply(msg, false);
        assert_eq!(events, vec![PeerEvent::Seen(info("a"))]);
        assert_eq!(sends.len(), 1);
        let (to, bytes) = &sends[0];
        assert_eq!(*to, "127.0.0.1:5000".parse::<SocketAddr>().unwrap());
        let reply = datagram::decode(bytes, None, MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(reply.kind, Kind::Reply);
        assert_eq!(reply.node.id, "me");
        // Multicast is not active here: the goodbye goes to the one known peer.
        let goodbyes = shared.goodbyes();
        assert_eq!(goodbyes.len(), 1);
        let bye = datagram::decode(&goodbyes[0].1, None, MAX_DATAGRAM_BYTES).unwrap();
        assert_eq!(bye.kind, Kind::Goodbye);
        // Heartbeats go by unicast to the peer not heard on the group.
        let beats = shared.announcements();
        assert_eq!(beats.len(), 1);
        assert_eq!(beats[0].0, goodbyes[0].0);
    }

    #[test]
    fn an_announcement_over_the_limit_is_not_sent() {
        let shared = Shared::new(NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            max_message_bytes: 100,
            peers: vec!["127.0.0.1:4001".parse().unwrap()],
            ..NetworkConfig::default()
        });
        let _ = shared.reply_to.set("127.0.0.1:4000".parse().unwrap());
        let mut me = info("me");
        me.name = "x".repeat(200);
        shared.set_me(me);
        assert!(shared.announcements().is_empty());
        assert!(shared.goodbyes().is_empty());
    }
}
