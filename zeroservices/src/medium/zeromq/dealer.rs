//! Calls out: one DEALER per peer, owned by a supervised task that keeps a `recv()` pending at
//! all times, hands replies to the waiting calls, watches the socket monitor, and on a
//! disconnect, a failed write or a failed connect fails that peer's pending calls at once with
//! `unavailable` and rebuilds the socket with backoff (the `zeromq` DEALER does not reconnect by
//! itself). Callers write their requests on the DEALER's send half themselves (no hop through
//! the task).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::zeromq::{
    DealerRecvHalf, DealerSendHalf, DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend,
    ZmqMessage,
};
use futures::{FutureExt, StreamExt};
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

/// One live DEALER session's send half.
struct Conn {
    /// The send half. Its `send` pushes onto the crate's per-peer write queue (100,000 deep)
    /// and does not wait in practice, so callers take this plain lock briefly instead of an
    /// async one (no parked waiters to wake under contention).
    sender: Mutex<DealerSendHalf>,
    /// A caller's write failed: the session ends.
    lost: Notify,
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
            Ok(conn) => match send_now(&conn, wire::multipart(frames)).await {
                Ok(()) => bump(&core.counters.calls_sent),
                Err(e) => {
                    failed(&format!("node {peer}: send failed: {e}"));
                    conn.lost.notify_one();
                }
            },
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

/// Runs one connected session until the connection is lost; returns why.
async fn session(
    core: &Core,
    peer: &str,
    pending: &Pending,
    conn: &Conn,
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
    tokio::select! {
        why = reader => why,
        why = watcher => why,
        () = conn.lost.notified() => "send failed".to_owned(),
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
}
