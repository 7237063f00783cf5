//! The ZeroMQ medium: nodes in separate processes (and machines) talk over TCP with the pure-Rust
//! `zeromq` crate.
//!
//! Each node binds a ROUTER (calls in, replies out) and a PUB (events out) on ephemeral ports
//! and announces them as the endpoints `router` and `pub`. Towards each peer it keeps ONE
//! long-lived DEALER (calls out, many in flight, told apart by request id) and one SUB (events
//! in).
//!
//! # Wire (a contract: other implementations must speak exactly this)
//!
//! Every body frame is UTF-8 JSON carrying `"v": 3` ([`PROTOCOL_VERSION`](super::PROTOCOL_VERSION)) and a `"kind"`
//! (sealed with a cluster key: see *Sealing* below).
//! Version 1 carried the medium's control messages as requests to a collection `$medium`;
//! version 2 gave them kinds of their own (a request to `$medium` is an application request
//! like any other, to an unknown collection) and signed envelopes with an HMAC frame; version 3
//! seals them (encrypted, authenticated, replay-proof) where version 2 signed them.
//!
//! * **Request**, DEALER -> ROUTER, multipart `[body, seal]` (the ROUTER sees
//!   `[identity, body, seal]`):
//!   `{"v":3,"kind":"request","id":<u64>,"from":"<node id>","request":{"collection":..,
//!   "action":..,"resource_id":..?,"args":..}}`.
//! * **Interest**, DEALER -> ROUTER, `[body, seal]`: what the sender wants from the receiver,
//!   `{"v":3,"kind":"interest","id":<u64>,"from":"<node id>","interest":{"version":<u64>,
//!   "prefixes":["<topic prefix>",..]}}`. The receiver keeps the newest `version` per sender
//!   (at most `max_peers` senders; an interest arriving after its sender left is ignored) and
//!   publishes an event only when some peer wants it (a peer that never said gets everything).
//!   Answered with a response, `"ok":null` or an error.
//! * **Sync**, DEALER -> ROUTER, `[body, seal]`:
//!   `{"v":3,"kind":"sync","id":<u64>,"from":"<node id>","topic":"$sync.<anything>",
//!   "interest":{..}?}`: the receiver records the interest when given, publishes an event on
//!   `topic` with `"data":null` and answers `"ok":null` (a topic not starting with `$sync.` or
//!   over 256 bytes gets a `bad_request` error). A node subscribes to a fresh `$sync.` topic
//!   after its other subscriptions and asks for it until it arrives: from then on, its earlier
//!   subscriptions are in effect at that peer (one connection's subscriptions apply in order).
//!   `$sync.` events are never handed to a node; a peer that answers with an error is simply
//!   not confirmed.
//! * **Response**, ROUTER -> DEALER, `[body, seal]`, the `id` of the call it answers:
//!   `{"v":3,"kind":"response","id":<u64>,"ok":<value>}` or
//!   `{"v":3,"kind":"response","id":<u64>,"error":<crate::Error, tagged by "kind">}`.
//! * **Event**, PUB -> SUB, `[topic, body, seal]` (the topic frame first, so SUB prefix filtering
//!   works): `{"v":3,"kind":"event","from":"<node id>","topic":"<topic>","data":<value>}`.
//! * **Subscriptions** are plain ZeroMQ SUB subscriptions to topic prefixes (byte prefixes; the
//!   receiver also checks dot segments, so `power` does not deliver `powers.*`): a node
//!   subscribes to what its subscribers want (`""` for everything) and changes them as they
//!   come and go, and tells its peers with `interest` messages (repeated until told).
//!
//! Without a cluster key, `seal` is an empty frame and the body is the JSON above (a message
//! with a non-empty seal frame is dropped as sealed under a key this node lacks).
//!
//! **Trace context** (optional, in version 3): a request and an event may carry `"tp"`, a W3C
//! `traceparent` (`"00-<32 hex>-<16 hex>-<2 hex>"`), and `"ts"`, its `tracestate`, at the top
//! level of the envelope, when the sender exports traces ([`crate::telemetry`]). Unknown fields
//! are ignored by every version-3 reader, so a peer without tracing reads these envelopes as
//! before and the version stays 3. A receiver never fails an envelope for them: a `tp` that is
//! not a valid W3C `traceparent` string (any other JSON, over 512 bytes, malformed) or a `ts`
//! over the W3C limits is ignored, counted ([`crate::telemetry::rejected_contexts`]) and
//! logged at `debug`. The NATS medium carries the same envelopes.
//!
//! ## Sealing (with a cluster key)
//!
//! Each secret of the keyring ([`ClusterKey`](crate::security::ClusterKey)) gives, by
//! HKDF-SHA256 (salt `zeroservices cluster key`), a 32-byte wire key-generating key `K` (info
//! `zeroservices wire v3`), a topic key (`zeroservices topics v1`) and a 4-byte key id
//! (`zeroservices key id v1`). Each sender draws a 12-byte random session when it starts; its
//! message key is `AES-256(K, 0u32 LE | session) | AES-256(K, 1u32 LE | session)` (the key
//! derivation of AES-GCM-SIV, RFC 8452 §4), under `K` of the primary (first) secret. A body is
//! sealed with AES-256-GCM under that key, the nonce being the sender's message counter
//! (8 bytes, big-endian) then 4 zero bytes: the body frame is the ciphertext followed by its
//! 16-byte tag; the `seal` frame is the 33-byte clear header
//! `version (1 byte, 3) | key id (4) | session (12) | timestamp (8, ms since the epoch, big-endian) | counter (8, big-endian)`.
//! No (key, nonce) pair repeats: the counter never does within a session, and sessions (96
//! random bits) do not collide. A receiver derives a sender's message key once and keeps it
//! with the sender's replay memory (until the keyring is reloaded).
//! The associated data is `kind | seal | context`, `kind` one byte (`c` a call: request,
//! interest or sync; `r` a response; `e` an event) and `context` the topic frame of an event
//! (empty otherwise): a body cannot be moved to another kind, topic or header.
//!
//! The topic frame of an event is the topic with each dot segment replaced by a tag, 16 hex
//! digits: the first 8 bytes of HMAC-SHA256(topic key, segment). SUB subscriptions are the
//! tags of the wanted prefixes (under every key of the ring, so a publisher on either key of a
//! rotation is heard), which keeps byte-prefix filtering by segments; the names (collection,
//! action, id) do not show. The receiver checks that the topic in the opened envelope has the
//! topic frame's tags.
//!
//! A receiver picks the key by its id (any key of its ring), opens the body, then drops it
//! when its timestamp is further than [`NetworkConfig::replay_window`] from its own clock
//! (default ±60 s; checked first, before opening) or its counter was seen before from that
//! session (a replay). The counters are remembered per sender session until they leave the window, at most 65,536 per session and
//! 4,096 sessions: past the first bound the oldest are forgotten and the session's floor raised
//! above them (older messages of that session are then dropped); past the second, messages of
//! new sessions are dropped until old ones expire. What does not open is counted in
//! [`ZmqStats::dropped_unsigned`], replays and stale messages in
//! [`ZmqStats::dropped_replayed`], each logged once per sender.
//!
//! A wrong frame count, invalid JSON, an unknown `kind` or `v`, or a message
//! larger than `max_message_bytes` is dropped, counted and logged once per sender; nothing a
//! peer sends can panic the medium. A well-formed call (request, interest or sync) of this
//! version with a usable `id` whose body is not valid gets a `bad_request` error reply; a
//! request the node cannot serve gets the node's typed error.
//!
//! `max_message_bytes` bounds a message's frames together (body, seal, and the topic of an
//! event). Every socket (ROUTER, DEALER, PUB, SUB) also enforces it while reading: a frame
//! header that would take a message over it closes that connection at once, before anything is
//! allocated for the frame (counted in [`ZmqStats::connections_closed_oversized`], logged once
//! per peer address), so a peer claiming a huge frame costs nothing. A frame being received is
//! buffered as its bytes arrive, never reserved at its announced size. Senders refuse to send
//! anything over the limit.
//!
//! # Connections
//!
//! One supervised task per peer owns its DEALER: it keeps a `recv()` pending at all times, hands
//! replies to the waiting calls, watches the socket monitor, and on a disconnect, a failed write
//! or a failed connect fails that peer's pending calls at once with [`Error::Unavailable`] and
//! rebuilds the socket with backoff (the `zeromq` DEALER does not reconnect by itself). Callers
//! put their requests in the connection's outbox (bounded by the calls in flight: one request
//! per waiting call); the first one into an empty outbox wakes the task, which hands the whole
//! outbox to the socket, in order, so a burst of requests leaves in one write instead of one
//! write each (while requests come in bursts it first lets the other ready tasks run once; a
//! lone request is sent at once). A failed write ends the session
//! (every waiting call fails with [`Error::Unavailable`]). Before the first connect calls wait for it; after a failure they fail at
//! once until a reconnect succeeds. Connects are bounded by a timeout. A call whose future is
//! dropped (the node's timeout) removes its pending entry.
//!
//! The ROUTER task never runs a request that may take a while: a body over 64 KiB is verified
//! and parsed on a serving task of its own; otherwise the ROUTER task checks and parses it, and
//! polls its handler once in place only when the node says it is cheap
//! ([`Inbound::serve_inline`]: a `get`, a `create`, a `delete`); a handler that completes without
//! waiting is answered from the ROUTER task, like a plain echo, one that waits moves to its own
//! task. Every other request (a `list`, a `patch`, an action, a message) is served on its own
//! task at once, so one slow request never stalls the others. Control messages are answered on
//! the ROUTER task.
//!
//! # Events in bursts
//!
//! Events travel one envelope each (the wire above), but a burst is handled in batches where
//! that pays, never by waiting: the PUB's fan-out task (vendored `zeromq`,
//! `fanout-batch.patch`) hands what is queued, up to 128 events, to each subscriber's queue in
//! one walk of the subscribers, and each connection's writer feeds what is queued (up to 128)
//! into the socket before one flush; a SUB task takes what has already arrived, up to
//! `SUB_BURST` (256), in one pass (each event checked and counted on its own)
//! before it looks at its other duties again. A subscriber gets one publisher's events in the
//! order they were published, across batch boundaries; a lone event is sent and taken at once.
//! With a cluster key, the tags of a topic's leading segments (collection, action) are kept
//! (at most 1,024), so an event costs one keyed hash for its topic instead of one per segment.
//!
//! A batch envelope (several events in one message) is not used: a message has one topic
//! frame, so SUB prefix filtering would only see the batch's common prefix and a subscriber to
//! one resource's topic would miss its events; it would take a new envelope kind and a protocol
//! version.
//!
//! # Parts
//!
//! `wire` (envelopes, versions, sealing), `pending` (calls waiting for replies), `dealer`
//! (calls out), `router` (calls in), `subscriptions` (events in, what this node wants),
//! `publish` (events out), `interest` (what peers want, and telling them), `sync` (sync
//! markers), `stats` (counters), `core` (what they share).

use std::collections::HashMap;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::zeromq::{Endpoint, PubSocket, RouterSocket, Socket};
use async_trait::async_trait;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::core::Core;
use self::dealer::Dealer;
use self::subscriptions::Sub;
use self::wire::Outgoing;
use super::{Endpoints, Inbound, Medium, Request};
use crate::config::NetworkConfig;
use crate::{Error, Event, NodeInfo, Result};

mod core;
mod dealer;
mod interest;
mod pending;
mod publish;
mod router;
mod stats;
mod subscriptions;
mod sync;
use super::wire;

pub use self::stats::ZmqStats;

/// Reconnect backoff bounds (DEALER and SUB).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few map operations: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

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

/// The connections of a medium, and its life.
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

impl ZmqMedium {
    /// A medium with these settings (`interface`, `cluster_key`, `replay_window`, `request_timeout`,
    /// `max_message_bytes`, `max_peers`, and `multicast_group` to pick the announced address
    /// are used).
    pub fn new(config: NetworkConfig) -> Self {
        Self {
            core: Arc::new(Core::new(config)),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Always subscribes to events under these topic prefixes (dot segments, as
    /// [`Event::matches`]; `""` or `"*"` is everything), whatever the node's subscribers want.
    /// The sniffer uses it.
    pub fn with_subscriptions(mut self, prefixes: Vec<String>) -> Self {
        if let Some(core) = Arc::get_mut(&mut self.core) {
            core.local = subscriptions::LocalInterest::only(prefixes);
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

    fn close_all(&self) {
        let mut state = lock(&self.state);
        state.stopped = true;
        if let Some(shutdown) = &state.shutdown {
            let _ = shutdown.send(true);
        }
        self.core.publisher.take();
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

/// Sends one call to `peer` over its DEALER (made on first use) and waits for the reply.
async fn call_peer(
    core: &Arc<Core>,
    state: &Mutex<State>,
    peer: &NodeInfo,
    call: Outgoing<'_>,
) -> Result<Box<RawValue>> {
    let id = core.next_request.fetch_add(1, Ordering::Relaxed);
    let body = core.wire.encode_call(id, core.node_id(), call)?;
    let [body, seal] = core.wire.seal(wire::SEAL_CALL, b"", body);
    let dealer = {
        let mut state = lock(state);
        if !state.started || state.stopped {
            return Err(Error::unavailable("the zeromq medium is not running"));
        }
        dealer::dealer_for(core, &mut state.dealers, peer)?
    };
    dealer.call(core, &peer.id, id, vec![body, seal]).await
}

#[async_trait]
impl Medium for ZmqMedium {
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints> {
        // Nothing binds beyond loopback without a key, unless asked to.
        self.core.config.check_exposure()?;
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
        state.tasks.push(tokio::spawn(router::run_router(
            self.core.clone(),
            router,
            shutdown_rx.clone(),
        )));
        let (joined, joined_rx) = mpsc::unbounded_channel();
        state.joined = Some(joined);
        state.tasks.push(tokio::spawn(interest::run_announcer(
            self.core.clone(),
            self.state.clone(),
            joined_rx,
            shutdown_rx.clone(),
        )));
        // The keyring from a file is re-read on SIGHUP while the medium runs (key rotation
        // without a restart: README "Rotating the cluster key").
        #[cfg(unix)]
        if let (Some(key), Some(path)) = (
            &self.core.config.cluster_key,
            &self.core.config.cluster_key_file,
        ) {
            match crate::security::keyfile::reload_on_sighup(key.clone(), path.clone()) {
                Ok(reload) => {
                    let mut stop = shutdown_rx.clone();
                    state.tasks.push(tokio::spawn(async move {
                        let _ = stop.changed().await;
                        reload.abort();
                    }));
                }
                Err(e) => tracing::warn!("cannot watch SIGHUP to re-read the cluster key: {e}"),
            }
        }
        state.shutdown = Some(shutdown);
        self.core.publisher.set(publisher);
        state.endpoints = endpoints.clone();
        tracing::debug!(node = %node_id, ?endpoints, "zeromq medium listening");
        Ok(endpoints)
    }

    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        let raw = call_peer(&self.core, &self.state, peer, Outgoing::Request(&request)).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::internal(e.to_string()))
    }

    async fn call_raw(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        call_peer(&self.core, &self.state, peer, Outgoing::Request(&request)).await
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        if !self.wants(&event.topic) {
            stats::bump(&self.core.counters.events_unwanted);
            return Ok(());
        }
        publish::publish_event(&self.core, &event.topic, &event.data)
    }

    fn set_interest(&self, prefixes: Vec<String>) {
        // The SUB tasks and the announcer task (which tells the peers) follow it.
        self.core.local.set(prefixes);
    }

    fn wants(&self, topic: &str) -> bool {
        let state = lock(&self.state);
        self.core.remote.wants(state.subs.keys(), topic)
    }

    async fn sync_interest(&self) {
        let subs: Vec<(NodeInfo, mpsc::UnboundedSender<subscriptions::SubCommand>)> =
            lock(&self.state)
                .subs
                .values()
                .map(|sub| (sub.peer.clone(), sub.commands.clone()))
                .collect();
        let within = self.core.config.request_timeout.min(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + within;
        futures::future::join_all(subs.iter().map(|(peer, commands)| {
            sync::sync_peer(&self.core, &self.state, peer, commands, deadline)
        }))
        .await;
    }

    async fn peer_joined(&self, peer: &NodeInfo) {
        if self.core.node_id.get() == Some(&peer.id) {
            return;
        }
        self.core.remote.joined(&peer.id);
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
        let sub = Sub::spawn(&self.core, peer, endpoint);
        state.subs.insert(peer.id.clone(), sub);
        if let Some(joined) = &state.joined {
            let _ = joined.send(peer.id.clone());
        }
    }

    async fn peer_left(&self, peer_id: &str) {
        self.core.remote.left(peer_id);
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
        let publisher = self.core.publisher.take();
        self.close_all();
        // Everything below shares one deadline, so a stop is bounded whatever the count of
        // tasks.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        // Close the PUB socket, unbinding its port.
        if let Some(socket) = publisher
            && tokio::time::timeout_at(deadline, socket.close())
                .await
                .is_err()
        {
            tracing::warn!("zeromq: the PUB socket did not close within 2 s; left behind");
        }
        let tasks: Vec<_> = lock(&self.state).tasks.drain(..).collect();
        for mut task in tasks {
            // The ROUTER task closes its socket (unbinding the port) on shutdown.
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!("zeromq: a task did not end within 2 s of the stop; aborted");
                task.abort();
            }
        }
    }

    fn as_zmq(&self) -> Option<&ZmqMedium> {
        Some(self)
    }

    fn describe(&self) -> String {
        match lock(&self.state).endpoints.get("router") {
            Some(router) => format!("zeromq {router}"),
            None => "zeromq".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> NetworkConfig {
        NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            ..NetworkConfig::default()
        }
    }

    #[test]
    fn the_announced_address_is_the_interface_or_a_routed_one() {
        assert_eq!(announced_ip(&loopback()), Ipv4Addr::LOCALHOST);
        let any = NetworkConfig {
            interface: Ipv4Addr::UNSPECIFIED,
            ..NetworkConfig::default()
        };
        assert!(!announced_ip(&any).is_unspecified());
    }

    #[tokio::test]
    async fn calls_fail_before_start_and_after_stop() {
        let medium = ZmqMedium::new(loopback());
        let peer: NodeInfo = serde_json::from_value(serde_json::json!({
            "id": "b", "name": "svc", "endpoints": {"router": "tcp://127.0.0.1:9"}
        }))
        .unwrap();
        let request = Request::new("c", "get");
        assert!(matches!(
            medium.call(&peer, request.clone()).await,
            Err(Error::Unavailable { .. })
        ));
        assert_eq!(medium.describe(), "zeromq");
        medium.stop().await;
        assert!(matches!(
            medium.call(&peer, request).await,
            Err(Error::Unavailable { .. })
        ));
    }

    #[test]
    fn fixed_subscriptions_replace_everything() {
        let medium = ZmqMedium::new(loopback()).with_subscriptions(vec!["audit".to_owned()]);
        assert!(medium.core.local.wants("audit.x"));
        assert!(!medium.core.local.wants("power.x"));
        medium.set_interest(vec!["power".to_owned()]);
        assert!(medium.core.local.wants("power.x"));
        // No peer connected: nobody wants anything.
        assert!(!medium.wants("power.x"));
    }
}
