//! [`NodeBuilder`]: what a node is made of (medium, discovery, store, collections, hooks,
//! timeouts), and starting it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::directory::Directory;
use super::inbound::Handle;
use super::shutdown::Shutdown;
use super::{Node, NodeInfo, NodeInner, NodeKind, StoreInfo, lock};
use crate::access::Authorizer;
#[cfg(any(feature = "zeromq", feature = "nats"))]
use crate::config::{NetworkConfig, Transport};
#[cfg(feature = "nats")]
use crate::discovery::NatsDiscovery;
#[cfg(feature = "zeromq")]
use crate::discovery::udp::UdpDiscovery;
use crate::discovery::{Discovery, LeaveReason};
use crate::event::EventBus;
#[cfg(feature = "nats")]
use crate::medium::nats::{NatsLink, NatsMedium};
#[cfg(feature = "zeromq")]
use crate::medium::zeromq::ZmqMedium;
use crate::medium::{Endpoints, Medium, MemoryCluster};
use crate::metrics::Metrics;
use crate::service::{ResourceService, Rules, Service};
use crate::settings::Settings;
use crate::store::{MemoryStore, Store};
use crate::{Error, Event, Limits, Resource, Result};

type PeerHook = Arc<dyn Fn(&NodeInfo) + Send + Sync>;
type LeaveHook = Arc<dyn Fn(&NodeInfo, LeaveReason) + Send + Sync>;
type MessageHook =
    Arc<dyn Fn(Option<String>, Value) -> BoxFuture<'static, Result<Value>> + Send + Sync>;
type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// The hooks a node calls.
#[derive(Default, Clone)]
pub(super) struct Hooks {
    pub(super) join: Vec<PeerHook>,
    pub(super) leave: Vec<LeaveHook>,
    pub(super) message: Option<MessageHook>,
    pub(super) event: Vec<EventHook>,
}

/// What a node announces about the store of `collection` ([`NodeInfo::stores`]); `None` when
/// the store has no fingerprint, or cannot give it now (then the one-store check is skipped for
/// it, with a warning).
pub(super) async fn store_info(collection: &str, store: &Arc<dyn Store>) -> Option<StoreInfo> {
    match store.fingerprint().await {
        Ok(Some(fingerprint)) => Some(StoreInfo {
            fingerprint,
            store: store.describe(),
            log: store.log_id(),
        }),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(
                collection,
                store = %store.describe(),
                error = %e,
                "the store's fingerprint cannot be read: other owners of this collection are \
                 not checked for another store"
            );
            None
        }
    }
}

/// Makes the service of one collection, given the node's store.
type Registration = Box<dyn FnOnce(&Arc<dyn Store>, &Arc<Metrics>) -> Arc<dyn Service> + Send>;

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
    request_timeout: Option<Duration>,
    limits: Option<Limits>,
    shutdown_timeout: Option<Duration>,
    /// Whether the network configuration opens the node without a key (`ZS_INSECURE`).
    insecure: bool,
    authorizer: Option<Arc<dyn Authorizer>>,
    /// Why this node cannot be built as configured (a transport this build lacks): `start`
    /// fails with it.
    unbuildable: Option<String>,
}

impl NodeBuilder {
    pub(super) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: NodeKind::Node,
            medium: None,
            discovery: None,
            store: None,
            registrations: Vec::new(),
            watches: Vec::new(),
            hooks: Hooks::default(),
            request_timeout: None,
            limits: None,
            shutdown_timeout: None,
            insecure: false,
            authorizer: None,
            unbuildable: None,
        }
    }

    /// Asks `authorizer` for every request to this node's collections that carries a user (see
    /// [`crate::access`]); the HTTP server of this node uses it too, unless its
    /// [`HttpConfig`](crate::http::HttpConfig) has one of its own.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Joins an in-process cluster (medium and discovery).
    pub fn memory(self, cluster: &MemoryCluster) -> Self {
        self.medium(cluster.medium()).discovery(cluster.discovery())
    }

    #[cfg(any(feature = "zeromq", feature = "nats"))]
    /// Joins the network cluster over the configuration's transport
    /// ([`NetworkConfig::transport`], `ZS_TRANSPORT`): the ZeroMQ medium and UDP discovery
    /// (multicast, or the static `peers`), or the NATS medium and discovery on one connection;
    /// with this configuration's timeouts and cluster key.
    pub fn network(self, config: NetworkConfig) -> Self {
        self.network_with(config, Vec::new())
    }

    #[cfg(any(feature = "zeromq", feature = "nats"))]
    /// Like [`NodeBuilder::network`], also receiving the events under `subscriptions` whether or
    /// not anything on this node subscribes to them (`""` is every event). A node otherwise
    /// receives from its peers only the events its subscribers want (see [`Node::subscribe`]).
    pub fn network_with(mut self, config: NetworkConfig, subscriptions: Vec<String>) -> Self {
        self.request_timeout = Some(config.request_timeout);
        self.insecure = config.is_insecure();
        match &config.transport {
            #[cfg(feature = "zeromq")]
            Transport::ZeroMq => {
                let medium = ZmqMedium::new(config.clone()).with_subscriptions(subscriptions);
                self.medium(medium).discovery(UdpDiscovery::new(config))
            }
            #[cfg(feature = "nats")]
            Transport::Nats(_) => {
                let link = NatsLink::new(&config);
                let medium =
                    NatsMedium::new(link.clone(), config.clone()).with_subscriptions(subscriptions);
                self.medium(medium)
                    .discovery(NatsDiscovery::new(link, config))
            }
            #[allow(unreachable_patterns)]
            other => {
                let _ = subscriptions;
                self.unbuildable = Some(format!(
                    "ZS_TRANSPORT: this build has no {} transport (its Cargo feature is off)",
                    match other {
                        Transport::ZeroMq => "ZeroMQ (`zeromq`)",
                        Transport::Nats(_) => "NATS (`nats`)",
                    }
                ));
                self
            }
        }
    }

    #[cfg(any(feature = "zeromq", feature = "nats"))]
    /// Joins the network cluster configured by the `ZS_*` environment variables, with their
    /// timeouts and limits too ([`NodeBuilder::settings`]).
    ///
    /// # Errors
    /// A malformed `ZS_*` variable, named.
    pub fn network_from_env(self) -> Result<Self> {
        let settings = Settings::from_env()?;
        Ok(self.settings(&settings).network(settings.network()))
    }

    /// Takes the request timeout, the limits and the shutdown timeout from `settings` (the
    /// medium and discovery are chosen apart: [`NodeBuilder::network`] with
    /// [`Settings::network`]). Without it, [`NodeBuilder::start`] reads what was not set
    /// otherwise from the environment ([`Settings::from_env`]).
    pub fn settings(mut self, settings: &Settings) -> Self {
        self.request_timeout = Some(settings.request_timeout());
        self.limits = Some(settings.limits());
        self.shutdown_timeout = Some(settings.shutdown_timeout());
        self
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
    ///
    /// The constraint keywords of `R`'s schema are compiled here; a schema the server cannot
    /// enforce (a `pattern` outside the regex crate's syntax) makes `start` fail, saying which.
    pub fn resource<R: Resource>(mut self) -> Self {
        self.refuse_reserved(R::COLLECTION);
        let rules = self.rules::<R>();
        self.registrations.push(Box::new(move |store, metrics| {
            Arc::new(ResourceService::<R>::new(
                store.clone(),
                metrics.clone(),
                rules,
            ))
        }));
        self
    }

    /// Owns collection `R` on this node, in its own store.
    pub fn resource_in<R: Resource>(mut self, store: Arc<dyn Store>) -> Self {
        self.refuse_reserved(R::COLLECTION);
        let rules = self.rules::<R>();
        self.registrations.push(Box::new(move |_, metrics| {
            Arc::new(ResourceService::<R>::new(store, metrics.clone(), rules))
        }));
        self
    }

    /// The compiled constraints of `R`; a schema that cannot be enforced makes the node
    /// unbuildable (none are checked then: `start` fails).
    fn rules<R: Resource>(&mut self) -> Arc<Rules> {
        match Rules::of::<R>() {
            Ok(rules) => Arc::new(rules),
            Err(why) => {
                if self.unbuildable.is_none() {
                    self.unbuildable = Some(why);
                }
                Arc::default()
            }
        }
    }

    /// A collection named like one of the node's own HTTP routes
    /// ([`RESERVED_COLLECTIONS`](crate::resource::RESERVED_COLLECTIONS)) makes the node
    /// unbuildable: `start` says so.
    fn refuse_reserved(&mut self, collection: &str) {
        if let Some(why) = crate::resource::reserved_name(collection)
            && self.unbuildable.is_none()
        {
            self.unbuildable = Some(why);
        }
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
        self.request_timeout = Some(timeout);
        self
    }

    /// How long [`Node::stop`] waits for the work in flight (default 5 s, or
    /// `ZS_SHUTDOWN_TIMEOUT_MS`).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = Some(timeout);
        self
    }

    /// What clients may send to the collections this node owns (default: the `ZS_MAX_*`
    /// variables, which [`NodeBuilder::start`] reads, failing on a malformed one).
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
    ///
    /// A node that owns collections first listens for the peers already there, for the
    /// discovery's warm-up ([`crate::config::NetworkConfig::discovery_warmup`] on the network, nothing
    /// in-process), announcing itself without its collections; then, unless refused, it
    /// announces and serves them.
    ///
    /// # Errors
    /// [`Error::StoreConflict`] when a live peer owns one of this node's collections over
    /// another store (see [`Store::fingerprint`]); the node has said goodbye and stopped. And
    /// what starting the medium, the discovery or preparing the store returns.
    pub async fn start(self) -> Result<Node> {
        if let Some(reason) = self.unbuildable {
            return Err(Error::bad_request(reason));
        }
        let (Some(medium), Some(discovery)) = (self.medium, self.discovery) else {
            return Err(Error::internal(
                "a node needs a medium and a discovery: call .memory(&cluster) or .medium(..).discovery(..)",
            ));
        };
        // What the code did not set comes from the environment; a malformed variable is an
        // error here too.
        let (request_timeout, limits, shutdown_timeout) =
            match (self.request_timeout, self.limits, self.shutdown_timeout) {
                (Some(request), Some(limits), Some(shutdown)) => (request, limits, shutdown),
                (request, limits, shutdown) => {
                    let env = Settings::from_env()?;
                    (
                        request.unwrap_or_else(|| env.request_timeout()),
                        limits.unwrap_or_else(|| env.limits()),
                        shutdown.unwrap_or_else(|| env.shutdown_timeout()),
                    )
                }
            };
        if self.insecure {
            tracing::warn!(
                node = %self.name,
                "insecure: listening beyond loopback without a cluster key (ZS_INSECURE); anyone \
                 who reaches this node can run any request and pose as any node. Set \
                 ZS_CLUSTER_KEY_FILE (or ZS_CLUSTER_KEY) on every node instead"
            );
        }
        let store = self.store.unwrap_or_else(|| Arc::new(MemoryStore::new()));
        let id = format!("{}-{}", self.name, &crate::store::new_id()[..12]);
        let mut services = BTreeMap::new();
        let metrics = Metrics::new();
        for register in self.registrations {
            let service = register(&store, &metrics);
            let info = service.info();
            metrics.declare(std::slice::from_ref(&info));
            service.prepare().await?;
            if services.insert(info.name.clone(), service).is_some() {
                return Err(Error::internal(format!(
                    "collection {} registered twice on one node",
                    info.name
                )));
            }
        }
        let mut stores = BTreeMap::new();
        for (collection, service) in &services {
            if let Some(info) = store_info(collection, service.store()).await {
                stores.insert(collection.clone(), info);
            }
        }
        // The collections are served and announced only once the check below has passed.
        let inner = Arc::new(NodeInner {
            id,
            name: self.name,
            kind: self.kind,
            medium,
            discovery,
            store,
            services: RwLock::new(BTreeMap::new()),
            directory: Mutex::new(Directory::default()),
            endpoints: Mutex::new(Endpoints::new()),
            watches: self.watches,
            insecure: self.insecure,
            stores: Mutex::new(BTreeMap::new()),
            store_conflicts: Mutex::default(),
            bus: EventBus::new(4096),
            hooks: self.hooks,
            request_timeout,
            limits,
            shutdown: Shutdown::new(shutdown_timeout),
            documents_skipped: AtomicU64::new(0),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            requests_served: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            requests_timed_out: AtomicU64::new(0),
            requests_deduplicated: AtomicU64::new(0),
            next_request: AtomicU64::new(0),
            authorizer: self.authorizer,
            metrics,
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
        let handle = Arc::new(Handle::new(&node.inner));
        let endpoints = node
            .inner
            .medium
            .start(&node.inner.id, handle.clone())
            .await?;
        *lock(&node.inner.endpoints) = endpoints;
        node.inner.discovery.start(node.info(), handle).await?;
        if !services.is_empty() {
            // Listen for the owners already there before owning anything (one store per
            // collection, see `stores`).
            let warm_up = node.inner.discovery.warm_up();
            if !warm_up.is_zero() {
                tokio::time::sleep(warm_up).await;
            }
            if let Err(e) = node.check_stores(&stores).await {
                node.stop().await;
                return Err(e);
            }
            node.inner
                .services
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .extend(services);
            *lock(&node.inner.stores) = stores;
            // A medium that routes by collection (NATS) now takes their requests.
            if let Err(e) = node.inner.medium.serve(node.local_collections()).await {
                node.stop().await;
                return Err(e);
            }
            node.inner.discovery.announce(node.info()).await?;
        }
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
