//! Workers: react to changes of resources anywhere in the cluster, as the original's
//! `ResourceWorker`.
//!
//! A worker is a node of kind `worker` that watches collections. Each rule pairs a filter with a
//! handler: the handler runs for every created, patched or action-changed resource that matches
//! (fetching the current document when the event carries none), and again, every poll interval,
//! for every resource that still matches (the original's "poll check"), so a change missed while
//! the worker was down is caught up. Handler errors are logged and retried with backoff; a
//! semaphore bounds how many handlers run at once; a resource is never handled twice at once, and
//! a change that arrives while its resource is being handled runs right after.
//!
//! When the worker's node stops ([`RunningWorker::stop`], [`Node::stop`], a signal in
//! [`Worker::run`]), no new handler starts and the running ones finish, within the node's
//! shutdown timeout (`ZS_SHUTDOWN_TIMEOUT_MS`, default 5 s); a change queued behind a running
//! handler and a retry not started yet are left to the next poll check of the next run.
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

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::protocol::{BuiltIn, Call, Document, ListArgs, Page};
use crate::query::Filter;
use crate::resource::ChangeKind;
use crate::settings::Settings;
use crate::{Change, Context, Error, Event, Node, NodeBuilder, NodeKind, Query, Resource, Result};

/// The default poll-check interval (the original's 10 s); `ZS_WORKER_POLL_MS` overrides it.
pub use crate::settings::DEFAULT_POLL_INTERVAL;

type Handler = Arc<
    dyn Fn(Node, Event, Option<serde_json::Value>) -> BoxFuture<'static, Result<()>> + Send + Sync,
>;

struct Rule {
    collection: &'static str,
    query: Query,
    filter: Filter,
    /// Runs the user's handler on an event (or a poll hit), given the current document.
    handler: Handler,
}

/// A worker: rules that react to changes of resources; see the module docs.
pub struct Worker {
    name: String,
    rules: Vec<Rule>,
    errors: Vec<Error>,
    poll_interval: Option<Duration>,
    concurrency: usize,
    max_attempts: u32,
    backoff: Duration,
}

impl Worker {
    /// A worker named `name` with no rules yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            rules: Vec::new(),
            errors: Vec::new(),
            poll_interval: None,
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
                    handler(ctx, change).await
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

    /// Takes the poll interval from `settings` (`ZS_WORKER_POLL_MS`).
    pub fn settings(self, settings: &Settings) -> Self {
        self.poll_interval(settings.worker_poll_interval())
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
    pub async fn start(self, builder: NodeBuilder) -> Result<RunningWorker> {
        if let Some(e) = self.errors.into_iter().next() {
            return Err(e);
        }
        let poll_interval = match self.poll_interval {
            Some(interval) => interval,
            None => Settings::from_env()?.worker_poll_interval(),
        };
        let mut builder = builder.kind(NodeKind::Worker);
        let mut watched = HashSet::new();
        for rule in &self.rules {
            if watched.insert(rule.collection) {
                builder = builder.watch(rule.collection);
            }
        }
        let node = builder.start().await?;
        let shared = Arc::new(Shared {
            node: node.clone(),
            semaphore: Arc::new(Semaphore::new(self.concurrency)),
            in_flight: Mutex::new(HashMap::new()),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
        });
        let mut tasks = JoinSet::new();
        let rules: Vec<_> = self
            .rules
            .into_iter()
            .map(|rule| (node.subscribe(rule.collection), Arc::new(rule)))
            .collect();
        // Peers known already send the watched events before the first check runs.
        node.sync_subscriptions().await;
        // The rules start no new handler once the node is stopping.
        let stopping = node.shutdown().stopping().clone();
        for (events, rule) in rules {
            let watch = watch_events(shared.clone(), rule.clone(), events);
            let until = stopping.clone();
            tasks.spawn(async move { until.run_until_cancelled(watch).await.unwrap_or(()) });
            let poll = poll(shared.clone(), rule, poll_interval);
            let until = stopping.clone();
            tasks.spawn(async move { until.run_until_cancelled(poll).await.unwrap_or(()) });
        }
        tracing::info!(worker = %self.name, node = %node.id(), "worker started");
        Ok(RunningWorker { node, tasks })
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
    tasks: JoinSet<()>,
}

impl RunningWorker {
    /// The worker's node (to call collections, or look at peers).
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Stops the rules, lets the handlers running now finish (at most the node's shutdown
    /// timeout, `ZS_SHUTDOWN_TIMEOUT_MS`) and leaves the cluster: see [`Node::stop`].
    pub async fn stop(mut self) {
        self.node.stop().await;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A change waiting for its resource's running handler: the event and the document.
type Pending = (Event, serde_json::Value);

struct Shared {
    node: Node,
    semaphore: Arc<Semaphore>,
    /// Resources being handled, each with the newest change that arrived meanwhile (run next).
    in_flight: Mutex<HashMap<(String, String), Option<Pending>>>,
    max_attempts: u32,
    backoff: Duration,
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
    ) {
        let Some(id) = event.data.get("resource_id").and_then(|v| v.as_str()) else {
            return;
        };
        let key = (rule.collection.to_owned(), id.to_owned());
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(next) = in_flight.get_mut(&key) {
                if !from_poll {
                    *next = Some((event, doc));
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
            let (mut event, mut doc) = (event, doc);
            loop {
                // Past the shutdown timeout the handler is dropped where it is.
                let run = shared.run_with_retries(&rule, &event, &doc, &stopping);
                if abort.run_until_cancelled(run).await.is_none() {
                    tracing::warn!(topic = %event.topic, "worker handler dropped at the shutdown timeout");
                    break;
                }
                if stopping.is_cancelled() {
                    // Queued changes wait for the next run's poll check.
                    break;
                }
                let mut in_flight = shared.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                match in_flight.get_mut(&key).and_then(Option::take) {
                    Some((next_event, next_doc)) => {
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
                        (event, doc) = (next_event, next_doc);
                    }
                    None => {
                        in_flight.remove(&key);
                        break;
                    }
                }
            }
        });
    }

    async fn run_with_retries(
        &self,
        rule: &Rule,
        event: &Event,
        doc: &serde_json::Value,
        stopping: &CancellationToken,
    ) {
        let mut delay = self.backoff;
        for attempt in 1..=self.max_attempts {
            let run = (rule.handler)(self.node.clone(), event.clone(), Some(doc.clone()));
            match run.await {
                Ok(()) => return,
                Err(e) if attempt < self.max_attempts && !stopping.is_cancelled() => {
                    tracing::warn!(topic = %event.topic, attempt, error = %e, "worker handler failed; retrying");
                    // A stopping worker retries no more: the next run's poll check will.
                    if stopping
                        .run_until_cancelled(tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    tracing::error!(topic = %event.topic, attempts = attempt, error = %e, "worker handler failed; giving up until the next poll check");
                }
            }
        }
    }
}

async fn watch_events(shared: Arc<Shared>, rule: Arc<Rule>, mut events: crate::EventStream) {
    while let Some(event) = events.next().await {
        let action = event
            .data
            .get("action")
            .and_then(|a| a.as_str())
            .unwrap_or("");
        if matches!(ChangeKind::from_action(action), ChangeKind::Delete)
            || action == BuiltIn::AddLink.name()
        {
            continue;
        }
        let doc = match event.data.get("resource_data") {
            Some(doc) if !doc.is_null() => doc.clone(),
            _ => {
                // No document in the event: fetch the current one.
                let Some(id) = event.data.get("resource_id").and_then(|v| v.as_str()) else {
                    continue;
                };
                let get = Call::Get { id: id.to_owned() }.into_request(rule.collection);
                match shared.node.request_as::<Document<Value>>(get).await {
                    Ok(reply) => reply.resource_data,
                    Err(e) => {
                        tracing::debug!(topic = %event.topic, error = %e, "could not fetch the changed resource");
                        continue;
                    }
                }
            }
        };
        if rule.filter.matches(&doc) {
            shared.dispatch(rule.clone(), event, doc, false).await;
        }
    }
}

async fn poll(shared: Arc<Shared>, rule: Arc<Rule>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Every page is read before any handler runs: pages move on by `skip`, and a handler
        // that takes a resource out of the filter would otherwise shift the later pages past
        // resources never seen (the owner answers at most `ZS_MAX_PAGE` per request).
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
        for doc in matching {
            let event = Event::resource(
                rule.collection,
                ChangeKind::Poll.as_str(),
                &doc.resource_id,
                Default::default(),
            );
            shared
                .dispatch(rule.clone(), event, doc.resource_data, true)
                .await;
        }
    }
}
