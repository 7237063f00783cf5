//! Events in: what this node wants ([`LocalInterest`]), one SUB task per peer subscribed to it
//! (following its changes, subscribing to sync markers when asked), and the checks of every
//! event received.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::zeromq::{Socket, SocketRecv, SubSocket, ZmqMessage};
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::core::Core;
use super::stats::bump;
use super::wire::{self, Interest, Rejection};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::event::topic_matches;
use crate::{Event, NodeInfo};

/// The topic prefixes this node's SUBs subscribe to, and their version (peers keep the newest
/// they were told).
pub(crate) struct LocalInterest {
    /// Prefixes always subscribed to ([`ZmqMedium::with_subscriptions`](super::ZmqMedium)).
    always: Vec<String>,
    /// What the SUBs subscribe to now: `always` plus the node's interest; the SUB tasks and
    /// the announcer follow it.
    wanted: watch::Sender<Arc<Vec<String>>>,
    /// Bumped with every change of `wanted` (under its lock).
    version: AtomicU64,
}

impl LocalInterest {
    /// Everything (`""`) until the node says otherwise.
    pub(crate) fn new() -> Self {
        Self::with(Vec::new(), vec![String::new()])
    }

    /// `always` (`""` or `"*"` among them: everything), and only those until the node says
    /// otherwise.
    pub(crate) fn only(always: Vec<String>) -> Self {
        let always = collapse(
            always
                .into_iter()
                .map(|p| if p == "*" { String::new() } else { p }),
        );
        Self::with(always.clone(), always)
    }

    fn with(always: Vec<String>, wanted: Vec<String>) -> Self {
        Self {
            always,
            wanted: watch::channel(Arc::new(wanted)).0,
            version: AtomicU64::new(0),
        }
    }

    /// The node's subscribers want `prefixes` (plus the prefixes always wanted). Returns
    /// whether that changed anything.
    pub(crate) fn set(&self, prefixes: Vec<String>) -> bool {
        let mut wanted = collapse(self.always.iter().cloned().chain(prefixes));
        wanted.sort();
        self.wanted.send_if_modified(|now| {
            if **now == wanted {
                false
            } else {
                *now = Arc::new(std::mem::take(&mut wanted));
                self.version.fetch_add(1, Ordering::Relaxed);
                true
            }
        })
    }

    /// What this node wants now, as told to peers.
    pub(crate) fn snapshot(&self) -> Interest {
        let wanted = self.wanted.borrow();
        Interest {
            version: self.version.load(Ordering::Relaxed),
            prefixes: wanted.to_vec(),
        }
    }

    /// Follows the changes.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Vec<String>>> {
        self.wanted.subscribe()
    }

    /// Whether an event on `topic` is wanted here (by dot segments: `power` is not `powers`).
    pub(crate) fn wants(&self, topic: &str) -> bool {
        self.wanted.borrow().iter().any(|p| topic_matches(p, topic))
    }
}

/// Deduplicated (first occurrence kept); `[""]` when `""` (everything) is among them.
fn collapse(prefixes: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for prefix in prefixes {
        if prefix.is_empty() {
            return vec![String::new()];
        }
        if !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out
}

/// One peer's SUB connection.
pub(crate) struct Sub {
    pub(crate) endpoint: String,
    pub(crate) task: JoinHandle<()>,
    /// The peer, to ask it for sync markers and tell it what this node wants.
    pub(crate) peer: NodeInfo,
    pub(crate) commands: mpsc::UnboundedSender<SubCommand>,
}

/// What a sync asks of a SUB task.
pub(crate) enum SubCommand {
    /// Apply the current interest, then subscribe to this marker topic.
    Mark(String),
    /// Unsubscribe from this marker topic.
    Forget(String),
}

impl Sub {
    /// Starts the SUB task of `peer` at `endpoint`.
    pub(crate) fn spawn(core: &Arc<Core>, peer: &NodeInfo, endpoint: &str) -> Self {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_sub(
            core.clone(),
            peer.id.clone(),
            endpoint.to_owned(),
            commands_rx,
        ));
        Self {
            endpoint: endpoint.to_owned(),
            task,
            peer: peer.clone(),
            commands,
        }
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
    let mut interest = core.local.subscribe();
    let mut keys = core.wire.key().map(crate::security::ClusterKey::watch);
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
        let mut subscribed = apply_interest(&core, &mut socket, &mut current, &wanted, &peer).await;
        for mark in &marks {
            subscribed &= subscribe_mark(&core, &mut socket, mark).await;
        }
        let connected = tokio::time::timeout(
            timeout + std::time::Duration::from_millis(200),
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
                            if !apply_interest(&core, &mut socket, &mut current, &wanted, &peer).await {
                                break;
                            }
                        }
                        command = commands.recv() => {
                            let ok = match command {
                                None => return,
                                Some(SubCommand::Mark(mark)) => {
                                    // The interest as of the sync first, then the marker after it.
                                    let wanted = interest.borrow_and_update().clone();
                                    let ok = apply_interest(&core, &mut socket, &mut current, &wanted, &peer).await
                                        && subscribe_mark(&core, &mut socket, &mark).await;
                                    marks.push(mark);
                                    ok
                                }
                                Some(SubCommand::Forget(mark)) => {
                                    marks.retain(|m| *m != mark);
                                    let mut ok = true;
                                    for filter in core.wire.topic_filters(&mark) {
                                        ok &= socket.unsubscribe(&filter).await.is_ok();
                                    }
                                    ok
                                }
                            };
                            if !ok {
                                break;
                            }
                        }
                        () = key_changed(&mut keys) => {
                            // A reloaded keyring: subscribe to the tags of its keys.
                            let wanted = interest.borrow_and_update().clone();
                            let mut ok = apply_interest(&core, &mut socket, &mut current, &wanted, &peer).await;
                            for mark in &marks {
                                ok &= subscribe_mark(&core, &mut socket, mark).await;
                            }
                            if !ok {
                                break;
                            }
                        }
                        message = socket.recv() => match message {
                            Ok(message) => {
                                take_event(&core, &peer, message);
                                // A burst: what has already arrived is taken now, in order.
                                match take_burst(&core, &peer, &mut socket) {
                                    // A full burst: more is likely waiting. Let the tasks
                                    // reading the node's bus run first (a woken task may sit in
                                    // this worker's slot until this task yields), so a fast
                                    // stream does not make them lag.
                                    Ok(taken) if taken >= SUB_BURST => tokio::task::yield_now().await,
                                    Ok(_) => {}
                                    Err(e) => {
                                        tracing::debug!(%peer, error = %e, "SUB receive failed; reconnecting");
                                        break;
                                    }
                                }
                            }
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

/// Waits for a reload of the keyring (forever without one).
async fn key_changed(keys: &mut Option<tokio::sync::watch::Receiver<Arc<crate::security::Ring>>>) {
    match keys {
        Some(keys) => {
            if keys.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
            keys.borrow_and_update();
        }
        None => std::future::pending().await,
    }
}

/// Subscribes to a sync marker topic (its tags under every key, with a cluster key).
async fn subscribe_mark(core: &Core, socket: &mut SubSocket, mark: &str) -> bool {
    for filter in core.wire.topic_filters(mark) {
        if socket.subscribe(&filter).await.is_err() {
            return false;
        }
    }
    true
}

/// The prefixes to subscribe to and to unsubscribe from to go from `current` to `wanted`.
fn changes(current: &[String], wanted: &[String]) -> (Vec<String>, Vec<String>) {
    let add = wanted
        .iter()
        .filter(|p| !current.contains(p))
        .cloned()
        .collect();
    let remove = current
        .iter()
        .filter(|p| !wanted.contains(p))
        .cloned()
        .collect();
    (add, remove)
}

/// Subscribes `socket` to the prefixes of `wanted` it lacks and unsubscribes it from those it
/// no longer needs; `current` tracks what it is subscribed to. False when the socket failed.
async fn apply_interest(
    core: &Core,
    socket: &mut SubSocket,
    current: &mut Vec<String>,
    wanted: &[String],
    peer: &str,
) -> bool {
    // With a cluster key, the topic frames are tags: subscribe to those of every key.
    let mut filters: Vec<String> = Vec::new();
    for filter in wanted.iter().flat_map(|p| core.wire.topic_filters(p)) {
        if !filters.contains(&filter) {
            filters.push(filter);
        }
    }
    let (add, remove) = changes(current, &filters);
    for prefix in add {
        if let Err(e) = socket.subscribe(&prefix).await {
            tracing::debug!(%peer, error = %e, "SUB subscribe failed");
            return false;
        }
        current.push(prefix);
    }
    for prefix in remove {
        if let Err(e) = socket.unsubscribe(&prefix).await {
            tracing::debug!(%peer, error = %e, "SUB unsubscribe failed");
            return false;
        }
        current.retain(|p| *p != prefix);
    }
    true
}

/// Checks one message from a peer's PUB and hands its event to the node (a sync marker to the
/// sync waiting for it).
/// At most this many events are taken from a SUB in one go (the first one included) before
/// the task looks at its other duties (interest changes, sync markers, a reloaded key).
pub(crate) const SUB_BURST: usize = 256;

/// Takes the events that have already arrived on `socket` (up to [`SUB_BURST`] in all, with
/// the one just received), in their order, without waiting for more: a burst is decoded and
/// handed over in one pass of the task instead of one `select!` round per event, and a lone
/// event is never held back (nothing here waits). Returns how many were taken in all; fails
/// when the socket does.
fn take_burst(core: &Core, peer: &str, socket: &mut SubSocket) -> ::zeromq::ZmqResult<usize> {
    let mut taken = 1;
    while taken < SUB_BURST {
        match socket.recv().now_or_never() {
            Some(Ok(message)) => take_event(core, peer, message),
            Some(Err(e)) => return Err(e),
            None => break,
        }
        taken += 1;
    }
    Ok(taken)
}

fn take_event(core: &Core, peer: &str, message: ZmqMessage) {
    let frames = message.into_vec();
    if let Err(rejection) = wire::check_frames(frames.len(), 3, "[topic, body, seal]") {
        return core.reject(peer, "event", &rejection);
    }
    let (frame, body, seal) = (&frames[0], &frames[1], &frames[2]);
    if let Err(rejection) = core.wire.check_size(&[frame, body, seal]) {
        return core.reject(peer, "event", &rejection);
    }
    let Some(body) = core.opened(peer, "event", wire::SEAL_EVENT, frame, body, seal) else {
        return;
    };
    if core.wire.key().is_none() {
        // The topic frame is the topic: markers and events nobody here wants (any more) are
        // told before the body is parsed.
        if core.markers.is_marker(frame) {
            core.markers.arrived(frame);
            return;
        }
        // SUB filtering is by bytes; subscriptions are by dot segments (`power` is not
        // `powers`).
        if let Ok(topic) = std::str::from_utf8(frame)
            && !core.local.wants(topic)
        {
            return;
        }
    }
    let (topic, data, trace) = match wire::decode_event_traced(&body) {
        Ok(event) => event,
        Err(rejection) => return core.reject(peer, "event", &rejection),
    };
    if !core.wire.topic_is(frame, &topic) {
        let rejection =
            Rejection::Malformed("the envelope's topic differs from the topic frame".to_owned());
        return core.reject(peer, "event", &rejection);
    }
    if core.markers.is_marker(topic.as_bytes()) {
        core.markers.arrived(topic.as_bytes());
        return;
    }
    if !core.local.wants(&topic) {
        return;
    }
    let Some(inbound) = core.inbound.get() else {
        return;
    };
    bump(&core.counters.events_received);
    inbound.event_traced(Event { topic, data }, trace);
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use serde_json::{Value, json};

    use super::*;
    use crate::Result;
    use crate::config::NetworkConfig;
    use crate::medium::{Inbound, Request};
    use crate::security::ClusterKey;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_new_node_wants_everything_until_told() {
        let local = LocalInterest::new();
        assert_eq!(local.snapshot().prefixes, strings(&[""]));
        assert!(local.wants("anything.at.all"));
        assert!(local.set(strings(&["power"])));
        assert!(local.wants("power.create.1"));
        assert!(!local.wants("powers.create.1"));
        assert!(!local.wants("chat"));
    }

    #[test]
    fn prefixes_always_wanted_stay_and_star_is_everything() {
        let local = LocalInterest::only(strings(&["audit", "audit"]));
        assert_eq!(local.snapshot().prefixes, strings(&["audit"]));
        local.set(strings(&["power", "chat"]));
        assert_eq!(
            local.snapshot().prefixes,
            strings(&["audit", "chat", "power"])
        );
        local.set(Vec::new());
        assert_eq!(local.snapshot().prefixes, strings(&["audit"]));
        let everything = LocalInterest::only(strings(&["audit", "*"]));
        assert_eq!(everything.snapshot().prefixes, strings(&[""]));
        local.set(strings(&["power", ""]));
        assert_eq!(local.snapshot().prefixes, strings(&[""]));
    }

    #[test]
    fn the_version_moves_only_on_a_change() {
        let local = LocalInterest::new();
        let mut follower = local.subscribe();
        assert_eq!(local.snapshot().version, 0);
        assert!(local.set(strings(&["b", "a"])));
        assert!(follower.has_changed().unwrap());
        follower.borrow_and_update();
        assert!(!local.set(strings(&["a", "b", "a"])));
        assert!(!follower.has_changed().unwrap());
        assert_eq!(local.snapshot().version, 1);
        assert!(local.set(strings(&["a"])));
        assert_eq!(
            local.snapshot(),
            Interest {
                version: 2,
                prefixes: strings(&["a"])
            }
        );
    }

    #[test]
    fn subscription_changes_are_the_difference() {
        let (add, remove) = changes(&strings(&["a", "b"]), &strings(&["b", "c"]));
        assert_eq!(add, strings(&["c"]));
        assert_eq!(remove, strings(&["a"]));
        let (add, remove) = changes(&strings(&["a"]), &strings(&["a"]));
        assert!(add.is_empty() && remove.is_empty());
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<Event>>);

    #[async_trait]
    impl Inbound for Events {
        async fn request(&self, _: Option<String>, _: Request) -> Result<Value> {
            Ok(Value::Null)
        }
        fn event(&self, event: Event) {
            self.0.lock().unwrap().push(event);
        }
    }

    fn event_message(core: &Core, topic: &str, data: Value) -> ZmqMessage {
        let body = core.wire.encode_event("peer", topic, &data).unwrap();
        let frame = core.wire.topic_frame(topic);
        let [body, seal] = core.wire.seal(wire::SEAL_EVENT, &frame, body);
        wire::multipart(vec![frame, body, seal])
    }

    #[test]
    fn events_are_checked_filtered_and_handed_over() {
        let config = NetworkConfig {
            cluster_key: Some(ClusterKey::new("k")),
            ..NetworkConfig::default()
        };
        let core = Core::new(config);
        let events = Arc::new(Events::default());
        let _ = core.inbound.set(events.clone());
        core.local.set(strings(&["power"]));

        take_event(&core, "p", event_message(&core, "power.create.1", json!(1)));
        // Not wanted here (by dot segments): dropped, not counted.
        take_event(
            &core,
            "p",
            event_message(&core, "powers.create.1", json!(2)),
        );
        // Wrong frame count; a topic frame swapped (it is bound to the seal).
        take_event(&core, "p", wire::multipart(vec![b"power".to_vec()]));
        let mut forged = event_message(&core, "power.x", json!(3)).into_vec();
        forged[0] = core.wire.topic_frame("power.y").into();
        take_event(
            &core,
            "p",
            wire::multipart(forged.iter().map(|f| f.to_vec()).collect()),
        );
        // A topic frame that differs from the envelope's (sealed so by a key holder).
        let body = core
            .wire
            .encode_event("peer", "power.a", &json!(4))
            .unwrap();
        let frame = core.wire.topic_frame("power.b");
        let [body, seal] = core.wire.seal(wire::SEAL_EVENT, &frame, body);
        let moved = [frame, body, seal];
        take_event(
            &core,
            "p",
            wire::multipart(moved.iter().map(|f| f.to_vec()).collect()),
        );

        let got = events.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![Event {
                topic: "power.create.1".into(),
                data: json!(1)
            }]
        );
        let stats = core.stats();
        assert_eq!(stats.events_received, 1);
        assert_eq!(stats.dropped_malformed, 2);
        assert_eq!(stats.dropped_unsigned, 1);
    }

    #[test]
    fn a_sync_marker_completes_its_sync_and_is_not_an_event() {
        let core = Core::new(NetworkConfig::default());
        let events = Arc::new(Events::default());
        let _ = core.inbound.set(events.clone());
        let (marker, mut seen) = core.markers.register();
        take_event(&core, "p", event_message(&core, &marker, Value::Null));
        assert_eq!(seen.try_recv(), Ok(()));
        assert!(events.0.lock().unwrap().is_empty());
        assert_eq!(core.stats().events_received, 0);
    }
}
