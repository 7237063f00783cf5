//! [`Node`]: a member of a cluster. It owns some collections, knows which peer owns the others,
//! routes each request to the right node, and publishes and receives events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::access::Authorizer;
use crate::discovery::Discovery;
use crate::event::EventBus;
use crate::medium::{Endpoints, Medium, NODE_MESSAGE, PROTOCOL_VERSION, Request};
use crate::metrics::{Metrics, Side};
use crate::resource::ResourceInfo;
use crate::service::{ResourceService, Rules, Service};
use crate::store::Store;
use crate::{Collection, Error, Event, EventStream, Limits, Resource, Result};

mod builder;
mod context;
mod directory;
mod health;
mod inbound;
mod shutdown;
mod stores;

pub use builder::NodeBuilder;
pub use context::Context;
pub use health::{Check, Readiness};
pub(crate) use shutdown::Shutdown;

use builder::Hooks;
use directory::Directory;

pub use crate::config::DEFAULT_REQUEST_TIMEOUT;

/// What kind of member a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A node: owns resources, or serves HTTP, or both.
    #[default]
    Node,
    /// A worker: owns nothing, reacts to changes of the resources it watches.
    Worker,
}

/// Everything a node announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Unique per process start.
    pub id: String,
    /// The service name (`power_service`).
    pub name: String,
    /// Node or worker.
    #[serde(default)]
    pub kind: NodeKind,
    /// Protocol version.
    #[serde(default = "default_protocol")]
    pub protocol: u32,
    /// Where to reach it.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// The collections it owns, with their schemas and actions.
    #[serde(default)]
    pub resources: Vec<ResourceInfo>,
    /// The collections a worker watches.
    #[serde(default)]
    pub watches: Vec<String>,
    /// Open beyond its machine without a cluster key (`ZS_INSECURE`): anyone who reaches it
    /// can talk to it. Absent (false) in older announcements, and left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure: bool,
    /// The store behind each collection it owns, by collection name (see
    /// [`Store::fingerprint`]): owners of one collection must share one store. Absent in older
    /// announcements, left out when empty, and absent for a store that has no fingerprint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stores: BTreeMap<String, StoreInfo>,
}

/// The store behind a collection, as a node announces it ([`NodeInfo::stores`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// [`Store::fingerprint`]: the same for every node over the same data.
    pub fingerprint: String,
    /// [`Store::describe`]: what it is, for people (`embedded:data/power/zeroservices.redb`,
    /// `mongodb://host:27017/db`, `memory`).
    #[serde(default)]
    pub store: String,
    /// [`Store::log_id`]: the change log this owner writes for the collection, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_protocol() -> u32 {
    PROTOCOL_VERSION
}

/// A peer as the directory knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// What it announced.
    pub info: NodeInfo,
    /// When it was last heard from.
    pub last_seen: SystemTime,
}

/// Counters of a node, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Requests served for peers.
    pub requests_served: u64,
    /// Requests sent to peers.
    pub requests_sent: u64,
    /// Requests to peers that timed out.
    pub requests_timed_out: u64,
    /// Events lost by subscribers that fell behind.
    pub events_lagged: u64,
    /// Listed documents the typed client skipped because they do not decode into the
    /// resource type (each logged with its id).
    pub documents_skipped: u64,
    /// Peer announcements ignored because they speak another protocol version (each such
    /// peer is logged once).
    pub peers_incompatible: u64,
    /// Copies of mutating requests (same request id or `Idempotency-Key`) answered with the
    /// first reply instead of running again.
    pub requests_deduplicated: u64,
    /// Peers met while running that own a collection this node owns over another store (a
    /// healed partition; each peer and collection counted and logged once).
    pub store_conflicts: u64,
}

pub(crate) struct NodeInner {
    id: String,
    name: String,
    kind: NodeKind,
    medium: Arc<dyn Medium>,
    discovery: Arc<dyn Discovery>,
    store: Arc<dyn Store>,
    services: RwLock<BTreeMap<String, Arc<dyn Service>>>,
    directory: Mutex<Directory>,
    endpoints: Mutex<Endpoints>,
    watches: Vec<String>,
    /// Announced as [`NodeInfo::insecure`].
    insecure: bool,
    /// Announced as [`NodeInfo::stores`]: the stores of the collections it serves.
    stores: Mutex<BTreeMap<String, StoreInfo>>,
    /// Owners met while running over another store than this node's.
    store_conflicts: Mutex<stores::Conflicts>,
    bus: EventBus,
    hooks: Hooks,
    request_timeout: Duration,
    limits: Limits,
    shutdown: Shutdown,
    documents_skipped: AtomicU64,
    started: AtomicBool,
    stopped: AtomicBool,
    requests_served: AtomicU64,
    requests_sent: AtomicU64,
    requests_timed_out: AtomicU64,
    requests_deduplicated: AtomicU64,
    /// Numbers the request ids this node gives its mutating requests.
    next_request: AtomicU64,
    authorizer: Option<Arc<dyn Authorizer>>,
    /// The counters `GET /metrics` shows.
    metrics: Arc<Metrics>,
}

/// A member of a cluster; cheap to clone (a handle).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> zeroservices::Result<()> {
/// use zeroservices::prelude::*;
/// use zeroservices::medium::MemoryCluster;
///
/// #[resource(collection = "power")]
/// pub struct Power { pub value: i64 }
///
/// let cluster = MemoryCluster::new();
/// let owner = Node::builder("power_service").memory(&cluster).resource::<Power>().start().await?;
/// let client = Node::builder("client").memory(&cluster).start().await?;
/// let id = client.collection::<Power>().create(Power { value: 3 }).await?;
/// assert_eq!(owner.collection::<Power>().get(&id).await?.value, 3);
/// # client.stop().await; owner.stop().await; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

impl Node {
    /// Starts building a node named `name`.
    pub fn builder(name: impl Into<String>) -> NodeBuilder {
        NodeBuilder::new(name)
    }

    /// This node's unique id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// This node's service name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The store this node's resources live in.
    pub fn store(&self) -> Arc<dyn Store> {
        self.inner.store.clone()
    }

    /// What this node announces.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.inner.id.clone(),
            name: self.inner.name.clone(),
            kind: self.inner.kind,
            protocol: PROTOCOL_VERSION,
            endpoints: lock(&self.inner.endpoints).clone(),
            resources: read(&self.inner.services)
                .values()
                .map(|s| s.info())
                .collect(),
            watches: self.inner.watches.clone(),
            insecure: self.inner.insecure,
            stores: lock(&self.inner.stores).clone(),
        }
    }

    /// The collections this node owns.
    pub fn local_collections(&self) -> Vec<String> {
        read(&self.inner.services).keys().cloned().collect()
    }

    /// Every collection owned by this node or a peer, sorted.
    pub fn collections(&self) -> Vec<String> {
        let mut names: Vec<String> = self.local_collections();
        let dir = lock(&self.inner.directory);
        for peer in dir.peers.values() {
            names.extend(peer.info.resources.iter().map(|r| r.name.clone()));
        }
        names.sort();
        names.dedup();
        names
    }

    /// The schema and actions of every collection known in the cluster.
    pub fn resource_infos(&self) -> Vec<ResourceInfo> {
        let mut infos: BTreeMap<String, ResourceInfo> = BTreeMap::new();
        for peer in lock(&self.inner.directory).peers.values() {
            for r in &peer.info.resources {
                infos.insert(r.name.clone(), r.clone());
            }
        }
        for s in read(&self.inner.services).values() {
            let info = s.info();
            infos.insert(info.name.clone(), info);
        }
        infos.into_values().collect()
    }

    /// The workers of the cluster that watch `collection`.
    pub fn watchers(&self, collection: &str) -> Vec<NodeInfo> {
        let mut watchers: Vec<NodeInfo> = lock(&self.inner.directory)
            .peers
            .values()
            .filter(|p| p.info.watches.iter().any(|w| w == collection))
            .map(|p| p.info.clone())
            .collect();
        watchers.sort_by(|a, b| a.id.cmp(&b.id));
        watchers
    }

    /// The peers this node knows, sorted by id.
    pub fn peers(&self) -> Vec<Peer> {
        let mut peers: Vec<Peer> = lock(&self.inner.directory)
            .peers
            .values()
            .cloned()
            .collect();
        peers.sort_by(|a, b| a.info.id.cmp(&b.info.id));
        peers
    }

    /// The node's counters.
    pub fn stats(&self) -> NodeStats {
        NodeStats {
            requests_served: self.inner.requests_served.load(Ordering::Relaxed),
            requests_sent: self.inner.requests_sent.load(Ordering::Relaxed),
            requests_timed_out: self.inner.requests_timed_out.load(Ordering::Relaxed),
            requests_deduplicated: self.inner.requests_deduplicated.load(Ordering::Relaxed),
            events_lagged: self.inner.bus.lagged(),
            documents_skipped: self.inner.documents_skipped.load(Ordering::Relaxed),
            peers_incompatible: lock(&self.inner.directory).incompatible_announcements,
            store_conflicts: lock(&self.inner.store_conflicts).count(),
        }
    }

    /// What clients may send to the collections this node owns.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Counts a listed document the typed client could not decode.
    pub(crate) fn count_skipped_document(&self) {
        self.inner.documents_skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters `GET /metrics` shows.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The discovery (its stats, for `GET /metrics`).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn discovery(&self) -> &Arc<dyn Discovery> {
        &self.inner.discovery
    }

    /// The typed client of collection `R`, wherever it lives in the cluster.
    pub fn collection<R: Resource>(&self) -> Collection<R> {
        Collection::new(self.clone())
    }

    /// Owns collection `R` from now on, in the node's store, and tells the cluster.
    ///
    /// # Errors
    /// [`Error::StoreConflict`] when a live peer owns `R` over another store (see
    /// [`NodeBuilder::start`]); the collection is not registered then. [`Error::BadRequest`]
    /// for a name of [`RESERVED_COLLECTIONS`](crate::resource::RESERVED_COLLECTIONS).
    pub async fn register<R: Resource>(&self) -> Result<()> {
        if let Some(why) = crate::resource::reserved_name(R::COLLECTION) {
            return Err(Error::bad_request(why));
        }
        let rules = Rules::of::<R>().map_err(Error::bad_request)?;
        let service: Arc<dyn Service> = Arc::new(ResourceService::<R>::new(
            self.store(),
            self.inner.metrics.clone(),
            Arc::new(rules),
        ));
        service.prepare().await?;
        let info = builder::store_info(R::COLLECTION, service.store()).await;
        if let Some(info) = info {
            let mine = BTreeMap::from([(R::COLLECTION.to_owned(), info)]);
            self.check_stores(&mine).await?;
            lock(&self.inner.stores).extend(mine);
        }
        {
            let mut services = self
                .inner
                .services
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if services.contains_key(R::COLLECTION) {
                return Err(Error::internal(format!(
                    "collection {} registered twice on one node",
                    R::COLLECTION
                )));
            }
            self.inner.metrics.declare(&[service.info()]);
            services.insert(R::COLLECTION.to_owned(), service);
        }
        self.inner.discovery.announce(self.info()).await
    }

    /// Refuses `mine` (collection -> this node's store) when a live peer owns one of them over
    /// another store: see [`stores`].
    async fn check_stores(&self, mine: &BTreeMap<String, StoreInfo>) -> Result<()> {
        let candidates: Vec<(String, NodeInfo, StoreInfo, StoreInfo)> = {
            let dir = lock(&self.inner.directory);
            let mut found = Vec::new();
            for peer in dir.peers.values() {
                for (collection, ours, theirs) in stores::differing(mine, &peer.info) {
                    found.push((
                        collection.to_owned(),
                        peer.info.clone(),
                        ours.clone(),
                        theirs.clone(),
                    ));
                }
            }
            found.sort_by(|a, b| (&a.0, &a.1.id).cmp(&(&b.0, &b.1.id)));
            found
        };
        for (collection, peer, ours, theirs) in candidates {
            let comparison = stores::compare(Some(&ours), Some(&theirs));
            let alive = self.answers(&peer).await;
            if stores::refuses(comparison, alive) {
                let e = stores::conflict(
                    &collection,
                    (&self.inner.id, &self.inner.name),
                    &ours,
                    &peer,
                    &theirs,
                );
                tracing::error!(node = %self.inner.id, "{e}");
                return Err(e);
            }
            tracing::warn!(
                node = %self.inner.id,
                peer = %peer.id,
                collection,
                theirs = %theirs.store,
                "a listed owner of this collection over another store does not answer: taken \
                 for dead, not a conflict"
            );
        }
        Ok(())
    }

    /// Whether `peer` answers a request (any reply, an error included) within the request
    /// timeout, at most 1 s: the liveness test of [`Node::check_stores`].
    async fn answers(&self, peer: &NodeInfo) -> bool {
        // No collection has a `.` in its name: the peer answers `unknown collection` at once,
        // touching no store and calling no hook.
        let ping = Request::new("zeroservices.ping", "get").id("ping");
        let within = self.inner.request_timeout.min(Duration::from_secs(1));
        match tokio::time::timeout(within, self.inner.medium.call_raw(peer, ping)).await {
            Ok(Ok(_)) => true,
            Ok(Err(Error::Unavailable { .. } | Error::Timeout { .. })) | Err(_) => false,
            Ok(Err(_)) => true,
        }
    }

    /// Events whose topic falls under `prefix` (`power`, `power.patch`, `power.patch.42`, or
    /// `*` for all), from every node of the cluster, this one included.
    ///
    /// Peers send a node only the events its subscribers want: the subscription travels to
    /// every peer (a round trip on the network medium). Events a peer publishes before it got
    /// there are not seen; when that matters (subscribe, then act), call
    /// [`Node::sync_subscriptions`] or use [`Node::subscribe_synced`]. Dropping the stream
    /// withdraws the subscription.
    pub fn subscribe(&self, prefix: impl Into<String>) -> EventStream {
        self.inner.bus.subscribe(prefix)
    }

    /// Waits until every subscription made so far is in effect at every peer connected now:
    /// any event those peers publish from then on reaches this node's streams. Bounded by the
    /// request timeout (at most 2 s); a peer that cannot confirm in time is logged at debug and
    /// skipped. Returns at once on the in-process medium, where nothing needs to travel.
    pub async fn sync_subscriptions(&self) {
        self.inner.medium.sync_interest().await;
    }

    /// [`Node::subscribe`], then [`Node::sync_subscriptions`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() {
    /// use futures::StreamExt;
    /// use zeroservices::{Event, Node, medium::MemoryCluster};
    /// let cluster = MemoryCluster::new();
    /// let a = Node::builder("a").memory(&cluster).start().await.unwrap();
    /// let b = Node::builder("b").memory(&cluster).start().await.unwrap();
    /// let mut events = b.subscribe_synced("chat").await;
    /// let hi = Event { topic: "chat.message".into(), data: serde_json::json!("hi") };
    /// a.publish(hi).await;
    /// assert_eq!(events.next().await.unwrap().topic, "chat.message");
    /// # }
    /// ```
    pub async fn subscribe_synced(&self, prefix: impl Into<String>) -> EventStream {
        let events = self.subscribe(prefix);
        self.sync_subscriptions().await;
        events
    }

    /// Publishes an event to this node's subscribers and to the whole cluster.
    pub async fn publish(&self, event: Event) {
        self.publish_in(&event, None).await;
    }

    /// [`Node::publish`] of an event kept elsewhere too (a change log's entry): no copy here,
    /// the local subscribers share it.
    pub(crate) async fn publish_shared(&self, event: &Arc<Event>) {
        self.publish_in(event, Some(event)).await;
    }

    /// Publishes `event`; `shared` is the same event behind an `Arc` when the caller has one.
    async fn publish_in(&self, event: &Event, shared: Option<&Arc<Event>>) {
        self.inner
            .metrics
            .counters
            .events_published
            .fetch_add(1, Ordering::Relaxed);
        // The medium puts this span's context in the event's envelope (subscribers link to it).
        let span = tracing::debug_span!("zs.publish", otel.kind = "producer", topic = %event.topic);
        let publish = async {
            match shared {
                Some(shared) => self.inner.deliver_shared(shared),
                None => self.inner.deliver_local(event),
            }
            if let Err(e) = self.inner.medium.publish(event).await {
                tracing::warn!(topic = %event.topic, error = %e, "event not published to peers");
            }
        };
        tracing::Instrument::instrument(publish, span).await
    }

    /// Hands the medium an entry the store just logged (a medium that keeps the change logs
    /// durably queues it; see [`Medium::logged`]).
    pub(crate) fn log_written(&self, entry: &Arc<Event>) {
        self.inner.medium.logged(entry);
    }

    /// The medium (a follower reads gaps from the durable copy it may keep).
    pub(crate) fn medium(&self) -> &Arc<dyn Medium> {
        &self.inner.medium
    }

    /// Whether anybody wants an event on `topic`: an `on_event` hook or a stream here, or a peer
    /// (as far as the medium knows; one that has not said gets everything).
    pub(crate) fn wants_event(&self, topic: &str) -> bool {
        !self.inner.hooks.event.is_empty()
            || self.inner.bus.has_receivers()
            || self.inner.medium.wants(topic)
    }

    /// Delivers an event to this node's own subscribers only (its websocket clients, its
    /// `subscribe` streams); peers do not see it.
    pub fn emit_local(&self, event: Event) {
        self.inner.deliver_local(&event);
    }

    /// Sends a unicast message to peer `node_id`'s `on_message` hook and waits for its reply.
    pub async fn send(&self, node_id: &str, body: Value) -> Result<Value> {
        let peer = lock(&self.inner.directory)
            .peers
            .get(node_id)
            .map(|p| p.info.clone());
        let Some(peer) = peer else {
            return Err(Error::unavailable(format!("unknown peer {node_id}")));
        };
        let request = Request::new(NODE_MESSAGE, "message").args(body);
        let raw = self.call_peer(&peer, request).await?;
        crate::json::from_raw(&raw)
    }

    /// The authorizer installed with [`NodeBuilder::authorizer`], if any.
    pub fn authorizer(&self) -> Option<&Arc<dyn Authorizer>> {
        self.inner.authorizer.as_ref()
    }

    fn local_service(&self, collection: &str) -> Option<Arc<dyn Service>> {
        read(&self.inner.services).get(collection).cloned()
    }

    /// The store of a collection this node owns.
    pub(crate) fn local_store_of(&self, collection: &str) -> Option<Arc<dyn Store>> {
        self.local_service(collection).map(|s| s.store().clone())
    }

    /// The peers that own `collection`, as the directory lists them.
    pub(crate) fn owners_of(&self, collection: &str) -> Vec<NodeInfo> {
        let mut owners: Vec<NodeInfo> = lock(&self.inner.directory)
            .peers
            .values()
            .filter(|p| p.info.resources.iter().any(|r| r.name == collection))
            .map(|p| p.info.clone())
            .collect();
        owners.sort_by(|a, b| a.id.cmp(&b.id));
        owners
    }

    /// Sends `request` to `peer` and waits for the reply, at most the request timeout.
    pub(crate) async fn call_node(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        let raw = self.call_peer(peer, request).await?;
        crate::json::from_raw(&raw)
    }

    /// Sends a request to the node that owns its collection (this one, or a peer) and waits
    /// for the reply, at most the request timeout.
    pub async fn request(&self, request: Request) -> Result<Value> {
        let (metrics, start) = self.count_call(&request);
        if let Some(service) = self.local_service(&request.collection) {
            let reply = service.handle(self, request).await;
            metrics.side(Side::Owner).record(start, &reply);
            metrics.side(Side::Caller).record(start, &reply);
            return reply;
        }
        let reply = match self.request_remote(request).await {
            Ok(raw) => crate::json::from_raw(&raw),
            Err(e) => Err(e),
        };
        metrics.side(Side::Caller).record(start, &reply);
        reply
    }

    /// The counters of `request`'s collection and action, and the time it starts.
    fn count_call(&self, request: &Request) -> (Arc<crate::metrics::ActionMetrics>, Instant) {
        let metrics = self
            .inner
            .metrics
            .action(&request.collection, &request.action);
        (metrics, Instant::now())
    }

    /// [`Node::request`], the reply as JSON text: a reply from a peer is passed on as it arrived
    /// (the HTTP API answers with it as is; no parse and re-serialisation).
    pub async fn request_raw(&self, request: Request) -> Result<Box<RawValue>> {
        let (metrics, start) = self.count_call(&request);
        if let Some(service) = self.local_service(&request.collection) {
            let reply = service.handle_raw(self, request).await;
            metrics.side(Side::Owner).record(start, &reply);
            metrics.side(Side::Caller).record(start, &reply);
            return reply;
        }
        let reply = self.request_remote(request).await;
        metrics.side(Side::Caller).record(start, &reply);
        reply
    }

    /// [`Node::request`], the reply deserialised into `T` (from a peer: straight from its JSON
    /// text).
    pub async fn request_as<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        let (metrics, start) = self.count_call(&request);
        if let Some(service) = self.local_service(&request.collection) {
            let reply = service.handle(self, request).await;
            metrics.side(Side::Owner).record(start, &reply);
            metrics.side(Side::Caller).record(start, &reply);
            return crate::json::from_value(reply?);
        }
        let reply = self.request_remote(request).await;
        metrics.side(Side::Caller).record(start, &reply);
        crate::json::from_raw(&reply?)
    }

    /// How long a request waits for its owner.
    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// A request id of this node's: `<node id>.<n>`, unique in the cluster.
    pub(crate) fn new_request_id(&self) -> String {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.inner.id)
    }

    /// Counts a copy of a request answered with the first reply.
    pub(crate) fn count_replayed_reply(&self) {
        self.inner
            .requests_deduplicated
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn request_remote(&self, mut request: Request) -> Result<Box<RawValue>> {
        let span = tracing::debug_span!(
            "zs.call",
            otel.kind = "client",
            collection = %request.collection,
            action = %request.action,
        );
        // The owner continues this span's trace (nothing computed when nobody listens).
        if request.trace.is_none() {
            request.trace = crate::telemetry::context_of(&span).map(Box::new);
        }
        tracing::Instrument::instrument(self.request_remote_in(request), span).await
    }

    async fn request_remote_in(&self, mut request: Request) -> Result<Box<RawValue>> {
        // A request that may change something gets an id, so the owner runs it once even if
        // it arrives twice (a fail-over below, a retry): `<node id>.<n>`.
        if request.request_id.is_none() && !crate::protocol::Call::is_read(&request.action) {
            request.request_id = Some(self.new_request_id());
        }
        let collection = request.collection.clone();
        let owners = lock(&self.inner.directory).pick(&collection);
        if owners.is_empty() {
            return Err(self.no_owner(&collection));
        }
        let mut last = None;
        // A medium that balances among the owners itself (NATS) gets the request first; when no
        // owner takes it there (`Unavailable`), the owners this node knows are called in turn.
        if self.inner.medium.balances() {
            let medium = self.inner.medium.clone();
            let this = request.clone();
            match self
                .timed(&collection, async move { medium.call_any(this).await })
                .await
            {
                Err(e @ Error::Unavailable { .. }) => {
                    tracing::debug!(%collection, error = %e, "no owner took the request, calling them in turn");
                    last = Some(e);
                }
                other => return other,
            }
        }
        let mut request = Some(request);
        for (i, owner) in owners.iter().enumerate() {
            // Only a fail-over needs a copy of the request.
            let Some(this) = (if i + 1 < owners.len() {
                request.clone()
            } else {
                request.take()
            }) else {
                break;
            };
            match self.call_peer(owner, this).await {
                // The owner cannot be reached: try the next one, if any.
                Err(e @ Error::Unavailable { .. }) => {
                    tracing::debug!(peer = %owner.id, error = %e, "owner unreachable, trying next");
                    last = Some(e);
                }
                other => return other,
            }
        }
        // Every owner was unreachable; if they have all left meanwhile, say so.
        if lock(&self.inner.directory).owners(&collection).is_empty() {
            return Err(self.no_owner(&collection));
        }
        Err(last.unwrap_or_else(|| self.no_owner(&collection)))
    }

    fn no_owner(&self, collection: &str) -> Error {
        if lock(&self.inner.directory).was_known(collection) {
            Error::OwnerGone {
                collection: collection.to_owned(),
            }
        } else {
            Error::unknown_collection(collection)
        }
    }

    async fn call_peer(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        let collection = request.collection.clone();
        self.timed(&collection, self.inner.medium.call_raw(peer, request))
            .await
    }

    /// A call to a peer, counted, at most the request timeout.
    async fn timed(
        &self,
        collection: &str,
        call: impl std::future::Future<Output = Result<Box<RawValue>>>,
    ) -> Result<Box<RawValue>> {
        let collection = collection.to_owned();
        self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.request_timeout;
        match tokio::time::timeout(timeout, call).await {
            Ok(reply) => reply,
            Err(_) => {
                self.inner
                    .requests_timed_out
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::Timeout {
                    collection,
                    after_ms: timeout.as_millis() as u64,
                })
            }
        }
    }

    /// Waits until some node of the cluster owns `collection`, at most `timeout`.
    pub async fn wait_for_collection(&self, collection: &str, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.collections().iter().any(|c| c == collection) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unknown_collection(collection));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the node, draining what is in flight. Idempotent.
    ///
    /// In order: HTTP servers of this node stop accepting, requests from peers that arrive now
    /// are refused (`Unavailable`: the caller tries another owner), worker rules start no new
    /// handler; the node says goodbye to the cluster; it waits for in-flight HTTP requests,
    /// requests from peers and worker handlers, at most the shutdown timeout
    /// (`ZS_SHUTDOWN_TIMEOUT_MS`, default 5 s; what still runs then is dropped); then it closes
    /// its medium.
    pub async fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let shutdown = &self.inner.shutdown;
        shutdown.begin();
        let id = &self.inner.id;
        bounded_step(id, "discovery", self.inner.discovery.stop()).await;
        shutdown.drain().await;
        bounded_step(id, "medium", self.inner.medium.stop()).await;
        tracing::info!(node = %id, "node stopped");
    }

    /// Resolves when the node starts stopping ([`Node::stop`], or a signal in
    /// [`App`](crate::App)): for work of your own that should end with the node.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.inner.shutdown.stopping().clone().cancelled_owned()
    }

    /// How the node stops: its tokens, the work it waits for and the timeout.
    pub(crate) fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }
}

/// The longest [`Node::stop`] waits for the discovery or the medium to close (each); past it
/// the step is left behind with a warning naming it, so that a stop never hangs.
const STOP_STEP_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs one step of [`Node::stop`] for at most [`STOP_STEP_TIMEOUT`].
async fn bounded_step(node: &str, step: &str, work: impl Future<Output = ()>) {
    if tokio::time::timeout(STOP_STEP_TIMEOUT, work).await.is_err() {
        tracing::warn!(
            node,
            step,
            timeout_ms = STOP_STEP_TIMEOUT.as_millis() as u64,
            "stopping: this step did not finish in time; the node stops without waiting for it"
        );
    }
}

impl NodeInner {
    fn deliver_local(&self, event: &Event) {
        self.count_and_hook(event);
        self.bus.send(event);
    }

    /// [`deliver_local`](Self::deliver_local) of an event kept elsewhere too: the bus shares it.
    fn deliver_shared(&self, event: &Arc<Event>) {
        self.count_and_hook(event);
        self.bus.send_shared(event);
    }

    /// [`deliver_local`](Self::deliver_local) of an event received from a peer, which is
    /// handed over as is instead of copied into the bus.
    fn deliver_received(&self, event: Event) {
        self.count_and_hook(&event);
        self.bus.send_owned(event);
    }

    fn count_and_hook(&self, event: &Event) {
        self.metrics
            .counters
            .events_delivered
            .fetch_add(1, Ordering::Relaxed);
        for hook in &self.hooks.event {
            hook(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::NodeInfo;
    use crate::medium::{Inbound, MemoryCluster, Request};

    #[crate::resource(collection = "small")]
    struct Small {
        n: i64,
    }

    /// A service's future is boxed and so copied once per request: the ones every get and
    /// create builds stay small (the rare calls' larger states are boxed only when taken).
    /// Before they were: `handle_raw` 7,200 bytes, `handle` 6,632, a peer's request 2,680.
    #[tokio::test]
    async fn the_futures_of_gets_and_creates_stay_small() {
        let cluster = MemoryCluster::new();
        let node = super::Node::builder("small_service")
            .memory(&cluster)
            .resource::<Small>()
            .start()
            .await
            .unwrap();
        let service = node.local_service("small").unwrap();
        let get = Request::new("small", "get").id("x");
        let create =
            Request::new("small", "create").args(serde_json::json!({"resource_data": {"n": 1}}));
        let raw = service.handle_raw(&node, get.clone());
        let plain = service.handle(&node, create);
        let inbound = super::inbound::Handle::new(&node.inner);
        let served = inbound.request_raw(None, get);
        // `size_of_val` of each boxed `dyn Future`: its real size, read from its vtable.
        for (what, size, most) in [
            ("handle_raw", std::mem::size_of_val(&*raw), 1024),
            ("handle", std::mem::size_of_val(&*plain), 4096),
            ("a peer's request", std::mem::size_of_val(&*served), 2048),
        ] {
            assert!(size <= most, "{what}: {size} bytes");
        }
        // They still run.
        assert_eq!(raw.await.unwrap_err().kind(), "not_found");
        assert!(plain.await.is_ok());
        drop(served);
        node.stop().await;
    }

    /// `insecure` is left out when false, so a secure node announces what it did before, and an
    /// older announcement (without it) reads as secure.
    #[test]
    fn insecure_is_optional_in_announcements() {
        let old: NodeInfo = serde_json::from_str(r#"{"id": "a-1", "name": "a"}"#).unwrap();
        assert!(!old.insecure);
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("insecure"), "{text}");
        let open = NodeInfo {
            insecure: true,
            ..old
        };
        let text = serde_json::to_string(&open).unwrap();
        assert!(text.contains(r#""insecure":true"#), "{text}");
        let back: NodeInfo = serde_json::from_str(&text).unwrap();
        assert_eq!(back, open);
    }
}
