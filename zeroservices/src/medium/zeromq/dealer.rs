//! Calls out: one DEALER per peer, owned by a supervised task that keeps a `recv()` pending at
//! all times, hands replies to the waiting calls, watches the socket monitor, and on a
//! disconnect, a failed write or a failed connect fails that peer's pending calls at once with
//! `unavailable` and rebuilds the socket with backoff (the `zeromq` DEALER does not reconnect by
//! itself).
//!
//! Callers put their requests in the connection's outbox; the first one into an empty outbox
//! wakes the DEALER task, which hands the whole outbox to the socket in one go, so the socket's
//! writer sends a burst with one write instead of one per request. While requests come in bursts
//! it first lets the other ready tasks run once (the callers woken by a burst of replies add to
//! the outbox meanwhile); a lone request is sent at once. Requests leave in the order they
//! entered the outbox.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend,
    ZmqMessage,
};
use futures::StreamExt;
use serde_json::value::RawValue;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::core::Core;
use super::pending::Pending;
use super::stats::{add, bump};
use super::{BACKOFF_MAX, BACKOFF_MIN, lock, wire};
use crate::{Error, NodeInfo, Result};

/// One peer's DEALER connection, as callers see it.
pub(crate) struct Dealer {
    pub(crate) endpoint: String,
    shared: Arc<DealerShared>,
    task: JoinHandle<()>,
}

/// What the callers and the DEALER task of one peer share.
struct DealerShared {
    link: watch::Sender<Link>,
    pending: Pending,
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

/// One live DEALER session, as callers see it: where they put their requests.
struct Conn {
    /// Requests waiting for the DEALER task to hand them to the socket, oldest first. Bounded
    /// by the calls in flight (each caller puts one request and waits for its reply).
    outbox: Mutex<Vec<ZmqMessage>>,
    /// Wakes the DEALER task: the outbox is no longer empty.
    ready: Notify,
}

impl Conn {
    fn new() -> Self {
        Self {
            outbox: Mutex::new(Vec::new()),
            ready: Notify::new(),
        }
    }

    /// Queues `message` for the DEALER task; the first message into an empty outbox wakes it.
    fn post(&self, message: ZmqMessage) {
        let first = {
            let mut outbox = lock(&self.outbox);
            outbox.push(message);
            outbox.len() == 1
        };
        if first {
            self.ready.notify_one();
        }
    }
}

/// The DEALER of `peer`: the live one, or a new one (replacing one to an endpoint the peer no
/// longer announces).
pub(crate) fn dealer_for(
    core: &Arc<Core>,
    dealers: &mut HashMap<String, Arc<Dealer>>,
    peer: &NodeInfo,
) -> Result<Arc<Dealer>> {
    let Some(endpoint) = peer.endpoints.get("router") else {
        return Err(Error::unavailable(format!(
            "node {} announced no router endpoint",
            peer.id
        )));
    };
    if let Some(dealer) = dealers.get(&peer.id)
        && dealer.endpoint == *endpoint
        && !dealer.task.is_finished()
    {
        return Ok(dealer.clone());
    }
    if let Some(old) = dealers.remove(&peer.id) {
        old.close(core, &format!("node {} moved to another endpoint", peer.id));
    }
    let shared = Arc::new(DealerShared {
        link: watch::channel(Link::Connecting).0,
        pending: Pending::default(),
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
    dealers.insert(peer.id.clone(), dealer.clone());
    Ok(dealer)
}

impl Dealer {
    /// Sends call `id` (its body and seal frames) and waits for its reply. Registered before the
    /// connection is looked at: a connection lost from then on fails this call.
    pub(crate) async fn call(
        &self,
        core: &Core,
        peer: &str,
        id: u64,
        frames: Vec<Vec<u8>>,
    ) -> Result<Box<RawValue>> {
        let shared = &self.shared;
        let mut waiting = shared.pending.insert(id);
        let failed = |why: &str| {
            if shared.pending.fail(id, why) {
                bump(&core.counters.calls_failed_unavailable);
            }
        };
        match shared.conn().await {
            // A failed write ends the session, which fails every call still waiting (this one
            // too: it is registered).
            Ok(conn) => conn.post(wire::multipart(frames)),
            Err(why) => failed(&why),
        }
        match (&mut waiting.reply).await {
            Ok(reply) => reply,
            Err(_) => Err(Error::unavailable(format!(
                "connection to node {peer} is closed"
            ))),
        }
    }

    /// Closes the connection: later calls fail at once, pending ones now.
    pub(crate) fn close(&self, core: &Core, why: &str) {
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

fn fail_all(core: &Core, pending: &Pending, why: &str) {
    let failed = pending.fail_all(why);
    add(&core.counters.calls_failed_unavailable, failed as u64);
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

/// Hands the outbox to the socket whenever callers fill it, until a write fails. While requests
/// come in bursts (the last outbox taken held more than one), after a wake it first lets every
/// other ready task run once, so the callers of a burst are all in the outbox before it is
/// taken; the crate's writer then sends them with one flush. A lone request (the last outbox
/// held one) is sent at once: no scheduler turn added to a call made alone.
async fn send_outbox(core: &Core, conn: &Conn, mut sender: DealerSendHalf) -> String {
    let mut batch = Vec::new();
    let mut bursts = false;
    loop {
        conn.ready.notified().await;
        if bursts {
            tokio::task::yield_now().await;
        }
        std::mem::swap(&mut batch, &mut *lock(&conn.outbox));
        bursts = batch.len() > 1;
        let sent = batch.len() as u64;
        for message in batch.drain(..) {
            // Pushes onto the crate's per-peer write queue (100,000 deep): waits only when it
            // is full. The reader runs meanwhile (same task, polled beside this).
            if let Err(e) = sender.send(message).await {
                return format!("send failed: {e}");
            }
        }
        add(&core.counters.calls_sent, sent);
    }
}

/// Owns one peer's DEALER: connects (bounded), runs a session, and after any failure marks the
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
                let conn = Arc::new(Conn::new());
                shared.link.send_replace(Link::Up(conn.clone()));
                session(
                    &core,
                    &peer,
                    &shared.pending,
                    &conn,
                    sender,
                    receiver,
                    monitor,
                )
                .await
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

/// Runs one connected session until the connection is lost; returns why.
async fn session(
    core: &Core,
    peer: &str,
    pending: &Pending,
    conn: &Conn,
    sender: DealerSendHalf,
    mut receiver: DealerRecvHalf,
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
    let writer = send_outbox(core, conn, sender);
    tokio::select! {
        why = reader => why,
        why = watcher => why,
        why = writer => why,
    }
}

/// Checks one message from the peer's ROUTER and hands its reply to the call waiting for it.
fn take_response(core: &Core, peer: &str, pending: &Pending, message: ZmqMessage) {
    let frames = message.into_vec();
    if let Err(rejection) = wire::check_frames(frames.len(), 2, "[body, seal]") {
        return core.reject(peer, "response", &rejection);
    }
    let (body, seal) = (&frames[0], &frames[1]);
    if let Err(rejection) = core.wire.check_size(&[body, seal]) {
        return core.reject(peer, "response", &rejection);
    }
    let Some(body) = core.opened(peer, "response", wire::SEAL_RESPONSE, b"", body, seal) else {
        return;
    };
    match wire::decode_response(&body) {
        Ok((id, reply)) => {
            bump(&core.counters.replies_received);
            // No entry: the call timed out and went away; the late reply is dropped.
            pending.complete(id, reply);
        }
        Err(rejection) => core.reject(peer, "response", &rejection),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::NetworkConfig;
    use crate::security::ClusterKey;

    fn response(core: &Core, id: u64, reply: &Result<Box<RawValue>>) -> ZmqMessage {
        let body = core.wire.encode_response(id, reply);
        wire::multipart(core.wire.seal(wire::SEAL_RESPONSE, b"", body).into())
    }

    fn keyed() -> Core {
        Core::new(NetworkConfig {
            cluster_key: Some(ClusterKey::new("k")),
            ..NetworkConfig::default()
        })
    }

    #[test]
    fn a_reply_reaches_its_call() {
        let core = keyed();
        let pending = Pending::default();
        let mut waiting = pending.insert(4);
        let ok = crate::json::to_raw(&json!({"n": 4})).unwrap();
        take_response(&core, "b", &pending, response(&core, 4, &Ok(ok)));
        let reply = waiting.reply.try_recv().unwrap().unwrap();
        assert_eq!(reply.get(), r#"{"n":4}"#);
        assert_eq!(core.stats().replies_received, 1);
        // A late reply (no call waits) is dropped quietly.
        let ok = crate::json::to_raw(&json!(null)).unwrap();
        take_response(&core, "b", &pending, response(&core, 4, &Ok(ok)));
        assert_eq!(core.stats().replies_received, 2);
        assert_eq!(core.stats().dropped_malformed, 0);
    }

    #[test]
    fn bad_responses_are_dropped_and_counted() {
        let core = keyed();
        let pending = Pending::default();
        let mut waiting = pending.insert(1);
        let ok = crate::json::to_raw(&json!(1)).unwrap();
        let good = response(&core, 1, &Ok(ok)).into_vec();
        let frames =
            |list: Vec<&[u8]>| wire::multipart(list.into_iter().map(<[u8]>::to_vec).collect());
        take_response(&core, "b", &pending, frames(vec![&good[0]]));
        take_response(&core, "b", &pending, frames(vec![&good[0], b""]));
        let [body, seal] = core.wire.seal(wire::SEAL_RESPONSE, b"", b"{}".to_vec());
        take_response(&core, "b", &pending, frames(vec![&body, &seal]));
        assert!(waiting.reply.try_recv().is_err(), "no reply was taken");
        let stats = core.stats();
        assert_eq!(stats.dropped_malformed, 2);
        assert_eq!(stats.dropped_unsigned, 1);
        assert_eq!(stats.replies_received, 0);
    }

    #[tokio::test]
    async fn a_call_to_a_closed_connection_fails_at_once() {
        let core = Arc::new(Core::new(NetworkConfig::default()));
        let mut dealers = HashMap::new();
        let mut peer: NodeInfo = serde_json::from_value(json!({"id": "b", "name": "svc"})).unwrap();
        assert!(matches!(
            dealer_for(&core, &mut dealers, &peer),
            Err(Error::Unavailable { .. })
        ));
        // A port nobody listens on; the dealer is closed before it could connect.
        peer.endpoints
            .insert("router".to_owned(), "tcp://127.0.0.1:9".to_owned());
        let dealer = dealer_for(&core, &mut dealers, &peer).unwrap();
        dealer.close(&core, "node b left");
        let reply = dealer
            .call(&core, "b", 1, vec![b"{}".to_vec(), Vec::new()])
            .await;
        match reply {
            Err(Error::Unavailable { message }) => assert_eq!(message, "node b left"),
            other => panic!("{other:?}"),
        }
        assert_eq!(core.stats().calls_failed_unavailable, 1);
        assert_eq!(core.stats().calls_sent, 0);
    }

    /// A peer's ROUTER on loopback, keyed like `keyed()`, for the tests of calls over real
    /// sockets: its endpoint and the socket.
    async fn peer_router() -> (NodeInfo, ::zeromq::RouterSocket) {
        let mut router = ::zeromq::RouterSocket::new();
        let bound = router.bind("tcp://127.0.0.1:0").await.unwrap();
        let mut peer: NodeInfo = serde_json::from_value(json!({"id": "b", "name": "svc"})).unwrap();
        peer.endpoints
            .insert("router".to_owned(), bound.to_string());
        (peer, router)
    }

    /// The frames of a sealed `get` call `id` from `core`.
    fn call_frames(core: &Core, id: u64) -> Vec<Vec<u8>> {
        let request = crate::medium::Request::new("power", "get").id(format!("r{id}"));
        let body = core
            .wire
            .encode_call(id, "a", wire::Outgoing::Request(&request))
            .unwrap();
        core.wire.seal(wire::SEAL_CALL, b"", body).into()
    }

    /// Reads one call on the peer's ROUTER: the caller's identity and the call's id and
    /// resource id.
    async fn read_call(
        server: &Core,
        router: &mut ::zeromq::RouterSocket,
    ) -> (Vec<u8>, u64, String) {
        let message = tokio::time::timeout(Duration::from_secs(5), router.recv())
            .await
            .expect("a call within 5 s")
            .unwrap();
        let frames = message.into_vec();
        assert_eq!(frames.len(), 3);
        let plain = server
            .wire
            .open(wire::SEAL_CALL, b"", &frames[1], &frames[2])
            .unwrap();
        match wire::decode_call(&plain).unwrap() {
            wire::Call::Request { id, request, .. } => (
                frames[0].to_vec(),
                id,
                request.resource_id.unwrap_or_default(),
            ),
            wire::Call::Control { .. } => panic!("not a request"),
        }
    }

    /// Sends the reply `{"id": resource}` to call `id` of `identity`.
    async fn reply(
        server: &Core,
        router: &mut ::zeromq::RouterSocket,
        identity: &[u8],
        id: u64,
        resource: &str,
    ) {
        let ok = crate::json::to_raw(&json!({ "id": resource })).unwrap();
        let body = server.wire.encode_response(id, &Ok(ok));
        let [body, seal] = server.wire.seal(wire::SEAL_RESPONSE, b"", body);
        router
            .send(wire::multipart(vec![identity.to_vec(), body, seal]))
            .await
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_calls_each_get_their_own_reply_answered_out_of_order() {
        let core = Arc::new(keyed());
        let server = keyed();
        let (peer, mut router) = peer_router().await;
        let mut dealers = HashMap::new();
        let dealer = dealer_for(&core, &mut dealers, &peer).unwrap();
        const CALLS: u64 = 200;
        let mut calls = Vec::new();
        for id in 1..=CALLS {
            let (core, dealer) = (core.clone(), dealer.clone());
            let frames = call_frames(&core, id);
            calls.push(tokio::spawn(async move {
                let reply = dealer.call(&core, "b", id, frames).await.unwrap();
                (id, reply.get().to_owned())
            }));
        }
        // Every call arrives once; answered in reverse order of arrival.
        let mut seen = Vec::new();
        for _ in 0..CALLS {
            seen.push(read_call(&server, &mut router).await);
        }
        let mut ids: Vec<u64> = seen.iter().map(|(_, id, _)| *id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (1..=CALLS).collect::<Vec<_>>());
        for (identity, id, resource) in seen.iter().rev() {
            assert_eq!(resource, &format!("r{id}"));
            reply(&server, &mut router, identity, *id, resource).await;
        }
        for call in calls {
            let (id, reply) = call.await.unwrap();
            assert_eq!(reply, format!(r#"{{"id":"r{id}"}}"#));
        }
        let stats = core.stats();
        assert_eq!((stats.calls_sent, stats.replies_received), (CALLS, CALLS));
        dealer.close(&core, "done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_garbled_reply_and_a_caller_that_gave_up_do_not_disturb_the_others() {
        let core = Arc::new(keyed());
        let server = keyed();
        let (peer, mut router) = peer_router().await;
        let mut dealers = HashMap::new();
        let dealer = dealer_for(&core, &mut dealers, &peer).unwrap();
        // Call 1 gives up before its reply; its request was queued and still goes out.
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            dealer.call(&core, "b", 1, call_frames(&core, 1)),
        )
        .await;
        assert!(gave_up.is_err(), "no reply yet: the caller gave up");
        let (identity, id, _) = read_call(&server, &mut router).await;
        assert_eq!(id, 1);
        let second = {
            let (core, dealer) = (core.clone(), dealer.clone());
            let frames = call_frames(&core, 2);
            tokio::spawn(async move { dealer.call(&core, "b", 2, frames).await })
        };
        let (identity_2, id, _) = read_call(&server, &mut router).await;
        assert_eq!((id, &identity_2), (2, &identity));
        // A garbled reply (its sealed body altered), the late reply of call 1, then call 2's.
        let ok = crate::json::to_raw(&json!({ "id": "forged" })).unwrap();
        let body = server.wire.encode_response(2, &Ok(ok));
        let [mut body, seal] = server.wire.seal(wire::SEAL_RESPONSE, b"", body);
        body[0] ^= 1;
        router
            .send(wire::multipart(vec![identity.clone(), body, seal]))
            .await
            .unwrap();
        reply(&server, &mut router, &identity, 1, "late").await;
        reply(&server, &mut router, &identity, 2, "r2").await;
        let reply = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("call 2 answered")
            .unwrap()
            .unwrap();
        assert_eq!(reply.get(), r#"{"id":"r2"}"#);
        let stats = core.stats();
        assert_eq!(stats.dropped_unsigned, 1);
        assert_eq!(stats.calls_sent, 2);
        dealer.close(&core, "done");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_on_a_lost_connection_fail_at_once() {
        let core = Arc::new(keyed());
        let server = keyed();
        let (peer, mut router) = peer_router().await;
        let mut dealers = HashMap::new();
        let dealer = dealer_for(&core, &mut dealers, &peer).unwrap();
        let mut calls = Vec::new();
        for id in 1..=8 {
            let (core, dealer) = (core.clone(), dealer.clone());
            let frames = call_frames(&core, id);
            calls.push(tokio::spawn(async move {
                dealer.call(&core, "b", id, frames).await
            }));
        }
        for _ in 0..8 {
            read_call(&server, &mut router).await;
        }
        // The peer goes away with every call unanswered.
        drop(router);
        for call in calls {
            let failed = tokio::time::timeout(Duration::from_secs(5), call)
                .await
                .expect("failed well before the request timeout")
                .unwrap();
            assert!(
                matches!(failed, Err(Error::Unavailable { .. })),
                "{failed:?}"
            );
        }
        assert_eq!(core.stats().calls_failed_unavailable, 8);
        dealer.close(&core, "done");
    }
}
