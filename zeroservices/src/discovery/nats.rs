//! [`NatsDiscovery`]: nodes find each other through NATS (`ZS_TRANSPORT=nats://...`), with the
//! same join, leave and timeout semantics as [`UdpDiscovery`](super::UdpDiscovery) and no
//! multicast: it works wherever the NATS servers are reachable.
//!
//! # Subjects and messages (a contract, discovery version 2; `<p>` is `ZS_CLUSTER`)
//!
//! * `<p>.disc`: every node publishes its announcement every `ZS_HEARTBEAT_MS`, again at once
//!   when its information changes, and a goodbye when it stops.
//! * `<p>.disc.hello`: a node that starts publishes its announcement there, with a NATS reply
//!   subject (an inbox of its own); every node that hears it takes it as an announcement and
//!   answers it on that inbox with its own, so the newcomer learns the cluster within a round
//!   trip instead of a heartbeat.
//!
//! A message is one compact JSON object:
//!
//! ```text
//! {"v":2,"type":"announce","node":{<NodeInfo>}}
//! ```
//!
//! `type` is `announce` (a heartbeat), `hello` (a newcomer), `reply` (an answer to a hello) or
//! `goodbye` (the sender stops: `node` carries its id, name and kind). With a cluster key the
//! payload is the 33-byte seal header then the JSON sealed with AES-256-GCM, exactly as a UDP
//! discovery datagram (the discovery keys, kind byte `d`, a timestamp and a counter against
//! replays): nodes with no key in common never see each other. What does not open, does not
//! parse, has another `v` or is larger than 60 KiB (or `ZS_MAX_MESSAGE_BYTES`) is dropped,
//! counted ([`NatsDiscoveryStats`]) and logged once per kind.
//!
//! # Behaviour
//!
//! A peer heard (announce, hello or reply) is reported with
//! [`PeerEvent::Seen`] when it is new or its information changed; one silent past
//! `ZS_PEER_TIMEOUT_MS` is reported [`PeerEvent::Left`] with [`LeaveReason::Timeout`] (a
//! killed node says nothing: its peers drop it then); a goodbye is reported at once with
//! [`LeaveReason::Goodbye`], and that id is ignored for a peer timeout afterwards (a late
//! heartbeat does not bring it back). At most `ZS_MAX_PEERS` peers are tracked: new ids beyond
//! it are dropped and counted. `start` refuses a NATS server beyond loopback without a key
//! unless `ZS_INSECURE` ([`NetworkConfig::check_exposure`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{Client, Message};
use async_trait::async_trait;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Discovery, LeaveReason, PeerEvent, PeerSink};
use crate::config::NetworkConfig;
use crate::medium::nats::NatsLink;
use crate::medium::nats::subjects::Subjects;
use crate::security::DropLog;
use crate::security::seal::{HEADER_LEN, Refusal, Sealer};
use crate::{Error, NodeInfo, Result};

/// The version of the discovery messages (the `v` field), as over UDP.
pub const DISCOVERY_VERSION: u64 = 2;

/// The largest discovery message sent or taken (the smaller of this and `ZS_MAX_MESSAGE_BYTES`).
pub const MAX_DISCOVERY_BYTES: usize = 60 * 1024;

/// The kind byte of a discovery message in a seal's associated data.
const SEAL_DISCOVERY: u8 = b'd';

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few map operations: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Announce,
    Hello,
    Reply,
    Goodbye,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    v: u64,
    #[serde(rename = "type")]
    kind: Kind,
    node: &'a NodeInfo,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Kind,
    node: NodeInfo,
}

/// Counters of a [`NatsDiscovery`], for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsDiscoveryStats {
    /// Messages received.
    pub received: u64,
    /// Dropped: not JSON, not the expected shape, or an empty node id.
    pub dropped_malformed: u64,
    /// Dropped: not sealed or not opening while a cluster key is set, or sealed while none is.
    pub dropped_unsigned: u64,
    /// Dropped: sealed right, but outside the replay window or seen before.
    pub dropped_replayed: u64,
    /// Dropped: a `v` other than [`DISCOVERY_VERSION`].
    pub dropped_version: u64,
    /// Dropped: larger than the limit.
    pub dropped_oversized: u64,
    /// Dropped: a new node id while `ZS_MAX_PEERS` peers are known.
    pub dropped_over_peer_cap: u64,
    /// Peers known now.
    pub peers: usize,
}

/// The peers known, when each was last heard, and the ids that said goodbye. Pure: times are
/// given.
#[derive(Default)]
struct Table {
    me: Option<NodeInfo>,
    peers: HashMap<String, (NodeInfo, Instant)>,
    gone: HashMap<String, Instant>,
}

impl Table {
    /// Takes one message heard at `now`: the events to report, and whether a new id was
    /// refused (over the cap).
    fn apply(
        &mut self,
        kind: Kind,
        node: NodeInfo,
        now: Instant,
        max_peers: usize,
    ) -> (Option<PeerEvent>, bool) {
        if self.me.as_ref().is_none_or(|me| me.id == node.id) {
            return (None, false);
        }
        let id = node.id.clone();
        if kind == Kind::Goodbye {
            if self.peers.remove(&id).is_some() {
                if self.gone.len() < max_peers {
                    self.gone.insert(id.clone(), now);
                }
                let left = PeerEvent::Left {
                    id,
                    reason: LeaveReason::Goodbye,
                };
                return (Some(left), false);
            }
            return (None, false);
        }
        if self.gone.contains_key(&id) {
            return (None, false);
        }
        let full = self.peers.len() >= max_peers;
        match self.peers.get_mut(&id) {
            Some((info, seen)) => {
                *seen = now;
                if *info == node {
                    return (None, false);
                }
                *info = node.clone();
                (Some(PeerEvent::Seen(node)), false)
            }
            None if full => (None, true),
            None => {
                self.peers.insert(id, (node.clone(), now));
                (Some(PeerEvent::Seen(node)), false)
            }
        }
    }

    /// Peers silent past `timeout` leave; goodbyes older than it are forgotten.
    fn reap(&mut self, now: Instant, timeout: Duration) -> Vec<PeerEvent> {
        self.gone.retain(|_, at| now.duration_since(*at) <= timeout);
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, (_, seen))| now.duration_since(*seen) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        silent
            .into_iter()
            .map(|id| {
                self.peers.remove(&id);
                PeerEvent::Left {
                    id,
                    reason: LeaveReason::Timeout,
                }
            })
            .collect()
    }
}

struct Shared {
    link: Arc<NatsLink>,
    config: NetworkConfig,
    subjects: Subjects,
    sealer: Option<Sealer>,
    limit: usize,
    started: AtomicBool,
    stopped: AtomicBool,
    client: Mutex<Option<Client>>,
    table: Mutex<Table>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    received: AtomicU64,
    malformed: DropLog,
    unsigned: DropLog,
    replayed: DropLog,
    version: DropLog,
    oversized: DropLog,
    over_cap: DropLog,
}

/// Announces this node on NATS and hears the others; see the [module documentation](self).
/// Clones share the discovery (a test keeps one to read [`NatsDiscovery::stats`]).
#[derive(Clone)]
pub struct NatsDiscovery {
    shared: Arc<Shared>,
}

impl NatsDiscovery {
    /// A discovery on `link` with these settings (`cluster`, `cluster_key`, `replay_window`,
    /// `heartbeat`, `peer_timeout`, `discovery_warmup`, `max_peers`, `max_message_bytes`).
    pub fn new(link: Arc<NatsLink>, config: NetworkConfig) -> Self {
        let sealer = Sealer::for_discovery(
            config.cluster_key.as_ref(),
            DISCOVERY_VERSION,
            config.replay_window,
        );
        Self {
            shared: Arc::new(Shared {
                link,
                subjects: Subjects::new(&config.cluster),
                limit: config.max_message_bytes.min(MAX_DISCOVERY_BYTES),
                config,
                sealer,
                started: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                client: Mutex::new(None),
                table: Mutex::new(Table::default()),
                tasks: Mutex::new(Vec::new()),
                received: AtomicU64::new(0),
                malformed: DropLog::new(),
                unsigned: DropLog::new(),
                replayed: DropLog::new(),
                version: DropLog::new(),
                oversized: DropLog::new(),
                over_cap: DropLog::new(),
            }),
        }
    }

    /// Counters: messages received and dropped, peers known.
    pub fn stats(&self) -> NatsDiscoveryStats {
        let s = &self.shared;
        NatsDiscoveryStats {
            received: s.received.load(Ordering::Relaxed),
            dropped_malformed: s.malformed.count(),
            dropped_unsigned: s.unsigned.count(),
            dropped_replayed: s.replayed.count(),
            dropped_version: s.version.count(),
            dropped_oversized: s.oversized.count(),
            dropped_over_peer_cap: s.over_cap.count(),
            peers: lock(&s.table).peers.len(),
        }
    }

    /// Stops without saying goodbye, as if the process had been killed: peers drop this node
    /// only after their peer timeout. For tests.
    #[doc(hidden)]
    pub fn kill(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        for task in lock(&self.shared.tasks).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        for task in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl Shared {
    fn encode(&self, kind: Kind) -> Option<Vec<u8>> {
        let table = lock(&self.table);
        let me = table.me.as_ref()?;
        let goodbye;
        let node = if kind == Kind::Goodbye {
            // A goodbye names the node, nothing more.
            goodbye = NodeInfo {
                resources: Vec::new(),
                stores: Default::default(),
                endpoints: Default::default(),
                watches: Vec::new(),
                ..me.clone()
            };
            &goodbye
        } else {
            me
        };
        let json = serde_json::to_vec(&Outgoing {
            v: DISCOVERY_VERSION,
            kind,
            node,
        })
        .ok()?;
        drop(table);
        let payload = match &self.sealer {
            Some(sealer) => {
                let mut body = json;
                let mut out = sealer.seal(SEAL_DISCOVERY, b"", &mut body);
                out.extend_from_slice(&body);
                out
            }
            None => json,
        };
        if payload.len() > self.limit {
            tracing::error!(
                bytes = payload.len(),
                limit = self.limit,
                "nats discovery: this node's announcement is too large to send"
            );
            return None;
        }
        Some(payload)
    }

    async fn send(&self, client: &Client, subject: String, reply: Option<String>, kind: Kind) {
        let Some(payload) = self.encode(kind) else {
            return;
        };
        let sent = match reply {
            Some(reply) => {
                client
                    .publish_with_reply(subject, reply, payload.into())
                    .await
            }
            None => client.publish(subject, payload.into()).await,
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "nats discovery: not sent");
        }
    }

    /// Opens and checks one message.
    fn decode(&self, payload: &[u8]) -> Option<Incoming> {
        if payload.len() > self.limit {
            self.oversized
                .drop_from("nats", "discovery", &format!("{} bytes", payload.len()));
            return None;
        }
        let opened;
        let json = match &self.sealer {
            Some(sealer) => {
                if payload.len() < HEADER_LEN || payload.first() == Some(&b'{') {
                    self.unsigned.drop_from("nats", "discovery", "not sealed");
                    return None;
                }
                let (header, body) = payload.split_at(HEADER_LEN);
                opened = match sealer.open(SEAL_DISCOVERY, b"", header, body) {
                    Ok(opened) => opened.plain,
                    Err(Refusal::Forged(reason)) => {
                        self.unsigned.drop_from("nats", "discovery", reason);
                        return None;
                    }
                    Err(Refusal::Replayed(reason)) => {
                        self.replayed.drop_from("nats", "discovery", reason);
                        return None;
                    }
                };
                &opened[..]
            }
            None if payload.first() == Some(&(DISCOVERY_VERSION as u8)) => {
                self.unsigned.drop_from(
                    "nats",
                    "discovery",
                    "sealed with a cluster key, and this node has none",
                );
                return None;
            }
            None => payload,
        };
        let Ok(value) = serde_json::from_slice::<Value>(json) else {
            self.malformed.drop_from("nats", "discovery", "not JSON");
            return None;
        };
        if value.get("v").and_then(Value::as_u64) != Some(DISCOVERY_VERSION) {
            if value.get("v").is_some() {
                self.version
                    .drop_from("nats", "discovery", &value["v"].to_string());
            } else {
                self.malformed
                    .drop_from("nats", "discovery", "no version field `v`");
            }
            return None;
        }
        match serde_json::from_value::<Incoming>(value) {
            Ok(msg) if !msg.node.id.is_empty() => Some(msg),
            Ok(_) => {
                self.malformed
                    .drop_from("nats", "discovery", "empty node id");
                None
            }
            Err(e) => {
                self.malformed
                    .drop_from("nats", "discovery", &format!("bad shape: {e}"));
                None
            }
        }
    }

    /// Takes one message; answers a hello.
    async fn take(&self, client: &Client, sink: &Arc<dyn PeerSink>, message: Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let Some(msg) = self.decode(&message.payload) else {
            return;
        };
        let kind = msg.kind;
        let id = msg.node.id.clone();
        let (event, over_cap) =
            lock(&self.table).apply(kind, msg.node, Instant::now(), self.config.max_peers);
        if over_cap {
            self.over_cap.drop_from(
                "nats",
                "discovery",
                &format!(
                    "{} peers known already (ZS_MAX_PEERS)",
                    self.config.max_peers
                ),
            );
        }
        if let Some(event) = event {
            sink.peer_event(event);
        }
        let me = lock(&self.table).me.as_ref().map(|me| me.id.clone());
        if kind == Kind::Hello
            && me.is_some_and(|me| me != id)
            && let Some(reply) = message.reply
        {
            self.send(client, reply.to_string(), None, Kind::Reply)
                .await;
        }
    }
}

/// Receives discovery messages until stopped.
async fn run_receiver(
    shared: Arc<Shared>,
    client: Client,
    sink: Arc<dyn PeerSink>,
    mut messages: futures::stream::SelectAll<async_nats::Subscriber>,
) {
    while let Some(message) = messages.next().await {
        shared.take(&client, &sink, message).await;
    }
}

/// Heartbeats and failure detection until stopped.
async fn run_heartbeat(shared: Arc<Shared>, client: Client, sink: Arc<dyn PeerSink>) {
    let config = &shared.config;
    // Failure detection runs more often than the heartbeat, so a silent peer leaves close to
    // its timeout.
    let tick = (config.peer_timeout / 5).clamp(Duration::from_millis(10), config.heartbeat);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_beat = Instant::now();
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now.duration_since(last_beat) >= config.heartbeat {
            last_beat = now;
            shared
                .send(&client, shared.subjects.discovery(), None, Kind::Announce)
                .await;
        }
        let left = lock(&shared.table).reap(now, config.peer_timeout);
        for event in left {
            sink.peer_event(event);
        }
    }
}

#[async_trait]
impl Discovery for NatsDiscovery {
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn start(&self, me: NodeInfo, sink: Arc<dyn PeerSink>) -> Result<()> {
        let shared = &self.shared;
        if shared.started.swap(true, Ordering::SeqCst) {
            return Err(Error::internal("nats discovery started twice"));
        }
        shared.config.check_exposure()?;
        let client = shared.link.acquire().await?;
        *lock(&shared.client) = Some(client.clone());
        lock(&shared.table).me = Some(me.clone());
        let inbox = client.new_inbox();
        let mut subscribers = Vec::new();
        for subject in [
            shared.subjects.discovery(),
            shared.subjects.hello(),
            inbox.clone(),
        ] {
            let subscriber = client.subscribe(subject.clone()).await.map_err(|e| {
                Error::unavailable(format!(
                    "nats discovery: cannot subscribe to {subject}: {e}"
                ))
            })?;
            subscribers.push(subscriber);
        }
        let within = shared.config.request_timeout;
        let _ = tokio::time::timeout(within, client.flush()).await;
        let receiver = tokio::spawn(run_receiver(
            shared.clone(),
            client.clone(),
            sink.clone(),
            futures::stream::select_all(subscribers),
        ));
        let heartbeat = tokio::spawn(run_heartbeat(shared.clone(), client.clone(), sink));
        {
            let mut tasks = lock(&shared.tasks);
            if shared.stopped.load(Ordering::SeqCst) {
                receiver.abort();
                heartbeat.abort();
            } else {
                tasks.push(receiver);
                tasks.push(heartbeat);
            }
        }
        shared
            .send(&client, shared.subjects.hello(), Some(inbox), Kind::Hello)
            .await;
        tracing::info!(
            node = %me.id,
            servers = %shared.link.describe(),
            cluster = %shared.subjects.prefix(),
            "nats discovery started"
        );
        Ok(())
    }

    /// [`NetworkConfig::discovery_warmup`]: the answers to this node's hello take a round trip;
    /// a peer that missed it announces itself within one heartbeat.
    fn warm_up(&self) -> Duration {
        self.shared.config.discovery_warmup()
    }

    async fn announce(&self, me: NodeInfo) -> Result<()> {
        let shared = &self.shared;
        lock(&shared.table).me = Some(me);
        if shared.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let client = lock(&shared.client).clone();
        if let Some(client) = client {
            shared
                .send(&client, shared.subjects.discovery(), None, Kind::Announce)
                .await;
        }
        Ok(())
    }

    async fn stop(&self) {
        let shared = &self.shared;
        let was_stopped = shared.stopped.swap(true, Ordering::SeqCst);
        let tasks: Vec<_> = lock(&shared.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
        }
        let Some(client) = lock(&shared.client).take() else {
            return;
        };
        if !was_stopped {
            shared
                .send(&client, shared.subjects.discovery(), None, Kind::Goodbye)
                .await;
        }
        shared.link.release().await;
        tracing::info!(cluster = %shared.subjects.prefix(), "nats discovery stopped");
    }

    /// Running while started, not stopped, its tasks alive and the client connected (without
    /// the connection no heartbeat goes out, and peers time this node out).
    fn health(&self) -> std::result::Result<(), String> {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::SeqCst) {
            return Err("nats discovery is stopped".into());
        }
        if !shared.started.load(Ordering::SeqCst) {
            return Err("nats discovery is not started".into());
        }
        if lock(&shared.tasks).iter().any(|task| task.is_finished()) {
            return Err("nats discovery's task has ended".into());
        }
        if !shared.link.is_connected() {
            return Err("not connected to any NATS server".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    #[test]
    fn the_table_joins_refreshes_and_times_out() {
        let mut table = Table {
            me: Some(info("me")),
            ..Table::default()
        };
        let t0 = Instant::now();
        let (event, _) = table.apply(Kind::Hello, info("a"), t0, 8);
        assert_eq!(event, Some(PeerEvent::Seen(info("a"))));
        // The same again: nothing new.
        assert_eq!(table.apply(Kind::Announce, info("a"), t0, 8), (None, false));
        // Its own announcements are not a peer.
        assert_eq!(
            table.apply(Kind::Announce, info("me"), t0, 8),
            (None, false)
        );
        let later = t0 + Duration::from_millis(600);
        let left = table.reap(later, Duration::from_millis(500));
        assert_eq!(
            left,
            [PeerEvent::Left {
                id: "a".to_owned(),
                reason: LeaveReason::Timeout
            }]
        );
        // Back after a timeout: seen again.
        assert!(table.apply(Kind::Announce, info("a"), later, 8).0.is_some());
    }

    #[test]
    fn a_goodbye_leaves_at_once_and_is_not_revived_by_a_late_heartbeat() {
        let mut table = Table {
            me: Some(info("me")),
            ..Table::default()
        };
        let t0 = Instant::now();
        table.apply(Kind::Announce, info("a"), t0, 8);
        let (event, _) = table.apply(Kind::Goodbye, info("a"), t0, 8);
        assert_eq!(
            event,
            Some(PeerEvent::Left {
                id: "a".to_owned(),
                reason: LeaveReason::Goodbye
            })
        );
        assert_eq!(table.apply(Kind::Announce, info("a"), t0, 8), (None, false));
        // A goodbye of an unknown id is nothing, and remembers nothing.
        assert_eq!(table.apply(Kind::Goodbye, info("x"), t0, 8), (None, false));
        assert!(!table.gone.contains_key("x"));
    }

    #[test]
    fn new_ids_beyond_the_cap_are_refused() {
        let mut table = Table {
            me: Some(info("me")),
            ..Table::default()
        };
        let t0 = Instant::now();
        assert!(table.apply(Kind::Announce, info("a"), t0, 1).0.is_some());
        assert_eq!(table.apply(Kind::Announce, info("b"), t0, 1), (None, true));
        // Known peers keep refreshing.
        assert_eq!(table.apply(Kind::Announce, info("a"), t0, 1), (None, false));
    }
}
