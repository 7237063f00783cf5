//! Workers: react to changes of resources anywhere in the cluster, as the original's
//! `ResourceWorker`.
//!
//! A worker is a node of kind `worker` that watches collections. Each rule pairs a filter with a
//! handler: the handler runs for every created, patched or action-changed resource that matches
//! (fetching the current document when the event carries none), and again, every poll interval,
//! for every resource that still matches and whose current version was not handled yet (the
//! original's "poll check", the safety net). Handler errors are logged and retried with
//! backoff; a semaphore bounds how many handlers run at once; a resource is never handled twice
//! at once by one replica, and a change that arrives while its resource is being handled runs
//! right after (only the newest one).
//!
//! # Resuming
//!
//! A worker follows its collections' change logs ([`crate::changes`]), not the bare event bus,
//! and keeps the position up to which it handled everything: per collection, the cursor after
//! the longest run of events, in the order the logs gave them, that are all finished (handled,
//! given up on, done by another replica, or replaced by a newer change of the same resource).
//! It writes it to `<state dir>/`[`STATE_FILE_NAME`] (the state dir is
//! [`Worker::state_dir`], else `ZS_WORKER_STATE_DIR`, else `./data/<worker name>`; `off` or
//! [`Worker::without_state`] keeps none) at most every [`SAVE_EVERY`] and when it stops,
//! atomically (a temporary file, synced, renamed). A worker that starts with a saved cursor
//! reads the changes made after it from the logs at once, then follows live; its first poll
//! check waits one interval. Without one (first start, a missing, corrupt or another worker's
//! file: warned) it follows from now and polls at once. A cursor older than the logs keep
//! (`ZS_CHANGE_LOG_MAX`, `ZS_CHANGE_LOG_MS`) is warned about, the worker follows from now and
//! runs a poll check at once. Replicas may share a state dir: any replica's cursor is one the
//! group handled everything before.
//!
//! # Worker groups
//!
//! Processes that run a worker of the same name are replicas of it. Each replica sees every
//! change; before it runs a handler it claims the change (the worker's name, the resource id and
//! the version the change made) at an owner of the collection (`zeroservices.claim`, kept in
//! the owner's store with a lease, [`Worker::lease`] or `ZS_WORKER_LEASE_MS`, default 30 s):
//!
//! - won: it runs the handler, renewing the claim every third of the lease while the handler
//!   runs, then records the change as handled (kept as long as the change log keeps changes,
//!   `ZS_CHANGE_LOG_MS`) or, when the handler gave up, releases it (a poll check runs it again);
//! - held by another replica: it looks again after the lease; if the holder died (no renewal),
//!   its lease has run out and this replica takes the change over, if it is still the
//!   resource's current version and still matches (a newer version is handled through its own
//!   change);
//! - handled already: skipped (also a poll hit of a version handled already);
//! - the owner cannot be asked: it tries again within a second, the change is kept.
//!
//! So each change is handled by one replica at a time, at least once while some replica lives.
//! It can run twice when a handler outlives its lease without renewing it (the owner was
//! unreachable for a whole lease: warned), when a replica dies after its handler made its
//! effect but before it recorded the change as handled, or when the record of a handled change
//! is forgotten (after `ZS_CHANGE_LOG_MS`, a memory store that restarted, an embedded store
//! killed before its next durable write: claims are non-durable writes). Two different
//! versions of one resource may run at once on two replicas. A single worker works the same,
//! with a claim round trip per change. A change without a version (from an owner that predates
//! versions) runs unclaimed.
//!
//! # Worker groups over NATS JetStream
//!
//! On a NATS node whose server has JetStream, none of the above runs: the worker consumes the
//! change-log stream through one durable pull consumer per worker name, shared by the replicas
//! (no claims, no cursor file; see `worker/stream.rs` for the name, the filter and the acks).
//! The server hands each entry to one replica at a time; the replica acks it once every rule is
//! done with it (handled, not matching, replaced by a newer change of the same resource, or a
//! redelivery that is no longer the resource's current version), sends progress acks every
//! third of the lease while it holds it, naks it after the poll interval when a handler gave
//! up, and terminates (drops, counts: [`RunningWorker::stream_stats`]) what does not open. So
//! each change is handled at least once while some replica lives, by one replica at a time
//! while its holder sends progress; it runs twice when a replica dies between its handler's
//! effect and its ack, when its replica loses NATS for a whole lease, or when a poll check runs
//! a resource another replica handled and left matching (once per replica and version). The
//! per-replica order is the one above (one resource at a time, oldest first, a queued change
//! replaced by a newer one); across replicas nothing is ordered. A poll hit runs only when this
//! replica did not handle that version, the resource kept it for a lease after the list, and
//! the group's consumer has nothing pending or unacked — except the first check of a group
//! whose consumer this start created, which runs its hits at once (a late worker computes what
//! is pending without waiting a lease; two replicas of a brand-new group started in the same
//! instant may both run those first hits). Without JetStream the worker warns once
//! and works as above.
//!
//! # Operations and tracing
//!
//! With `ZS_METRICS_PORT` set (or [`Worker::operations`]), [`Worker::start`] serves the
//! worker node's `/healthz`, `/readyz` and `/metrics` on that port, as an
//! [`App`](crate::App) does for a node without HTTP ([`RunningWorker::ops_addr`]); it stops with
//! the node. Each handler run is a `zs.worker` span linked to the span that made the change,
//! whose context the change carries in its payload (see [`crate::telemetry`]).
//!
//! # Stopping
//!
//! When the worker's node stops ([`RunningWorker::stop`], [`Node::stop`], a signal in
//! [`Worker::run`]), no new handler starts and the running ones finish, within the node's
//! shutdown timeout (`ZS_SHUTDOWN_TIMEOUT_MS`, default 5 s); a change queued behind a running
//! handler and a retry not started yet are left to the next run, which resumes before them.
//! Nothing that finishes once the node is stopping moves the saved cursor.
//!
//! ```no_run
//! use zeroservices::prelude::*;
//! use zeroservices::worker::Worker;
//!
//! #[model]
//! #[derive(Debug, Clone, Copy, PartialEq, Default)]
//! #[serde(rename_all = "lowercase")]
//! pub enum Status { #[default] Pending, Done }
//!
//! #[resource(collection = "power")]
//! pub struct Power { pub value: i64, #[serde(default)] pub status: Status, pub result: Option<i64> }
//!
//! async fn build(ctx: Context, change: Change<Power>) -> Result<()> {
//!     let Some(power) = change.data else { return Ok(()) };
//!     let result = power.value * power.value;
//!     ctx.collection::<Power>()
//!         .patch(&change.resource_id, patch!({"$set": {"result": result, "status": "done"}}))
//!         .await?;
//!     Ok(())
//! }
//!
//! # async fn run() -> Result<()> {
//! Worker::new("power_worker")
//!     .on::<Power, _, _>(query!({"status": "pending"}), build)
//!     .run(zeroservices::Node::builder("power_worker").network_from_env()?)
//!     .await
//! # }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::changes::Cursor;
use crate::changes::follow::{Follower, Topics};
use crate::protocol::{BuiltIn, Call, Document, ListArgs, Page};
use crate::query::Filter;
use crate::resource::ChangeKind;
use crate::settings::Settings;
use crate::{Change, Context, Error, Event, Node, NodeBuilder, NodeKind, Query, Resource, Result};

mod claims;
mod resume;
#[cfg(feature = "nats")]
mod stream;

pub(crate) use claims::{CLAIMS, serve as serve_claim};
use claims::{ClaimAction, ClaimArgs, Claimed};
use resume::{StateFile, Ticket, Tracker};

/// The default poll-check interval (the original's 10 s); `ZS_WORKER_POLL_MS` overrides it.
pub use crate::settings::DEFAULT_POLL_INTERVAL;
/// The default lease of a claim on a change (30 s); `ZS_WORKER_LEASE_MS` overrides it.
pub use crate::settings::DEFAULT_WORKER_LEASE;
/// The file a worker keeps its cursor in, in its state dir.
pub const STATE_FILE_NAME: &str = "worker-cursor.json";

/// How often a worker writes its cursor (when it moved), besides when it stops.
pub const SAVE_EVERY: Duration = Duration::from_secs(1);

/// Events taken from the change logs and not yet handled, per collection, at most: past it
/// the worker reads no more until some finish (the follower catches up from the logs).
const MAX_OUTSTANDING: usize = 65_536;

type Handler = Arc<
    dyn Fn(Node, Event, Option<serde_json::Value>) -> BoxFuture<'static, Result<()>> + Send + Sync,
>;

struct Rule {
    /// Its position among the worker's rules.
    index: usize,
    collection: &'static str,
    query: Query,
    filter: Filter,
    /// Runs the user's handler on an event (or a poll hit), given the current document.
    handler: Handler,
}

/// Where a worker keeps its cursor.
#[derive(Debug, Clone)]
enum StateDir {
    /// `ZS_WORKER_STATE_DIR`, else `./data/<name>`.
    FromEnv,
    Dir(PathBuf),
    Off,
}

/// Where a worker's operations port comes from.
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
enum Ops {
    /// `ZS_METRICS_PORT` (none when unset).
    FromEnv,
    Set(Option<Box<crate::http::HttpConfig>>),
}

/// A worker: rules that react to changes of resources; see the module docs.
pub struct Worker {
    name: String,
    #[cfg(feature = "http")]
    ops: Ops,
    rules: Vec<Rule>,
    errors: Vec<Error>,
    poll_interval: Option<Duration>,
    lease: Option<Duration>,
    state_dir: StateDir,
    concurrency: usize,
    max_attempts: u32,
    backoff: Duration,
}

impl Worker {
    /// A worker named `name` with no rules yet. Replicas of one worker (processes that run a
    /// worker of the same name) share its changes: see the module docs.
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let mut errors = Vec::new();
        if name.is_empty() || name.len() > claims::MAX_NAME_BYTES {
            errors.push(Error::bad_request(format!(
                "a worker's name is 1 to {} bytes",
                claims::MAX_NAME_BYTES
            )));
        }
        Self {
            name,
            #[cfg(feature = "http")]
            ops: Ops::FromEnv,
            rules: Vec::new(),
            errors,
            poll_interval: None,
            lease: None,
            state_dir: StateDir::FromEnv,
            concurrency: 8,
            max_attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }

    /// Runs `handler` for every resource of `R` that matches `filter` when it changes, and on
    /// every poll check while it still matches.
    pub fn on<R, F, Fut>(mut self, filter: Query, handler: F) -> Self
    where
        R: Resource,
        F: Fn(Context, Change<R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let parsed = match filter.filter() {
            Ok(parsed) => parsed,
            Err(e) => {
                self.errors.push(e);
                Filter::match_all()
            }
        };
        let handler = Arc::new(handler);
        self.rules.push(Rule {
            index: self.rules.len(),
            collection: R::COLLECTION,
            query: filter,
            filter: parsed,
            handler: Arc::new(move |node, event, doc| {
                let handler = handler.clone();
                Box::pin(async move {
                    let mut event = event;
                    if let (Some(doc), serde_json::Value::Object(map)) = (doc, &mut event.data) {
                        map.insert("resource_data".into(), doc);
                    }
                    let change = Change::<R>::from_event(&event)?;
                    let ctx = Context::new(node, R::COLLECTION, Some(change.resource_id.clone()));
                    let span = tracing::debug_span!(
                        "zs.worker",
                        otel.kind = "consumer",
                        collection = R::COLLECTION,
                        topic = %event.topic,
                    );
                    // Linked to the span that made the change (its context travels in the
                    // change's payload: live, from a log, from the JetStream stream).
                    if !span.is_disabled()
                        && let Some(trace) =
                            crate::telemetry::carried("a change's traceparent", &event.data)
                    {
                        crate::telemetry::add_link(&span, &trace, "changed");
                    }
                    tracing::Instrument::instrument(handler(ctx, change), span).await
                })
            }),
        });
        self
    }

    /// How often matching resources are re-checked (default 10 s, or `ZS_WORKER_POLL_MS`,
    /// which [`Worker::start`] reads when this is not called, failing on a malformed value).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// How long this replica's claim on a change holds without renewal (default 30 s, or
    /// `ZS_WORKER_LEASE_MS`): a replica renews it every third of it while its handler runs,
    /// and another replica takes the change over once it ran out.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease.max(Duration::from_millis(100)));
        self
    }

    /// Keeps the cursor this worker resumes from in `dir` (default `ZS_WORKER_STATE_DIR`, else
    /// `./data/<name>`), in the file [`STATE_FILE_NAME`].
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = StateDir::Dir(dir.into());
        self
    }

    /// Keeps no cursor: each start follows the changes from then on (the poll check catches
    /// up the rest), as `ZS_WORKER_STATE_DIR=off` does.
    pub fn without_state(mut self) -> Self {
        self.state_dir = StateDir::Off;
        self
    }

    /// Serves the operations routes (`GET /healthz`, `GET /readyz`, `GET /metrics`) of the
    /// worker's node on `config` (its port, host, auth), as `ZS_METRICS_PORT` does for an
    /// [`App`](crate::App); without it, [`Worker::start`] opens one when `ZS_METRICS_PORT` is
    /// set (on `ZS_HTTP_HOST`, default 127.0.0.1, with the HTTP settings).
    #[cfg(feature = "http")]
    pub fn operations(mut self, config: crate::http::HttpConfig) -> Self {
        self.ops = Ops::Set(Some(Box::new(config)));
        self
    }

    /// Takes the poll interval, the lease and the state dir from `settings`
    /// (`ZS_WORKER_POLL_MS`, `ZS_WORKER_LEASE_MS`, `ZS_WORKER_STATE_DIR`), and the operations
    /// port (`ZS_METRICS_PORT`, none when unset).
    pub fn settings(mut self, settings: &Settings) -> Self {
        #[cfg(feature = "http")]
        {
            self.ops = Ops::Set(settings.metrics().map(Box::new));
        }
        self.state_dir = match settings.worker_state_dir(&self.name) {
            Some(dir) => StateDir::Dir(dir),
            None => StateDir::Off,
        };
        self.lease(settings.worker_lease())
            .poll_interval(settings.worker_poll_interval())
    }

    /// How many handlers run at once (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many times a failing handler is tried per change (default 5), and the first retry
    /// delay, doubled at each attempt (default 100 ms).
    pub fn retries(mut self, max_attempts: u32, backoff: Duration) -> Self {
        self.max_attempts = max_attempts.max(1);
        self.backoff = backoff;
        self
    }

    /// Starts the worker's node (built from `builder`, announced as a worker watching the
    /// rules' collections) and its rules; returns a handle that stops it.
    pub async fn start(mut self, builder: NodeBuilder) -> Result<RunningWorker> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        #[cfg(feature = "http")]
        let ops_from_env = matches!(self.ops, Ops::FromEnv);
        #[cfg(not(feature = "http"))]
        let ops_from_env = false;
        if self.poll_interval.is_none()
            || self.lease.is_none()
            || matches!(self.state_dir, StateDir::FromEnv)
            || ops_from_env
        {
            let settings = Settings::from_env()?;
            #[cfg(feature = "http")]
            if ops_from_env {
                self.ops = Ops::Set(settings.metrics().map(Box::new));
            }
            self.poll_interval
                .get_or_insert(settings.worker_poll_interval());
            self.lease.get_or_insert(settings.worker_lease());
            if matches!(self.state_dir, StateDir::FromEnv) {
                self.state_dir = match settings.worker_state_dir(&self.name) {
                    Some(dir) => StateDir::Dir(dir),
                    None => StateDir::Off,
                };
            }
        }
        let poll_interval = self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL);
        let lease = self.lease.unwrap_or(DEFAULT_WORKER_LEASE);
        let mut builder = builder.kind(NodeKind::Worker);
        let mut by_collection: BTreeMap<&'static str, Vec<Arc<Rule>>> = BTreeMap::new();
        for rule in self.rules {
            if !by_collection.contains_key(rule.collection) {
                builder = builder.watch(rule.collection);
            }
            by_collection
                .entry(rule.collection)
                .or_default()
                .push(Arc::new(rule));
        }
        let node = builder.start().await?;
        // The operations port, like an App's: stopped with the node.
        #[cfg(feature = "http")]
        let ops = match std::mem::replace(&mut self.ops, Ops::Set(None)) {
            Ops::Set(Some(config)) => match crate::http::serve_ops(node.clone(), *config).await {
                Ok(server) => {
                    tracing::info!(
                        worker = %self.name,
                        "operations on http://{}/ (/healthz, /readyz, /metrics)",
                        server.local_addr()
                    );
                    Some(server)
                }
                Err(e) => {
                    node.stop().await;
                    return Err(e);
                }
            },
            _ => None,
        };
        let stopping = node.shutdown().stopping().clone();
        let shared = |caught_up: Option<CaughtUp>| {
            Arc::new(Shared {
                node: node.clone(),
                name: self.name.clone(),
                lease,
                semaphore: Arc::new(Semaphore::new(self.concurrency)),
                in_flight: Mutex::new(HashMap::new()),
                max_attempts: self.max_attempts,
                backoff: self.backoff,
                streamed: caught_up.is_some(),
                caught_up,
                handled: Mutex::new(Handled::default()),
            })
        };
        #[cfg(feature = "nats")]
        {
            let collections: Vec<&'static str> = by_collection.keys().copied().collect();
            if let Some(log) = stream::open(&node, &self.name, &collections, lease).await {
                let consumer = log.consumer();
                let shared = shared(Some(Arc::new(move || {
                    let consumer = consumer.clone();
                    Box::pin(async move { stream::caught_up(consumer).await })
                })));
                let counters = log.counters.clone();
                // A new group follows from now and checks at once; one that resumes reads
                // what it missed from its consumer first.
                let poll_now = log.created;
                let mut tasks = JoinSet::new();
                let mut rules = HashMap::new();
                for (collection, list) in by_collection {
                    for rule in &list {
                        let poll = poll(
                            shared.clone(),
                            rule.clone(),
                            poll_interval,
                            poll_now,
                            Arc::new(Notify::new()),
                        );
                        let until = stopping.clone();
                        tasks.spawn(
                            async move { until.run_until_cancelled(poll).await.unwrap_or(()) },
                        );
                    }
                    rules.insert(collection, list);
                }
                let consume = stream::consume(shared, log, rules, self.concurrency, poll_interval);
                let until = stopping.clone();
                tasks.spawn(async move { until.run_until_cancelled(consume).await.unwrap_or(()) });
                tracing::info!(worker = %self.name, node = %node.id(), "worker started (JetStream)");
                return Ok(RunningWorker {
                    node,
                    #[cfg(feature = "http")]
                    ops,
                    tasks,
                    resume: Arc::new(Resume {
                        file: None,
                        trackers: BTreeMap::new(),
                    }),
                    stream: Some(Arc::new(move || counters.stats())),
                });
            }
        }
        let shared = shared(None);
        let state = match &self.state_dir {
            StateDir::Dir(dir) => Some(StateFile::new(dir, &self.name)),
            StateDir::FromEnv | StateDir::Off => None,
        };
        let mut saved = state.as_ref().map(StateFile::load).unwrap_or_default();
        let mut tasks = JoinSet::new();
        let mut trackers = BTreeMap::new();
        let mut follows = Vec::new();
        for (collection, rules) in by_collection {
            let since = saved.remove(collection);
            let start = since
                .clone()
                .unwrap_or_else(|| Cursor::starting(crate::store::now_ms()));
            let tracker = Tracker::new(start, stopping.clone());
            trackers.insert(collection.to_owned(), tracker.clone());
            let live = node.subscribe(collection);
            // A worker that resumes reads what it missed from the logs: its first poll check
            // waits an interval (or for a cursor that turns out expired). One that does not
            // checks at once.
            let poll_now = since.is_none();
            let nudges: Vec<_> = rules.iter().map(|_| Arc::new(Notify::new())).collect();
            follows.push((collection, rules, live, since, tracker, poll_now, nudges));
        }
        // Peers known already send the watched events before the first check runs.
        node.sync_subscriptions().await;
        // The rules start no new handler once the node is stopping.
        for (collection, rules, live, since, tracker, poll_now, nudges) in follows {
            let watch = follow(
                shared.clone(),
                collection,
                rules.clone(),
                live,
                since,
                tracker,
                nudges.clone(),
            );
            let until = stopping.clone();
            tasks.spawn(async move { until.run_until_cancelled(watch).await.unwrap_or(()) });
            for (rule, nudge) in rules.into_iter().zip(nudges) {
                let poll = poll(shared.clone(), rule, poll_interval, poll_now, nudge);
                let until = stopping.clone();
                tasks.spawn(async move { until.run_until_cancelled(poll).await.unwrap_or(()) });
            }
        }
        let resume = Arc::new(Resume {
            file: state,
            trackers,
        });
        let saver = resume.clone();
        let until = stopping.clone();
        tasks.spawn(async move {
            until
                .run_until_cancelled(async move {
                    let mut ticker = tokio::time::interval(SAVE_EVERY);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticker.tick().await;
                        saver.save(false).await;
                    }
                })
                .await
                .unwrap_or(())
        });
        tracing::info!(worker = %self.name, node = %node.id(), "worker started");
        Ok(RunningWorker {
            node,
            #[cfg(feature = "http")]
            ops,
            tasks,
            resume,
            stream: None,
        })
    }

    /// Starts the worker and runs it until SIGINT or SIGTERM, then stops it
    /// ([`RunningWorker::stop`]: running handlers finish) and leaves the cluster.
    pub async fn run(self, builder: NodeBuilder) -> Result<()> {
        let worker = self.start(builder).await?;
        crate::signal::shutdown_signal().await;
        worker.stop().await;
        Ok(())
    }
}

/// A started worker.
pub struct RunningWorker {
    node: Node,
    /// The operations listener (`ZS_METRICS_PORT`, [`Worker::operations`]).
    #[cfg(feature = "http")]
    ops: Option<crate::http::HttpServer>,
    tasks: JoinSet<()>,
    resume: Arc<Resume>,
    /// The counters of the JetStream consumer, when the worker consumes one.
    stream: Option<Arc<dyn Fn() -> StreamStats + Send + Sync>>,
}

impl RunningWorker {
    /// The worker's node (to call collections, or look at peers).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The address of the operations listener (`/healthz`, `/readyz`, `/metrics`), when one
    /// was asked for (`ZS_METRICS_PORT`, [`Worker::operations`]).
    #[cfg(feature = "http")]
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops.as_ref().map(crate::http::HttpServer::local_addr)
    }

    /// The counters of the worker group's JetStream consumer; `None` when the worker follows
    /// the owners' logs (not on NATS, or no JetStream on the server).
    pub fn stream_stats(&self) -> Option<StreamStats> {
        self.stream.as_ref().map(|stats| stats())
    }

    /// Stops the rules, lets the handlers running now finish (at most the node's shutdown
    /// timeout, `ZS_SHUTDOWN_TIMEOUT_MS`), leaves the cluster ([`Node::stop`]) and writes the
    /// cursor the next start resumes from.
    pub async fn stop(mut self) {
        self.node.stop().await;
        // Drained by the node's stop already: returns at once.
        #[cfg(feature = "http")]
        if let Some(ops) = self.ops.take() {
            ops.shutdown().await;
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.resume.save(true).await;
    }
}

/// The watermarks of a worker and the file they go to.
struct Resume {
    file: Option<StateFile>,
    trackers: BTreeMap<String, Arc<Tracker>>,
}

impl Resume {
    /// Writes the watermarks when one moved (or `always`).
    async fn save(self: &Arc<Self>, always: bool) {
        if self.file.is_none() {
            return;
        }
        let mut moved = always;
        let mut cursors = BTreeMap::new();
        for (collection, tracker) in &self.trackers {
            let (cursor, changed) = tracker.watermark();
            moved |= changed;
            cursors.insert(collection.clone(), cursor);
        }
        if !moved {
            return;
        }
        let this = self.clone();
        let written = tokio::task::spawn_blocking(move || match &this.file {
            Some(file) => file.save(&cursors).map_err(|e| (file.path().to_owned(), e)),
            None => Ok(()),
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err((path, e))) => {
                tracing::warn!(path = %path.display(), error = %e, "could not write the worker's cursor");
            }
            Err(e) => tracing::warn!(error = %e, "could not write the worker's cursor"),
        }
    }
}

/// A change waiting for its resource's running handler: the event, the document, and its
/// ticket (none for a poll hit).
type Pending = (Event, serde_json::Value, Option<Arc<Hold>>);

/// What a change holds until every rule is done with it: its place in the cursor the worker
/// saves (following the logs), or its entry of the JetStream consumer (acked when released).
pub(crate) enum Hold {
    Cursor(#[allow(dead_code)] Ticket),
    #[cfg(feature = "nats")]
    Message(stream::Delivery),
}

impl Hold {
    /// A rule's handler gave up on the change.
    fn give_up(&self) {
        match self {
            Self::Cursor(_) => {}
            #[cfg(feature = "nats")]
            Self::Message(delivery) => delivery.give_up(),
        }
    }

    /// The change could not be looked at now (its resource did not read): a JetStream entry
    /// is offered again shortly; a followed one is left to the poll check.
    fn retry_soon(&self) {
        match self {
            Self::Cursor(_) => {}
            #[cfg(feature = "nats")]
            Self::Message(delivery) => delivery.retry_soon(),
        }
    }
}

/// Lets go of a change: the last holder of a JetStream entry sends its verdict now.
async fn release(hold: Option<Arc<Hold>>) {
    match hold.and_then(Arc::into_inner) {
        #[cfg(feature = "nats")]
        Some(Hold::Message(delivery)) => delivery.settle().await,
        _ => {}
    }
}

/// The counters of a worker that consumes the JetStream change-log stream
/// ([`RunningWorker::stream_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries the server delivered to this replica.
    pub delivered: u64,
    /// Of those, redeliveries (another holder died, stopped or gave up).
    pub redelivered: u64,
    /// Entries acked (done here) or terminated (dropped).
    pub acked: u64,
    /// Entries nak'ed: a handler gave up (offered again after the poll interval), or left
    /// queued when the worker stopped (offered again at once).
    pub naked: u64,
    /// Progress acks sent while entries were held.
    pub progress: u64,
    /// Entries dropped: garbage, another cluster key, another collection (terminated).
    pub dropped: u64,
}

/// The versions this replica handled, per rule and resource (for its poll check over
/// JetStream): bounded, the older half forgotten at a time.
#[derive(Default)]
struct Handled {
    recent: HashMap<(usize, String), u64>,
    older: HashMap<(usize, String), u64>,
}

/// How many resources [`Handled`] remembers per half.
const HANDLED_MEMORY: usize = 65_536;

impl Handled {
    fn covers(&self, key: &(usize, String), version: u64) -> bool {
        self.recent
            .get(key)
            .or_else(|| self.older.get(key))
            .is_some_and(|&v| v >= version)
    }

    fn remember(&mut self, key: (usize, String), version: u64) {
        if self.recent.len() >= HANDLED_MEMORY && !self.recent.contains_key(&key) {
            self.older = std::mem::take(&mut self.recent);
        }
        let v = self.recent.entry(key).or_insert(version);
        *v = (*v).max(version);
    }
}

struct Shared {
    node: Node,
    name: String,
    lease: Duration,
    semaphore: Arc<Semaphore>,
    /// Resources being handled (by rule), each with the newest change that arrived meanwhile
    /// (run next).
    in_flight: Mutex<HashMap<(usize, String), Option<Pending>>>,
    max_attempts: u32,
    backoff: Duration,
    /// Changes come from the group's JetStream consumer: no claims, no cursor.
    streamed: bool,
    /// With `streamed`: whether the group's consumer has no entry pending or awaiting an ack.
    caught_up: Option<CaughtUp>,
    /// With `streamed`: what this replica handled, so its poll check skips it.
    handled: Mutex<Handled>,
}

/// Asks whether a worker group's consumer is caught up (nothing pending, nothing unacked).
type CaughtUp = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

/// What became of a change this replica was given.
enum Outcome {
    /// Handled here (or given up on), or done elsewhere already: nothing more to do.
    Finished,
    /// Claimed by another live replica, or the claim could not be asked: look again after
    /// this long.
    Later(Duration),
}

/// The version a change made (an event's `version`).
fn version_of(event: &Event) -> Option<u64> {
    event.data.get("version").and_then(Value::as_u64)
}

impl Shared {
    /// Runs the rule's handler on one resource. When it is being handled already, the change is
    /// kept and run right after (only the newest one), so no change is lost to a handler that
    /// was working on an older copy.
    ///
    /// A poll hit (`from_poll`) is not queued behind a running handler: it re-reads a state the
    /// running handler is already working on.
    async fn dispatch(
        self: &Arc<Self>,
        rule: Arc<Rule>,
        event: Event,
        doc: serde_json::Value,
        from_poll: bool,
        ticket: Option<Arc<Hold>>,
    ) {
        let Some(id) = event.data.get("resource_id").and_then(|v| v.as_str()) else {
            return;
        };
        let key = (rule.index, id.to_owned());
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(next) = in_flight.get_mut(&key) {
                // The newest change waits (a re-check of an older one never replaces it).
                let newer = next.as_ref().is_none_or(|(queued, _, _)| {
                    version_of(&event).unwrap_or(0) >= version_of(queued).unwrap_or(0)
                });
                if !from_poll && newer {
                    *next = Some((event, doc, ticket));
                }
                return;
            }
            in_flight.insert(key.clone(), None);
        }
        let Ok(permit) = self.semaphore.clone().acquire_owned().await else {
            return;
        };
        let shutdown = self.node.shutdown();
        // Counted as the node's work in flight: a stopping node waits for it.
        let Some(working) = shutdown.enter() else {
            return;
        };
        let (stopping, abort) = (shutdown.stopping().clone(), shutdown.abort().clone());
        let shared = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _working = working;
            let (mut event, mut doc, mut ticket, mut from_poll) = (event, doc, ticket, from_poll);
            loop {
                // Past the shutdown timeout the handler is dropped where it is.
                let run = shared.run_change(&rule, &event, &doc, &stopping, &ticket);
                let Some(outcome) = abort.run_until_cancelled(run).await else {
                    tracing::warn!(topic = %event.topic, "worker handler dropped at the shutdown timeout");
                    break;
                };
                if let (Outcome::Later(after), false) = (outcome, from_poll) {
                    shared.recheck(rule.clone(), event.clone(), ticket.take(), after);
                }
                // This change's ticket is finished (or went with its re-check).
                release(ticket.take()).await;
                if stopping.is_cancelled() {
                    // Queued changes wait for the next run (its cursor, its poll check).
                    break;
                }
                let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match in_flight.get_mut(&key).and_then(Option::take) {
                    Some((next_event, next_doc, next_ticket)) => {
                        drop(in_flight);
                        // The newest change, if it still matches the rule.
                        if !rule.filter.matches(&next_doc) {
                            shared
                                .in_flight
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .remove(&key);
                            break;
                        }
                        (event, doc, ticket, from_poll) =
                            (next_event, next_doc, next_ticket, false);
                    }
                    None => {
                        in_flight.remove(&key);
                        break;
                    }
                }
            }
        });
    }

    /// Runs a change: over JetStream at once (the consumer gave it to this replica; a version
    /// this replica handled already is skipped), else through a claim.
    async fn run_change(
        &self,
        rule: &Rule,
        event: &Event,
        doc: &Value,
        stopping: &CancellationToken,
        hold: &Option<Arc<Hold>>,
    ) -> Outcome {
        if !self.streamed {
            return self.run_claimed(rule, event, doc, stopping).await;
        }
        let key = event
            .data
            .get("resource_id")
            .and_then(Value::as_str)
            .map(|id| (rule.index, id.to_owned()));
        let version = version_of(event);
        // A version handled here already (a poll hit and its entry both came) runs once.
        if let (Some(key), Some(version)) = (&key, version)
            && self
                .handled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .covers(key, version)
        {
            return Outcome::Finished;
        }
        if self.run_with_retries(rule, event, doc, stopping).await {
            if let (Some(key), Some(version)) = (key, version) {
                self.handled
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remember(key, version);
            }
        } else if let Some(hold) = hold {
            hold.give_up();
        }
        Outcome::Finished
    }

    /// Claims the change at the owner, runs the handler while renewing the claim, then
    /// completes it (handled) or releases it (given up). A change without a version (an owner
    /// that predates versions) is run without a claim.
    async fn run_claimed(
        &self,
        rule: &Rule,
        event: &Event,
        doc: &Value,
        stopping: &CancellationToken,
    ) -> Outcome {
        let (Some(version), Some(id)) = (
            version_of(event),
            event.data.get("resource_id").and_then(Value::as_str),
        ) else {
            self.run_with_retries(rule, event, doc, stopping).await;
            return Outcome::Finished;
        };
        let args = ClaimArgs {
            collection: rule.collection.to_owned(),
            worker: self.name.clone(),
            resource_id: id.to_owned(),
            version,
            holder: self.node.id().to_owned(),
            lease_ms: self.lease.as_millis() as u64,
        };
        match claims::ask(&self.node, ClaimAction::Claim, &args).await {
            Ok(Claimed::Won) => {}
            Ok(Claimed::Done) => return Outcome::Finished,
            Ok(Claimed::Held { by }) => {
                tracing::debug!(topic = %event.topic, version, holder = %by, "change claimed by another replica: re-checked after the lease");
                // Past its lease (renewed every third of it) if its holder died meanwhile.
                return Outcome::Later(self.lease + self.lease / 10);
            }
            Err(e) => {
                tracing::warn!(topic = %event.topic, version, error = %e, "could not claim a change at its owner: trying again later");
                return Outcome::Later(self.lease.min(Duration::from_secs(1)));
            }
        }
        let renew = async {
            loop {
                tokio::time::sleep(self.lease / 3).await;
                match claims::ask(&self.node, ClaimAction::Claim, &args).await {
                    Ok(Claimed::Won) => {}
                    Ok(Claimed::Held { by }) => {
                        tracing::warn!(topic = %event.topic, version, holder = %by, "this replica's claim ran out while its handler ran (ZS_WORKER_LEASE_MS): another replica took the change over, it may run twice");
                    }
                    Ok(Claimed::Done) => {}
                    Err(e) => {
                        tracing::warn!(topic = %event.topic, version, error = %e, "could not renew a claim while its handler runs");
                    }
                }
            }
        };
        let handled = tokio::select! {
            handled = self.run_with_retries(rule, event, doc, stopping) => handled,
            () = renew => false,
        };
        let action = if handled {
            ClaimAction::Complete
        } else {
            ClaimAction::Release
        };
        if let Err(e) = claims::ask(&self.node, action, &args).await {
            tracing::warn!(topic = %event.topic, version, error = %e, "could not record a handled change at its owner: another replica may run it again after the lease");
        }
        Outcome::Finished
    }

    /// Looks at a change again after `after` (its claim was another replica's, or could not
    /// be asked): handled here if it is still the resource's current version, still matches,
    /// and is not done elsewhere meanwhile; a newer version is handled through its own change.
    fn recheck(
        self: &Arc<Self>,
        rule: Arc<Rule>,
        event: Event,
        ticket: Option<Arc<Hold>>,
        after: Duration,
    ) {
        let (Some(id), Some(version)) = (
            event
                .data
                .get("resource_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            version_of(&event),
        ) else {
            return;
        };
        let shared = self.clone();
        let stopping = self.node.shutdown().stopping().clone();
        tokio::spawn(async move {
            let look = async {
                let mut after = after;
                loop {
                    tokio::time::sleep(after).await;
                    let get = Call::Get { id: id.clone() }.into_request(rule.collection);
                    match shared.node.request_as::<Document<Value>>(get).await {
                        Ok(doc)
                            if doc.version == version
                                && rule.filter.matches(&doc.resource_data) =>
                        {
                            shared
                                .dispatch(rule.clone(), event, doc.resource_data, false, ticket)
                                .await;
                            return;
                        }
                        // Changed again (its newer change is handled through its own event),
                        // out of the filter, or deleted.
                        Ok(_) | Err(Error::NotFound { .. }) => return,
                        Err(e) => {
                            tracing::debug!(topic = %event.topic, error = %e, "could not re-read a change claimed elsewhere: trying again later");
                            after = shared.lease.min(Duration::from_secs(1));
                        }
                    }
                }
            };
            stopping.run_until_cancelled(look).await;
        });
    }

    /// Runs the handler, retrying it; whether it succeeded.
    async fn run_with_retries(
        &self,
        rule: &Rule,
        event: &Event,
        doc: &serde_json::Value,
        stopping: &CancellationToken,
    ) -> bool {
        let mut delay = self.backoff;
        let counters = &self.node.metrics().counters;
        for attempt in 1..=self.max_attempts {
            let run = (rule.handler)(self.node.clone(), event.clone(), Some(doc.clone()));
            match run.await {
                Ok(()) => {
                    counters
                        .worker_handled
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return true;
                }
                Err(e) if attempt < self.max_attempts && !stopping.is_cancelled() => {
                    counters
                        .worker_retried
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(topic = %event.topic, attempt, error = %e, "worker handler failed; retrying");
                    // A stopping worker retries no more: the next run's poll check will.
                    if stopping
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        return false;
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    counters
                        .worker_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(topic = %event.topic, attempts = attempt, error = %e, "worker handler failed; giving up until the next poll check");
                }
            }
        }
        false
    }
}

/// Follows one collection's changes from `since` (or from now), hands each to the rules,
/// and keeps the watermark of what was handled in `tracker`.
async fn follow(
    shared: Arc<Shared>,
    collection: &'static str,
    rules: Vec<Arc<Rule>>,
    live: crate::EventStream,
    since: Option<Cursor>,
    tracker: Arc<Tracker>,
    polls: Vec<Arc<Notify>>,
) {
    let node = shared.node.clone();
    if since.is_some() {
        // The logs to resume from are read from the owners: wait until one is known.
        while node
            .wait_for_collection(collection, Duration::from_secs(5))
            .await
            .is_err()
        {
            tracing::debug!(collection, "waiting for an owner to resume from");
        }
    }
    let topics: Topics = Arc::new(std::sync::RwLock::new(vec![collection.to_owned()]));
    let mut follower = Follower::new(node.clone(), topics.clone(), live, since);
    tracker.reset(follower.cursor().clone());
    let mut before = follower.cursor().clone();
    loop {
        while tracker.outstanding() >= MAX_OUTSTANDING {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match follower.next().await {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(collection, error = %e, "the worker's cursor expired: following from now (the poll check catches up)");
                let live = node.subscribe(collection);
                node.sync_subscriptions().await;
                follower = Follower::new(node.clone(), topics.clone(), live, None);
                tracker.reset(follower.cursor().clone());
                before = follower.cursor().clone();
                for poll in &polls {
                    poll.notify_one();
                }
            }
            Some(Ok(event)) => {
                let after = follower.cursor().clone();
                let ticket = Arc::new(Hold::Cursor(tracker.track(&before, &after)));
                before = after;
                on_event(&shared, &rules, event, ticket).await;
            }
        }
    }
}

/// Hands one event to every rule it matches; lets go of it once they are done.
async fn on_event(shared: &Arc<Shared>, rules: &[Arc<Rule>], event: Event, ticket: Arc<Hold>) {
    hand_over(shared, rules, event, &ticket).await;
    release(Some(ticket)).await;
}

async fn hand_over(shared: &Arc<Shared>, rules: &[Arc<Rule>], event: Event, ticket: &Arc<Hold>) {
    let action = event
        .data
        .get("action")
        .and_then(|a| a.as_str())
        .unwrap_or("");
    if matches!(ChangeKind::from_action(action), ChangeKind::Delete)
        || action == BuiltIn::AddLink.name()
    {
        return;
    }
    let doc = match event.data.get("resource_data") {
        Some(doc) if !doc.is_null() => doc.clone(),
        _ => {
            // No document in the event: fetch the current one.
            let (Some(id), Some(rule)) = (
                event.data.get("resource_id").and_then(|v| v.as_str()),
                rules.first(),
            ) else {
                return;
            };
            let get = Call::Get { id: id.to_owned() }.into_request(rule.collection);
            match shared.node.request_as::<Document<Value>>(get).await {
                Ok(reply) => reply.resource_data,
                Err(e) => {
                    tracing::debug!(topic = %event.topic, error = %e, "could not fetch the changed resource");
                    ticket.retry_soon();
                    return;
                }
            }
        }
    };
    for rule in rules {
        if rule.filter.matches(&doc) {
            shared
                .dispatch(
                    rule.clone(),
                    event.clone(),
                    doc.clone(),
                    false,
                    Some(ticket.clone()),
                )
                .await;
        }
    }
}

/// The resources that match a rule now. Every page is read before any handler runs: pages
/// move on by `skip`, and a handler that takes a resource out of the filter would otherwise
/// shift the later pages past resources never seen (the owner answers at most `ZS_MAX_PAGE`
/// per request).
async fn list_matching(shared: &Shared, rule: &Rule) -> Vec<Document<Value>> {
    let mut matching = Vec::new();
    let mut read_all = false;
    while !read_all {
        let list = Call::List(ListArgs {
            filter: Some(rule.query.filter.clone()),
            skip: Some(matching.len() as u64),
            paged: true,
            ..ListArgs::default()
        })
        .into_request(rule.collection);
        match shared.node.request_as::<Page>(list).await {
            Ok(page) => {
                read_all = page.items.is_empty() || !page.more;
                matching.extend(page.items);
            }
            Err(Error::UnknownCollection { .. } | Error::OwnerGone { .. }) => break,
            Err(e) => {
                tracing::warn!(collection = rule.collection, error = %e, "poll check failed");
                break;
            }
        }
    }
    matching
}

/// The poll check of one rule: every `interval` (the first at once when `now`), and when
/// `nudge` is notified (a cursor that expired).
async fn poll(
    shared: Arc<Shared>,
    rule: Arc<Rule>,
    interval: Duration,
    now: bool,
    nudge: Arc<Notify>,
) {
    let first = if now {
        tokio::time::Instant::now()
    } else {
        tokio::time::Instant::now() + interval
    };
    let mut ticker = tokio::time::interval_at(first, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first check of a group whose consumer this start created runs its hits at once: no
    // replica can have handled them through a consumer that did not exist (what changes from
    // now on comes through the consumer, and this replica runs a version once).
    let mut fresh_group = now;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = nudge.notified() => {}
        }
        let mut matching = list_matching(&shared, &rule).await;
        let fresh = std::mem::take(&mut fresh_group);
        if let Some(caught_up) = shared.caught_up.as_ref().filter(|_| !fresh) {
            // Over JetStream a poll hit is a change the stream missed: one whose resource kept
            // its version for a lease (its entry, if any, was delivered and handled meanwhile),
            // while the group's consumer has nothing pending or unacked.
            if matching.is_empty() {
                continue;
            }
            tokio::time::sleep(shared.lease).await;
            if !caught_up().await {
                continue;
            }
            let before: std::collections::HashSet<(String, u64)> = matching
                .into_iter()
                .map(|d| (d.resource_id, d.version))
                .collect();
            matching = list_matching(&shared, &rule).await;
            matching.retain(|d| before.contains(&(d.resource_id.clone(), d.version)));
        }
        for doc in matching {
            // Claimed by the document's current version, as its change's event would be.
            let data =
                serde_json::Map::from_iter([("version".to_owned(), Value::from(doc.version))]);
            let event = Event::resource(
                rule.collection,
                ChangeKind::Poll.as_str(),
                &doc.resource_id,
                data,
            );
            shared
                .dispatch(rule.clone(), event, doc.resource_data, true, None)
                .await;
        }
    }
}
