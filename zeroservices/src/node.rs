//! [`Node`]: a member of a cluster. It owns some collections, knows which peer owns the others,
//! routes each request to the right node, and publishes and receives events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::NetworkConfig;
use crate::discovery::udp::UdpDiscovery;
use crate::discovery::{Discovery, LeaveReason, PeerEvent, PeerSink};
use crate::event::EventBus;
use crate::medium::zeromq::ZmqMedium;
use crate::medium::{
    Endpoints, Inbound, Medium, MemoryCluster, NODE_MESSAGE, PROTOCOL_VERSION, Request,
};
use crate::resource::ResourceInfo;
use crate::service::{ResourceService, Service};
use crate::store::{MemoryStore, Store};
use crate::{Collection, Error, Event, EventStream, Limits, Resource, Result};

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
}

fn default_protocol() -> u32 {
    PROTOCOL_VERSION
}

/// The most collection names a directory remembers as "owned by someone once".
const MAX_KNOWN_COLLECTIONS: usize = 65_536;

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
}

type PeerHook = Arc<dyn Fn(&NodeInfo) + Send + Sync>;
type LeaveHook = Arc<dyn Fn(&NodeInfo, LeaveReason) + Send + Sync>;
type MessageHook =
    Arc<dyn Fn(Option<String>, Value) -> BoxFuture<'static, Result<Value>> + Send + Sync>;
type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

#[derive(Default, Clone)]
struct Hooks {
    join: Vec<PeerHook>,
    leave: Vec<LeaveHook>,
    message: Option<MessageHook>,
    event: Vec<EventHook>,
}

#[derive(Default)]
struct Directory {
    peers: HashMap<String, Peer>,
    /// Every collection ever owned by someone: tells "owner gone" from "unknown".
    known: HashSet<String>,
    /// Round-robin cursor per collection.
    cursor: HashMap<String, usize>,
    /// The peers' infos, shared: routing hands these out instead of copying the schemas.
    shared: HashMap<String, Arc<NodeInfo>>,
}

impl Directory {
    fn owners(&self, collection: &str) -> Vec<&NodeInfo> {
        let mut owners: Vec<&NodeInfo> = self
            .peers
            .values()
            .filter(|p| p.info.resources.iter().any(|r| r.name == collection))
            .map(|p| &p.info)
            .collect();
        owners.sort_by(|a, b| a.id.cmp(&b.id));
        owners
    }

    /// The owners of `collection` in round-robin order, starting with the next one's turn.
    fn pick(&mut self, collection: &str) -> Vec<Arc<NodeInfo>> {
        let mut owners: Vec<Arc<NodeInfo>> = self
            .shared
            .values()
            .filter(|info| info.resources.iter().any(|r| r.name == collection))
            .cloned()
            .collect();
        if owners.is_empty() {
            return owners;
        }
        owners.sort_by(|a, b| a.id.cmp(&b.id));
        let cursor = self.cursor.entry(collection.to_owned()).or_default();
        let start = *cursor % owners.len();
        *cursor = cursor.wrapping_add(1);
        owners.rotate_left(start);
        owners
    }
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
    bus: EventBus,
    hooks: Hooks,
    request_timeout: Duration,
    limits: Limits,
    documents_skipped: AtomicU64,
    started: AtomicBool,
    stopped: AtomicBool,
    requests_served: AtomicU64,
    requests_sent: AtomicU64,
    requests_timed_out: AtomicU64,
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

/// Makes the service of one collection, given the node's store.
type Registration = Box<dyn FnOnce(&Arc<dyn Store>) -> Arc<dyn Service> + Send>;

/// Builds and starts a [`Node`].
pub struct NodeBuilder {
    name: String,
    kind: NodeKind,
    medium: Option<Arc<dyn Medium>>,
    discovery: Option<Arc<dyn Discovery>>,
    store: Option<Arc<dyn Store>>,
    registrations: Vec<Registration>,
    watches: Vec<String>,
    hooks: Hooks,
    request_timeout: Duration,
    limits: Option<Limits>,
}

impl NodeBuilder {
    fn new(name: impl Into<String>) -> Self {
        // A malformed value is reported where configuration is read (`NetworkConfig`, the
        // `#[service]` flags); a bare builder falls back to the default.
        let request_timeout =
            crate::config::request_timeout_from_env().unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        Self {
            name: name.into(),
            kind: NodeKind::Node,
            medium: None,
            discovery: None,
            store: None,
            registrations: Vec::new(),
            watches: Vec::new(),
            hooks: Hooks::default(),
            request_timeout,
            limits: None,
        }
    }

    /// Joins an in-process cluster (medium and discovery).
    pub fn memory(self, cluster: &MemoryCluster) -> Self {
        self.medium(cluster.medium()).discovery(cluster.discovery())
    }

    /// Joins the network cluster: the ZeroMQ medium and UDP discovery (multicast, or the static
    /// `peers`), with this configuration's timeouts and cluster key.
    pub fn network(self, config: NetworkConfig) -> Self {
        self.network_with(config, Vec::new())
    }

    /// Like [`NodeBuilder::network`], also receiving the events under `subscriptions` whether or
    /// not anything on this node subscribes to them (`""` is every event). A node otherwise
    /// receives from its peers only the events its subscribers want (see [`Node::subscribe`]).
    pub fn network_with(mut self, config: NetworkConfig, subscriptions: Vec<String>) -> Self {
        self.request_timeout = config.request_timeout;
        let medium = ZmqMedium::new(config.clone()).with_subscriptions(subscriptions);
        self.medium(medium).discovery(UdpDiscovery::new(config))
    }

    /// Joins the network cluster configured by the `ZS_*` environment variables.
    pub fn network_from_env(self) -> Result<Self> {
        Ok(self.network(NetworkConfig::from_env()?))
    }

    /// Uses this medium.
    pub fn medium(mut self, medium: impl Medium) -> Self {
        self.medium = Some(Arc::new(medium));
        self
    }

    /// Uses this discovery.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Arc::new(discovery));
        self
    }

    /// Stores the node's resources here (default: in memory).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Stores the node's resources here (default: in memory), shared.
    pub fn shared_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Owns collection `R` on this node, in the node's store.
    pub fn resource<R: Resource>(mut self) -> Self {
        self.registrations.push(Box::new(|store| {
            Arc::new(ResourceService::<R>::new(store.clone()))
        }));
        self
    }

    /// Owns collection `R` on this node, in its own store.
    pub fn resource_in<R: Resource>(mut self, store: Arc<dyn Store>) -> Self {
        self.registrations.push(Box::new(move |_| {
            Arc::new(ResourceService::<R>::new(store))
        }));
        self
    }

    /// Announces this node as a worker.
    pub fn kind(mut self, kind: NodeKind) -> Self {
        self.kind = kind;
        self
    }

    /// Announces that this node watches collection `name` (workers).
    pub fn watch(mut self, name: impl Into<String>) -> Self {
        self.watches.push(name.into());
        self
    }

    /// How long a request waits for the owner (default 5 s, or `ZS_REQUEST_TIMEOUT_MS`).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// What clients may send to the collections this node owns (default: [`Limits::from_env`],
    /// which [`NodeBuilder::start`] reads, failing on a malformed variable).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Called when a peer joins (the original's `on_peer_join`).
    pub fn on_peer_join(mut self, hook: impl Fn(&NodeInfo) + Send + Sync + 'static) -> Self {
        self.hooks.join.push(Arc::new(hook));
        self
    }

    /// Called when a peer leaves, with the reason (the original's `on_peer_leave`).
    pub fn on_peer_leave(
        mut self,
        hook: impl Fn(&NodeInfo, LeaveReason) + Send + Sync + 'static,
    ) -> Self {
        self.hooks.leave.push(Arc::new(hook));
        self
    }

    /// Answers unicast messages sent with [`Node::send`] (the original's `on_message`).
    pub fn on_message<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Option<String>, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value>> + Send + 'static,
    {
        self.hooks.message = Some(Arc::new(move |from, body| Box::pin(hook(from, body))));
        self
    }

    /// Called for every event this node sees, its own included (the original's `on_event`).
    pub fn on_event(mut self, hook: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.hooks.event.push(Arc::new(hook));
        self
    }

    /// Starts the medium, registers the resources, and announces the node.
    pub async fn start(self) -> Result<Node> {
        let (Some(medium), Some(discovery)) = (self.medium, self.discovery) else {
            return Err(Error::internal(
                "a node needs a medium and a discovery: call .memory(&cluster) or .medium(..).discovery(..)",
            ));
        };
        let limits = match self.limits {
            Some(limits) => limits,
            None => Limits::from_env()?,
        };
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let id = format!("{}-{}", self.name, &crate::store::new_id()[..12]);
        let mut services = BTreeMap::new();
        for register in self.registrations {
            let service = register(&store);
            let info = service.info();
            service.prepare().await?;
            if services.insert(info.name.clone(), service).is_some() {
                return Err(Error::internal(format!(
                    "collection {} registered twice on one node",
                    info.name
                )));
            }
        }
        let inner = Arc::new(NodeInner {
            id,
            name: self.name,
            kind: self.kind,
            medium,
            discovery,
            store,
            services: RwLock::new(services),
            directory: Mutex::new(Directory::default()),
            endpoints: Mutex::new(Endpoints::new()),
            watches: self.watches,
            bus: EventBus::new(4096),
            hooks: self.hooks,
            request_timeout: self.request_timeout,
            limits,
            documents_skipped: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            requests_served: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            requests_timed_out: AtomicU64::new(0),
        });
        let node = Node { inner };
        // Peers send this node only the events its subscribers want: the medium follows the
        // bus's interest from now on. An `on_event` hook wants everything, always.
        let interest = node.inner.bus.interest().clone();
        if !node.inner.hooks.event.is_empty() {
            interest.add("*");
        }
        let medium = node.inner.medium.clone();
        medium.set_interest(interest.prefixes());
        interest.on_change(move |prefixes| medium.set_interest(prefixes));
        let handle = Arc::new(Handle(Arc::downgrade(&node.inner)));
        let endpoints = node
            .inner
            .medium
            .start(&node.inner.id, handle.clone())
            .await?;
        *lock(&node.inner.endpoints) = endpoints;
        node.inner.discovery.start(node.info(), handle).await?;
        node.inner.started.store(true, Ordering::SeqCst);
        tracing::info!(
            node = %node.inner.id,
            medium = %node.inner.medium.describe(),
            store = %node.inner.store.describe(),
            resources = ?node.local_collections(),
            "node started"
        );
        Ok(node)
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
            events_lagged: self.inner.bus.lagged(),
            documents_skipped: self.inner.documents_skipped.load(Ordering::Relaxed),
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

    /// The typed client of collection `R`, wherever it lives in the cluster.
    pub fn collection<R: Resource>(&self) -> Collection<R> {
        Collection::new(self.clone())
    }

    /// Owns collection `R` from now on, in the node's store, and tells the cluster.
    pub async fn register<R: Resource>(&self) -> Result<()> {
        let service: Arc<dyn Service> = Arc::new(ResourceService::<R>::new(self.store()));
        service.prepare().await?;
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
            services.insert(R::COLLECTION.to_owned(), service);
        }
        self.inner.discovery.announce(self.info()).await
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
        self.inner.deliver_local(&event);
        if let Err(e) = self.inner.medium.publish(&event).await {
            tracing::warn!(topic = %event.topic, error = %e, "event not published to peers");
        }
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
        crate::__private::from_raw(&raw)
    }

    fn local_service(&self, collection: &str) -> Option<Arc<dyn Service>> {
        read(&self.inner.services).get(collection).cloned()
    }

    /// Sends a request to the node that owns its collection (this one, or a peer) and waits
    /// for the reply, at most the request timeout.
    pub async fn request(&self, request: Request) -> Result<Value> {
        if let Some(service) = self.local_service(&request.collection) {
            return service.handle(self, request).await;
        }
        let raw = self.request_remote(request).await?;
        crate::__private::from_raw(&raw)
    }

    /// [`Node::request`], the reply as JSON text: a reply from a peer is passed on as it arrived
    /// (the HTTP API answers with it as is; no parse and re-serialisation).
    pub async fn request_raw(&self, request: Request) -> Result<Box<RawValue>> {
        if let Some(service) = self.local_service(&request.collection) {
            return service.handle_raw(self, request).await;
        }
        self.request_remote(request).await
    }

    /// [`Node::request`], the reply deserialised into `T` (from a peer: straight from its JSON
    /// text).
    pub async fn request_as<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        if let Some(service) = self.local_service(&request.collection) {
            let value = service.handle(self, request).await?;
            return crate::__private::from_value(value);
        }
        let raw = self.request_remote(request).await?;
        crate::__private::from_raw(&raw)
    }

    async fn request_remote(&self, request: Request) -> Result<Box<RawValue>> {
        let collection = request.collection.clone();
        let owners = lock(&self.inner.directory).pick(&collection);
        if owners.is_empty() {
            return Err(self.no_owner(&collection));
        }
        let mut last = None;
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
        if lock(&self.inner.directory).known.contains(collection) {
            Error::OwnerGone {
                collection: collection.to_owned(),
            }
        } else {
            Error::unknown_collection(collection)
        }
    }

    async fn call_peer(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        let collection = request.collection.clone();
        self.inner.requests_sent.fetch_add(1, Ordering::Relaxed);
        let timeout = self.inner.request_timeout;
        match tokio::time::timeout(timeout, self.inner.medium.call_raw(peer, request)).await {
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

    /// Says goodbye to the cluster and stops serving. Idempotent.
    pub async fn stop(&self) {
        if self.inner.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.discovery.stop().await;
        self.inner.medium.stop().await;
        tracing::info!(node = %self.inner.id, "node stopped");
    }
}

impl NodeInner {
    fn deliver_local(&self, event: &Event) {
        for hook in &self.hooks.event {
            hook(event);
        }
        self.bus.send(event);
    }
}

/// What the medium and discovery hold: a weak handle, so a dropped node is freed.
struct Handle(Weak<NodeInner>);

impl Handle {
    fn node(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

#[async_trait]
impl Inbound for Handle {
    async fn request(&self, from: Option<String>, request: Request) -> Result<Value> {
        let Some(node) = self.node() else {
            return Err(Error::unavailable("node is stopping"));
        };
        node.inner.requests_served.fetch_add(1, Ordering::Relaxed);
        if request.collection == NODE_MESSAGE {
            return match node.inner.hooks.message.clone() {
                Some(hook) => hook(from, request.args).await,
                None => Err(Error::bad_request("this node takes no messages")),
            };
        }
        let local = read(&node.inner.services).get(&request.collection).cloned();
        match local {
            Some(service) => service.handle(&node, request).await,
            None => Err(Error::unknown_collection(request.collection)),
        }
    }

    fn serve_inline(&self, request: &Request) -> bool {
        // Polled once in place: a read, a create (its document is the request body, at most
        // 64 KiB here: larger bodies never reach the ROUTER task's parser) and a delete do
        // bounded work before the store call, and a store that waits (an embedded store's
        // durable write, MongoDB) moves the rest to a task of its own. Lists, patches (a whole
        // stored document is copied and checked), actions and message hooks may take a while:
        // their own task at once.
        matches!(request.action.as_str(), "get" | "create" | "delete")
            && request.collection != NODE_MESSAGE
    }

    async fn request_raw(&self, from: Option<String>, request: Request) -> Result<Box<RawValue>> {
        let Some(node) = self.node() else {
            return Err(Error::unavailable("node is stopping"));
        };
        match node.local_service(&request.collection) {
            Some(service) => {
                node.inner.requests_served.fetch_add(1, Ordering::Relaxed);
                service.handle_raw(&node, request).await
            }
            // Messages, unknown collections: the plain path.
            None => {
                let value = self.request(from, request).await?;
                crate::__private::to_raw(&value)
            }
        }
    }

    fn event(&self, event: Event) {
        if let Some(node) = self.node() {
            node.inner.deliver_local(&event);
        }
    }
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
                let joined = {
                    let mut dir = lock(&inner.directory);
                    // Bounded: forged announcements (each peer's are capped by discovery's
                    // `max_peers`, but peers come and go) cannot grow it without end.
                    for resource in &info.resources {
                        if dir.known.len() >= MAX_KNOWN_COLLECTIONS {
                            break;
                        }
                        dir.known.insert(resource.name.clone());
                    }
                    dir.shared.insert(info.id.clone(), Arc::new(info.clone()));
                    let previous = dir.peers.insert(
                        info.id.clone(),
                        Peer {
                            info: info.clone(),
                            last_seen: SystemTime::now(),
                        },
                    );
                    match previous {
                        None => true,
                        Some(p) => p.info != info,
                    }
                };
                if joined {
                    tracing::info!(node = %inner.id, peer = %info.id, name = %info.name, "peer joined");
                    for hook in &inner.hooks.join {
                        hook(&info);
                    }
                    let medium = inner.medium.clone();
                    spawn_or_skip(async move { medium.peer_joined(&info).await });
                }
            }
            PeerEvent::Left { id, reason } => {
                let removed = {
                    let mut dir = lock(&inner.directory);
                    dir.shared.remove(&id);
                    dir.peers.remove(&id)
                };
                if let Some(peer) = removed {
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

/// Runs `fut` on the current tokio runtime; outside one (a node dropped after its runtime)
/// there is nothing left to connect, so it is skipped.
fn spawn_or_skip(fut: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// What an action and a hook get: the node they run on, and the resource they act on.
#[derive(Clone, Debug)]
pub struct Context {
    node: Node,
    collection: String,
    resource_id: Option<String>,
}

impl Context {
    pub(crate) fn new(node: Node, collection: &str, resource_id: Option<String>) -> Self {
        Self {
            node,
            collection: collection.to_owned(),
            resource_id,
        }
    }

    /// The node the action runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The typed client of any collection of the cluster.
    pub fn collection<R: Resource>(&self) -> Collection<R> {
        self.node.collection::<R>()
    }

    /// The collection the action belongs to.
    pub fn collection_name(&self) -> &str {
        &self.collection
    }

    /// The resource a resource action acts on.
    pub fn resource_id(&self) -> Option<&str> {
        self.resource_id.as_deref()
    }
}
