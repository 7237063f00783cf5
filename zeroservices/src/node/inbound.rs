//! The node's inbound side: what its medium and discovery call — requests from peers (each
//! counted as work in flight, which a stopping node waits for), events, peers joining and
//! leaving.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{Instrument, Span};

use super::{Node, NodeInner, lock, read, stores};
use crate::changes::{LogAfter, LogPage, Retention};
use crate::discovery::{PeerEvent, PeerSink};
use crate::medium::{Inbound, NODE_MESSAGE, PROTOCOL_VERSION, Request};
use crate::metrics::Side;
use crate::protocol::BuiltIn;
use crate::telemetry::TraceParent;
use crate::{Error, Event, Result};

/// What the medium and discovery hold: a weak handle, so a dropped node is freed.
pub(super) struct Handle(Weak<NodeInner>);

impl Handle {
    pub(super) fn new(inner: &Arc<NodeInner>) -> Self {
        Self(Arc::downgrade(inner))
    }

    fn node(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }

    /// The node, and a token that counts this request as work in flight until it is answered
    /// (a stopping node waits for it); `Unavailable` once the node is stopping or gone, so the
    /// caller tries another owner.
    fn serving(&self) -> Result<(Node, TaskTrackerToken)> {
        let node = self
            .node()
            .ok_or_else(|| Error::unavailable("node is stopping"))?;
        let token = node
            .inner
            .shutdown
            .enter()
            .ok_or_else(|| Error::unavailable("node is stopping"))?;
        Ok((node, token))
    }
}

#[async_trait]
impl Inbound for Handle {
    async fn request(&self, from: Option<String>, mut request: Request) -> Result<Value> {
        let (node, _serving) = self.serving()?;
        let span = serve_span(&mut request);
        serve(&node, from, request).instrument(span).await
    }

    fn serve_inline(&self, request: &Request) -> bool {
        // Polled once in place: a read, a create (its document is the request body, at most
        // 64 KiB here: larger bodies never reach the ROUTER task's parser) and a delete do
        // bounded work before the store call, and a store that waits (an embedded store's
        // durable write, MongoDB) moves the rest to a task of its own. Lists, patches (a whole
        // stored document is copied and checked), actions and message hooks may take a while:
        // their own task at once.
        BuiltIn::from_name(&request.action).is_some_and(BuiltIn::is_cheap)
            && request.collection != NODE_MESSAGE
    }

    async fn request_raw(
        &self,
        from: Option<String>,
        mut request: Request,
    ) -> Result<Box<RawValue>> {
        let (node, _serving) = self.serving()?;
        let span = serve_span(&mut request);
        serve_raw(node, from, request).instrument(span).await
    }

    fn event(&self, event: Event) {
        self.event_traced(event, None);
    }

    fn event_traced(&self, event: Event, trace: Option<TraceParent>) {
        if let Some(node) = self.node() {
            let span = tracing::debug_span!("zs.deliver", topic = %event.topic);
            if let Some(trace) = &trace {
                crate::telemetry::add_link(&span, trace, "published");
            }
            let _entered = span.enter();
            node.inner.deliver_received(event);
        }
    }

    fn change_logs(&self) -> Vec<(String, String)> {
        let Some(node) = self.node() else {
            return Vec::new();
        };
        if !node.limits().change_log.enabled() {
            return Vec::new();
        }
        node.local_collections()
            .into_iter()
            .filter_map(|c| {
                let log = node.local_store_of(&c)?.log_id()?;
                Some((c, log))
            })
            .collect()
    }

    async fn read_change_log(
        &self,
        collection: &str,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        let Some(store) = self.node().and_then(|n| n.local_store_of(collection)) else {
            return Ok(None);
        };
        store
            .read_log(collection, log, LogAfter::Seq(after), limit)
            .await
    }

    fn change_log_retention(&self) -> Retention {
        self.node()
            .map_or_else(Retention::default, |n| n.limits().change_log)
    }
}

/// The owning side's span of a request from a peer: a child of the caller's span when the
/// envelope carried its context (taken out of the request).
fn serve_span(request: &mut Request) -> Span {
    let trace = request.trace.take();
    let span = tracing::debug_span!(
        "zs.serve",
        otel.kind = "server",
        collection = %request.collection,
        action = %request.action,
    );
    if let Some(trace) = &trace {
        crate::telemetry::set_parent(&span, trace);
    }
    span
}

/// [`Inbound::request_raw`] in its span.
async fn serve_raw(node: Node, from: Option<String>, request: Request) -> Result<Box<RawValue>> {
    match node.local_service(&request.collection) {
        Some(service) => {
            node.inner.requests_served.fetch_add(1, Ordering::Relaxed);
            let metrics = node
                .inner
                .metrics
                .action(&request.collection, &request.action);
            let start = std::time::Instant::now();
            let reply = service.handle_raw(&node, request).await;
            metrics.side(Side::Owner).record(start, &reply);
            reply
        }
        // Messages, unknown collections: the plain path.
        None => {
            // Boxed: this path's future is large, the service path above is the hot one.
            let value = Box::pin(serve(&node, from, request)).await?;
            crate::json::to_raw(&value)
        }
    }
}

/// Serves a request from a peer: a message to the `on_message` hook, or a request to a
/// collection this node owns.
async fn serve(node: &Node, from: Option<String>, request: Request) -> Result<Value> {
    node.inner.requests_served.fetch_add(1, Ordering::Relaxed);
    if request.collection == NODE_MESSAGE {
        return match node.inner.hooks.message.clone() {
            Some(hook) => hook(from, request.args).await,
            None => Err(Error::bad_request("this node takes no messages")),
        };
    }
    if request.collection == crate::changes::serve::CHANGES {
        // Boxed (as the claim below): large futures that every other request would carry.
        return Box::pin(crate::changes::serve::serve(node, request.args)).await;
    }
    if request.collection == crate::worker::CLAIMS {
        return Box::pin(crate::worker::serve_claim(
            node,
            &request.action,
            request.args,
        ))
        .await;
    }
    let local = read(&node.inner.services).get(&request.collection).cloned();
    let metrics = node
        .inner
        .metrics
        .action(&request.collection, &request.action);
    let start = std::time::Instant::now();
    let reply = match local {
        Some(service) => service.handle(node, request).await,
        None => Err(Error::unknown_collection(request.collection)),
    };
    metrics.side(Side::Owner).record(start, &reply);
    reply
}

impl PeerSink for Handle {
    fn peer_event(&self, event: PeerEvent) {
        let Some(node) = self.node() else { return };
        let inner = &node.inner;
        match event {
            PeerEvent::Seen(info) => {
                if info.id == inner.id {
                    return;
                }
                if info.protocol != PROTOCOL_VERSION {
                    if lock(&inner.directory).incompatible(&info) {
                        tracing::warn!(
                            node = %inner.id,
                            peer = %info.id,
                            name = %info.name,
                            protocol = info.protocol,
                            ours = PROTOCOL_VERSION,
                            "peer speaks another protocol version: ignored"
                        );
                    }
                    return;
                }
                check_running_stores(inner, &info);
                inner.metrics.declare(&info.resources);
                let joined = lock(&inner.directory).seen(&info);
                if joined {
                    inner
                        .metrics
                        .counters
                        .peers_joined
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %inner.id, peer = %info.id, name = %info.name, "peer joined");
                    for hook in &inner.hooks.join {
                        hook(&info);
                    }
                    let medium = inner.medium.clone();
                    spawn_or_skip(async move { medium.peer_joined(&info).await });
                }
            }
            PeerEvent::Left { id, reason } => {
                let removed = lock(&inner.directory).left(&id);
                if let Some(peer) = removed {
                    inner
                        .metrics
                        .counters
                        .peers_left
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(node = %inner.id, peer = %id, ?reason, "peer left");
                    for hook in &inner.hooks.leave {
                        hook(&peer.info, reason);
                    }
                    let medium = inner.medium.clone();
                    spawn_or_skip(async move { medium.peer_left(&id).await });
                }
            }
        }
    }
}

/// A peer that owns one of this node's collections over another store, met while running (a
/// healed partition): an error logged and counted once per peer and collection; both keep
/// serving (see `stores`).
fn check_running_stores(inner: &NodeInner, info: &crate::NodeInfo) {
    if info.stores.is_empty() {
        return;
    }
    let mine = lock(&inner.stores).clone();
    for (collection, ours, theirs) in stores::differing(&mine, info) {
        if lock(&inner.store_conflicts).record(&info.id, collection) {
            tracing::error!(
                node = %inner.id,
                peer = %info.id,
                name = %info.name,
                collection,
                ours = %ours.store,
                our_fingerprint = %ours.fingerprint,
                theirs = %theirs.store,
                their_fingerprint = %theirs.fingerprint,
                "another owner of this collection uses another store: requests are split \
                 between two data sets. Point both at the same ZS_STORE, or stop one of them"
            );
        }
    }
}

/// Runs `fut` on the current tokio runtime; outside one (a node dropped after its runtime)
/// there is nothing left to connect, so it is skipped.
fn spawn_or_skip(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}
