//! `GET /realtime`: the websocket that streams change events.
//!
//! Each client gets its own subscription to the node's event bus and a bounded queue of
//! outgoing messages (`ws_buffer`). Three tasks serve a client: the reader (client messages:
//! subscribe, unsubscribe), the forwarder (node events that match the client's prefixes and that
//! the [`Authorizer`](super::Authorizer) lets it see) and the writer (the queue to the socket).
//! The reader and the forwarder never wait: when the queue is full the client is too slow, it is
//! told so (best effort) and disconnected, and neither the node nor the other clients notice.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::auth::Operation;
use super::error::ApiError;
use super::{AppState, AuthUser};
use crate::Event;
use crate::event::topic_matches;

/// How long the goodbye message and close frame may take before the socket is dropped.
const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The client fell `ws_buffer` messages behind.
    TooSlow,
    /// The client sent a message over `ws_max_message_bytes`.
    TooBig,
    /// The client closed, or the connection broke.
    ClientGone,
    /// The server shuts down.
    Shutdown,
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
            .map(|_| Self(state.clone()))
    }
}

impl Drop for ClientSeat {
    fn drop(&mut self) {
        self.0.ws_clients.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The outgoing queue of one client, with the switch that ends the connection.
#[derive(Clone)]
struct Outbox {
    queue: mpsc::Sender<Message>,
    stop: Arc<watch::Sender<Option<Stop>>>,
}

impl Outbox {
    /// Queues `message` without waiting; `false` (and the connection stops) when the queue is
    /// full or closed.
    fn push(&self, message: Message) -> bool {
        match self.queue.try_send(message) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stop(Stop::TooSlow);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
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

/// A server message.
#[derive(Serialize)]
struct EventMessage<'a> {
    r#type: &'static str,
    topic: &'a str,
    data: &'a Value,
}

fn error_message(error: &str) -> Value {
    json!({ "type": "error", "error": error })
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
    };
    let subscriptions: Arc<Mutex<Vec<String>>> = Arc::default();
    // Subscribe to the node before reading the client's first message, so no event published
    // after a "subscribed" acknowledgement can be missed.
    let events = state.node.subscribe("*");
    // ... and once the peers send them (bounded wait), so that holds for remote events too.
    state.node.sync_subscriptions().await;
    let (mut sink, mut stream) = socket.split();
    tracing::debug!(user = ?user.0, "websocket client connected");

    let reader = tokio::spawn({
        let outbox = outbox.clone();
        let subscriptions = subscriptions.clone();
        async move {
            while let Some(message) = stream.next().await {
                let reply = match message {
                    Ok(Message::Text(text)) => {
                        handle_client_message(text.as_str(), &subscriptions, max_topics)
                    }
                    Ok(Message::Binary(_)) => {
                        error_message("binary messages are not supported: send JSON text")
                    }
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

    let forwarder = tokio::spawn({
        let outbox = outbox.clone();
        let authorizer = state
            .config
            .authorizer
            .clone()
            .or_else(|| state.node.authorizer().cloned());
        let user = user.0.clone();
        let mut events = events;
        async move {
            while let Some(event) = events.next().await {
                if !wanted(&event, &subscriptions) {
                    continue;
                }
                if let Some(authorizer) = &authorizer {
                    let collection = event.topic.split('.').next().unwrap_or("");
                    if !authorizer.authorize(user.as_ref(), collection, &Operation::Subscribe) {
                        continue;
                    }
                }
                let message = EventMessage {
                    r#type: "event",
                    topic: &event.topic,
                    data: &event.data,
                };
                if !outbox.push_json(&message) {
                    return;
                }
            }
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

    // The writer: the queue to the socket, until something stops the connection.
    let reason = loop {
        let message = tokio::select! {
            biased;
            _ = &mut stopped => break outbox.stop.borrow().unwrap_or(Stop::ClientGone),
            _ = &mut server_stopping => break Stop::Shutdown,
            message = outgoing.recv() => message,
        };
        let Some(message) = message else {
            break Stop::ClientGone;
        };
        tokio::select! {
            biased;
            _ = &mut stopped => break outbox.stop.borrow().unwrap_or(Stop::ClientGone),
            _ = &mut server_stopping => break Stop::Shutdown,
            sent = sink.send(message) => if sent.is_err() { break Stop::ClientGone },
        }
    };
    reader.abort();
    forwarder.abort();
    drop(outgoing);

    let goodbye = match reason {
        Stop::TooSlow => {
            tracing::warn!(user = ?user.0, buffer, "websocket client too slow; disconnected");
            let text = error_message(&format!(
                "too slow: more than {buffer} messages queued, disconnected"
            ))
            .to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::POLICY,
                "too slow",
            ))
        }
        Stop::TooBig => {
            tracing::debug!(user = ?user.0, max_message, "websocket message too big; disconnected");
            let text = error_message(&format!(
                "message too big: at most {max_message} bytes (ZS_WS_MAX_MESSAGE_BYTES), \
                 disconnected"
            ))
            .to_string();
            Some((
                Some(Message::Text(Utf8Bytes::from(text))),
                close_code::SIZE,
                "message too big",
            ))
        }
        Stop::Shutdown => Some((None, close_code::AWAY, "server shutting down")),
        Stop::ClientGone => None,
    };
    if let Some((text, code, reason)) = goodbye {
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if let Some(text) = text {
                sink.send(text).await?;
            }
            sink.send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await
        })
        .await;
    } else {
        // The client closed: complete the closing handshake (flushes the close reply).
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, sink.close()).await;
    }
    tracing::debug!(user = ?user.0, ?reason, "websocket client disconnected");
}

fn wanted(event: &Event, subscriptions: &Mutex<Vec<String>>) -> bool {
    let subscriptions = subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    subscriptions.iter().any(|p| topic_matches(p, &event.topic))
}

/// Applies one client message to the subscriptions and returns the reply; a subscribe that
/// would take the client over `max_topics` topics subscribes to none of them.
fn handle_client_message(
    text: &str,
    subscriptions: &Mutex<Vec<String>>,
    max_topics: usize,
) -> Value {
    let message: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => return error_message(&format!("invalid JSON: {e}")),
    };
    let Some(kind) = message.get("type").and_then(Value::as_str) else {
        return error_message(
            "expected {\"type\": \"subscribe\" | \"unsubscribe\", \"topics\": [...]}",
        );
    };
    let subscribe = match kind {
        "subscribe" | "join" => true,
        "unsubscribe" | "leave" => false,
        other => return error_message(&format!("unknown message type {other:?}")),
    };
    let topics: Option<Vec<String>> = message
        .get("topics")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().map(|t| t.as_str().map(str::to_owned)).collect());
    let Some(topics) = topics else {
        return error_message("`topics` must be a list of strings");
    };
    let mut subs = subscriptions.lock().unwrap_or_else(|e| e.into_inner());
    if subscribe {
        let mut new: Vec<&String> = topics.iter().filter(|t| !subs.contains(t)).collect();
        new.sort();
        new.dedup();
        if subs.len() + new.len() > max_topics {
            return json!({
                "type": "error",
                "error": format!(
                    "too many topics: at most {max_topics} per client (ZS_WS_MAX_TOPICS); \
                     {} subscribed, {} more asked for; nothing subscribed",
                    subs.len(),
                    new.len()
                ),
                "topics": topics,
            });
        }
        for topic in &topics {
            if !subs.contains(topic) {
                subs.push(topic.clone());
            }
        }
        json!({ "type": "subscribed", "topics": topics })
    } else {
        subs.retain(|s| !topics.contains(s));
        json!({ "type": "unsubscribed", "topics": topics })
    }
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

    #[test]
    fn client_messages() {
        let subs = Mutex::new(Vec::new());
        let reply = handle_client_message(r#"{"type":"subscribe","topics":["power"]}"#, &subs, 8);
        assert_eq!(reply, json!({"type": "subscribed", "topics": ["power"]}));
        let reply =
            handle_client_message(r#"{"type":"join","topics":["chat", "power"]}"#, &subs, 8);
        assert_eq!(reply["type"], "subscribed");
        assert_eq!(*subs.lock().unwrap(), ["power", "chat"]);
        let reply = handle_client_message(r#"{"type":"unsubscribe","topics":["power"]}"#, &subs, 8);
        assert_eq!(reply["type"], "unsubscribed");
        assert_eq!(*subs.lock().unwrap(), ["chat"]);
        for bad in [
            "not json",
            "[]",
            r#"{"topics": ["a"]}"#,
            r#"{"type": "dance", "topics": ["a"]}"#,
            r#"{"type": "subscribe"}"#,
            r#"{"type": "subscribe", "topics": "power"}"#,
            r#"{"type": "subscribe", "topics": [1]}"#,
        ] {
            assert_eq!(
                handle_client_message(bad, &subs, 8)["type"],
                "error",
                "{bad}"
            );
        }
        assert_eq!(*subs.lock().unwrap(), ["chat"]);
    }

    #[test]
    fn topics_per_client_are_capped() {
        let subs = Mutex::new(Vec::new());
        let reply = handle_client_message(r#"{"type":"subscribe","topics":["a","b"]}"#, &subs, 3);
        assert_eq!(reply["type"], "subscribed");
        // Already subscribed topics and repeats do not count twice.
        let reply =
            handle_client_message(r#"{"type":"subscribe","topics":["a","c","c"]}"#, &subs, 3);
        assert_eq!(reply["type"], "subscribed");
        let reply = handle_client_message(r#"{"type":"subscribe","topics":["d"]}"#, &subs, 3);
        assert_eq!(reply["type"], "error");
        let text = reply["error"].as_str().unwrap();
        assert!(
            text.contains("at most 3") && text.contains("ZS_WS_MAX_TOPICS"),
            "{text}"
        );
        assert_eq!(*subs.lock().unwrap(), ["a", "b", "c"]);
        handle_client_message(r#"{"type":"unsubscribe","topics":["a"]}"#, &subs, 3);
        let reply = handle_client_message(r#"{"type":"subscribe","topics":["d"]}"#, &subs, 3);
        assert_eq!(reply["type"], "subscribed");
    }
}
