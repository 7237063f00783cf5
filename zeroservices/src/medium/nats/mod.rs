//! The NATS medium: requests, replies and events through a NATS server or cluster
//! (`ZS_TRANSPORT=nats://host:port[,...]`), crate `async-nats`. With NATS a node opens no
//! socket of its own: one client connection ([`NatsLink`]) carries everything, discovery too
//! ([`NatsDiscovery`](crate::discovery::NatsDiscovery)).
//!
//! # Subjects (a contract; `<p>` is the cluster's prefix, `ZS_CLUSTER`, default `zs`)
//!
//! * `<p>.req.<collection>`: requests to any owner of a collection. Every owner subscribes in
//!   the queue group `owners`, so NATS hands each request to one of them (balancing among the
//!   owners, and skipping one that is gone at once: its subscription goes with its connection).
//! * `<p>.node.<node id>`: requests to one node (a message to its `on_message` hook, the
//!   one-store check, a fail-over to a chosen owner).
//! * `<p>.evt.<collection>.<action>.<id>`: events; a user event's topic `chat.room.message` is
//!   `<p>.evt.chat.room.message` (each dot segment a token: a topic with an empty segment,
//!   spaces, `*` or `>` cannot be published over NATS and is refused with `BadRequest`).
//!   A node subscribes to what its subscribers want: `power` is `<p>.evt.power` and
//!   `<p>.evt.power.>`, everything (`*`) is `<p>.evt.>`; prefixes under another are left out,
//!   so no event arrives twice.
//! * `<p>.disc`, `<p>.disc.hello`: discovery (see
//!   [`NatsDiscovery`](crate::discovery::NatsDiscovery)).
//! * `<p>.log.<collection>.<log>.<seq>`: the change logs, on the JetStream stream
//!   `ZS_<P>_CHANGES` (`ZS_NATS_JETSTREAM`): owners publish every entry, followers read gaps
//!   from it (see `jetstream.rs`: the stream's contract, the publisher, the reads).
//!
//! With a cluster key every name token above (collection, node id, each topic segment) is its
//! keyed tag, as in the ZeroMQ medium's topic frames: 16 hex digits of an HMAC under the key, so
//! the subjects show no names, and nodes under another key use other subjects altogether. A
//! node subscribes under every key of its ring (a rotation keeps working), and follows a
//! reload of the ring (`SIGHUP` with `ZS_CLUSTER_KEY_FILE`, or [`ClusterKey::reload`]): the
//! subjects of a new key are subscribed, those of a key removed dropped, those kept untouched
//! (nothing missed, nothing received twice while it changes).
//!
//! # Payloads
//!
//! The ZeroMQ medium's envelopes (see [`medium::zeromq`](crate::medium::zeromq)): a request is
//! the `request` call envelope, the reply (on the request's NATS reply subject) the `response`
//! envelope with `ok` or the typed `error`, an event the `event` envelope. Without a key the
//! payload is that JSON; with a key it is the 33-byte seal header followed by the sealed JSON
//! (AES-256-GCM, the wire keys, a timestamp and counter against replays), the associated data
//! binding the kind (`c` request, `r` response, `e` event) and, for an event, the subject after
//! `<p>.evt.`. A payload that does not open, does not parse, has another version or is over
//! `ZS_MAX_MESSAGE_BYTES` is dropped, counted ([`NatsStats`]) and logged once per kind; a
//! well-formed request with an unusable body is answered with a `bad_request` error; nothing a
//! publisher sends can panic the medium.
//!
//! # Routing
//!
//! The node keeps its directory: it knows the owners of a collection from discovery (an unknown
//! collection is still `404`, a gone owner `503`). Since NATS balances by itself
//! ([`Medium::balances`]), the node sends an ordinary request to `<p>.req.<collection>`
//! ([`Medium::call_any`]); when that fails with `Unavailable` (no owner subscribed, an owner
//! stopping) it falls back to calling each owner it knows on `<p>.node.<id>`, as it does over
//! ZeroMQ. An owner subscribes to its collections' subjects only once it serves them
//! ([`Medium::serve`], after the one-store check).
//!
//! # Serving
//!
//! Each subscription has a task of its own that reads its messages. A request's task opens and
//! parses it (one over 64 KiB goes to a serving task first) and, like the ZeroMQ medium's ROUTER
//! task, polls its handler once in place only when the node says it is cheap
//! ([`Inbound::serve_inline`]: a `get`, a `create`, a `delete`): one that completes without
//! waiting (a memory store) is answered from there, with no task per request; one that waits
//! (a store's durable write) moves to a task of its own, as does every other request (a `list`,
//! a `patch`, an action, a message) at once, so a slow request never stalls the ones behind it.
//! A handler that panics is answered with an `internal` error. At most [`MAX_SERVING`] (4096)
//! requests are served on tasks of their own at once; past it a request is answered
//! `unavailable` at once (counted in [`NatsStats::refused_busy`], warned once a second at most),
//! as over ZeroMQ, so a flood does not pile up tasks.
//!
//! A stop drains: the request subscriptions are unsubscribed at the server and answer every
//! request it routed to them before reading that (the node, stopping, answers `unavailable`
//! and the caller turns to another owner), then the replies of requests served on tasks of
//! their own go out, at most `min(request_timeout, 2 s)`; then the connection closes. (The
//! vendored `async-nats` ends a drain on the `PONG` of its `PING`:
//! `third_party/async-nats/PATCHES.md`.)
//!
//! # Failures
//!
//! A call fails at once with [`Error::Unavailable`] while the connection is down, and a call in
//! flight fails with it when the connection drops; NATS's "no responders" is `Unavailable` too;
//! no reply within the request timeout is [`Error::Timeout`]. At start the first connect is
//! tried again until `ZS_NATS_CONNECT_MS` (a node may start before its NATS). Afterwards the
//! client reconnects by itself, to any listed server or one its cluster told it about (see
//! [`NatsLink`]), and the node serves again without a restart: losing one server of a NATS
//! cluster fails the calls in flight on the connections to it with `Unavailable`, and those
//! nodes serve again through another server within a fraction of a second.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::{Client, Message, Subject, Subscriber};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::subjects::Subjects;
use super::wire::{self, Call, Outgoing, Rejection, Wire};
use super::{Endpoints, Inbound, Medium, Request};
use crate::config::NetworkConfig;
use crate::security::seal::HEADER_LEN;
use crate::security::{ClusterKey, DropLog};
use crate::{Error, Event, NodeInfo, Result};

mod jetstream;
mod link;
pub(crate) mod subjects;

pub(crate) use self::jetstream::{stream_config, stream_name};
pub use self::link::NatsLink;

/// The queue group every owner of a collection joins on its request subject.
const OWNERS: &str = "owners";
/// A request payload larger than this is opened and parsed on a serving task of its own, not
/// on its subscription's task (as in the ZeroMQ medium).
const INLINE_BODY_BYTES: usize = 64 * 1024;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a few map operations: a poisoned lock is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters of a [`NatsMedium`], for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsStats {
    /// Requests answered (any reply, errors included).
    pub requests_served: u64,
    /// Events handed to the node.
    pub events_received: u64,
    /// Dropped: invalid JSON, an unexpected envelope, a request without a reply subject, an
    /// event whose topic is not its subject's.
    pub dropped_malformed: u64,
    /// Dropped: not sealed or not opening while a cluster key is set, or sealed while none is.
    pub dropped_unsigned: u64,
    /// Dropped: sealed right, but outside the replay window or seen before.
    pub dropped_replayed: u64,
    /// Dropped: another protocol version.
    pub dropped_version: u64,
    /// Dropped: over `ZS_MAX_MESSAGE_BYTES`.
    pub dropped_oversized: u64,
    /// Change-log entries stored on the JetStream stream (acknowledged), re-syncs included.
    pub log_published: u64,
    /// Change-log entries whose publish failed (no acknowledgement, the connection down): they
    /// are published again from the store's log.
    pub log_retried: u64,
    /// Change-log entries published by a re-sync from the store's log (at start, after an
    /// overflow, a failure or a reconnect).
    pub log_resynced: u64,
    /// Change-log entries dropped from a full publish queue (`ZS_NATS_LOG_QUEUE`); a re-sync
    /// publishes them from the store's log.
    pub log_dropped: u64,
    /// Change-log entries read from the stream by this node's followers.
    pub log_read: u64,
    /// Messages of the change-log stream not handed out: garbage, forged, sealed under
    /// another key, on another entry's subject (also counted by kind above).
    pub log_rejected: u64,
    /// Requests refused at once with `unavailable` because [`MAX_SERVING`] requests were
    /// already being served on tasks of their own (a flood; logged once a second at most).
    pub refused_busy: u64,
}

/// Requests served on tasks of their own at once (those that wait: actions, patches, large
/// payloads); beyond this a request is answered `unavailable` at once, as over ZeroMQ.
pub const MAX_SERVING: usize = 4096;

#[derive(Default)]
struct Drops {
    malformed: DropLog,
    unsigned: DropLog,
    replayed: DropLog,
    version: DropLog,
    oversized: DropLog,
}

impl Drops {
    fn count(&self, what: &str, rejection: &Rejection) {
        let (log, reason) = match rejection {
            Rejection::Malformed(reason) => (&self.malformed, reason.clone()),
            Rejection::Answerable { reason, .. } => (&self.malformed, reason.clone()),
            Rejection::Unsigned(reason) => (&self.unsigned, (*reason).to_owned()),
            Rejection::Replayed(reason) => (&self.replayed, (*reason).to_owned()),
            Rejection::Version => (&self.version, "another protocol version".to_owned()),
            Rejection::Oversized(n) => (&self.oversized, format!("{n} bytes")),
        };
        // NATS does not say who published: one log line per kind of message.
        log.drop_from("nats", what, &reason);
    }
}

/// The error of a request refused for [`MAX_SERVING`].
const BUSY: &str = "the owner is serving too many requests at once; try again";

/// A place among the requests served on tasks of their own (see [`MAX_SERVING`]), and its
/// token of [`Serving::work`] (a stop waits for their replies).
struct Slot {
    serving: Arc<Serving>,
    _work: tokio_util::task::task_tracker::TaskTrackerToken,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.serving.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The requests being served on tasks of their own: how many (for the cap), and the work a
/// stop waits for (as the node's own in-flight work, `node::shutdown`).
#[derive(Default)]
struct Serving {
    count: std::sync::atomic::AtomicUsize,
    work: tokio_util::task::TaskTracker,
}

/// What the medium's tasks share.
struct Inner {
    link: Arc<NatsLink>,
    config: NetworkConfig,
    wire: Wire,
    subjects: Subjects,
    node_id: OnceLock<String>,
    inbound: OnceLock<Arc<dyn Inbound>>,
    client: OnceLock<Client>,
    state: Mutex<State>,
    /// Held while the subscriptions change (one change at a time: serving, the interest, a
    /// keyring reload), so that no two changes subscribe to one subject twice.
    subscribing: tokio::sync::Mutex<()>,
    /// The prefixes the node's subscribers want, and those always wanted (the sniffer's).
    interest: Mutex<(Vec<String>, Vec<String>)>,
    /// Bumped with every change of the interest; the interest task says which it applied.
    wanted: watch::Sender<u64>,
    applied: watch::Sender<u64>,
    next_request: AtomicU64,
    served: AtomicU64,
    events: AtomicU64,
    drops: Drops,
    /// Requests being served on tasks of their own, and those refused past [`MAX_SERVING`].
    serving: Arc<Serving>,
    /// Cancelled when the medium stops: the request subscriptions drain (see the
    /// [module documentation](self)).
    closing: tokio_util::sync::CancellationToken,
    busy: AtomicU64,
    busy_logged: Mutex<Option<std::time::Instant>>,
    /// The change logs on JetStream.
    journal: jetstream::Journal,
}

#[derive(Default)]
struct State {
    started: bool,
    stopped: bool,
    /// Subscriptions by what they serve (`node`, `req:<collection>`, `evt:<prefix>`): each
    /// subject with the task that takes its messages.
    subscriptions: HashMap<String, Vec<(String, JoinHandle<()>)>>,
    tasks: Vec<JoinHandle<()>>,
    /// Collections to serve (given before start, subscribed at start).
    serving: BTreeSet<String>,
    endpoints: Endpoints,
}

/// A [`Medium`] over NATS; see the [module documentation](self) for the subjects and payloads.
/// Clones share the medium (a test keeps one to read [`NatsMedium::stats`]).
///
/// ```no_run
/// # #[tokio::main] async fn main() -> zeroservices::Result<()> {
/// use zeroservices::{Node, config::NetworkConfig};
/// // ZS_TRANSPORT=nats://127.0.0.1:4222: `network` picks NATS for the medium and discovery.
/// let node = Node::builder("power").network(NetworkConfig::from_env()?).start().await?;
/// # node.stop().await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsMedium {
    inner: Arc<Inner>,
}

impl NatsMedium {
    /// A medium on `link` with these settings (`cluster`, `cluster_key`, `replay_window`,
    /// `request_timeout`, `max_message_bytes`).
    pub fn new(link: Arc<NatsLink>, config: NetworkConfig) -> Self {
        let wire = Wire::with_window(
            config.cluster_key.clone(),
            config.max_message_bytes,
            config.replay_window,
        );
        Self {
            inner: Arc::new(Inner {
                link,
                subjects: Subjects::new(&config.cluster),
                config,
                wire,
                node_id: OnceLock::new(),
                inbound: OnceLock::new(),
                client: OnceLock::new(),
                state: Mutex::new(State::default()),
                subscribing: tokio::sync::Mutex::new(()),
                interest: Mutex::new((Vec::new(), Vec::new())),
                wanted: watch::Sender::new(0),
                applied: watch::Sender::new(0),
                next_request: AtomicU64::new(1),
                served: AtomicU64::new(0),
                events: AtomicU64::new(0),
                drops: Drops::default(),
                serving: Arc::default(),
                closing: tokio_util::sync::CancellationToken::new(),
                busy: AtomicU64::new(0),
                busy_logged: Mutex::new(None),
                journal: jetstream::Journal::default(),
            }),
        }
    }

    /// Always subscribes to events under these topic prefixes (`""` or `"*"` is everything),
    /// whatever the node's subscribers want. The sniffer uses it.
    pub fn with_subscriptions(self, prefixes: Vec<String>) -> Self {
        lock(&self.inner.interest).1 = prefixes;
        self.inner.wanted.send_modify(|v| *v += 1);
        self
    }

    /// The counters so far.
    pub fn stats(&self) -> NatsStats {
        let d = &self.inner.drops;
        let j = &self.inner.journal.counters;
        NatsStats {
            requests_served: self.inner.served.load(Ordering::Relaxed),
            events_received: self.inner.events.load(Ordering::Relaxed),
            dropped_malformed: d.malformed.count(),
            dropped_unsigned: d.unsigned.count(),
            dropped_replayed: d.replayed.count(),
            dropped_version: d.version.count(),
            dropped_oversized: d.oversized.count(),
            log_published: j.published.load(Ordering::Relaxed),
            log_retried: j.retried.load(Ordering::Relaxed),
            log_resynced: j.resynced.load(Ordering::Relaxed),
            log_dropped: j.dropped.load(Ordering::Relaxed),
            log_read: j.read.load(Ordering::Relaxed),
            log_rejected: j.rejected.load(Ordering::Relaxed),
            refused_busy: self.inner.busy.load(Ordering::Relaxed),
        }
    }

    /// The connection.
    pub fn link(&self) -> &Arc<NatsLink> {
        &self.inner.link
    }

    /// JetStream on this medium's connection (once started), its API calls bounded by the
    /// request timeout.
    pub(crate) fn jetstream(&self) -> Result<async_nats::jetstream::Context> {
        let client = self.inner.client()?.clone();
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(self.inner.config.request_timeout);
        Ok(js)
    }

    /// The cluster's subjects.
    pub(crate) fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// The seals and envelopes (the cluster key).
    pub(crate) fn wire(&self) -> &Wire {
        &self.inner.wire
    }

    /// The settings the medium runs with.
    pub(crate) fn config(&self) -> &NetworkConfig {
        &self.inner.config
    }

    /// Opens a change-log entry read from JetStream: `payload` as the owner stored it (with a
    /// key, the seal header then the sealed envelope, bound to `context`, the subject after
    /// `<p>.log.`), without replay checks; its event's topic and data.
    pub(crate) fn open_log_entry(
        &self,
        context: &[u8],
        payload: &[u8],
    ) -> std::result::Result<(String, Value), Rejection> {
        let inner = &self.inner;
        if payload.len() > inner.config.max_message_bytes {
            return Err(Rejection::Oversized(payload.len()));
        }
        let body = if inner.wire.key().is_some() {
            if payload.len() < HEADER_LEN {
                return Err(Rejection::Unsigned("shorter than a seal"));
            }
            let (header, body) = payload.split_at(HEADER_LEN);
            inner
                .wire
                .open_stored(wire::SEAL_LOG, context, body, header)?
        } else {
            match payload.first() {
                Some(b'{') => std::borrow::Cow::Borrowed(payload),
                Some(&b) if u32::from(b) == super::PROTOCOL_VERSION => {
                    return Err(Rejection::Unsigned(
                        "sealed with a cluster key, and this node has none",
                    ));
                }
                _ => return Err(Rejection::Malformed("not a JSON envelope".to_owned())),
            }
        };
        wire::decode_event(&body)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        for task in state
            .subscriptions
            .drain()
            .flat_map(|(_, t)| t.into_iter().map(|(_, task)| task))
            .chain(state.tasks.drain(..))
        {
            task.abort();
        }
    }
}

impl Inner {
    fn client(&self) -> Result<&Client> {
        let state = lock(&self.state);
        if !state.started || state.stopped {
            return Err(Error::unavailable("the nats medium is not running"));
        }
        drop(state);
        self.client
            .get()
            .ok_or_else(|| Error::unavailable("the nats medium is not running"))
    }

    fn node_id(&self) -> &str {
        self.node_id.get().map_or("", String::as_str)
    }

    /// Opens a payload: `header | sealed` with a key, the JSON itself without.
    fn open<'a>(
        &self,
        kind: u8,
        context: &[u8],
        payload: &'a [u8],
    ) -> std::result::Result<std::borrow::Cow<'a, [u8]>, Rejection> {
        if payload.len() > self.config.max_message_bytes {
            return Err(Rejection::Oversized(payload.len()));
        }
        if self.wire.key().is_some() {
            if payload.len() < HEADER_LEN {
                return Err(Rejection::Unsigned("shorter than a seal"));
            }
            let (header, body) = payload.split_at(HEADER_LEN);
            return self.wire.open(kind, context, body, header);
        }
        match payload.first() {
            Some(b'{') => self.wire.open(kind, context, payload, b""),
            Some(&b) if u32::from(b) == super::PROTOCOL_VERSION => Err(Rejection::Unsigned(
                "sealed with a cluster key, and this node has none",
            )),
            _ => Err(Rejection::Malformed("not a JSON envelope".to_owned())),
        }
    }

    /// Seals a body into one payload.
    fn seal(&self, kind: u8, context: &[u8], body: Vec<u8>) -> Vec<u8> {
        let [body, header] = self.wire.seal(kind, context, body);
        if header.is_empty() {
            return body;
        }
        let mut payload = header;
        payload.extend_from_slice(&body);
        payload
    }

    /// Sends a request on `subject` and waits for its reply.
    async fn call(&self, subject: String, request: Request) -> Result<Box<RawValue>> {
        let client = self.client()?.clone();
        if !self.link.is_connected() {
            return Err(Error::unavailable(format!(
                "the NATS connection ({}) is down",
                self.link.describe()
            )));
        }
        let collection = request.collection.clone();
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let body = self
            .wire
            .encode_call(id, self.node_id(), Outgoing::Request(&request))?;
        let payload = self.seal(wire::SEAL_CALL, b"", body);
        let timeout = self.config.request_timeout;
        let send = client.send_request(
            subject,
            async_nats::Request::new()
                .payload(payload.into())
                .timeout(Some(timeout)),
        );
        let reply = tokio::select! {
            reply = send => reply,
            () = self.link.down() => {
                return Err(Error::unavailable(format!(
                    "the NATS connection ({}) dropped while waiting for a reply",
                    self.link.describe()
                )));
            }
        };
        let message = match reply {
            Ok(message) => message,
            Err(e) => {
                return Err(match e.kind() {
                    RequestErrorKind::TimedOut => Error::Timeout {
                        collection,
                        after_ms: timeout.as_millis() as u64,
                    },
                    RequestErrorKind::NoResponders => Error::unavailable(format!(
                        "no node answers requests for {collection} on NATS"
                    )),
                    RequestErrorKind::MaxPayloadExceeded => {
                        Error::bad_request(format!("request too large for the NATS server: {e}"))
                    }
                    _ => Error::unavailable(format!("NATS request failed: {e}")),
                });
            }
        };
        let body = self
            .open(wire::SEAL_RESPONSE, b"", &message.payload)
            .map_err(|rejection| {
                self.drops.count("response", &rejection);
                Error::unavailable("a reply from NATS did not open or parse (dropped)")
            })?;
        match wire::decode_response(&body) {
            Ok((_, reply)) => reply,
            Err(rejection) => {
                self.drops.count("response", &rejection);
                Err(Error::unavailable(
                    "a reply from NATS did not open or parse (dropped)",
                ))
            }
        }
    }

    /// Takes one request message on its subscription's task: a reply to send from there
    /// (answered at once), or `None` (dropped, or served on a task of its own, which replies).
    ///
    /// Like the ZeroMQ medium's ROUTER task: a payload over [`INLINE_BODY_BYTES`] is opened and
    /// parsed on a serving task; otherwise it is opened and parsed here, and its handler polled
    /// once in place only when the node says it is cheap ([`Inbound::serve_inline`]: a `get`, a
    /// `create`, a `delete`); one that completes without waiting is answered from here (no task
    /// per request), one that waits moves to a task of its own, as does every other request at
    /// once, so a slow request never stalls the ones behind it.
    fn accept(self: &Arc<Self>, message: Message) -> Option<(Subject, Vec<u8>)> {
        let Some(reply_to) = message.reply.clone() else {
            self.drops.count(
                "request",
                &Rejection::Malformed("a request without a reply subject".to_owned()),
            );
            return None;
        };
        if message.payload.len() > INLINE_BODY_BYTES {
            let Some(slot) = self.slot() else {
                // Opened and parsed here only to answer `unavailable` (bounded by the limit).
                return self.refuse(&message.payload).map(|p| (reply_to, p));
            };
            let inner = self.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let payload = match inner.parse(&message.payload) {
                    Parsed::Done(payload) => payload,
                    Parsed::Serve {
                        id,
                        from,
                        request,
                        inbound,
                    } => Some(inner.handle(inbound, id, from, request).await),
                };
                if let Some(payload) = payload {
                    inner.reply(reply_to, payload).await;
                }
            });
            return None;
        }
        let (id, from, request, inbound) = match self.parse(&message.payload) {
            Parsed::Done(payload) => return payload.map(|p| (reply_to, p)),
            Parsed::Serve {
                id,
                from,
                request,
                inbound,
            } => (id, from, request, inbound),
        };
        let inline = inbound.serve_inline(&request);
        let inner = self.clone();
        let mut served = Box::pin(async move { inner.handle(inbound, id, from, request).await });
        if inline && let Some(payload) = (&mut served).now_or_never() {
            return Some((reply_to, payload));
        }
        let Some(slot) = self.slot() else {
            drop(served);
            self.count_busy();
            return Some((reply_to, self.response(id, &Err(Error::unavailable(BUSY)))));
        };
        let inner = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let payload = served.await;
            inner.reply(reply_to, payload).await;
        });
        None
    }

    /// A place among the [`MAX_SERVING`] requests served on tasks of their own, held until the
    /// task ends; `None` when they are all taken.
    fn slot(&self) -> Option<Slot> {
        let serving = &self.serving.count;
        let mut now = serving.load(Ordering::Relaxed);
        loop {
            if now >= MAX_SERVING {
                return None;
            }
            match serving.compare_exchange_weak(now, now + 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    return Some(Slot {
                        serving: self.serving.clone(),
                        _work: self.serving.work.token(),
                    });
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Counts a request refused for [`MAX_SERVING`], with a warning once a second at most.
    fn count_busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        let mut last = lock(&self.busy_logged);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                serving = MAX_SERVING,
                refused = self.busy.load(Ordering::Relaxed),
                "nats: requests refused with `unavailable`: {MAX_SERVING} already being served"
            );
        }
    }

    /// The `unavailable` answer to a request that found every serving place taken (dropped,
    /// counted, when it does not open or parse).
    fn refuse(&self, payload: &[u8]) -> Option<Vec<u8>> {
        match self.parse(payload) {
            Parsed::Done(payload) => payload,
            Parsed::Serve { id, .. } => {
                self.count_busy();
                Some(self.response(id, &Err(Error::unavailable(BUSY))))
            }
        }
    }

    /// Opens and parses a request payload: a request to serve, or what to answer at once
    /// (a `bad_request` error) or nothing (dropped, counted).
    fn parse(&self, payload: &[u8]) -> Parsed {
        let body = match self.open(wire::SEAL_CALL, b"", payload) {
            Ok(body) => body,
            Err(rejection) => {
                self.drops.count("request", &rejection);
                return Parsed::Done(None);
            }
        };
        let (id, reply) = match wire::decode_call(&body) {
            Ok(Call::Request { id, from, request }) => {
                let Some(inbound) = self.inbound.get() else {
                    return Parsed::Done(None);
                };
                return Parsed::Serve {
                    id,
                    from,
                    request,
                    inbound: inbound.clone(),
                };
            }
            Ok(Call::Control { id, .. }) => (
                id,
                Err(Error::bad_request(
                    "interest and sync messages are not used over NATS",
                )),
            ),
            Err(Rejection::Answerable { id, reason }) => {
                self.drops
                    .count("request", &Rejection::Malformed(reason.clone()));
                (id, Err(Error::bad_request(reason)))
            }
            Err(rejection) => {
                self.drops.count("request", &rejection);
                return Parsed::Done(None);
            }
        };
        Parsed::Done(Some(self.response(id, &reply)))
    }

    /// Serves one request: the sealed reply (a handler that panics is an `internal` error).
    async fn handle(
        &self,
        inbound: Arc<dyn Inbound>,
        id: u64,
        from: Option<String>,
        request: Request,
    ) -> Vec<u8> {
        let served = AssertUnwindSafe(inbound.request_raw(from, request))
            .catch_unwind()
            .await;
        let reply = served.unwrap_or_else(|_| Err(Error::internal("request handler panicked")));
        self.response(id, &reply)
    }

    /// The sealed response envelope of request `id`.
    fn response(&self, id: u64, reply: &Result<Box<RawValue>>) -> Vec<u8> {
        let body = self.wire.encode_response(id, reply);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.seal(wire::SEAL_RESPONSE, b"", body)
    }

    /// Publishes a reply on the request's reply subject.
    async fn reply(&self, reply_to: Subject, payload: Vec<u8>) {
        if let Some(client) = self.client.get()
            && let Err(e) = client.publish(reply_to, payload.into()).await
        {
            tracing::debug!(error = %e, "nats: reply not sent");
        }
    }

    /// Takes one event message.
    fn event(&self, message: &Message) {
        let base = self.subjects.event_base();
        let Some(frame) = message.subject.as_str().strip_prefix(base.as_str()) else {
            return;
        };
        let body = match self.open(wire::SEAL_EVENT, frame.as_bytes(), &message.payload) {
            Ok(body) => body,
            Err(rejection) => {
                self.drops.count("event", &rejection);
                return;
            }
        };
        let (topic, data, trace) = match wire::decode_event_traced(&body) {
            Ok(event) => event,
            Err(rejection) => {
                self.drops.count("event", &rejection);
                return;
            }
        };
        if !self.wire.topic_is(frame.as_bytes(), &topic) {
            self.drops.count(
                "event",
                &Rejection::Malformed("the topic is not its subject's".to_owned()),
            );
            return;
        }
        if let Some(inbound) = self.inbound.get() {
            self.events.fetch_add(1, Ordering::Relaxed);
            inbound.event_traced(Event { topic, data }, trace);
        }
    }

    /// Makes the subscriptions named `key` exactly `subjects` (in `queue`, if given), each
    /// handing its messages to `take` on a task of its own: subscribes to the subjects it lacks
    /// and drops those no longer wanted (a keyring reload changes the tags); a subject kept is
    /// not touched, so nothing is missed or received twice while they change. With
    /// [`Change::Refresh`] a key that is gone (unsubscribed meanwhile) stays gone.
    async fn subscribe(
        self: &Arc<Self>,
        key: String,
        subjects: Vec<String>,
        queue: Option<&str>,
        take: Take,
        change: Change,
    ) -> Result<()> {
        let _one = self.subscribing.lock().await;
        let client = self.client()?.clone();
        let have: Vec<String> = match lock(&self.state).subscriptions.get(&key) {
            Some(current) => current.iter().map(|(s, _)| s.clone()).collect(),
            None if change == Change::Refresh => return Ok(()),
            None => Vec::new(),
        };
        let mut added: Vec<(String, JoinHandle<()>)> = Vec::new();
        for subject in subjects.iter().filter(|s| !have.contains(s)) {
            let subscribed = match queue {
                Some(queue) => {
                    client
                        .queue_subscribe(subject.clone(), queue.to_owned())
                        .await
                }
                None => client.subscribe(subject.clone()).await,
            };
            let subscriber: Subscriber = match subscribed {
                Ok(subscriber) => subscriber,
                Err(e) => {
                    for (_, task) in added {
                        task.abort();
                    }
                    return Err(Error::unavailable(format!(
                        "cannot subscribe to {subject}: {e}"
                    )));
                }
            };
            let inner = Arc::downgrade(self);
            let closing = self.closing.clone();
            added.push((
                subject.clone(),
                tokio::spawn(async move {
                    let mut subscriber = subscriber;
                    // A request subscription drains when the medium stops: unsubscribed at the
                    // server, it still takes what the server routed here before, then ends.
                    let mut watching = matches!(take, Take::Request);
                    loop {
                        let message = if !watching {
                            subscriber.next().await
                        } else {
                            tokio::select! {
                                message = subscriber.next() => message,
                                () = closing.cancelled() => {
                                    watching = false;
                                    if subscriber.drain().await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                            }
                        };
                        let Some(message) = message else { break };
                        let Some(inner) = inner.upgrade() else { break };
                        match take {
                            Take::Event => inner.event(&message),
                            Take::Request => {
                                if let Some((reply_to, payload)) = inner.accept(message) {
                                    inner.reply(reply_to, payload).await;
                                }
                            }
                        }
                    }
                }),
            ));
        }
        let mut state = lock(&self.state);
        if state.stopped {
            for (_, task) in added {
                task.abort();
            }
            return Ok(());
        }
        let current = state.subscriptions.entry(key).or_default();
        // A subscriber dropped with its task unsubscribes.
        current.retain(|(subject, task)| {
            let keep = subjects.contains(subject);
            if !keep {
                task.abort();
            }
            keep
        });
        current.extend(added);
        Ok(())
    }

    async fn unsubscribe(&self, key: &str) {
        let _one = self.subscribing.lock().await;
        if let Some(tasks) = lock(&self.state).subscriptions.remove(key) {
            for (_, task) in tasks {
                task.abort();
            }
        }
    }

    /// Follows a keyring reload: every subscription under the tags of the keys of the ring now
    /// (requests to this node, to its collections, the events its subscribers want), those of
    /// removed keys dropped. Sealing and opening follow the ring by themselves.
    async fn follow_keys(self: &Arc<Self>) {
        let keys: Vec<String> = lock(&self.state).subscriptions.keys().cloned().collect();
        for key in keys {
            let result = if key == "node" {
                match self.subjects.node_filters(&self.wire, self.node_id()) {
                    Ok(subjects) => {
                        self.subscribe(key.clone(), subjects, None, Take::Request, Change::Refresh)
                            .await
                    }
                    Err(e) => Err(e),
                }
            } else if let Some(collection) = key.strip_prefix("req:") {
                match self.subjects.request_filters(&self.wire, collection) {
                    Ok(subjects) => {
                        self.subscribe(
                            key.clone(),
                            subjects,
                            Some(OWNERS),
                            Take::Request,
                            Change::Refresh,
                        )
                        .await
                    }
                    Err(e) => Err(e),
                }
            } else if let Some(prefix) = key.strip_prefix("evt:") {
                match self.subjects.event_filters(&self.wire, prefix) {
                    Some(subjects) => {
                        self.subscribe(key.clone(), subjects, None, Take::Event, Change::Refresh)
                            .await
                    }
                    None => Ok(()),
                }
            } else {
                Ok(())
            };
            if let Err(e) = result {
                tracing::warn!(subscription = %key, error = %e, "nats: not resubscribed after a keyring reload");
            }
        }
        if let Some(client) = self.client.get() {
            let _ = tokio::time::timeout(self.config.request_timeout, client.flush()).await;
        }
        tracing::info!(
            subscriptions = lock(&self.state).subscriptions.len(),
            "nats: subscriptions follow the reloaded cluster keyring"
        );
    }

    /// Subscribes to the request subjects of `collection`, in the owners' queue group.
    async fn serve_collection(self: &Arc<Self>, collection: &str) -> Result<()> {
        let subjects = self.subjects.request_filters(&self.wire, collection)?;
        self.subscribe(
            format!("req:{collection}"),
            subjects,
            Some(OWNERS),
            Take::Request,
            Change::Set,
        )
        .await
    }

    /// Makes the event subscriptions follow the interest, version by version, until stopped.
    async fn follow_interest(self: Arc<Self>) {
        let mut wanted = self.wanted.subscribe();
        loop {
            let version = *wanted.borrow_and_update();
            let prefixes = {
                let (asked, fixed) = &*lock(&self.interest);
                subjects::covering(asked.iter().chain(fixed).cloned())
            };
            let current: Vec<String> = lock(&self.state)
                .subscriptions
                .keys()
                .filter_map(|k| k.strip_prefix("evt:").map(str::to_owned))
                .collect();
            // New ones first: nothing wanted is missed while they change.
            for prefix in prefixes.iter().filter(|p| !current.contains(p)) {
                let Some(filters) = self.subjects.event_filters(&self.wire, prefix) else {
                    tracing::debug!(%prefix, "nats: a prefix no subject can match, not subscribed");
                    continue;
                };
                if let Err(e) = self
                    .subscribe(
                        format!("evt:{prefix}"),
                        filters,
                        None,
                        Take::Event,
                        Change::Set,
                    )
                    .await
                {
                    tracing::warn!(%prefix, error = %e, "nats: cannot subscribe to events");
                }
            }
            for prefix in current.iter().filter(|p| !prefixes.contains(p)) {
                self.unsubscribe(&format!("evt:{prefix}")).await;
            }
            self.applied.send_replace(version);
            if wanted.changed().await.is_err() {
                return;
            }
        }
    }
}

/// What [`Inner::subscribe`] does with a key it does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Subscribes (a new key, or new subjects for one).
    Set,
    /// Only updates a key still held (a keyring reload).
    Refresh,
}

/// What a subscription's task does with a message.
#[derive(Clone, Copy)]
enum Take {
    /// A request: [`Inner::accept`].
    Request,
    /// An event: [`Inner::event`].
    Event,
}

/// What [`Inner::parse`] made of a request payload.
// A short-lived value, moved once per request: boxing the request would cost an allocation per
// request for nothing (as the ZeroMQ router's `Accepted`).
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// Answered at once (the reply payload) or dropped (`None`).
    Done(Option<Vec<u8>>),
    /// A request for the node.
    Serve {
        id: u64,
        from: Option<String>,
        request: Request,
        inbound: Arc<dyn Inbound>,
    },
}

#[async_trait]
impl Medium for NatsMedium {
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints> {
        let inner = &self.inner;
        // Nothing reaches a NATS server beyond loopback without a key, unless asked to.
        inner.config.check_exposure()?;
        {
            let mut state = lock(&inner.state);
            if state.started {
                return Err(Error::internal("nats medium started twice"));
            }
            state.started = true;
        }
        // Told of keyring reloads from now on: the subjects below are of the ring as of now.
        let ring_changes = inner.config.cluster_key.as_ref().map(ClusterKey::watch);
        let node_subjects = inner.subjects.node_filters(&inner.wire, node_id)?;
        let endpoint = inner.subjects.node(&inner.wire, node_id)?;
        let client = inner.link.acquire().await?;
        let _ = inner.client.set(client.clone());
        let _ = inner.node_id.set(node_id.to_owned());
        let _ = inner.inbound.set(inbound);
        inner
            .subscribe(
                "node".to_owned(),
                node_subjects,
                None,
                Take::Request,
                Change::Set,
            )
            .await?;
        let serving: Vec<String> = lock(&inner.state).serving.iter().cloned().collect();
        for collection in serving {
            inner.serve_collection(&collection).await?;
        }
        let follow = tokio::spawn(inner.clone().follow_interest());
        let endpoints = Endpoints::from([("nats".to_owned(), endpoint)]);
        {
            let mut state = lock(&inner.state);
            state.tasks.push(follow);
            // After a keyring reload (SIGHUP below, or `ClusterKey::reload` on any clone of the
            // key) the subscriptions follow the keys of the ring.
            if let Some(mut ring) = ring_changes {
                let weak = Arc::downgrade(inner);
                state.tasks.push(tokio::spawn(async move {
                    while ring.changed().await.is_ok() {
                        let Some(inner) = weak.upgrade() else { break };
                        inner.follow_keys().await;
                    }
                }));
            }
            // The keyring from a file is re-read on SIGHUP while the medium runs, as with
            // ZeroMQ (README "Rotating the cluster key").
            #[cfg(unix)]
            if let (Some(key), Some(path)) =
                (&inner.config.cluster_key, &inner.config.cluster_key_file)
            {
                match crate::security::keyfile::reload_on_sighup(key.clone(), path.clone()) {
                    Ok(reload) => state.tasks.push(reload),
                    Err(e) => tracing::warn!("cannot watch SIGHUP to re-read the cluster key: {e}"),
                }
            }
            state.endpoints = endpoints.clone();
        }
        // The subscriptions are in effect at the server before peers learn of this node.
        let within = inner.config.request_timeout;
        let _ = tokio::time::timeout(within, client.flush()).await;
        tracing::debug!(node = %node_id, servers = %inner.link.describe(), "nats medium started");
        Ok(endpoints)
    }

    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        let raw = self.call_raw(peer, request).await?;
        serde_json::from_str(raw.get()).map_err(|e| Error::internal(e.to_string()))
    }

    async fn call_raw(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        let subject = self.inner.subjects.node(&self.inner.wire, &peer.id)?;
        self.inner.call(subject, request).await
    }

    fn balances(&self) -> bool {
        true
    }

    async fn call_any(&self, request: Request) -> Result<Box<RawValue>> {
        let subject = self
            .inner
            .subjects
            .request(&self.inner.wire, &request.collection)?;
        self.inner.call(subject, request).await
    }

    async fn serve(&self, collections: Vec<String>) -> Result<()> {
        let inner = &self.inner;
        let (started, added, removed) = {
            let mut state = lock(&inner.state);
            let new: BTreeSet<String> = collections.into_iter().collect();
            let added: Vec<String> = new.difference(&state.serving).cloned().collect();
            let removed: Vec<String> = state.serving.difference(&new).cloned().collect();
            state.serving = new;
            (state.started && !state.stopped, added, removed)
        };
        if !started {
            return Ok(());
        }
        for collection in removed {
            inner.unsubscribe(&format!("req:{collection}")).await;
        }
        for collection in added {
            inner.serve_collection(&collection).await?;
        }
        if let Some(client) = inner.client.get() {
            let _ = tokio::time::timeout(inner.config.request_timeout, client.flush()).await;
        }
        // An owner of change logs keeps them on the JetStream stream too.
        let logs = inner
            .inbound
            .get()
            .is_some_and(|i| !i.change_logs().is_empty());
        if inner.config.nats_jetstream
            && logs
            && let Some(task) = jetstream::start_publisher(inner)
        {
            lock(&inner.state).tasks.push(task);
        }
        Ok(())
    }

    fn logged(&self, entry: &Arc<Event>) {
        self.inner.journal.logged(entry);
    }

    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Option<crate::changes::LogPage> {
        jetstream::read(&self.inner, collection, log, after, limit).await
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let inner = &self.inner;
        let client = inner.client()?;
        let (subject, frame) = inner.subjects.event(&inner.wire, &event.topic)?;
        let body = inner
            .wire
            .encode_event(inner.node_id(), &event.topic, &event.data)?;
        let payload = inner.seal(wire::SEAL_EVENT, &frame, body);
        client
            .publish(subject, payload.into())
            .await
            .map_err(|e| Error::unavailable(format!("event not published on NATS: {e}")))
    }

    fn set_interest(&self, prefixes: Vec<String>) {
        lock(&self.inner.interest).0 = prefixes;
        self.inner.wanted.send_modify(|v| *v += 1);
    }

    async fn sync_interest(&self) {
        let inner = &self.inner;
        let within = inner.config.request_timeout.min(Duration::from_secs(2));
        let wanted = *inner.wanted.borrow();
        let mut applied = inner.applied.subscribe();
        let _ = tokio::time::timeout(within, async {
            let _ = applied.wait_for(|v| *v >= wanted).await;
            if let Some(client) = inner.client.get() {
                let _ = client.flush().await;
            }
        })
        .await;
    }

    async fn stop(&self) {
        let inner = &self.inner;
        // What the publisher has queued goes to the stream first (bounded).
        let within = inner.config.request_timeout.min(Duration::from_secs(2));
        inner.journal.flush(within).await;
        inner.journal.close();
        // No request routed here is left unanswered: the request subscriptions are unsubscribed
        // at the server and answer what it routed here before (the node, stopping, answers
        // `unavailable`, and the caller turns to another owner); then the replies of requests
        // served on tasks of their own go out. Bounded: what is left then is dropped.
        inner.closing.cancel();
        let mut draining: Vec<JoinHandle<()>> = {
            let mut state = lock(&inner.state);
            state
                .subscriptions
                .iter_mut()
                .filter(|(key, _)| !key.starts_with("evt:"))
                .flat_map(|(_, tasks)| tasks.drain(..).map(|(_, task)| task))
                .collect()
        };
        let drained = tokio::time::timeout(within, async {
            futures::future::join_all(draining.iter_mut()).await;
            inner.serving.work.close();
            inner.serving.work.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                within_ms = within.as_millis() as u64,
                "nats: stopping: requests still in hand after the drain are dropped"
            );
        }
        for task in draining {
            task.abort();
        }
        let (tasks, was_running) = {
            let mut guard = lock(&inner.state);
            let state = &mut *guard;
            let was_running = state.started && !state.stopped;
            state.stopped = true;
            let tasks: Vec<JoinHandle<()>> = state
                .subscriptions
                .drain()
                .flat_map(|(_, t)| t.into_iter().map(|(_, task)| task))
                .chain(state.tasks.drain(..))
                .collect();
            (tasks, was_running)
        };
        for task in tasks {
            task.abort();
        }
        if was_running && inner.client.get().is_some() {
            inner.link.release().await;
        }
    }

    fn as_nats(&self) -> Option<&NatsMedium> {
        Some(self)
    }

    /// Up while the client is connected to a NATS server: between a lost connection and the
    /// reconnect every call fails with `Unavailable`, so `/readyz` says 503 meanwhile.
    fn health(&self) -> std::result::Result<(), String> {
        if self.inner.link.is_connected() {
            Ok(())
        } else {
            Err("not connected to any NATS server".into())
        }
    }

    fn describe(&self) -> String {
        format!(
            "nats {} ({})",
            self.inner.link.describe(),
            self.inner.subjects.prefix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NatsServer, Transport};

    fn config() -> NetworkConfig {
        NetworkConfig {
            transport: Transport::Nats(vec![NatsServer::parse("nats://127.0.0.1:9").unwrap()]),
            ..NetworkConfig::default()
        }
    }

    #[tokio::test]
    async fn calls_fail_before_start() {
        let config = config();
        let medium = NatsMedium::new(NatsLink::new(&config), config);
        let request = Request::new("c", "get");
        assert!(matches!(
            medium.call_any(request).await,
            Err(Error::Unavailable { .. })
        ));
        assert!(medium.describe().starts_with("nats nats://127.0.0.1:9"));
        medium.stop().await;
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_unavailable_at_start() {
        struct Nobody;
        #[async_trait]
        impl Inbound for Nobody {
            async fn request(&self, _: Option<String>, _: Request) -> Result<Value> {
                Ok(Value::Null)
            }
            fn event(&self, _: Event) {}
        }
        let config = NetworkConfig {
            request_timeout: Duration::from_millis(500),
            nats_connect: Duration::from_millis(600),
            ..config()
        };
        let medium = NatsMedium::new(NatsLink::new(&config), config);
        let started = std::time::Instant::now();
        let error = medium.start("a-1", Arc::new(Nobody)).await.unwrap_err();
        // Tried again until ZS_NATS_CONNECT_MS, then an error naming the servers and the setting.
        assert!(started.elapsed() >= Duration::from_millis(600));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(error, Error::Unavailable { .. }), "{error}");
        assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
        assert!(error.to_string().contains("ZS_NATS_CONNECT_MS"), "{error}");
    }

    #[test]
    fn payloads_open_as_they_were_sealed() {
        let config = config();
        let medium = NatsMedium::new(NatsLink::new(&config), config.clone());
        let inner = &medium.inner;
        let json = br#"{"v":3}"#.to_vec();
        assert_eq!(
            &*inner.open(wire::SEAL_CALL, b"", &json).unwrap(),
            &json[..]
        );
        assert!(matches!(
            inner.open(wire::SEAL_CALL, b"", b"\x03garbage"),
            Err(Rejection::Unsigned(_))
        ));
        assert!(matches!(
            inner.open(wire::SEAL_CALL, b"", b"garbage"),
            Err(Rejection::Malformed(_))
        ));
        let keyed = NetworkConfig {
            cluster_key: Some(crate::security::ClusterKey::new("k")),
            ..config
        };
        let a = NatsMedium::new(NatsLink::new(&keyed), keyed.clone());
        let b = NatsMedium::new(NatsLink::new(&keyed), keyed);
        let sealed = a.inner.seal(wire::SEAL_EVENT, b"t", json.clone());
        assert!(!sealed.windows(3).any(|w| w == b"\"v\""));
        assert!(b.inner.open(wire::SEAL_EVENT, b"other", &sealed).is_err());
        assert_eq!(
            &*b.inner.open(wire::SEAL_EVENT, b"t", &sealed).unwrap(),
            &json[..]
        );
        assert!(matches!(
            b.inner.open(wire::SEAL_EVENT, b"t", &sealed),
            Err(Rejection::Replayed(_))
        ));
        assert!(matches!(
            b.inner.open(wire::SEAL_CALL, b"", &json),
            Err(Rejection::Unsigned(_))
        ));
    }
}
