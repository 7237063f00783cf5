//! Calls in: the ROUTER task reads; the medium's own control messages and malformed calls are
//! answered there; requests go to the node.
//!
//! The ROUTER task never runs a request that may take a while: a body over 64 KiB is verified
//! and parsed on a serving task of its own; otherwise the ROUTER task checks and parses it, and
//! polls its handler once in place only when the node says it is cheap
//! ([`Inbound::serve_inline`]); a handler that completes without waiting is answered from the
//! ROUTER task, one that waits moves to its own task. Every other request is served on its own
//! task at once, so one slow request never stalls the others.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ::zeromq::{RouterSendHalf, RouterSocket, SocketRecv, SocketSend, ZmqMessage};
use futures::FutureExt;
use serde_json::value::RawValue;
use tokio::sync::{Semaphore, watch};

use super::core::Core;
use super::stats::bump;
use super::wire::{self, Call, Control, Rejection};
use crate::medium::{Inbound, Request};
use crate::{Error, Result};

/// Requests served at once; beyond this a request gets an `unavailable` reply at once.
const MAX_SERVING: usize = 4096;
/// A request body larger than this is verified and parsed on a serving task, not on the ROUTER
/// task.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// Serves the ROUTER: this task reads; each request is served on its own task, which sends its
/// reply on its own handle of the socket. On shutdown every handle is dropped (serving tasks
/// watch the shutdown too), which closes the socket and its listener.
pub(crate) async fn run_router(
    core: Arc<Core>,
    router: RouterSocket,
    shutdown: watch::Receiver<bool>,
) {
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

/// A printable name of the caller of ROUTER identity `identity`, for logs.
fn sender_name(identity: &[u8]) -> String {
    let mut name = String::from_utf8_lossy(identity).into_owned();
    if name.len() > 64 || name.chars().any(char::is_control) {
        name = hex::encode(&identity[..identity.len().min(32)]);
    }
    name
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
    let count = frames.len().saturating_sub(1);
    if let Err(rejection) = wire::check_frames(count, 2, "[body, seal]") {
        core.reject(&sender_name(&identity), "request", &rejection);
        return None;
    }
    let mac = frames.pop().unwrap_or_default();
    let body = frames.pop().unwrap_or_default();
    if let Err(rejection) = core.wire.check_size(&[&body, &mac]) {
        core.reject(&sender_name(&identity), "request", &rejection);
        return None;
    }
    let Ok(permit) = permits.clone().try_acquire_owned() else {
        bump(&core.counters.requests_refused_busy);
        // Refuse it at once with `unavailable`, if it is authentic and carries an id.
        let plain = core.opened(
            &sender_name(&identity),
            "request",
            wire::SEAL_CALL,
            b"",
            &body,
            &mac,
        )?;
        let id = wire::probe_id(&plain)?;
        let busy = Err(Error::unavailable("node too busy"));
        return Some(reply_message(core, &identity, id, &busy));
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

/// What [`accept`] made of a call.
// A short-lived value, moved once per call: boxing the request would cost an allocation per
// request for nothing (the variants differ since `Request` carries optional fields).
#[allow(clippy::large_enum_variant)]
enum Accepted {
    /// Answered (a control message, a malformed call) or dropped (`None`).
    Done(Option<ZmqMessage>),
    /// A request to hand to the node.
    Serve {
        id: u64,
        from: Option<String>,
        request: Request,
    },
}

/// Verifies, parses and serves one call; returns the reply to send, if any.
async fn serve(core: &Core, identity: &[u8], body: &[u8], mac: &[u8]) -> Option<ZmqMessage> {
    match accept(core, identity, body, mac) {
        Accepted::Done(reply) => reply,
        Accepted::Serve { id, from, request } => {
            let inbound = core.inbound.get()?.clone();
            Some(handle(core, inbound, identity, id, from, request).await)
        }
    }
}

/// Verifies and parses one call; answers the medium's own and the malformed ones.
fn accept(core: &Core, identity: &[u8], body: &[u8], seal: &[u8]) -> Accepted {
    let sender = || sender_name(identity);
    let Some(body) = core.opened(&sender(), "request", wire::SEAL_CALL, b"", body, seal) else {
        return Accepted::Done(None);
    };
    let (id, reply) = match wire::decode_call(&body) {
        Ok(Call::Request { id, from, request }) => {
            return Accepted::Serve { id, from, request };
        }
        Ok(Call::Control { id, from, control }) => {
            let served = control_reply(core, &from, control);
            (id, served.and_then(|()| crate::json::to_raw(&())))
        }
        Err(rejection) => {
            core.reject(&sender(), "request", &rejection);
            let Rejection::Answerable { id, reason } = rejection else {
                return Accepted::Done(None);
            };
            let error = Error::bad_request(format!("malformed request: {reason}"));
            (id, Err(error))
        }
    };
    Accepted::Done(Some(reply_message(core, identity, id, &reply)))
}

/// Serves one of the medium's control messages.
fn control_reply(core: &Core, from: &str, control: Control) -> Result<()> {
    match control {
        Control::Interest(interest) => core.remote.record(from, interest),
        Control::Sync { topic, interest } => super::sync::serve(core, from, &topic, interest),
    }
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
    let body = core.wire.encode_response(id, reply);
    let [body, seal] = core.wire.seal(wire::SEAL_RESPONSE, b"", body);
    wire::multipart(vec![identity.to_vec(), body, seal])
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::NetworkConfig;
    use crate::medium::PROTOCOL_VERSION;
    use crate::security::ClusterKey;

    fn core() -> Core {
        Core::new(NetworkConfig {
            cluster_key: Some(ClusterKey::new("k")),
            ..NetworkConfig::default()
        })
    }

    fn accept_json(core: &Core, value: Value) -> Accepted {
        let body = value.to_string().into_bytes();
        let [body, seal] = core.wire.seal(wire::SEAL_CALL, b"", body);
        accept(core, b"zs-x-1", &body, &seal)
    }

    /// The reply frames `[identity, body, seal]` of an answered call, its body opened and
    /// parsed.
    fn answered(core: &Core, accepted: Accepted) -> Value {
        let Accepted::Done(Some(reply)) = accepted else {
            panic!("not answered");
        };
        let frames = reply.into_vec();
        assert_eq!(frames.len(), 3);
        assert_eq!(&frames[0][..], b"zs-x-1");
        let plain = core
            .wire
            .open(wire::SEAL_RESPONSE, b"", &frames[1], &frames[2])
            .unwrap();
        serde_json::from_slice(&plain).unwrap()
    }

    const V: u32 = PROTOCOL_VERSION;

    #[test]
    fn a_request_goes_to_the_node_even_for_collection_dollar_medium() {
        let core = core();
        for collection in ["power", "$medium"] {
            let accepted = accept_json(
                &core,
                json!({"v": V, "kind": "request", "id": 3, "from": "a",
                       "request": {"collection": collection, "action": "sync", "args": {"topic": "$sync.x"}}}),
            );
            match accepted {
                Accepted::Serve { id, from, request } => {
                    assert_eq!((id, from.as_deref()), (3, Some("a")));
                    assert_eq!(request.collection, collection);
                }
                Accepted::Done(_) => panic!("{collection}: not handed to the node"),
            }
        }
        assert_eq!(core.remote.of("a"), None);
    }

    #[test]
    fn an_interest_is_recorded_and_answered() {
        let core = core();
        let reply = answered(
            &core,
            accept_json(
                &core,
                json!({"v": V, "kind": "interest", "id": 5, "from": "a",
                   "interest": {"version": 2, "prefixes": ["power"]}}),
            ),
        );
        assert_eq!(
            reply,
            json!({"v": V, "kind": "response", "id": 5, "ok": null})
        );
        assert_eq!(core.remote.of("a").unwrap().prefixes, vec!["power"]);
        assert_eq!(core.stats().requests_served, 0);
    }

    #[test]
    fn a_bad_sync_gets_an_error_reply() {
        let core = core();
        let reply = answered(
            &core,
            accept_json(
                &core,
                json!({"v": V, "kind": "sync", "id": 6, "from": "a", "topic": "power"}),
            ),
        );
        assert_eq!(reply["id"], json!(6));
        assert_eq!(reply["error"]["kind"], json!("bad_request"));
    }

    #[test]
    fn malformed_calls_are_dropped_or_answered_and_counted() {
        let core = core();
        let reply = answered(
            &core,
            accept_json(
                &core,
                json!({"v": V, "kind": "request", "id": 9, "from": "a", "request": {"nope": true}}),
            ),
        );
        assert_eq!(reply["id"], json!(9));
        assert_eq!(reply["error"]["kind"], json!("bad_request"));
        assert!(matches!(
            accept_json(&core, json!([1, 2, 3])),
            Accepted::Done(None)
        ));
        assert!(matches!(
            accept_json(&core, json!({"v": 1, "kind": "request", "id": 1})),
            Accepted::Done(None)
        ));
        // Not sealed.
        let body = json!({"v": V, "kind": "interest", "id": 1, "from": "a",
                          "interest": {"version": 1, "prefixes": []}})
        .to_string();
        assert!(matches!(
            accept(&core, b"zs-x-1", body.as_bytes(), b""),
            Accepted::Done(None)
        ));
        assert_eq!(core.remote.of("a"), None);
        let stats = core.stats();
        assert_eq!(
            (
                stats.dropped_malformed,
                stats.dropped_version,
                stats.dropped_unsigned
            ),
            (2, 1, 1)
        );
    }

    #[test]
    fn senders_are_named_printably() {
        assert_eq!(sender_name(b"zs-abc-1"), "zs-abc-1");
        assert_eq!(sender_name(b"\x00\x01"), "0001");
        assert_eq!(sender_name(&[b'x'; 100]).len(), 64);
    }
}
