//! Worker groups over JetStream: one durable pull consumer per worker name on the cluster's
//! change-log stream, shared by the replicas.
//!
//! When the node's transport is NATS and the server has JetStream, a worker does not follow
//! the owners' logs nor claim changes at the owners: it consumes the change-log stream
//! `ZS_<PREFIX>_CHANGES` (subjects `<p>.log.<collection token>.<log token>.<seq>`, filled by
//! the owners; the contract is in [`crate::changes`]) through the durable consumer of its
//! name, which the server shares among the replicas: each entry goes to one replica at a time.
//!
//! - **Name**: the worker's name when it is 1 to 64 characters of `[A-Za-z0-9_-]`, else `x`
//!   and the first 32 hex digits of its SHA-256; with a cluster key, the keyed tag of the
//!   name's hex (16 hex digits, under the primary key: the name does not show on NATS, and a
//!   rotation that changes the primary key gives the group a new consumer).
//! - **Filter**: `<p>.log.<collection token>.>` for each watched collection (and each key of
//!   the ring).
//! - **Acks**: explicit; `ack_wait` is the worker's lease (`ZS_WORKER_LEASE_MS`); while this
//!   replica holds an entry (queued behind a running handler of its resource, or running) it
//!   sends a progress ack (`+WPI`) every third of the lease. It acks an entry once every rule
//!   it matches is done with it: handled, not matching, replaced in the queue by a newer change
//!   of the same resource, or (for a redelivery) no longer the resource's current version. A
//!   handler that gave up naks its entry with a delay of the poll interval; an entry queued
//!   when the worker stops is nak'ed at once (another replica takes it). An entry that does
//!   not open (garbage, another key, moved to another subject) or names a collection the
//!   worker does not watch is dropped, counted ([`StreamStats`]) and logged once per kind, and
//!   terminated (`+TERM`): never redelivered.
//! - **Start**: a consumer that does not exist yet is created delivering new entries (a new
//!   group follows from now; its poll check runs at once); an existing one resumes where the
//!   group left off (acked entries are not delivered again) and its first poll check waits an
//!   interval. A consumer whose settings differ (another lease, other collections) is updated.
//! - **Pulls**: a replica asks for at most as many entries as it has free handler slots
//!   (`concurrency`), so entries wait at the server, where any replica can take them, not in
//!   one replica's buffer.
//!
//! Without JetStream on the server (or when the stream cannot be reached at start) the worker
//! warns once and works as over ZeroMQ (the logs and claims at the owners).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use futures::StreamExt;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Hold, Rule, Shared, StreamStats, on_event, release, version_of};
use crate::changes::position_of;
use crate::medium::nats::NatsMedium;
use crate::medium::nats::{stream_config, stream_name};
use crate::medium::wire::Rejection;
use crate::protocol::{Call, Document};
use crate::security::DropLog;
use crate::{Error, Event, Node};

/// How long one pull waits at the server for entries before it is asked again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// A redelivered entry whose resource cannot be read now is offered again after this.
const RETRY_READ: Duration = Duration::from_secs(1);

/// Warned once per process: no JetStream on the server.
static WARNED: AtomicBool = AtomicBool::new(false);

/// The counters of a worker's consumer.
#[derive(Default)]
pub(crate) struct Counters {
    delivered: AtomicU64,
    redelivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    progress: AtomicU64,
    dropped: DropLog,
}

impl Counters {
    pub(crate) fn stats(&self) -> StreamStats {
        StreamStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            redelivered: self.redelivered.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            naked: self.naked.load(Ordering::Relaxed),
            progress: self.progress.load(Ordering::Relaxed),
            dropped: self.dropped.count(),
        }
    }

    fn drop_entry(&self, reason: &str) {
        self.dropped
            .drop_from("jetstream", "change-log entry", reason);
    }
}

/// The group's consumer, as this replica opened it.
pub(crate) struct LogConsumer {
    consumer: PullConsumer,
    medium: NatsMedium,
    /// `<p>.log.`
    base: String,
    /// The collection each collection token (under each key of the ring) stands for.
    tokens: HashMap<String, &'static str>,
    /// Whether this start created the consumer (nothing to resume: poll at once).
    pub(crate) created: bool,
    pub(crate) counters: Arc<Counters>,
}

/// The durable consumer's name for a worker's name (see the module docs).
pub(crate) fn consumer_name(medium: &NatsMedium, worker: &str) -> String {
    if medium.wire().key().is_some() {
        return String::from_utf8_lossy(&medium.wire().topic_frame(&hex::encode(worker)))
            .into_owned();
    }
    let safe = !worker.is_empty()
        && worker.len() <= 64
        && worker
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if safe {
        worker.to_owned()
    } else {
        let digest = sha2::Sha256::digest(worker.as_bytes());
        format!("x{}", &hex::encode(digest)[..32])
    }
}

/// Opens the group's consumer for `collections` on the node's NATS connection: `None` when the
/// node is not on NATS, or (warned once) when JetStream cannot be used.
pub(crate) async fn open(
    node: &Node,
    worker: &str,
    collections: &[&'static str],
    lease: Duration,
) -> Option<LogConsumer> {
    let medium = node.medium().as_nats()?.clone();
    if !medium.config().nats_jetstream {
        // ZS_NATS_JETSTREAM=off: as over ZeroMQ.
        return None;
    }
    match try_open(node, &medium, worker, collections, lease).await {
        Ok(consumer) => Some(consumer),
        Err(e) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(worker, error = %e, "no JetStream on the NATS server: the worker group follows the owners' change logs and claims changes at the owners");
            } else {
                tracing::debug!(worker, error = %e, "no JetStream: claims at the owners");
            }
            None
        }
    }
}

async fn try_open(
    node: &Node,
    medium: &NatsMedium,
    worker: &str,
    collections: &[&'static str],
    lease: Duration,
) -> Result<LogConsumer, String> {
    let js = medium.jetstream().map_err(|e| e.to_string())?;
    let prefix = medium.subjects().prefix().to_owned();
    let base = medium.subjects().log_base();
    // Created as the owners create it when no owner did yet; its settings are the owners'
    // (their ZS_CHANGE_LOG_MS), which a worker does not change.
    let stream = js
        .get_or_create_stream(stream_config(
            medium.subjects(),
            node.limits().change_log.max_age,
            medium.config().nats_replicas,
        ))
        .await
        .map_err(|e| format!("the change-log stream: {e}"))?;
    let mut tokens = HashMap::new();
    let mut filters = Vec::new();
    for &collection in collections {
        for token in medium.wire().topic_filters(collection) {
            filters.push(format!("{base}{token}.>"));
            tokens.insert(token, collection);
        }
    }
    filters.sort();
    let name = consumer_name(medium, worker);
    let wanted = |deliver_policy| pull::Config {
        durable_name: Some(name.clone()),
        description: Some("zeroservices worker group".to_owned()),
        deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: lease,
        max_deliver: -1,
        filter_subjects: filters.clone(),
        ..Default::default()
    };
    let mut created = false;
    match stream.consumer_info(&name).await {
        Ok(info) => {
            let config = &info.config;
            let mut current = config.filter_subjects.clone();
            if !config.filter_subject.is_empty() {
                current.push(config.filter_subject.clone());
            }
            current.sort();
            let same = config.ack_wait == lease
                && config.ack_policy == AckPolicy::Explicit
                && config.max_deliver == -1
                && current == filters;
            if !same {
                // The group's position stays; its settings become this replica's.
                stream
                    .update_consumer(wanted(config.deliver_policy))
                    .await
                    .map_err(|e| format!("updating the consumer {name}: {e}"))?;
                tracing::info!(worker, consumer = %name, "the worker group's consumer takes this replica's settings");
            }
        }
        Err(_) => {
            // Another replica may create it at the same time: the same config is no error.
            stream
                .create_consumer_strict(wanted(DeliverPolicy::New))
                .await
                .map_err(|e| format!("creating the consumer {name}: {e}"))?;
            created = true;
        }
    }
    let consumer: PullConsumer = stream
        .get_consumer(&name)
        .await
        .map_err(|e| format!("the consumer {name}: {e}"))?;
    tracing::info!(worker, consumer = %name, stream = %stream_name(&prefix), created, "the worker consumes the change-log stream");
    Ok(LogConsumer {
        consumer,
        medium: medium.clone(),
        base,
        tokens,
        created,
        counters: Arc::new(Counters::default()),
    })
}

impl LogConsumer {
    /// The consumer (a handle to ask the server about it).
    pub(crate) fn consumer(&self) -> PullConsumer {
        self.consumer.clone()
    }
}

/// Whether the group's consumer has nothing pending (not yet delivered) and nothing awaiting
/// an ack; `false` when the server cannot be asked.
pub(crate) async fn caught_up(mut consumer: PullConsumer) -> bool {
    consumer
        .info()
        .await
        .is_ok_and(|info| info.num_pending == 0 && info.num_ack_pending == 0)
}

/// One entry this replica holds: progress acks while it is held, one verdict when released.
pub(crate) struct Delivery {
    acker: Option<Arc<Acker>>,
    progress: tokio::task::JoinHandle<()>,
    /// Offered again after this many ms (a handler gave up, or its resource did not read);
    /// `u64::MAX`: done.
    again_ms: AtomicU64,
    nak_delay: Duration,
    stopping: CancellationToken,
    counters: Arc<Counters>,
}

impl Delivery {
    fn new(
        acker: Acker,
        lease: Duration,
        nak_delay: Duration,
        stopping: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        let acker = Arc::new(acker);
        let ticking = acker.clone();
        let count = counters.clone();
        let progress = tokio::spawn(async move {
            let every = (lease / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                if ticking.ack_with(AckKind::Progress).await.is_ok() {
                    count.progress.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Self {
            acker: Some(acker),
            progress,
            again_ms: AtomicU64::new(u64::MAX),
            nak_delay,
            stopping,
            counters,
        }
    }

    /// A rule's handler gave up on it: offered again after the poll interval.
    pub(crate) fn give_up(&self) {
        let ms = self.nak_delay.as_millis().min(u128::from(u64::MAX - 1)) as u64;
        self.again_ms.store(ms, Ordering::Relaxed);
    }

    /// Its resource could not be read: offered again shortly (unless a handler gave up).
    pub(crate) fn retry_soon(&self) {
        let ms = RETRY_READ.as_millis() as u64;
        let _ = self
            .again_ms
            .compare_exchange(u64::MAX, ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// What the server hears: done, again later (gave up), or again now (left on a stop).
    fn verdict(&self, dropped: bool) -> AckKind {
        let again = self.again_ms.load(Ordering::Relaxed);
        if again != u64::MAX {
            AckKind::Nak(Some(Duration::from_millis(again)))
        } else if dropped && self.stopping.is_cancelled() {
            AckKind::Nak(None)
        } else {
            AckKind::Ack
        }
    }

    fn count(&self, kind: &AckKind) {
        let counter = match kind {
            AckKind::Ack | AckKind::Term => &self.counters.acked,
            _ => &self.counters.naked,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the verdict now (the last rule is done with it).
    pub(crate) async fn settle(mut self) {
        let kind = self.verdict(false);
        self.send(kind).await;
    }

    async fn send(&mut self, kind: AckKind) {
        self.progress.abort();
        if let Some(acker) = self.acker.take() {
            self.count(&kind);
            if let Err(e) = acker.ack_with(kind).await {
                tracing::debug!(error = %e, "could not ack a change-log entry: it comes again after the lease");
            }
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.progress.abort();
        let Some(acker) = self.acker.take() else {
            return;
        };
        let kind = self.verdict(true);
        self.count(&kind);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = acker.ack_with(kind).await;
            });
        }
    }
}

/// Consumes the group's entries until the node stops: pulls as many as there are free handler
/// slots, and hands each to the rules of its collection.
pub(crate) async fn consume(
    shared: Arc<Shared>,
    log: LogConsumer,
    rules: HashMap<&'static str, Vec<Arc<Rule>>>,
    concurrency: usize,
    nak_delay: Duration,
) {
    let log = Arc::new(log);
    let (tx, mut rx) = mpsc::channel::<(async_nats::Message, i64, Delivery)>(concurrency);
    let stopping = shared.node.shutdown().stopping().clone();
    let reader = {
        let (log, shared) = (log.clone(), shared.clone());
        async move {
            let mut failing = false;
            loop {
                let queued = concurrency.saturating_sub(tx.capacity());
                let free = shared.semaphore.available_permits().saturating_sub(queued);
                if free == 0 {
                    // Wait for a free handler slot and room in the queue.
                    let Ok(slot) = shared.semaphore.acquire().await else {
                        return;
                    };
                    drop(slot);
                    let Ok(room) = tx.reserve().await else { return };
                    drop(room);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let pulled = log
                    .consumer
                    .batch()
                    .max_messages(free)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await;
                let mut batch = match pulled {
                    Ok(batch) => {
                        if failing {
                            tracing::info!("the worker pulls from the change-log stream again");
                            failing = false;
                        }
                        batch
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(error = %e, "cannot pull from the change-log stream: trying again every second");
                            failing = true;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(message) = batch.next().await {
                    let message = match message {
                        Ok(message) => message,
                        Err(e) => {
                            tracing::debug!(error = %e, "a pull from the change-log stream ended");
                            break;
                        }
                    };
                    let delivered = message.info().map_or(1, |info| info.delivered);
                    let (message, acker) = message.split();
                    log.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    let held = Delivery::new(
                        acker,
                        shared.lease,
                        nak_delay,
                        stopping.clone(),
                        log.counters.clone(),
                    );
                    if tx.send((message, delivered, held)).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let dispatcher = async {
        while let Some((message, delivered, held)) = rx.recv().await {
            take(&shared, &log, &rules, message, delivered, held).await;
        }
    };
    tokio::select! {
        () = reader => {}
        () = dispatcher => {}
    }
}

/// Opens one entry and hands it to the rules of its collection.
async fn take(
    shared: &Arc<Shared>,
    log: &LogConsumer,
    rules: &HashMap<&'static str, Vec<Arc<Rule>>>,
    message: async_nats::Message,
    delivered: i64,
    mut held: Delivery,
) {
    let counters = &log.counters;
    let subject = message.subject.as_str();
    let Some(context) = subject.strip_prefix(&log.base) else {
        counters.drop_entry("a subject outside the change log");
        return held.send(AckKind::Term).await;
    };
    let collection = context
        .split('.')
        .next()
        .and_then(|token| log.tokens.get(token).copied());
    let Some(collection) = collection else {
        counters.drop_entry("a collection this worker does not watch");
        return held.send(AckKind::Term).await;
    };
    let (topic, data) = match log
        .medium
        .open_log_entry(context.as_bytes(), &message.payload)
    {
        Ok(entry) => entry,
        Err(rejection) => {
            counters.drop_entry(&reason(&rejection));
            return held.send(AckKind::Term).await;
        }
    };
    if topic.split('.').next() != Some(collection) {
        counters.drop_entry("its topic is not its subject's collection");
        return held.send(AckKind::Term).await;
    }
    let event = Event { topic, data };
    if !names_its_subject(&log.medium, collection, &event, context) {
        counters.drop_entry("its cursor is not its subject's entry");
        return held.send(AckKind::Term).await;
    }
    let Some(rules) = rules.get(collection) else {
        counters.drop_entry("a collection this worker does not watch");
        return held.send(AckKind::Term).await;
    };
    let mut event = event;
    if delivered > 1 {
        // Its holder died (no progress for a lease), stopped, or gave up: it runs again only
        // if it is still the resource's current version (a newer one comes as its own entry).
        counters.redelivered.fetch_add(1, Ordering::Relaxed);
        let (Some(id), Some(version)) = (
            event.data.get("resource_id").and_then(Value::as_str),
            version_of(&event),
        ) else {
            return on_event(shared, rules, event, Arc::new(Hold::Message(held))).await;
        };
        let get = Call::Get { id: id.to_owned() }.into_request(collection);
        match shared.node.request_as::<Document<Value>>(get).await {
            Ok(doc) if doc.version == version => {
                if let Value::Object(map) = &mut event.data {
                    map.insert("resource_data".to_owned(), doc.resource_data);
                }
            }
            // Changed since, or deleted: done here.
            Ok(_) | Err(Error::NotFound { .. }) => {
                return release(Some(Arc::new(Hold::Message(held)))).await;
            }
            Err(e) => {
                tracing::debug!(topic = %event.topic, error = %e, "could not re-read a redelivered change: offered again shortly");
                return held.send(AckKind::Nak(Some(RETRY_READ))).await;
            }
        }
    }
    on_event(shared, rules, event, Arc::new(Hold::Message(held))).await;
}

/// Whether the entry's cursor names the log and sequence number of its subject
/// (`<collection token>.<log token>.<seq>` after `<p>.log.`): an entry copied to another
/// subject is not taken (with a key it does not even open).
fn names_its_subject(medium: &NatsMedium, collection: &str, event: &Event, context: &str) -> bool {
    use base64::Engine;
    let Some((key, seq)) = position_of(event) else {
        return false;
    };
    let Some(log) = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(key)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|named| {
            named
                .strip_prefix(collection)
                .and_then(|rest| rest.strip_prefix('@'))
                .map(str::to_owned)
        })
    else {
        return false;
    };
    medium
        .subjects()
        .log_frame(medium.wire(), collection, &log)
        .is_ok_and(|frame| context == format!("{frame}.{seq}"))
}

fn reason(rejection: &Rejection) -> String {
    match rejection {
        Rejection::Malformed(reason) | Rejection::Answerable { reason, .. } => reason.clone(),
        Rejection::Unsigned(reason) | Rejection::Replayed(reason) => (*reason).to_owned(),
        Rejection::Version => "another protocol version".to_owned(),
        Rejection::Oversized(n) => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_names_are_subject_safe() {
        use crate::config::{NatsServer, NetworkConfig, Transport};
        let plain = NetworkConfig {
            transport: Transport::Nats(vec![NatsServer::parse("nats://127.0.0.1:9").unwrap()]),
            ..NetworkConfig::default()
        };
        let medium = NatsMedium::new(crate::medium::NatsLink::new(&plain), plain.clone());
        assert_eq!(consumer_name(&medium, "power_worker"), "power_worker");
        let odd = consumer_name(&medium, "power.worker *>");
        assert!(odd.starts_with('x') && odd.len() == 33, "{odd}");
        assert_ne!(odd, consumer_name(&medium, "power.worker *"));
        assert_eq!(consumer_name(&medium, &"w".repeat(65)).len(), 33);
        let keyed = NetworkConfig {
            cluster_key: Some(crate::security::ClusterKey::new("k")),
            ..plain
        };
        let medium = NatsMedium::new(crate::medium::NatsLink::new(&keyed), keyed);
        let tag = consumer_name(&medium, "power_worker");
        assert_eq!(tag.len(), 16, "{tag}");
        assert!(tag.chars().all(|c| c.is_ascii_hexdigit()), "{tag}");
    }
}
