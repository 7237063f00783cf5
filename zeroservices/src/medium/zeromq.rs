//! The ZeroMQ medium: nodes in separate processes (and machines) talk over TCP with the pure-Rust
//! `zeromq` crate.
//!
//! Each node binds a ROUTER (requests in, replies out) and a PUB (events out) on ephemeral ports
//! and announces them as the endpoints `router` and `pub`. Towards each peer it keeps ONE
//! long-lived DEALER (calls out, many in flight, told apart by request id) and one SUB (events
//! in).
//!
//! # Wire (a contract: other implementations must speak exactly this)
//!
//! Every body frame is UTF-8 JSON carrying `"v": 1` ([`PROTOCOL_VERSION`]).
//!
//! * **Request**, DEALER -> ROUTER, multipart `[body, mac]` (the ROUTER sees
//!   `[identity, body, mac]`):
//!   `{"v":1,"kind":"request","id":<u64>,"from":"<node id>","request":{"collection":..,
//!   "action":..,"resource_id":..?,"args":..}}`.
//! * **Response**, ROUTER -> DEALER, `[body, mac]`, the same `id`:
//!   `{"v":1,"kind":"response","id":<u64>,"ok":<value>}` or
//!   `{"v":1,"kind":"response","id":<u64>,"error":<crate::Error, tagged by "kind">}`.
//! * **Event**, PUB -> SUB, `[topic, body, mac]` (the topic frame first, so SUB prefix filtering
//!   works): `{"v":1,"kind":"event","from":"<node id>","topic":"<topic>","data":<value>}`.
//! * **Subscriptions** are plain ZeroMQ SUB subscriptions to topic prefixes (byte prefixes; the
//!   receiver also checks dot segments, so `power` does not deliver `powers.*`): a node
//!   subscribes to what its subscribers want (`""` for everything) and changes them as they
//!   come and go.
//! * **Sync**, a request with `"request":{"collection":"$medium","action":"sync",
//!   "args":{"topic":"$sync.<anything>"}}`: the receiving medium publishes an event on that
//!   topic with `"data":null` and replies `"ok":null`. A node subscribes to a fresh `$sync.`
//!   topic after its other subscriptions and asks for it until it arrives: from then on, its
//!   earlier subscriptions are in effect at that peer (one connection's subscriptions apply in
//!   order). `$sync.` events are never handed to a node; a peer that answers the request with an
//!   error is simply not confirmed.
//!
//! `mac` is [`ClusterKey::sign`] of `[body]` (events: `[topic, body]`) as 64 lowercase hex
//! digits, or an empty frame when no cluster key is configured. With a key configured, a missing
//! or wrong mac is dropped, counted and logged once per sender. A wrong frame count, invalid
//! JSON, an unknown `v`, or a message larger than `max_message_bytes` is dropped, counted and
//! logged once per sender; nothing a peer sends can panic the medium.
//!
//! `max_message_bytes` bounds a message's frames together (body, mac, and the topic of an
//! event). Every socket (ROUTER, DEALER, PUB, SUB) also enforces it while reading: a frame
//! header that would take a message over it closes that connection at once, before anything is
//! allocated for the frame (counted in [`ZmqStats::connections_closed_oversized`], logged once
//! per peer address), so a peer claiming a huge frame costs nothing. A frame being received is
//! buffered as its bytes arrive, never reserved at its announced size. Senders refuse to send
//! anything over the limit. A well-formed request whose
//! `request` object is not a valid [`Request`] gets a `bad_request` error reply; a request the
//! node cannot serve gets the node's typed error.
//!
//! # Connections
//!
//! One supervised task per peer owns its DEALER: it keeps a `recv()` pending at all times, hands
//! replies to the waiting calls, watches the socket monitor, and on a disconnect, a failed write
//! or a failed connect fails that peer's pending calls at once with [`Error::Unavailable`] and
//! rebuilds the socket with backoff (the `zeromq` DEALER does not reconnect by itself). Callers
//! write their requests on the DEALER's send half themselves (no hop through the task; the
//! crate's bounded per-peer write queue is the only queue); a failed write fails that call and
//! ends the session. Before the first connect calls wait for it; after a failure they fail at
//! once until a reconnect succeeds. Connects are bounded by a timeout. A call whose future is
//! dropped (the node's timeout) removes its pending entry.
//!
//! The ROUTER task never runs a request that may take a while: a body over 64 KiB is verified
//! and parsed on a serving task of its own; otherwise the ROUTER task checks and parses it, and
//! polls its handler once in place only when the node says it is cheap
//! ([`Inbound::serve_inline`]: a `get`, a `create`, a `delete`); a handler that completes without waiting is answered
//! from the ROUTER task, like a plain echo, one that waits moves to its own task. Every other
//! request (a `list`, a `patch`, an action, a message) is served on its own task at once, so one slow
//! request never stalls the others.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, UdpSocket};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::zeromq::{
    DealerSendHalf, DealerSocket, Endpoint, PubSocket, RouterSendHalf, RouterSocket, Socket,
    SocketEvent, SocketOptions, SocketRecv, SocketSend, SubSocket, ZmqMessage,
};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Endpoints, Inbound, Medium, PROTOCOL_VERSION, Request};

/// The collection of the medium's own requests (`sync`), answered by the medium itself.
const MEDIUM_COLLECTION: &str = "$medium";
/// Topics of sync markers: `$sync.<medium instance>.<n>`; never handed to a node.
const SYNC_PREFIX: &str = "$sync.";
/// How long a sync waits for a marker before asking the peer again.
const SYNC_RETRY: Duration = Duration::from_millis(25);
use crate::config::NetworkConfig;
use crate::event::topic_matches;
use crate::security::{ClusterKey, DropLog};
use crate::{Error, Event, NodeInfo, Result};

/// Requests served at once; beyond this a request gets an `unavailable` reply at once.
const MAX_SERVING: usize = 4096;
/// A request body larger than this is verified and parsed on a serving task, not on the ROUTER
/// task.
const INLINE_BODY_BYTES: usize = 64 * 1024;
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Counters of a [`ZmqMedium`], over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZmqStats {
    /// Well-formed requests handed to the node.
    pub requests_served: u64,
    /// Replies written on the ROUTER.
    pub replies_sent: u64,
    /// Replies the ROUTER could not deliver (the caller's connection is gone).
    pub replies_undeliverable: u64,
    /// Requests refused at once with `unavailable` because 4096 requests were already being
    /// served.
    pub requests_refused_busy: u64,
    /// Calls sent to peers.
    pub calls_sent: u64,
    /// Replies to our calls received.
    pub replies_received: u64,
    /// Calls failed with `unavailable` because the peer's connection was lost or not made.
    pub calls_failed_unavailable: u64,
    /// Messages dropped for a wrong frame count, invalid JSON or an unexpected shape.
    pub dropped_malformed: u64,
    /// Messages dropped for a missing or wrong HMAC (a cluster key is configured).
    pub dropped_unsigned: u64,
    /// Messages dropped for exceeding `max_message_bytes`.
    pub dropped_oversized: u64,
    /// Connections (on any of the ROUTER, DEALER, PUB and SUB sockets) closed because a frame
    /// header of the peer would take its message over `max_message_bytes`; nothing was
    /// allocated for that frame.
    pub connections_closed_oversized: u64,
    /// Messages dropped for an unknown protocol version.
    pub dropped_version: u64,
    /// Events written on the PUB socket.
    pub events_published: u64,
    /// Events the PUB socket did not take (it was closing). A subscriber too slow to drain its
    /// own queue loses events inside the `zeromq` crate (PUB semantics), which counts nothing.
    pub events_dropped: u64,
    /// Events received from peers and handed to the node.
    pub events_received: u64,
    /// Events not published because no peer wants their topic.
    pub events_unwanted: u64,
}

#[derive(Default)]
struct Counters {
    requests_served: AtomicU64,
    replies_sent: AtomicU64,
    replies_undeliverable: AtomicU64,
    requests_refused_busy: AtomicU64,
    calls_sent: AtomicU64,
    replies_received: AtomicU64,
    calls_failed_unavailable: AtomicU64,
    events_published: AtomicU64,
    events_dropped: AtomicU64,
    events_received: AtomicU64,
    events_unwanted: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What every task of one medium shares.
struct Core {
    config: NetworkConfig,
    /// Topic prefixes the SUBs always subscribe to ([`ZmqMedium::with_subscriptions`]).
    subscriptions: Vec<String>,
    /// What the SUBs subscribe to now: `subscriptions` plus the node's interest
    /// ([`Medium::set_interest`]); `[""]` (everything) until the node says otherwise.
    interest: watch::Sender<Arc<Vec<String>>>,
    /// Bumped with every change of `interest` (under its lock): peers keep the newest they got.
    interest_version: AtomicU64,
    /// What each peer said it wants from this node (`$medium` `interest`/`sync` requests), by
    /// node id: an event no peer wants is not published at all.
    remote: Mutex<HashMap<String, RemoteInterest>>,
    /// Peers that left, newest last (at most `max_peers`): an `interest` still in flight when
    /// a peer left is not recorded for it after it left. Cleared when the peer joins again.
    left: Mutex<VecDeque<String>>,
    /// Sync markers waited for, by topic ([`Medium::sync_interest`]).
    markers: Mutex<HashMap<String, oneshot::Sender<()>>>,
    next_marker: AtomicU64,
    /// The PUB socket. `send` on it only pushes onto the crate's lock-free fan-out queue (it
    /// never waits), so publishers call it directly under this lock: no hop through a task.
    publisher: Mutex<Option<PubSocket>>,
    /// Unique per medium instance: DEALER identities are `zs-<instance>-<n>`.
    instance: String,
    node_id: OnceLock<String>,
    inbound: OnceLock<Arc<dyn Inbound>>,
    next_request: AtomicU64,
    next_connection: AtomicU64,
    counters: Counters,
    malformed: DropLog,
    unsigned: DropLog,
    oversized: DropLog,
    version: DropLog,
    /// Connections closed for an oversized frame header, logged once per peer address. Shared
    /// with the sockets' hooks (an `Arc` of its own: a hook holding the core would keep it
    /// alive through the PUB socket it owns).
    oversized_frames: Arc<DropLog>,
    publish_drop_log: Mutex<Option<Instant>>,
}

impl Core {
    fn key(&self) -> Option<&ClusterKey> {
        self.config.cluster_key.as_ref()
    }

    /// The length of the mac frame: a message's frames together must stay within
    /// `max_message_bytes` (a peer closes the connection otherwise).
    fn mac_len(&self) -> usize {
        if self.key().is_some() { 64 } else { 0 }
    }

    fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        match self.key() {
            Some(key) => key.sign(parts).into_bytes(),
            None => Vec::new(),
        }
    }

    /// Whether `mac` authenticates `parts`; counts and logs the drop when not.
    fn verified(&self, sender: &str, what: &str, parts: &[&[u8]], mac: &[u8]) -> bool {
        match self.key() {
            None => true,
            Some(key) if key.verify(parts, mac) => true,
            Some(_) => {
                let reason = if mac.is_empty() {
                    "unsigned"
                } else {
                    "wrong mac"
                };
                self.unsigned.drop_from(sender, what, reason);
                false
            }
        }
    }

    /// Options of every socket of this medium: a frame header that would take a message (the
    /// sum of its frames) over `max_message_bytes` closes that connection before anything is
    /// allocated for the frame (the vendored `zeromq`, see `third_party/zeromq/PATCHES.md`),
    /// counted and logged once per peer address.
    fn socket_options(&self) -> SocketOptions {
        let mut options = SocketOptions::default();
        options.max_message_size(self.config.max_message_bytes);
        let log = self.oversized_frames.clone();
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

    fn connect_timeout(&self) -> Duration {
        (self.config.request_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    fn stats(&self) -> ZmqStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ZmqStats {
            requests_served: get(&c.requests_served),
            replies_sent: get(&c.replies_sent),
            replies_undeliverable: get(&c.replies_undeliverable),
            requests_refused_busy: get(&c.requests_refused_busy),
            calls_sent: get(&c.calls_sent),
            replies_received: get(&c.replies_received),
            calls_failed_unavailable: get(&c.calls_failed_unavailable),
            dropped_malformed: self.malformed.count(),
            dropped_unsigned: self.unsigned.count(),
            dropped_oversized: self.oversized.count(),
            connections_closed_oversized: self.oversized_frames.count(),
            dropped_version: self.version.count(),
            events_published: get(&c.events_published),
            events_dropped: get(&c.events_dropped),
            events_received: get(&c.events_received),
            events_unwanted: get(&c.events_unwanted),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Envelopes

#[derive(Serialize)]
struct RequestOut<'a> {
    v: u32,
    kind: &'static str,
    id: u64,
    from: &'a str,
    request: &'a Request,
}

#[derive(Deserialize)]
struct RequestIn {
    v: u32,
    kind: String,
    id: u64,
    #[serde(default)]
    from: Option<String>,
    request: Request,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    v: u32,
    kind: &'static str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Error>,
}

/// Present-but-null must read as `Some("null")`, not `None`.
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A response as received: `ok` stays JSON text (copied once), parsed by whoever waits for it
/// straight into its own type.
#[derive(Deserialize)]
struct ResponseIn<'a> {
    v: u32,
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    id: u64,
    #[serde(default, borrow, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Error>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    v: u32,
    kind: &'static str,
    from: &'a str,
    topic: &'a str,
    data: &'a Value,
}

#[derive(Deserialize)]
struct EventIn {
    v: u32,
    kind: String,
    topic: String,
    #[serde(default)]
    data: Value,
}

/// The fields needed to classify an envelope that did not parse.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    v: Option<Value>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

fn multipart(frames: Vec<Vec<u8>>) -> ZmqMessage {
    let mut frames = frames.into_iter();
    let mut message = ZmqMessage::from(frames.next().unwrap_or_default());
    for frame in frames {
        message.push_back(frame.into());
    }
    message
}

fn encode_response(core: &Core, id: u64, reply: &Result<Box<RawValue>>) -> Vec<u8> {
    let envelope = match reply {
        Ok(value) => ResponseOut {
            v: PROTOCOL_VERSION,
            kind: "response",
            id,
            ok: Some(value),
            error: None,
        },
        Err(error) => ResponseOut {
            v: PROTOCOL_VERSION,
            kind: "response",
            id,
            ok: None,
            error: Some(error),
        },
    };
    let mut body = Vec::with_capacity(64 + reply.as_ref().map_or(0, |raw| raw.get().len()));
    if serde_json::to_writer(&mut body, &envelope).is_err() {
        body.clear();
    }
    if body.len() + core.mac_len() > core.config.max_message_bytes {
        let error = Error::internal(format!(
            "reply of {} bytes exceeds the {} byte message limit",
            body.len(),
            core.config.max_message_bytes
        ));
        return encode_response(core, id, &Err(error));
    }
    body
}

fn sender_name(identity: &[u8]) -> String {
    let mut name = String::from_utf8_lossy(identity).into_owned();
    if name.len() > 64 || name.chars().any(char::is_control) {
        name = hex::encode(&identity[..identity.len().min(32)]);
    }
    name
}

/// Classifies a body that did not parse as the expected envelope, counting and logging the drop
/// (unknown version or malformed), except for a request of this version with a usable id: its id
/// is returned so that it gets a `bad_request` reply.
fn classify_failure(core: &Core, sender: &str, what: &str, body: &[u8]) -> Option<u64> {
    match serde_json::from_slice::<Probe>(body) {
        Ok(probe) => {
            let version_ok =
                probe.v.as_ref().and_then(Value::as_u64) == Some(PROTOCOL_VERSION as u64);
            if probe.v.is_some() && !version_ok {
                core.version
                    .drop_from(sender, what, "unknown protocol version");
                None
            } else if version_ok && what == "request" && probe.kind.as_deref() == Some("request") {
                probe.id
            } else {
                core.malformed
                    .drop_from(sender, what, "unexpected envelope");
                None
            }
        }
        Err(_) => {
            core.malformed.drop_from(sender, what, "invalid JSON");
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The medium

/// A [`Medium`] over ZeroMQ (ROUTER/DEALER for requests, PUB/SUB for events); see the
/// [module documentation](self) for the wire format.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> zeroservices::Result<()> {
/// use zeroservices::{Node, config::NetworkConfig, medium::ZmqMedium};
/// let config = NetworkConfig::from_env()?;
/// let node = Node::builder("power").medium(ZmqMedium::new(config)).start().await?;
/// # node.stop().await; Ok(()) }
/// ```
pub struct ZmqMedium {
    core: Arc<Core>,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    started: bool,
    stopped: bool,
    endpoints: Endpoints,
    shutdown: Option<watch::Sender<bool>>,
    tasks: Vec<JoinHandle<()>>,
    dealers: HashMap<String, Arc<Dealer>>,
    subs: HashMap<String, Sub>,
    /// Peers that joined, for the announcer task to tell what this node wants.
    joined: Option<mpsc::UnboundedSender<String>>,
}

type PendingMap = Mutex<HashMap<u64, oneshot::Sender<Result<Box<RawValue>>>>>;

fn fail_all(core: &Core, pending: &PendingMap, message: &str) {
    let drained: Vec<_> = lock(pending).drain().collect();
    for (_, tx) in drained {
        bump(&core.counters.calls_failed_unavailable);
        let _ = tx.send(Err(Error::unavailable(message.to_owned())));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single map operation: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One peer's DEALER connection, as callers see it.
struct Dealer {
    endpoint: String,
    shared: Arc<DealerShared>,
    task: JoinHandle<()>,
}

/// What the callers and the DEALER task of one peer share.
struct DealerShared {
    link: watch::Sender<Link>,
    pending: PendingMap,
}

/// The state of one peer's connection.
#[derive(Clone)]
enum Link {
    /// Not connected yet: calls wait for the first connect.
    Connecting,
    /// Connected: calls write on this DEALER.
    Up(Arc<Conn>),
    /// The connection failed or was closed: calls fail at once with this reason (until a
    /// reconnect succeeds).
    Down(Arc<str>),
}

/// One live DEALER session's send half.
struct Conn {
    /// The send half. Its `send` pushes onto the crate's per-peer write queue (100,000 deep)
    /// and does not wait in practice, so callers take this plain lock briefly instead of an
    /// async one (no parked waiters to wake under contention).
    sender: Mutex<DealerSendHalf>,
    /// A caller's write failed: the session ends.
    lost: Notify,
}

impl DealerShared {
    /// The live connection to write on, waiting for the first connect; the reason the peer is
    /// unreachable otherwise.
    async fn conn(&self) -> std::result::Result<Arc<Conn>, Arc<str>> {
        match &*self.link.borrow() {
            Link::Up(conn) => return Ok(conn.clone()),
            Link::Down(why) => return Err(why.clone()),
            Link::Connecting => {}
        }
        let mut link = self.link.subscribe();
        loop {
            match &*link.borrow_and_update() {
                Link::Up(conn) => return Ok(conn.clone()),
                Link::Down(why) => return Err(why.clone()),
                Link::Connecting => {}
            }
            if link.changed().await.is_err() {
                return Err("the connection is closed".into());
            }
        }
    }
}

/// Writes `message` on the DEALER: at once under the lock when the crate's send completes
/// without waiting (always, unless its 100,000-message queue is full); otherwise yields and tries
/// again, never holding the lock across an await. The node's timeout bounds the whole call.
async fn send_now(conn: &Conn, message: ZmqMessage) -> ::zeromq::ZmqResult<()> {
    loop {
        let attempt = lock(&conn.sender).send(message.clone()).now_or_never();
        match attempt {
            Some(result) => return result,
            // The send future was dropped before it queued anything: try again.
            None => tokio::task::yield_now().await,
        }
    }
}

impl Dealer {
    fn close(&self, core: &Core, why: &str) {
        self.task.abort();
        // Later calls fail at once; calls waiting for a first connect wake up and fail.
        self.shared.link.send_replace(Link::Down(why.into()));
        fail_all(core, &self.shared.pending, why);
    }
}

impl Drop for Dealer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One peer's SUB connection.
struct Sub {
    endpoint: String,
    task: JoinHandle<()>,
    /// The peer, to ask it for sync markers.
    peer: NodeInfo,
    commands: mpsc::UnboundedSender<SubCommand>,
}

/// The prefixes one peer wants from this node, as of its `version`.
struct RemoteInterest {
    version: u64,
    prefixes: Vec<String>,
}

/// What [`Medium::sync_interest`] asks of a SUB task.
enum SubCommand {
    /// Apply the current interest, then subscribe to this marker topic.
    Mark(String),
    /// Unsubscribe from this marker topic.
    Forget(String),
}

/// Removes a call's pending entry when the call ends, however it ends (dropped by a timeout).
struct PendingGuard<'a> {
    pending: &'a PendingMap,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

impl ZmqMedium {
    /// A medium with these settings (`interface`, `cluster_key`, `request_timeout`,
    /// `max_message_bytes`, and `multicast_group` to pick the announced address are used).
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            core: Arc::new(Core {
                config,
                subscriptions: Vec::new(),
                interest: watch::channel(Arc::new(vec![String::new()])).0,
                markers: Mutex::new(HashMap::new()),
                interest_version: AtomicU64::new(0),
                remote: Mutex::new(HashMap::new()),
                left: Mutex::new(VecDeque::new()),
                next_marker: AtomicU64::new(1),
                publisher: Mutex::new(None),
                instance: uuid::Uuid::new_v4().simple().to_string(),
                node_id: OnceLock::new(),
                inbound: OnceLock::new(),
                next_request: AtomicU64::new(1),
                next_connection: AtomicU64::new(1),
                counters: Counters::default(),
                malformed: DropLog::new(),
                unsigned: DropLog::new(),
                oversized: DropLog::new(),
                version: DropLog::new(),
                oversized_frames: Arc::new(DropLog::new()),
                publish_drop_log: Mutex::new(None),
            }),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Always subscribes to events under these topic prefixes (dot segments, as
    /// [`Event::matches`]; `""` or `"*"` is everything), whatever the node's subscribers want.
    /// The sniffer uses it.
    pub fn with_subscriptions(mut self, prefixes: Vec<String>) -> Self {
        let mut prefixes: Vec<String> = prefixes
            .into_iter()
            .map(|p| if p == "*" { String::new() } else { p })
            .collect();
        if prefixes.iter().any(String::is_empty) {
            prefixes = vec![String::new()];
        }
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.interest.send_replace(Arc::new(prefixes.clone()));
            core.subscriptions = prefixes;
        }
        self
    }

    /// The counters so far.
    pub fn stats(&self) -> ZmqStats {
        self.core.stats()
    }

    /// The endpoints returned by `start` (empty before).
    pub fn endpoints(&self) -> Endpoints {
        lock(&self.state).endpoints.clone()
    }

    /// Makes sure `peer` sends this node what it wants now: the SUB task applies the current
    /// interest and subscribes to a fresh marker topic, then the peer is asked (over the DEALER)
    /// to publish that marker until it arrives. Subscriptions reach a PUB in order on one
    /// connection, so once the marker arrives every earlier subscription is in effect there.
    /// Returns whether the peer confirmed before `deadline`.
    async fn sync_peer(
        &self,
        peer: &NodeInfo,
        commands: &mpsc::UnboundedSender<SubCommand>,
        deadline: tokio::time::Instant,
    ) -> bool {
        let core = &self.core;
        let n = core.next_marker.fetch_add(1, Ordering::Relaxed);
        let marker = format!("{SYNC_PREFIX}{}.{n}", core.instance);
        let (seen_tx, mut seen) = oneshot::channel();
        lock(&core.markers).insert(marker.clone(), seen_tx);
        let mut confirmed = commands.send(SubCommand::Mark(marker.clone())).is_ok();
        if confirmed {
            confirmed = false;
            let mut args = interest_args(core);
            args["topic"] = Value::from(marker.clone());
            let request = Request::new(MEDIUM_COLLECTION, "sync").args(args);
            loop {
                match tokio::time::timeout_at(
                    deadline,
                    call_peer(&self.core, &self.state, peer, request.clone()),
                )
                .await
                {
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
        lock(&core.markers).remove(&marker);
        let _ = commands.send(SubCommand::Forget(marker));
        if !confirmed {
            tracing::debug!(peer = %peer.id, "subscriptions not confirmed by the peer in time");
        }
        confirmed
    }

    fn close_all(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        if let Some(shutdown) = &state.shutdown {
            let _ = shutdown.send(true);
        }
        lock(&self.core.publisher).take();
        for (_, dealer) in state.dealers.drain() {
            dealer.close(&self.core, "the zeromq medium stopped");
        }
        for (_, sub) in state.subs.drain() {
            sub.task.abort();
        }
    }
}

impl Drop for ZmqMedium {
    fn drop(&mut self) {
        self.close_all();
        for task in lock(&self.state).tasks.drain(..) {
            task.abort();
        }
    }
}

/// The address peers should use: the configured interface, or when that is `0.0.0.0` the local
/// address the OS would route to the multicast group through (a connected UDP socket sends
/// nothing), falling back to loopback.
fn announced_ip(config: &NetworkConfig) -> Ipv4Addr {
    if !config.interface.is_unspecified() {
        return config.interface;
    }
    let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).and_then(|s| {
        s.connect(config.multicast_group)?;
        s.local_addr()
    });
    match routed {
        Ok(std::net::SocketAddr::V4(addr)) if !addr.ip().is_unspecified() => *addr.ip(),
        _ => Ipv4Addr::LOCALHOST,
    }
}

fn port_of(endpoint: &Endpoint) -> Result<u16> {
    match endpoint {
        Endpoint::Tcp(_, port) => Ok(*port),
        other => Err(Error::internal(format!(
            "unexpected bound endpoint {other}"
        ))),
    }
}

#[async_trait]
impl Medium for ZmqMedium {
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints> {
        {
            let mut state = lock(&self.state);
            if state.started {
                return Err(Error::internal("zeromq medium started twice"));
            }
            state.started = true;
        }
        let _ = self.core.node_id.set(node_id.to_owned());
        let _ = self.core.inbound.set(inbound);

        let bind_to = format!("tcp://{}:0", self.core.config.interface);
        let unavailable = |what: &str, e: ::zeromq::ZmqError| {
            Error::unavailable(format!("cannot bind the {what} socket on {bind_to}: {e}"))
        };
        let mut router = RouterSocket::with_options(self.core.socket_options());
        let router_at = router
            .bind(&bind_to)
            .await
            .map_err(|e| unavailable("ROUTER", e))?;
        let mut publisher = PubSocket::with_options(self.core.socket_options());
        let pub_at = publisher
            .bind(&bind_to)
            .await
            .map_err(|e| unavailable("PUB", e))?;
        let ip = announced_ip(&self.core.config);
        let endpoints = Endpoints::from([
            (
                "router".to_owned(),
                format!("tcp://{ip}:{}", port_of(&router_at)?),
            ),
            (
                "pub".to_owned(),
                format!("tcp://{ip}:{}", port_of(&pub_at)?),
            ),
        ]);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut state = lock(&self.state);
        if state.stopped {
            return Err(Error::unavailable(
                "the zeromq medium was stopped while starting",
            ));
        }
        state.tasks.push(tokio::spawn(run_router(
            self.core.clone(),
            router,
            shutdown_rx.clone(),
        )));
        let (joined, joined_rx) = mpsc::unbounded_channel();
        state.joined = Some(joined);
        state.tasks.push(tokio::spawn(run_announcer(
            self.core.clone(),
            self.state.clone(),
            joined_rx,
            shutdown_rx.clone(),
        )));
        state.shutdown = Some(shutdown);
        *lock(&self.core.publisher) = Some(publisher);
        state.endpoints = endpoints.clone();
        tracing::debug!(node = %node_id, ?endpoints, "zeromq medium listening");
        Ok(endpoints)
    }

    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        let raw = call_peer(&self.core, &self.state, peer, request).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::internal(e.to_string()))
    }

    async fn call_raw(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        call_peer(&self.core, &self.state, peer, request).await
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        if !self.wants(&event.topic) {
            bump(&self.core.counters.events_unwanted);
            return Ok(());
        }
        publish_event(&self.core, &event.topic, &event.data)
    }

    fn set_interest(&self, prefixes: Vec<String>) {
        let core = &self.core;
        let mut wanted: Vec<String> = core.subscriptions.iter().cloned().chain(prefixes).collect();
        wanted.sort();
        wanted.dedup();
        if wanted.iter().any(String::is_empty) {
            wanted = vec![String::new()];
        }
        // The SUB tasks and the announcer task (which tells the peers) follow this watch.
        core.interest.send_if_modified(|now| {
            if **now == wanted {
                false
            } else {
                *now = Arc::new(wanted);
                core.interest_version.fetch_add(1, Ordering::Relaxed);
                true
            }
        });
    }

    fn wants(&self, topic: &str) -> bool {
        let state = lock(&self.state);
        let remote = lock(&self.core.remote);
        // A peer that has not said what it wants (yet) gets everything.
        if state.subs.keys().any(|id| !remote.contains_key(id)) {
            return true;
        }
        remote
            .values()
            .any(|r| r.prefixes.iter().any(|p| topic_matches(p, topic)))
    }

    async fn sync_interest(&self) {
        let subs: Vec<(NodeInfo, mpsc::UnboundedSender<SubCommand>)> = lock(&self.state)
            .subs
            .values()
            .map(|sub| (sub.peer.clone(), sub.commands.clone()))
            .collect();
        let within = self.core.config.request_timeout.min(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + within;
        futures::future::join_all(
            subs.iter()
                .map(|(peer, commands)| self.sync_peer(peer, commands, deadline)),
        )
        .await;
    }

    async fn peer_joined(&self, peer: &NodeInfo) {
        if self.core.node_id.get() == Some(&peer.id) {
            return;
        }
        lock(&self.core.left).retain(|id| *id != peer.id);
        let mut state = lock(&self.state);
        if !state.started || state.stopped {
            return;
        }
        // A DEALER to an endpoint the peer no longer announces is useless: close it now so its
        // calls fail over instead of waiting.
        let moved = state
            .dealers
            .get(&peer.id)
            .is_some_and(|d| peer.endpoints.get("router") != Some(&d.endpoint));
        if moved && let Some(old) = state.dealers.remove(&peer.id) {
            old.close(
                &self.core,
                &format!("node {} moved to another endpoint", peer.id),
            );
        }
        let Some(endpoint) = peer.endpoints.get("pub") else {
            return;
        };
        if let Some(sub) = state.subs.get(&peer.id)
            && sub.endpoint == *endpoint
            && !sub.task.is_finished()
        {
            return;
        }
        if let Some(old) = state.subs.remove(&peer.id) {
            old.task.abort();
        }
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_sub(
            self.core.clone(),
            peer.id.clone(),
            endpoint.clone(),
            commands_rx,
        ));
        state.subs.insert(
            peer.id.clone(),
            Sub {
                endpoint: endpoint.clone(),
                task,
                peer: peer.clone(),
                commands,
            },
        );
        if let Some(joined) = &state.joined {
            let _ = joined.send(peer.id.clone());
        }
    }

    async fn peer_left(&self, peer_id: &str) {
        {
            let mut left = lock(&self.core.left);
            if !left.iter().any(|id| id == peer_id) {
                if left.len() >= self.core.config.max_peers.max(1) {
                    left.pop_front();
                }
                left.push_back(peer_id.to_owned());
            }
            // Under the `left` lock: a concurrent `record_interest` sees either both or neither.
            lock(&self.core.remote).remove(peer_id);
        }
        let (dealer, sub) = {
            let mut state = lock(&self.state);
            (state.dealers.remove(peer_id), state.subs.remove(peer_id))
        };
        if let Some(dealer) = dealer {
            dealer.close(&self.core, &format!("node {peer_id} left"));
        }
        if let Some(sub) = sub {
            sub.task.abort();
        }
    }

    async fn stop(&self) {
        let publisher = lock(&self.core.publisher).take();
        self.close_all();
        // Close the PUB socket, unbinding its port.
        if let Some(socket) = publisher {
            let _ = socket.close().await;
        }
        let tasks: Vec<_> = lock(&self.state).tasks.drain(..).collect();
        for mut task in tasks {
            // The ROUTER task closes its socket (unbinding the port) on shutdown.
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }

    fn describe(&self) -> String {
        match lock(&self.state).endpoints.get("router") {
            Some(router) => format!("zeromq {router}"),
            None => "zeromq".to_owned(),
        }
    }
}

fn dealer_for(core: &Arc<Core>, state: &Mutex<State>, peer: &NodeInfo) -> Result<Arc<Dealer>> {
    let Some(endpoint) = peer.endpoints.get("router") else {
        return Err(Error::unavailable(format!(
            "node {} announced no router endpoint",
            peer.id
        )));
    };
    let mut state = lock(state);
    if !state.started || state.stopped {
        return Err(Error::unavailable("the zeromq medium is not running"));
    }
    if let Some(dealer) = state.dealers.get(&peer.id)
        && dealer.endpoint == *endpoint
        && !dealer.task.is_finished()
    {
        return Ok(dealer.clone());
    }
    if let Some(old) = state.dealers.remove(&peer.id) {
        old.close(core, &format!("node {} moved to another endpoint", peer.id));
    }
    let shared = Arc::new(DealerShared {
        link: watch::channel(Link::Connecting).0,
        pending: PendingMap::default(),
    });
    let task = tokio::spawn(run_dealer(
        core.clone(),
        peer.id.clone(),
        endpoint.clone(),
        shared.clone(),
    ));
    let dealer = Arc::new(Dealer {
        endpoint: endpoint.clone(),
        shared,
        task,
    });
    state.dealers.insert(peer.id.clone(), dealer.clone());
    Ok(dealer)
}

async fn call_peer(
    core: &Arc<Core>,
    state: &Mutex<State>,
    peer: &NodeInfo,
    request: Request,
) -> Result<Box<RawValue>> {
    let from = core.node_id.get().map(String::as_str).unwrap_or("");
    let id = core.next_request.fetch_add(1, Ordering::Relaxed);
    let body = serde_json::to_vec(&RequestOut {
        v: PROTOCOL_VERSION,
        kind: "request",
        id,
        from,
        request: &request,
    })?;
    if body.len() + core.mac_len() > core.config.max_message_bytes {
        return Err(Error::bad_request(format!(
            "request of {} bytes exceeds the {} byte message limit",
            body.len(),
            core.config.max_message_bytes
        )));
    }
    let mac = core.sign(&[&body]);
    let dealer = dealer_for(core, state, peer)?;
    let shared = &dealer.shared;
    let (tx, rx) = oneshot::channel();
    // Registered before the connection is looked at: a connection lost from now on fails
    // this call (the DEALER task marks the link down, then fails every pending call).
    lock(&shared.pending).insert(id, tx);
    let _guard = PendingGuard {
        pending: &shared.pending,
        id,
    };
    match shared.conn().await {
        Ok(conn) => {
            let sent = send_now(&conn, multipart(vec![body, mac])).await;
            match sent {
                Ok(()) => bump(&core.counters.calls_sent),
                Err(e) => {
                    let why = format!("node {}: send failed: {e}", peer.id);
                    fail_one(core, &shared.pending, id, &why);
                    conn.lost.notify_one();
                }
            }
        }
        Err(why) => fail_one(core, &shared.pending, id, &why),
    }
    match rx.await {
        Ok(reply) => reply,
        Err(_) => Err(Error::unavailable(format!(
            "connection to node {} is closed",
            peer.id
        ))),
    }
}

/// Signs and hands one event to the PUB socket.
fn publish_event(core: &Core, topic: &str, data: &Value) -> Result<()> {
    let from = core.node_id.get().map(String::as_str).unwrap_or("");
    let body = serde_json::to_vec(&EventOut {
        v: PROTOCOL_VERSION,
        kind: "event",
        from,
        topic,
        data,
    })?;
    if body.len() + topic.len() + core.mac_len() > core.config.max_message_bytes {
        return Err(Error::bad_request(format!(
            "event {topic} of {} bytes exceeds the {} byte message limit",
            body.len(),
            core.config.max_message_bytes
        )));
    }
    let topic_frame = topic.as_bytes().to_vec();
    let mac = core.sign(&[&topic_frame, &body]);
    let message = multipart(vec![topic_frame, body, mac]);
    let mut publisher = lock(&core.publisher);
    let Some(socket) = publisher.as_mut() else {
        return Err(Error::unavailable("the zeromq medium is not running"));
    };
    match socket.send(message).now_or_never() {
        Some(Ok(())) => {
            bump(&core.counters.events_published);
            Ok(())
        }
        Some(Err(e)) => {
            bump(&core.counters.events_dropped);
            tracing::debug!(%topic, error = %e, "event not published");
            Ok(())
        }
        None => {
            drop(publisher);
            let dropped = core.counters.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = lock(&core.publish_drop_log);
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    %topic,
                    dropped_so_far = dropped,
                    "the PUB socket did not take the event at once; event dropped"
                );
            }
            Ok(())
        }
    }
}

/// The arguments of an `interest` request: this node's current prefixes and their version.
fn interest_args(core: &Core) -> Value {
    let wanted = core.interest.borrow();
    serde_json::json!({
        "version": core.interest_version.load(Ordering::Relaxed),
        "prefixes": **wanted,
    })
}

/// Tells the peers what this node wants: every peer when that changes (a burst of changes, as
/// websocket clients come and go, is told once: the latest set, when the previous round is
/// done), and each peer that joins. A peer that could not be told (busy, restarting) is told
/// again a second later, until it is or it leaves: otherwise it would keep sending by what it
/// heard last. (A peer never told gets every event.)
async fn run_announcer(
    core: Arc<Core>,
    state: Arc<Mutex<State>>,
    mut joined: mpsc::UnboundedReceiver<String>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut interest = core.interest.subscribe();
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
        let args = interest_args(&core);
        let within = core.config.request_timeout;
        let told = futures::future::join_all(peers.iter().map(|peer| {
            let request = Request::new(MEDIUM_COLLECTION, "interest").args(args.clone());
            let (core, state) = (&core, &state);
            async move {
                let told =
                    tokio::time::timeout(within, call_peer(core, state, peer, request)).await;
                matches!(told, Ok(Ok(_)))
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

/// Records what `from` wants, unless a newer version is known already.
fn record_interest(core: &Core, from: Option<&str>, args: &Value) -> Result<()> {
    let bad = || Error::bad_request("interest needs \"version\" (u64) and \"prefixes\" (strings)");
    let Some(from) = from else {
        return Err(Error::bad_request(
            "interest needs the sender's node id in \"from\"",
        ));
    };
    let version = args
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(bad)?;
    let prefixes = args
        .get("prefixes")
        .and_then(Value::as_array)
        .ok_or_else(bad)?
        .iter()
        .map(|p| p.as_str().map(str::to_owned).ok_or_else(bad))
        .collect::<Result<Vec<String>>>()?;
    let left = lock(&core.left);
    if left.iter().any(|id| id == from) {
        // Sent before the peer left, arriving after: it wants nothing from here any more.
        tracing::debug!(peer = from, "interest from a node that left, ignored");
        return Ok(());
    }
    let mut remote = lock(&core.remote);
    // Bounded like the peers: an id that is not a peer cannot grow this map without end.
    if !remote.contains_key(from) && remote.len() >= core.config.max_peers {
        return Err(Error::unavailable(format!(
            "interest of {} peers recorded already (max_peers)",
            remote.len()
        )));
    }
    match remote.get(from) {
        Some(known) if known.version > version => {}
        _ => {
            remote.insert(from.to_owned(), RemoteInterest { version, prefixes });
        }
    }
    Ok(())
}

/// The medium's own requests: `interest` records what the caller wants from this node; `sync`
/// records it too, then publishes the sync marker the caller names.
fn serve_medium(core: &Core, from: Option<&str>, request: &Request) -> Result<Value> {
    match request.action.as_str() {
        "interest" => {
            record_interest(core, from, &request.args)?;
            Ok(Value::Null)
        }
        "sync" => {
            if request.args.get("prefixes").is_some() {
                record_interest(core, from, &request.args)?;
            }
            let topic = request.args.get("topic").and_then(Value::as_str);
            match topic {
                Some(topic) if topic.starts_with(SYNC_PREFIX) && topic.len() <= 256 => {
                    publish_event(core, topic, &Value::Null)?;
                    Ok(Value::Null)
                }
                _ => Err(Error::bad_request(format!(
                    "sync needs a \"topic\" starting with {SYNC_PREFIX}"
                ))),
            }
        }
        other => Err(Error::bad_request(format!("no medium action {other}"))),
    }
}

// ---------------------------------------------------------------------------------------------
// Tasks

/// Serves the ROUTER: this task reads; each request is served on its own task, which sends its
/// reply on its own handle of the socket. On shutdown every handle is dropped (serving tasks
/// watch the shutdown too), which closes the socket and its listener.
async fn run_router(core: Arc<Core>, router: RouterSocket, shutdown: watch::Receiver<bool>) {
    let (mut writer, mut reader) = router.split();
    let permits = Arc::new(Semaphore::new(MAX_SERVING));
    let serving = async {
        loop {
            match reader.recv().await {
                Ok(message) => {
                    let now = accept_request(&core, message, &writer, &shutdown, &permits);
                    if let Some(reply) = now {
                        send_reply(&core, &mut writer, reply).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "zeromq ROUTER receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    let mut stop = shutdown.clone();
    tokio::select! {
        _ = stop.changed() => {}
        _ = serving => {}
    }
}

async fn send_reply(core: &Core, writer: &mut RouterSendHalf, reply: ZmqMessage) {
    match writer.send(reply).await {
        Ok(()) => bump(&core.counters.replies_sent),
        Err(e) => {
            // An identity that is gone (the caller disconnected): never fatal.
            bump(&core.counters.replies_undeliverable);
            tracing::debug!(error = %e, "reply dropped: the caller is gone");
        }
    }
}

/// Checks a request's frames and serves it, in place if its handler completes at once, else on
/// a serving task. Returns a reply to send at once (served in place, or busy) if any.
fn accept_request(
    core: &Arc<Core>,
    message: ZmqMessage,
    writer: &RouterSendHalf,
    shutdown: &watch::Receiver<bool>,
    permits: &Arc<Semaphore>,
) -> Option<ZmqMessage> {
    let mut frames = message.into_vec();
    let identity = frames.first().cloned().unwrap_or_default();
    if frames.len() != 3 {
        let sender = sender_name(&identity);
        let reason = format!(
            "{} frames, expected [body, mac]",
            frames.len().saturating_sub(1)
        );
        core.malformed.drop_from(&sender, "request", &reason);
        return None;
    }
    let mac = frames.pop().unwrap_or_default();
    let body = frames.pop().unwrap_or_default();
    if body.len() + mac.len() > core.config.max_message_bytes {
        let reason = format!("{} bytes over the limit", body.len());
        core.oversized
            .drop_from(&sender_name(&identity), "request", &reason);
        return None;
    }
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        bump(&core.counters.requests_refused_busy);
        // Refuse it at once with `unavailable`, if it is authentic and carries an id.
        let id = serde_json::from_slice::<Probe>(&body).ok()?.id?;
        if !core.verified(&sender_name(&identity), "request", &[&body], &mac) {
            return None;
        }
        let reply = encode_response(core, id, &Err(Error::unavailable("node too busy")));
        let mac = core.sign(&[&reply]);
        return Some(multipart(vec![identity.to_vec(), reply, mac]));
    };
    if body.len() > INLINE_BODY_BYTES {
        // A large body: even checking its mac and parsing it takes a while; not on this task.
        let owned = core.clone();
        spawn_serving(core, writer, shutdown, async move {
            let _permit = permit;
            serve(&owned, &identity, &body, &mac).await
        });
        return None;
    }
    let (id, from, request) = match accept(core, &identity, &body, &mac) {
        Accepted::Done(reply) => return reply,
        Accepted::Serve { id, from, request } => (id, from, request),
    };
    let inbound = core.inbound.get().cloned()?;
    // Only a handler the node says is cheap (a `get`) is polled here, once: most complete at
    // once (a memory store) and are answered from this task without a hop; one that waits
    // moves to its own task. Any other (a `list`, an action, a message: they may compute
    // for a while) goes to its own task at once, so it never stalls the requests behind it.
    let inline = inbound.serve_inline(&request);
    let owned = core.clone();
    let mut served = Box::pin(async move {
        let _permit = permit;
        Some(handle(&owned, inbound, &identity, id, from, request).await)
    });
    if inline && let Some(reply) = (&mut served).now_or_never() {
        return reply;
    }
    spawn_serving(core, writer, shutdown, served);
    None
}

/// Serves one request on a task of its own, which sends the reply on its own handle of the
/// ROUTER.
fn spawn_serving(
    core: &Arc<Core>,
    writer: &RouterSendHalf,
    shutdown: &watch::Receiver<bool>,
    served: impl Future<Output = Option<ZmqMessage>> + Send + 'static,
) {
    let core = core.clone();
    let mut writer = writer.clone();
    let mut shutdown = shutdown.clone();
    tokio::spawn(async move {
        let work = async {
            if let Some(reply) = served.await {
                send_reply(&core, &mut writer, reply).await;
            }
        };
        // On shutdown, stop serving and let go of the socket.
        tokio::select! {
            _ = shutdown.changed() => {}
            () = work => {}
        }
    });
}

/// What [`accept`] made of a request.
enum Accepted {
    /// Answered (a `$medium` request, a malformed one) or dropped (`None`).
    Done(Option<ZmqMessage>),
    /// To be handed to the node.
    Serve {
        id: u64,
        from: Option<String>,
        request: Request,
    },
}

/// Verifies, parses and serves one request; returns the reply to send, if any.
async fn serve(core: &Core, identity: &[u8], body: &[u8], mac: &[u8]) -> Option<ZmqMessage> {
    match accept(core, identity, body, mac) {
        Accepted::Done(reply) => reply,
        Accepted::Serve { id, from, request } => {
            let inbound = core.inbound.get()?.clone();
            Some(handle(core, inbound, identity, id, from, request).await)
        }
    }
}

/// Verifies and parses one request; answers the medium's own and malformed ones.
fn accept(core: &Core, identity: &[u8], body: &[u8], mac: &[u8]) -> Accepted {
    let sender = || sender_name(identity);
    if !core.verified(&sender(), "request", &[body], mac) {
        return Accepted::Done(None);
    }
    let (id, reply) = match serde_json::from_slice::<RequestIn>(body) {
        Ok(envelope) if envelope.v != PROTOCOL_VERSION => {
            core.version
                .drop_from(&sender(), "request", "unknown protocol version");
            return Accepted::Done(None);
        }
        Ok(envelope) if envelope.kind != "request" => {
            core.malformed
                .drop_from(&sender(), "request", "not a request envelope");
            return Accepted::Done(None);
        }
        Ok(envelope) if envelope.request.collection == MEDIUM_COLLECTION => {
            let served = serve_medium(core, envelope.from.as_deref(), &envelope.request)
                .and_then(|value| crate::__private::to_raw(&value));
            (envelope.id, served)
        }
        Ok(envelope) => {
            return Accepted::Serve {
                id: envelope.id,
                from: envelope.from,
                request: envelope.request,
            };
        }
        Err(e) => {
            let Some(id) = classify_failure(core, &sender(), "request", body) else {
                return Accepted::Done(None);
            };
            core.malformed
                .drop_from(&sender(), "request", "invalid request object");
            (
                id,
                Err(Error::bad_request(format!("malformed request: {e}"))),
            )
        }
    };
    Accepted::Done(Some(reply_message(core, identity, id, &reply)))
}

/// Hands one request to the node; returns the reply.
async fn handle(
    core: &Core,
    inbound: Arc<dyn Inbound>,
    identity: &[u8],
    id: u64,
    from: Option<String>,
    request: Request,
) -> ZmqMessage {
    bump(&core.counters.requests_served);
    let served = AssertUnwindSafe(inbound.request_raw(from, request))
        .catch_unwind()
        .await;
    let reply = served.unwrap_or_else(|_| Err(Error::internal("request handler panicked")));
    reply_message(core, identity, id, &reply)
}

fn reply_message(
    core: &Core,
    identity: &[u8],
    id: u64,
    reply: &Result<Box<RawValue>>,
) -> ZmqMessage {
    let body = encode_response(core, id, reply);
    let mac = core.sign(&[&body]);
    multipart(vec![identity.to_vec(), body, mac])
}

// Owns one peer's DEALER: connects (bounded), runs a session, and after any failure marks the
/// link down, fails the pending calls and reconnects with backoff. Calls made before the first
/// connect wait for it; once a connection has failed, calls fail at once with `unavailable` until
/// a reconnect succeeds, so the node can fail over instead of waiting.
async fn run_dealer(core: Arc<Core>, peer: String, endpoint: String, shared: Arc<DealerShared>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let n = core.next_connection.fetch_add(1, Ordering::Relaxed);
        let identity = format!("zs-{}-{n}", core.instance);
        let timeout = core.connect_timeout();
        let mut options = core.socket_options();
        options.connect_timeout(timeout);
        if let Ok(id) = identity.parse() {
            options.peer_identity(id);
        }
        let mut socket = DealerSocket::with_options(options);
        let monitor = socket.monitor();
        // While this runs, the link is `Connecting` (first time: calls wait) or `Down` (calls
        // fail at once).
        let connected = tokio::time::timeout(
            timeout + Duration::from_millis(200),
            socket.connect(&endpoint),
        )
        .await;
        let why = match connected {
            Ok(Ok(())) => {
                tracing::debug!(%peer, %endpoint, "DEALER connected");
                backoff = BACKOFF_MIN;
                let (sender, receiver) = socket.split();
                let conn = Arc::new(Conn {
                    sender: Mutex::new(sender),
                    lost: Notify::new(),
                });
                shared.link.send_replace(Link::Up(conn.clone()));
                session(&core, &peer, &shared.pending, &conn, receiver, monitor).await
            }
            Ok(Err(e)) => format!("cannot connect to {endpoint}: {e}"),
            Err(_) => format!(
                "cannot connect to {endpoint} within {} ms",
                timeout.as_millis()
            ),
        };
        tracing::debug!(%peer, %endpoint, reason = %why, "DEALER connection failed");
        let why = format!("node {peer}: {why}");
        // First the link (calls from now on fail at once), then the calls already sent or being
        // sent on the dead connection.
        shared.link.send_replace(Link::Down(why.as_str().into()));
        fail_all(&core, &shared.pending, &why);
        // Back off; calls arriving meanwhile fail at once.
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

fn fail_one(core: &Core, pending: &PendingMap, id: u64, why: &str) {
    if let Some(tx) = lock(pending).remove(&id) {
        bump(&core.counters.calls_failed_unavailable);
        let _ = tx.send(Err(Error::unavailable(why.to_owned())));
    }
}

/// Runs one connected session until the connection is lost; returns why.
async fn session(
    core: &Core,
    peer: &str,
    pending: &PendingMap,
    conn: &Conn,
    mut receiver: ::zeromq::DealerRecvHalf,
    mut monitor: futures::channel::mpsc::Receiver<SocketEvent>,
) -> String {
    // Long-lived futures: a receive is always pending (the crate notices a disconnect only
    // while one is), and none is cancelled until the session ends.
    let reader = async {
        loop {
            match receiver.recv().await {
                Ok(message) => take_response(core, peer, pending, message),
                Err(e) => return format!("receive failed: {e}"),
            }
        }
    };
    let watcher = async {
        loop {
            match monitor.next().await {
                Some(SocketEvent::Disconnected(_)) | None => return "disconnected".to_owned(),
                Some(_) => {}
            }
        }
    };
    tokio::select! {
        why = reader => why,
        why = watcher => why,
        () = conn.lost.notified() => "send failed".to_owned(),
    }
}

fn take_response(core: &Core, peer: &str, pending: &PendingMap, message: ZmqMessage) {
    let frames = message.into_vec();
    if frames.len() != 2 {
        core.malformed.drop_from(
            peer,
            "response",
            &format!("{} frames, expected [body, mac]", frames.len()),
        );
        return;
    }
    let (body, mac) = (&frames[0], &frames[1]);
    if body.len() + mac.len() > core.config.max_message_bytes {
        core.oversized.drop_from(
            peer,
            "response",
            &format!("{} bytes over the limit", body.len()),
        );
        return;
    }
    if !core.verified(peer, "response", &[body], mac) {
        return;
    }
    let envelope = match serde_json::from_slice::<ResponseIn>(body) {
        Ok(envelope) => envelope,
        Err(_) => {
            classify_failure(core, peer, "response", body);
            return;
        }
    };
    if envelope.v != PROTOCOL_VERSION {
        core.version
            .drop_from(peer, "response", "unknown protocol version");
        return;
    }
    let reply = match (envelope.kind.as_ref(), envelope.ok, envelope.error) {
        ("response", Some(raw), None) => Ok(raw.to_owned()),
        ("response", None, Some(error)) => Err(error),
        _ => {
            core.malformed
                .drop_from(peer, "response", "not a response envelope");
            return;
        }
    };
    bump(&core.counters.replies_received);
    // No entry: the call timed out and went away; the late reply is dropped.
    if let Some(tx) = lock(pending).remove(&envelope.id) {
        let _ = tx.send(reply);
    }
}

/// Owns one peer's SUB: subscribes to what the node wants (following its changes), connects,
/// hands events to the node, answers sync marks, and reconnects with backoff.
async fn run_sub(
    core: Arc<Core>,
    peer: String,
    endpoint: String,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
) {
    let mut interest = core.interest.subscribe();
    // Marker topics of syncs in progress, subscribed again after a reconnect.
    let mut marks: Vec<String> = Vec::new();
    let mut backoff = BACKOFF_MIN;
    loop {
        let timeout = core.connect_timeout();
        let mut options = core.socket_options();
        options.connect_timeout(timeout);
        let mut socket = SubSocket::with_options(options);
        let mut current: Vec<String> = Vec::new();
        let wanted = interest.borrow_and_update().clone();
        let mut subscribed = apply_interest(&mut socket, &mut current, &wanted, &peer).await;
        for mark in &marks {
            subscribed &= socket.subscribe(mark).await.is_ok();
        }
        let connected = tokio::time::timeout(
            timeout + Duration::from_millis(200),
            socket.connect(&endpoint),
        )
        .await;
        match connected {
            Ok(Ok(())) if subscribed => {
                tracing::debug!(%peer, %endpoint, "SUB connected");
                backoff = BACKOFF_MIN;
                loop {
                    tokio::select! {
                        changed = interest.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            let wanted = interest.borrow_and_update().clone();
                            if !apply_interest(&mut socket, &mut current, &wanted, &peer).await {
                                break;
                            }
                        }
                        command = commands.recv() => {
                            let ok = match command {
                                None => return,
                                Some(SubCommand::Mark(mark)) => {
                                    // The interest as of the sync first, then the marker after it.
                                    let wanted = interest.borrow_and_update().clone();
                                    let ok = apply_interest(&mut socket, &mut current, &wanted, &peer).await
                                        && socket.subscribe(&mark).await.is_ok();
                                    marks.push(mark);
                                    ok
                                }
                                Some(SubCommand::Forget(mark)) => {
                                    marks.retain(|m| *m != mark);
                                    socket.unsubscribe(&mark).await.is_ok()
                                }
                            };
                            if !ok {
                                break;
                            }
                        }
                        message = socket.recv() => match message {
                            Ok(message) => take_event(&core, &peer, message),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "SUB receive failed; reconnecting");
                                break;
                            }
                        },
                    }
                }
            }
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(%peer, %endpoint, error = %e, "SUB connect failed"),
            Err(_) => tracing::debug!(%peer, %endpoint, "SUB connect timed out"),
        }
        drop(socket);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Subscribes `socket` to the prefixes of `wanted` it lacks and unsubscribes it from those it
/// no longer needs; `current` tracks what it is subscribed to. False when the socket failed.
async fn apply_interest(
    socket: &mut SubSocket,
    current: &mut Vec<String>,
    wanted: &[String],
    peer: &str,
) -> bool {
    for prefix in wanted {
        if !current.contains(prefix) {
            if let Err(e) = socket.subscribe(prefix).await {
                tracing::debug!(%peer, error = %e, "SUB subscribe failed");
                return false;
            }
            current.push(prefix.clone());
        }
    }
    let gone: Vec<String> = current
        .iter()
        .filter(|p| !wanted.contains(p))
        .cloned()
        .collect();
    for prefix in gone {
        if let Err(e) = socket.unsubscribe(&prefix).await {
            tracing::debug!(%peer, error = %e, "SUB unsubscribe failed");
            return false;
        }
        current.retain(|p| *p != prefix);
    }
    true
}

fn take_event(core: &Core, peer: &str, message: ZmqMessage) {
    let frames = message.into_vec();
    if frames.len() != 3 {
        core.malformed.drop_from(
            peer,
            "event",
            &format!("{} frames, expected [topic, body, mac]", frames.len()),
        );
        return;
    }
    let (topic, body, mac) = (&frames[0], &frames[1], &frames[2]);
    if topic.len() + body.len() + mac.len() > core.config.max_message_bytes {
        core.oversized.drop_from(
            peer,
            "event",
            &format!("{} bytes over the limit", body.len()),
        );
        return;
    }
    if !core.verified(peer, "event", &[topic, body], mac) {
        return;
    }
    if topic.starts_with(SYNC_PREFIX.as_bytes()) {
        let marker = String::from_utf8_lossy(topic);
        if let Some(seen) = lock(&core.markers).remove(marker.as_ref()) {
            let _ = seen.send(());
        }
        return;
    }
    // SUB filtering is by bytes; subscriptions are by dot segments (`power` is not `powers`).
    // An event nobody here wants (any more) is dropped before it is parsed.
    let wanted = match std::str::from_utf8(topic) {
        Ok(topic) => core
            .interest
            .borrow()
            .iter()
            .any(|p| topic_matches(p, topic)),
        Err(_) => true,
    };
    if !wanted {
        return;
    }
    let envelope = match serde_json::from_slice::<EventIn>(body) {
        Ok(envelope) => envelope,
        Err(_) => {
            classify_failure(core, peer, "event", body);
            return;
        }
    };
    if envelope.v != PROTOCOL_VERSION {
        core.version
            .drop_from(peer, "event", "unknown protocol version");
        return;
    }
    if envelope.kind != "event" || envelope.topic.as_bytes() != &topic[..] {
        core.malformed.drop_from(
            peer,
            "event",
            "not an event envelope, or its topic differs from the topic frame",
        );
        return;
    }
    let Some(inbound) = core.inbound.get() else {
        return;
    };
    bump(&core.counters.events_received);
    inbound.event(Event {
        topic: envelope.topic,
        data: envelope.data,
    });
}
