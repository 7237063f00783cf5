//! `GET /realtime`: the websocket that streams change events, resumable from a cursor.
//!
//! Each client gets its own subscription to the node's event bus and a bounded queue of
//! outgoing messages (`ws_buffer`). Three tasks serve a client: the reader (client messages:
//! subscribe, unsubscribe), the forwarder (a [`Follower`] of the change logs and the node's
//! events: those that match the client's prefixes and that the
//! [`Authorizer`](super::Authorizer) lets it see) and the writer (the queue to the socket:
//! what is queued when it wakes, up to [`WRITE_BATCH`](writer::WRITE_BATCH) messages, goes out
//! in one write and one flush: the `writer` module).
//!
//! # Cursors and `since`
//!
//! Every event of a logged change carries `data.cursor`: the position, in every change log the
//! connection has seen, after that event. The stream of a connection starts at its first
//! subscribe: `{"type": "subscribe", "topics": [...], "since": "<cursor>"}` starts it at the
//! cursor (the events after it are read from the logs, in order per log, then the stream goes on
//! live with no gap and no duplicate); without `since`, at the moment of the subscribe. The
//! acknowledgement, `{"type": "subscribed", "topics", "cursor"}`, comes before the first event
//! and carries the start's cursor (a client that saw no event yet resumes from it). `since` on a
//! later subscribe of the same connection is refused (`since_not_first`, nothing subscribed); a
//! later subscribe to a collection not followed before delivers its changes from that moment.
//! "From a moment" is by the clock, to the millisecond (this node's time against the times the
//! owners wrote, so clocks in step, as NTP keeps them): a change of the same millisecond just
//! before it may come too, none after it is missed.
//! Events that are not logged (user events of `Node::publish`) carry no cursor and are never
//! replayed.
//!
//! Errors are `{"type": "error", "code", "error"}`. A malformed or oversized `since` gets
//! `bad_cursor`, a cursor older than the logs keep gets `cursor_expired`: both subscribe to
//! nothing and the connection stays open (subscribe again without `since`, after reloading).
//! A stream that falls out of retention while it runs (it fell so far behind that the logs
//! dropped what it had not read) gets `cursor_expired` and the connection is closed (1000).
//!
//! # Slow clients
//!
//! Live events never wait: when the queue is full the client is too slow, it is told so
//! (`too_slow`, after what its socket already holds: it gets the message if it reads within
//! [`SLOW_GOODBYE_TIMEOUT`], else it is dropped then) and disconnected (1008), what is still
//! queued for it is dropped at once, and neither the node nor the other clients notice; it
//! reconnects with the last cursor it got and loses nothing the logs still hold.
//! Events read back from the logs (a resume's backlog, a gap, a catch-up after the bus
//! overflowed) wait for room in the queue. They come from this node's log a page at a time,
//! each page read once and shared by every client at that place
//! ([`crate::changes::pages`]), and each event's text is made once for all of them
//! ([`Shared::message`](crate::event::Shared::message): a client adds its cursor).
//!
//! A stream that falls more than `ws_max_lag` (`ZS_WS_MAX_LAG`) changes behind a log's newest
//! entry, counted from the closest it has been to it, is told `too_slow` and disconnected
//! (1008) the same way: checked at every read of a log and, while the forwarder waits for room
//! in a queue that does not drain, every [`LAG_CHECK`]. A client that stops reading thus holds
//! at most its queue and one page per log, whichever way it fell behind.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use writer::{GATHER_MAX_CLIENTS, write_batch};

use super::auth::Operation;
use super::error::ApiError;
use super::{AppState, AuthUser};
use crate::EventStream;
use crate::changes::Cursor;
use crate::changes::follow::{Follower, Restarts, Topics, live_prefix};
use crate::store::now_ms;

mod writer;

/// How long the goodbye message and close frame may take before the socket is dropped.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// How long the goodbye of a client told `too_slow` may take: its socket is full (it reads
/// slowly, or not at all), so the message waits behind what the socket already holds. A client
/// that reads within this time gets it before the close; one that does not is dropped then (or
/// as soon as the server stops). What is still queued for it is dropped at once either way.
const SLOW_GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a forwarder waiting for room in its client's queue (sending a backlog read from
/// the change logs) checks how far behind the logs' newest entries its stream is.
const LAG_CHECK: Duration = Duration::from_millis(200);

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stop {
    /// The client fell `ws_buffer` messages behind.
    TooSlow,
    /// The client's stream fell more than `ws_max_lag` changes behind a change log's newest
    /// (what it is behind by).
    TooFarBehind(String),
    /// The client sent a message over `ws_max_message_bytes`.
    TooBig,
    /// The client closed, or the connection broke.
    ClientGone,
    /// The server shuts down.
    Shutdown,
    /// The stream's position fell out of the change logs' retention (the error's text).
    Expired(String),
}

impl Stop {
    /// How long the goodbye (message and close frame) may take: longer for a client told
    /// `too_slow`, whose socket is full.
    fn goodbye_timeout(&self) -> Duration {
        match self {
            Stop::TooSlow | Stop::TooFarBehind(_) => SLOW_GOODBYE_TIMEOUT,
            _ => GOODBYE_TIMEOUT,
        }
    }
}

/// Whether a websocket from a page of `Origin` may open: a client that sends no `Origin` is not
/// a browser (a browser always sends one on a websocket); a page of the node itself (the
/// origin's host and port are the request's `Host`: the live page) may; otherwise only one of
/// the allowed origins (`ZS_ALLOWED_ORIGINS`, `*` for any). Anything else is a page of another
/// site, which must not reach a node on the user's machine or network through the browser.
pub(crate) fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|o| o == "*" || o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if !a.is_empty() && a.eq_ignore_ascii_case(h.trim()))
}

/// `GET /realtime`: upgrades to the websocket, for a client of an allowed origin (403
/// otherwise: [`origin_allowed`]).
pub(crate) async fn handler(
    State(state): State<AppState>,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !origin_allowed(&state.config.allowed_origins, &headers) {
        let origin = headers
            .get(header::ORIGIN)
            .map(|o| String::from_utf8_lossy(o.as_bytes()).into_owned())
            .unwrap_or_default();
        tracing::debug!(%origin, "websocket refused: origin not allowed");
        return ApiError::forbidden(format!(
            "a websocket from a page of {origin:?} is refused: only this node's own pages and \
             the allowed origins (ZS_ALLOWED_ORIGINS) may open /realtime"
        ))
        .into_response();
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return ApiError::new(rejection.status(), rejection.body_text()).into_response();
        }
    };
    let Some(seat) = ClientSeat::take(&state) else {
        let max = state.config.ws_max_clients;
        tracing::warn!(
            max_clients = max,
            "websocket upgrade refused: too many clients (ZS_WS_MAX_CLIENTS)"
        );
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many websocket clients: this node serves at most {max} at once \
                 (ZS_WS_MAX_CLIENTS); try again later"
            ),
        )
        .into_response();
    };
    let user = user.map(|Extension(u)| u).unwrap_or_default();
    let max_message = state.config.ws_max_message_bytes;
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| serve_client(state, user, socket, seat))
}

/// One of the `ws_max_clients` places, given back when dropped (the client left, or the
/// upgrade never happened).
struct ClientSeat(AppState);

impl ClientSeat {
    fn take(state: &AppState) -> Option<Self> {
        let max = state.config.ws_max_clients;
        state
            .ws_clients
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| {
                state
                    .node
                    .metrics()
                    .counters
                    .ws_clients
                    .fetch_add(1, Ordering::Relaxed);
                Self(state.clone())
            })
    }
}

impl Drop for ClientSeat {
    fn drop(&mut self) {
        self.0.ws_clients.fetch_sub(1, Ordering::AcqRel);
        let counters = &self.0.node.metrics().counters;
        counters.ws_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outgoing queue of one client, with the switch that ends the connection.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Message>,
    stop: Arc<watch::Sender<Option<Stop>>>,
    /// The node's counters: the messages queued now (counted before a send, given back when
    /// it fails, when the writer takes one, and for what is left when it ends).
    metrics: Arc<crate::metrics::Metrics>,
}

impl Outbox {
    /// Queues `message` without waiting; `false` (and the connection stops) when the queue is
    /// full or closed.
    fn push(&self, message: Message) -> bool {
        let counters = &self.metrics.counters;
        counters.ws_queued.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                counters.ws_queued.fetch_sub(1, Ordering::Relaxed);
                counters.ws_too_slow.fetch_add(1, Ordering::Relaxed);
                self.stop(Stop::TooSlow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                counters.ws_queued.fetch_sub(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn push_json(&self, value: &impl Serialize) -> bool {
        match serde_json::to_string(value) {
            Ok(text) => self.push(Message::Text(Utf8Bytes::from(text))),
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise a websocket message");
                true
            }
        }
    }

    /// Queues `message`, waiting for room; `false` when the connection is closing. While it
    /// waits, every [`LAG_CHECK`] it asks `follower` whether the stream fell too far behind
    /// the change logs (a client that reads nothing while it is sent a backlog): then the
    /// connection stops ([`Stop::TooFarBehind`]).
    async fn push_waiting(&self, message: Message, follower: &mut Follower) -> bool {
        let queued = &self.metrics.counters.ws_queued;
        if let Ok(permit) = self.queue.try_reserve() {
            queued.fetch_add(1, Ordering::Relaxed);
            permit.send(message);
            return true;
        }
        let reserve = self.queue.reserve();
        tokio::pin!(reserve);
        loop {
            tokio::select! {
                permit = &mut reserve => {
                    let Ok(permit) = permit else {
                        return false;
                    };
                    queued.fetch_add(1, Ordering::Relaxed);
                    permit.send(message);
                    return true;
                }
                () = tokio::time::sleep(LAG_CHECK) => {
                    if let Err(e) = follower.check_lag().await {
                        self.too_far_behind(e);
                        return false;
                    }
                }
            }
        }
    }

    /// Stops the connection for `error` of its follower: [`Stop::TooFarBehind`] for the lag
    /// bound (counted), else the stream fell out of retention ([`Stop::Expired`]).
    fn too_far_behind(&self, error: crate::Error) {
        match error {
            crate::Error::Limit { message, .. } => {
                let counters = &self.metrics.counters;
                counters.ws_too_slow.fetch_add(1, Ordering::Relaxed);
                counters.ws_too_far_behind.fetch_add(1, Ordering::Relaxed);
                self.stop(Stop::TooFarBehind(message));
            }
            other => self.stop(Stop::Expired(other.to_string())),
        }
    }

    fn stop(&self, reason: Stop) {
        self.stop.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
    }
}

/// `{"type": "error", "code", "error"}`.
fn error_message(code: &str, error: &str) -> Value {
    json!({ "type": "error", "code": code, "error": error })
}

/// The first subscribe of a connection, handed to the forwarder: it starts following from
/// `since`, and acknowledges (or sends the error) itself, so that the acknowledgement comes
/// before the first event; `started` tells the reader whether it did.
struct Start {
    topics: Vec<String>,
    since: Cursor,
    started: oneshot::Sender<bool>,
}

async fn serve_client(state: AppState, user: AuthUser, socket: WebSocket, seat: ClientSeat) {
    // Held until this function returns: graceful shutdown waits for it.
    let _drain = state.drain.clone();
    let _seat = seat;
    let buffer = state.config.ws_buffer.max(1);
    let max_topics = state.config.ws_max_topics;
    let max_message = state.config.ws_max_message_bytes;
    let (queue, mut outgoing) = mpsc::channel::<Message>(buffer);
    let (stop_tx, mut stop_rx) = watch::channel(None);
    let outbox = Outbox {
        queue,
        stop: Arc::new(stop_tx),
        metrics: state.node.metrics().clone(),
    };
    let mut subscriptions = Subscriptions::default();
    // Subscribe to the node before reading the client's first message, so no event published
    // after a "subscribed" acknowledgement can be missed.
    let events = state.node.subscribe("*");
    // ... and once the peers send them (bounded wait), so that holds for remote events too.
    state.node.sync_subscriptions().await;
    let (mut sink, mut stream) = socket.split();
    tracing::debug!(user = ?user.0, "websocket client connected");
    let (start_tx, start_rx) = mpsc::channel::<Start>(1);

    let forwarder = tokio::spawn(forward(
        state.clone(),
        user.clone(),
        outbox.clone(),
        subscriptions.topics.clone(),
        subscriptions.restarts.clone(),
        events,
        start_rx,
    ));

    let reader = tokio::spawn({
        let outbox = outbox.clone();
        let node = state.node.clone();
        async move {
            let collections = || node.collections();
            while let Some(message) = stream.next().await {
                let reply = match message {
                    Ok(Message::Text(text)) => {
                        match subscriptions.handle(text.as_str(), max_topics, &collections) {
                            Action::Reply(reply) => reply,
                            Action::Start(topics, since) => {
                                let (started, answer) = oneshot::channel();
                                let start = Start {
                                    topics,
                                    since,
                                    started,
                                };
                                let started = start_tx.send(start).await.is_ok()
                                    && answer.await.unwrap_or(false);
                                subscriptions.started(started);
                                // The forwarder answered the client.
                                continue;
                            }
                        }
                    }
                    Ok(Message::Binary(_)) => error_message(
                        "bad_message",
                        "binary messages are not supported: send JSON text",
                    ),
                    Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                    Ok(Message::Close(_)) => break,
                    Err(e) => {
                        // tungstenite's capacity error: "Space limit exceeded: Message too
                        // long: N > M".
                        if e.to_string().contains("too long") {
                            outbox.stop(Stop::TooBig);
                            return;
                        }
                        break;
                    }
                };
                if !outbox.push_json(&reply) {
                    return;
                }
            }
            outbox.stop(Stop::ClientGone);
        }
    });

    let mut shutdown = state.shutdown.clone();
    let server_stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(server_stopping);
    let stopped = async {
        let _ = stop_rx.wait_for(Option::is_some).await;
    };
    tokio::pin!(stopped);
    let stop_reason = |outbox: &Outbox| outbox.stop.borrow().clone().unwrap_or(Stop::ClientGone);

    // The writer: the queue to the socket, until something stops the connection.
    let mut bursts = false;
    let reason = loop {
        let message = tokio::select! {
            biased;
            _ = &mut stopped => break stop_reason(&outbox),
            _ = &mut server_stopping => break Stop::Shutdown,
            message = outgoing.recv() => message,
        };
        let Some(message) = message else {
            break Stop::ClientGone;
        };
        outbox
            .metrics
            .counters
            .ws_queued
            .fetch_sub(1, Ordering::Relaxed);
        tokio::select! {
            biased;
            _ = &mut stopped => break stop_reason(&outbox),
            _ = &mut server_stopping => break Stop::Shutdown,
            sent = write_batch(
                &mut sink,
                message,
                &mut outgoing,
                &outbox.metrics,
                &mut bursts,
                state.ws_clients.load(Ordering::Relaxed) <= GATHER_MAX_CLIENTS,
            ) => {
                if sent.is_err() { break Stop::ClientGone }
            }
        }
    };
    reader.abort();
    forwarder.abort();
    // What is still queued is not: closed first, so that nothing is added meanwhile.
    outgoing.close();
    let mut left = 0;
    while outgoing.try_recv().is_ok() {
        left += 1;
    }
    outbox
        .metrics
        .counters
        .ws_queued
        .fetch_sub(left, Ordering::Relaxed);
    drop(outgoing);

    let goodbye = match &reason {
        Stop::TooSlow => {
            tracing::warn!(user = ?user.0, buffer, "websocket client too slow; disconnected");
            let text = error_message(
                "too_slow",
                &format!(
                    "too slow: more than {buffer} messages queued, disconnected; reconnect \
                     and subscribe with \"since\": the last event's cursor"
                ),
            )
            .to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::POLICY,
                "too slow",
            ))
        }
        Stop::TooFarBehind(behind) => {
            let max_lag = state.config.ws_max_lag;
            tracing::warn!(user = ?user.0, max_lag, %behind, "websocket client too far behind the change logs; disconnected");
            let text = error_message(
                "too_slow",
                &format!(
                    "too slow: {behind}, disconnected; reconnect and subscribe with \
                     \"since\": the last event's cursor"
                ),
            )
            .to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::POLICY,
                "too slow",
            ))
        }
        Stop::TooBig => {
            tracing::debug!(user = ?user.0, max_message, "websocket message too big; disconnected");
            let text = error_message(
                "message_too_big",
                &format!(
                    "message too big: at most {max_message} bytes (ZS_WS_MAX_MESSAGE_BYTES), \
                     disconnected"
                ),
            )
            .to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::SIZE,
                "message too big",
            ))
        }
        Stop::Expired(error) => {
            tracing::debug!(user = ?user.0, %error, "websocket stream's cursor expired; disconnected");
            let text = error_message("cursor_expired", error).to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::NORMAL,
                "cursor expired",
            ))
        }
        Stop::Shutdown => Some((None, close_code::AWAY, "server shutting down")),
        Stop::ClientGone => None,
    };
    if let Some((text, code, close_reason)) = goodbye {
        let send = tokio::time::timeout(reason.goodbye_timeout(), async {
            if let Some(text) = text {
                sink.send(text).await?;
            }
            sink.send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(close_reason),
            })))
            .await
        });
        tokio::pin!(send);
        // Once the server stops, no goodbye takes longer than the usual bound.
        let mut shutdown = state.shutdown.clone();
        tokio::select! {
            _ = &mut send => {}
            () = async { drop(shutdown.wait_for(|stop| *stop).await) } => {
                let _ = tokio::time::timeout(GOODBYE_TIMEOUT, &mut send).await;
            }
        }
    } else {
        // The client closed: complete the closing handshake (flushes the close reply).
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, sink.close()).await;
    }
    tracing::debug!(user = ?user.0, ?reason, "websocket client disconnected");
}

/// The forwarder: waits for the client's first subscribe, then follows the change logs and the
/// node's events ([`Follower`]) and queues what the client's topics match and the authorizer
/// lets it see. Live events never wait for room in the queue (a full queue: the client is too
/// slow); events read back from the logs (a resume's backlog, a gap) wait for it.
async fn forward(
    state: AppState,
    user: AuthUser,
    outbox: Outbox,
    topics: Topics,
    restarts: Restarts,
    mut live: EventStream,
    mut starts: mpsc::Receiver<Start>,
) {
    let authorizer = state
        .config
        .authorizer
        .clone()
        .or_else(|| state.node.authorizer().cloned());
    let user = user.0;
    let mut follower = loop {
        let Some(start) = starts.recv().await else {
            return;
        };
        let mut follower =
            Follower::new(state.node.clone(), topics.clone(), live, Some(start.since))
                .with_restarts(restarts.clone())
                .with_max_lag(state.config.ws_max_lag);
        match follower.prime().await {
            Ok(()) => {
                let ack = json!({
                    "type": "subscribed",
                    "topics": start.topics,
                    "cursor": follower.cursor().encode(),
                });
                let _ = start.started.send(true);
                if !outbox.push_json(&ack) {
                    return;
                }
                break follower;
            }
            Err(e) => {
                let reply = error_message(e.kind(), &e.to_string());
                live = follower.into_live();
                let _ = start.started.send(false);
                if !outbox.push_json(&reply) {
                    return;
                }
            }
        }
    };
    while let Some(item) = follower.next_delivery().await {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(e) => {
                outbox.too_far_behind(e);
                return;
            }
        };
        let topic = &delivery.event.event.topic;
        if let Some(authorizer) = &authorizer {
            let collection = topic.split('.').next().unwrap_or("");
            if !authorizer.authorize(user.as_ref(), collection, &Operation::Subscribe) {
                continue;
            }
        }
        // The event's text is made once for every client that reads it from the same page
        // of a log; each adds its own cursor.
        let text = delivery.event.message(delivery.cursor.as_deref());
        let message = Message::Text(Utf8Bytes::from(text));
        let queued = if delivery.replayed {
            outbox.push_waiting(message, &mut follower).await
        } else {
            outbox.push(message)
        };
        if !queued {
            return;
        }
    }
}

/// What the reader does with a client message.
#[derive(Debug)]
enum Action {
    /// Sends this reply.
    Reply(Value),
    /// The first subscribe: the forwarder starts following these topics from this cursor.
    Start(Vec<String>, Cursor),
}

/// A client's topics (shared with its follower), and whether it subscribed yet.
#[derive(Default)]
struct Subscriptions {
    topics: Topics,
    restarts: Restarts,
    started: bool,
}

impl Subscriptions {
    fn topics(&self) -> std::sync::RwLockWriteGuard<'_, Vec<String>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the first subscribe started the stream; if not, it subscribed to nothing.
    fn started(&mut self, started: bool) {
        self.started = started;
        if !started {
            self.topics().clear();
        }
    }

    /// Applies one client message and returns what to do: a subscribe that would take the
    /// client over `max_topics` topics, or names a bad `since`, subscribes to none of them.
    /// `collections` lists the collections the node knows (for a later subscribe to `*`).
    fn handle(
        &mut self,
        text: &str,
        max_topics: usize,
        collections: &dyn Fn() -> Vec<String>,
    ) -> Action {
        let bad = |error: String| Action::Reply(error_message("bad_message", &error));
        let message: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return bad(format!("invalid JSON: {e}")),
        };
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return bad(
                "expected {\"type\": \"subscribe\" | \"unsubscribe\", \"topics\": [...]}".into(),
            );
        };
        let subscribe = match kind {
            "subscribe" | "join" => true,
            "unsubscribe" | "leave" => false,
            other => return bad(format!("unknown message type {other:?}")),
        };
        let topics: Option<Vec<String>> = message
            .get("topics")
            .and_then(Value::as_array)
            .and_then(|list| list.iter().map(|t| t.as_str().map(str::to_owned)).collect());
        let Some(topics) = topics else {
            return bad("`topics` must be a list of strings".into());
        };
        if !subscribe {
            self.topics().retain(|s| !topics.contains(s));
            return Action::Reply(json!({ "type": "unsubscribed", "topics": topics }));
        }
        let since = match message.get("since") {
            None | Some(Value::Null) => None,
            Some(_) if self.started => {
                return Action::Reply(error_message(
                    "since_not_first",
                    "\"since\" is taken only on the first subscribe of a connection (the \
                     stream starts there); subscribe without it, or reconnect; nothing subscribed",
                ));
            }
            Some(Value::String(text)) => match Cursor::parse(text) {
                Ok(cursor) => Some(cursor),
                Err(e) => {
                    return Action::Reply(error_message(
                        "bad_cursor",
                        &format!("bad \"since\": {e}; nothing subscribed"),
                    ));
                }
            },
            Some(_) => {
                return Action::Reply(error_message(
                    "bad_cursor",
                    "\"since\" must be a cursor string (an event's data.cursor); nothing \
                     subscribed",
                ));
            }
        };
        let mut subs = self.topics();
        let mut new: Vec<&String> = topics.iter().filter(|t| !subs.contains(t)).collect();
        new.sort();
        new.dedup();
        if subs.len() + new.len() > max_topics {
            return Action::Reply(json!({
                "type": "error",
                "code": "too_many_topics",
                "error": format!(
                    "too many topics: at most {max_topics} per client (ZS_WS_MAX_TOPICS); \
                     {} subscribed, {} more asked for; nothing subscribed",
                    subs.len(),
                    new.len()
                ),
                "topics": topics,
            }));
        }
        if self.started {
            // Collections followed from now on start now, not from the stream's start.
            let now = now_ms();
            let mut anew: Vec<String> = Vec::new();
            for topic in &new {
                match live_prefix(topic).as_str() {
                    "*" => anew.extend(
                        collections()
                            .into_iter()
                            .filter(|c| !followed(subs.as_slice(), c)),
                    ),
                    collection if !followed(subs.as_slice(), collection) => {
                        anew.push(collection.to_owned())
                    }
                    _ => {}
                }
            }
            anew.sort();
            anew.dedup();
            if !anew.is_empty() {
                let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
                restarts.extend(anew.into_iter().map(|c| (c, now)));
            }
        }
        for topic in &topics {
            if !subs.contains(topic) {
                subs.push(topic.clone());
            }
        }
        drop(subs);
        if self.started {
            return Action::Reply(json!({ "type": "subscribed", "topics": topics }));
        }
        // The stream starts here: without a cursor, from now (taken before the
        // acknowledgement, so nothing changed after it is missed).
        Action::Start(topics, since.unwrap_or_else(|| Cursor::starting(now_ms())))
    }
}

/// Whether `topics` cover some of `collection`'s events (as the follower counts it).
fn followed(topics: &[String], collection: &str) -> bool {
    topics
        .iter()
        .any(|t| t == "*" || t.is_empty() || t.split('.').next() == Some(collection))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, value.parse().unwrap());
            }
            map
        };
        let none: Vec<String> = Vec::new();
        let listed = vec!["https://app.example".to_owned()];
        let any = vec!["*".to_owned()];
        let host = ("host", "127.0.0.1:5001");
        // Not a browser.
        assert!(origin_allowed(&none, &headers(&[host])));
        // The node's own page, whatever the list.
        for own in [
            "http://127.0.0.1:5001",
            "http://127.0.0.1:5001/",
            "https://127.0.0.1:5001",
        ] {
            assert!(
                origin_allowed(&none, &headers(&[host, ("origin", own)])),
                "{own}"
            );
        }
        let localhost = headers(&[
            ("host", "LOCALHOST:5001"),
            ("origin", "http://localhost:5001"),
        ]);
        assert!(origin_allowed(&none, &localhost));
        // Another site; another port of the same host is another origin.
        for other in [
            "https://evil.example",
            "http://127.0.0.1:8080",
            "http://127.0.0.1",
            "null",
            "http://",
        ] {
            let request = headers(&[host, ("origin", other)]);
            assert!(!origin_allowed(&none, &request), "{other}");
            assert!(!origin_allowed(&listed, &request), "{other}");
            assert!(origin_allowed(&any, &request), "{other}");
        }
        // A listed origin.
        let app = headers(&[host, ("origin", "https://APP.example")]);
        assert!(origin_allowed(&listed, &app));
        assert!(!origin_allowed(&none, &app));
        // No Host to compare with: only the list.
        assert!(!origin_allowed(
            &none,
            &headers(&[("origin", "http://127.0.0.1:5001")])
        ));
    }

    /// Handles `text` as the reader does, the first subscribe starting (or not) the stream.
    fn handle(subs: &mut Subscriptions, text: &str, max_topics: usize, start: bool) -> Value {
        let collections = || vec!["chat".to_owned(), "job".to_owned(), "power".to_owned()];
        match subs.handle(text, max_topics, &collections) {
            Action::Reply(reply) => reply,
            Action::Start(topics, since) => {
                subs.started(start);
                json!({"type": "start", "topics": topics, "since": since.encode()})
            }
        }
    }

    fn topics(subs: &Subscriptions) -> Vec<String> {
        subs.topics.read().unwrap().clone()
    }

    fn restarted(subs: &Subscriptions) -> Vec<String> {
        let mut list = subs.restarts.lock().unwrap();
        std::mem::take(&mut *list)
            .into_iter()
            .map(|(c, _)| c)
            .collect()
    }

    #[test]
    fn client_messages() {
        let mut subs = Subscriptions::default();
        let reply = handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["power"]}"#,
            8,
            true,
        );
        assert_eq!(reply["type"], "start");
        assert_eq!(reply["topics"], json!(["power"]));
        let reply = handle(
            &mut subs,
            r#"{"type":"join","topics":["chat", "power"]}"#,
            8,
            true,
        );
        assert_eq!(
            reply,
            json!({"type": "subscribed", "topics": ["chat", "power"]})
        );
        assert_eq!(topics(&subs), ["power", "chat"]);
        let reply = handle(
            &mut subs,
            r#"{"type":"unsubscribe","topics":["power"]}"#,
            8,
            true,
        );
        assert_eq!(reply["type"], "unsubscribed");
        assert_eq!(topics(&subs), ["chat"]);
        for bad in [
            "not json",
            "[]",
            r#"{"topics": ["a"]}"#,
            r#"{"type": "dance", "topics": ["a"]}"#,
            r#"{"type": "subscribe"}"#,
            r#"{"type": "subscribe", "topics": "power"}"#,
            r#"{"type": "subscribe", "topics": [1]}"#,
        ] {
            let reply = handle(&mut subs, bad, 8, true);
            assert_eq!(reply["type"], "error", "{bad}");
            assert_eq!(reply["code"], "bad_message", "{bad}");
        }
        assert_eq!(topics(&subs), ["chat"]);
    }

    #[test]
    fn topics_per_client_are_capped() {
        let mut subs = Subscriptions::default();
        let reply = handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["a","b"]}"#,
            3,
            true,
        );
        assert_eq!(reply["type"], "start");
        // Already subscribed topics and repeats do not count twice.
        let reply = handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["a","c","c"]}"#,
            3,
            true,
        );
        assert_eq!(reply["type"], "subscribed");
        let reply = handle(&mut subs, r#"{"type":"subscribe","topics":["d"]}"#, 3, true);
        assert_eq!(reply["type"], "error");
        assert_eq!(reply["code"], "too_many_topics");
        let text = reply["error"].as_str().unwrap();
        assert!(
            text.contains("at most 3") && text.contains("ZS_WS_MAX_TOPICS"),
            "{text}"
        );
        assert_eq!(topics(&subs), ["a", "b", "c"]);
        handle(
            &mut subs,
            r#"{"type":"unsubscribe","topics":["a"]}"#,
            3,
            true,
        );
        let reply = handle(&mut subs, r#"{"type":"subscribe","topics":["d"]}"#, 3, true);
        assert_eq!(reply["type"], "subscribed");
    }

    /// `since`: a cursor, on the first subscribe only; anything else subscribes to nothing.
    #[test]
    fn since_is_a_cursor_on_the_first_subscribe() {
        let mut cursor = Cursor::starting(1234);
        cursor.advance(&crate::changes::log_key("power", "memory:x"), 7);
        let good = cursor.encode();
        let mut subs = Subscriptions::default();
        let oversized = "A".repeat(crate::changes::MAX_CURSOR_BYTES + 1);
        for since in [
            json!("not a cursor"),
            json!(""),
            json!(42),
            json!({"t": 1}),
            json!(oversized),
        ] {
            let text = json!({"type": "subscribe", "topics": ["power"], "since": since});
            let reply = handle(&mut subs, &text.to_string(), 8, true);
            assert_eq!(reply["type"], "error", "{since:.40}");
            assert_eq!(reply["code"], "bad_cursor", "{since:.40}");
            assert!(reply["error"].as_str().is_some_and(|e| e.contains("since")));
            assert!(topics(&subs).is_empty());
            assert!(!subs.started);
        }
        // A first subscribe that could not start (say, the cursor expired) subscribes to
        // nothing and leaves `since` allowed.
        let text = json!({"type": "subscribe", "topics": ["power"], "since": good});
        let reply = handle(&mut subs, &text.to_string(), 8, false);
        assert_eq!(reply["type"], "start");
        assert_eq!(reply["since"], good.as_str());
        assert!(topics(&subs).is_empty());
        // null is no cursor: from now.
        let reply = handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["power"],"since":null}"#,
            8,
            true,
        );
        assert_eq!(reply["type"], "start");
        let started = Cursor::parse(reply["since"].as_str().unwrap()).unwrap();
        assert!(started.positions.is_empty() && started.at_ms > 1234);
        // Later: refused, nothing subscribed.
        let text = json!({"type": "subscribe", "topics": ["chat"], "since": good});
        let reply = handle(&mut subs, &text.to_string(), 8, true);
        assert_eq!(reply["code"], "since_not_first");
        assert_eq!(topics(&subs), ["power"]);
    }

    /// A later subscribe restarts the collections it follows anew, not the ones followed.
    #[test]
    fn collections_followed_anew_restart() {
        let mut subs = Subscriptions::default();
        handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["power.patch.p1"]}"#,
            8,
            true,
        );
        assert!(
            restarted(&subs).is_empty(),
            "the first subscribe starts the stream"
        );
        handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["power.create", "chat"]}"#,
            8,
            true,
        );
        assert_eq!(restarted(&subs), ["chat"]);
        handle(
            &mut subs,
            r#"{"type":"unsubscribe","topics":["chat"]}"#,
            8,
            true,
        );
        handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["chat.create"]}"#,
            8,
            true,
        );
        assert_eq!(restarted(&subs), ["chat"], "followed again");
        handle(&mut subs, r#"{"type":"subscribe","topics":["*"]}"#, 8, true);
        assert_eq!(
            restarted(&subs),
            ["job"],
            "the known collections not followed"
        );
        handle(
            &mut subs,
            r#"{"type":"subscribe","topics":["job"]}"#,
            8,
            true,
        );
        assert!(restarted(&subs).is_empty());
    }
}
