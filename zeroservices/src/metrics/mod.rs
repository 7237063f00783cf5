//! The node's own counters, read by `GET /metrics` (see [`crate::http`], `ZS_METRICS_PORT`).
//!
//! Counting is atomics only: every number here is an `AtomicU64` (or `AtomicI64` for a gauge)
//! bumped with a relaxed add. A request's labels (collection, action) are resolved once per
//! request by a lookup in a table built when collections are declared (this node's
//! [`register`](crate::Node::register), a peer's announcement): no allocation, no string
//! formatting on the hot path. A collection or an action nobody declared is counted under
//! [`OTHER`], so an id or a client's made-up name never becomes a label value; the error
//! outcome is the error's [`kind`](crate::Error::kind), a fixed set ([`OUTCOMES`]).
//!
//! Encoding (the Prometheus / OpenMetrics text) happens at scrape time only, in
//! `export.rs` (feature `http`), which also reads the counters that already exist
//! ([`NodeStats`](crate::NodeStats), the media's and discoveries' stats) instead of counting
//! them twice.

// Without HTTP nothing reads the counters (no `/metrics`); they are still counted.
#![cfg_attr(not(feature = "http"), allow(dead_code))]

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::protocol::BuiltIn;
use crate::resource::ResourceInfo;
use crate::{Error, Result};

#[cfg(feature = "http")]
pub(crate) mod export;

/// The label value of a collection or an action that was not declared.
pub(crate) const OTHER: &str = "other";

/// Whether `name` may be a label value as it is: 1 to 128 of `A-Z a-z 0-9 _ . : -`. The text
/// encoder (prometheus-client 0.24) writes label values without escaping them, so a declared
/// name with a quote, a backslash or a line break (a hostile peer's announcement) is not
/// declared: it is counted under [`OTHER`].
fn plain(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

/// The outcome label values: `ok`, then every [`Error::kind`].
pub(crate) const OUTCOMES: [&str; 20] = [
    "ok",
    "unknown_collection",
    "unknown_action",
    "not_found",
    "validation",
    "duplicate_id",
    "precondition_failed",
    "conflict",
    "bad_request",
    "limit",
    "forbidden",
    "timeout",
    "owner_gone",
    "request_in_progress",
    "idempotency_key_reused",
    "unavailable",
    "failed",
    "internal",
    "store_conflict",
    "cursor_expired",
];

/// The index in [`OUTCOMES`] of a request's result (an unlisted kind counts as `internal`).
fn outcome(error: Option<&Error>) -> usize {
    match error {
        None => 0,
        Some(e) => {
            let kind = e.kind();
            OUTCOMES.iter().position(|o| *o == kind).unwrap_or(17)
        }
    }
}

/// The upper bounds of the latency buckets, in seconds (100 µs to 10 s).
pub(crate) const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// [`BUCKETS`] in nanoseconds.
const BUCKETS_NS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// A latency histogram of atomics: one count per bucket (the last is `+Inf`) and the sum in
/// nanoseconds. (prometheus-client's own histogram takes a lock per observation.)
#[derive(Default)]
pub(crate) struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Counts one observation of `elapsed`.
    pub(crate) fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|&bound| bound < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The sum in seconds, the count, and each bucket's own count (not cumulative; the last
    /// is `+Inf`).
    pub(crate) fn snapshot(&self) -> (f64, u64, [u64; BUCKETS.len() + 1]) {
        let buckets: [u64; BUCKETS.len() + 1] =
            std::array::from_fn(|i| self.buckets[i].load(Ordering::Relaxed));
        let count = buckets.iter().sum();
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (sum, count, buckets)
    }
}

/// Which end of a request counted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    /// The node that asked ([`Node::request`](crate::Node::request), the HTTP API): the time
    /// includes the trip to the owner.
    Caller = 0,
    /// The node whose service handled it (for itself or for a peer).
    Owner = 1,
}

impl Side {
    pub(crate) const ALL: [Side; 2] = [Side::Caller, Side::Owner];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Side::Caller => "caller",
            Side::Owner => "owner",
        }
    }
}

/// The counters of one side of one action.
#[derive(Default)]
pub(crate) struct SideMetrics {
    pub(crate) outcomes: [AtomicU64; OUTCOMES.len()],
    pub(crate) latency: Histogram,
}

impl SideMetrics {
    /// Counts a request that started at `start` and ended with `result`.
    pub(crate) fn record<T>(&self, start: Instant, result: &Result<T>) {
        self.latency.observe(start.elapsed());
        self.outcomes[outcome(result.as_ref().err())].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether anything was counted.
    pub(crate) fn used(&self) -> bool {
        self.outcomes.iter().any(|o| o.load(Ordering::Relaxed) > 0)
    }
}

/// The counters of one action of one collection, both sides.
#[derive(Default)]
pub(crate) struct ActionMetrics {
    sides: [SideMetrics; 2],
}

impl ActionMetrics {
    pub(crate) fn side(&self, side: Side) -> &SideMetrics {
        &self.sides[side as usize]
    }
}

/// The actions of one collection, and `other`.
#[derive(Default)]
struct CollectionTable {
    actions: HashMap<Box<str>, Arc<ActionMetrics>>,
    other: Arc<ActionMetrics>,
}

impl CollectionTable {
    /// The built-in actions and `custom` ones.
    fn new<'a>(custom: impl IntoIterator<Item = &'a str>) -> Self {
        let mut table = Self::default();
        table.add(custom);
        table
    }

    fn add<'a>(&mut self, custom: impl IntoIterator<Item = &'a str>) {
        for name in BuiltIn::ALL.iter().map(|b| b.name()).chain(custom) {
            if name != OTHER && plain(name) && !self.actions.contains_key(name) {
                self.actions.insert(name.into(), Arc::default());
            }
        }
    }

    fn get(&self, action: &str) -> &Arc<ActionMetrics> {
        self.actions.get(action).unwrap_or(&self.other)
    }

    fn has_all<'a>(&self, mut names: impl Iterator<Item = &'a str>) -> bool {
        names.all(|n| n == OTHER || !plain(n) || self.actions.contains_key(n))
    }

    /// `(action, metrics)` sorted by action, `other` last.
    fn sorted(&self) -> Vec<(&str, &Arc<ActionMetrics>)> {
        let mut all: Vec<(&str, &Arc<ActionMetrics>)> =
            self.actions.iter().map(|(k, v)| (&**k, v)).collect();
        all.sort_by_key(|(k, _)| *k);
        all.push((OTHER, &self.other));
        all
    }
}

/// Events, peers, websockets, store operations, workers: plain counters and gauges.
#[derive(Default)]
pub(crate) struct Counters {
    /// Events this node published ([`Node::publish`](crate::Node::publish), its changes).
    pub(crate) events_published: AtomicU64,
    /// Events handed to this node's own subscribers (hooks, streams, websockets), its own and
    /// its peers'.
    pub(crate) events_delivered: AtomicU64,
    /// Peers that joined.
    pub(crate) peers_joined: AtomicU64,
    /// Peers that left (goodbye or silence).
    pub(crate) peers_left: AtomicU64,
    /// Websocket clients connected now, every HTTP server of the node together.
    pub(crate) ws_clients: AtomicI64,
    /// Messages queued to websocket clients and not written yet.
    pub(crate) ws_queued: AtomicI64,
    /// Websocket clients disconnected for being too slow (their queue was full, or their
    /// stream fell more than `ZS_WS_MAX_LAG` changes behind).
    pub(crate) ws_too_slow: AtomicU64,
    /// Of those, the ones whose stream fell more than `ZS_WS_MAX_LAG` changes behind.
    pub(crate) ws_too_far_behind: AtomicU64,
    /// Worker changes whose handler succeeded.
    pub(crate) worker_handled: AtomicU64,
    /// Worker handler runs that failed and were tried again.
    pub(crate) worker_retried: AtomicU64,
    /// Worker changes whose handler failed every attempt.
    pub(crate) worker_failed: AtomicU64,
}

/// A store operation, the label of `zs_store_operation_duration_seconds`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoreOp {
    Insert = 0,
    Get = 1,
    Replace = 2,
    Patch = 3,
    Delete = 4,
    List = 5,
}

impl StoreOp {
    pub(crate) const ALL: [StoreOp; 6] = [
        StoreOp::Insert,
        StoreOp::Get,
        StoreOp::Replace,
        StoreOp::Patch,
        StoreOp::Delete,
        StoreOp::List,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            StoreOp::Insert => "insert",
            StoreOp::Get => "get",
            StoreOp::Replace => "replace",
            StoreOp::Patch => "patch",
            StoreOp::Delete => "delete",
            StoreOp::List => "list",
        }
    }
}

/// Every counter of one node.
#[derive(Default)]
pub(crate) struct Metrics {
    collections: RwLock<HashMap<Box<str>, CollectionTable>>,
    /// The collections nobody declared: the built-in actions and `other`.
    undeclared: CollectionTable,
    pub(crate) counters: Counters,
    store_ops: [Histogram; StoreOp::ALL.len()],
}

impl Metrics {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            undeclared: CollectionTable::new([]),
            ..Self::default()
        })
    }

    /// The counters of `action` on `collection` (`other` for either when not declared).
    pub(crate) fn action(&self, collection: &str, action: &str) -> Arc<ActionMetrics> {
        let collections = self.collections.read().unwrap_or_else(|e| e.into_inner());
        collections
            .get(collection)
            .unwrap_or(&self.undeclared)
            .get(action)
            .clone()
    }

    /// Adds the collections and actions of `resources` to the label sets (a no-op, under a
    /// read lock, when they are known already: a peer's heartbeat).
    pub(crate) fn declare(&self, resources: &[ResourceInfo]) {
        let known = |collections: &HashMap<Box<str>, CollectionTable>| {
            resources.iter().all(|r| {
                r.name == OTHER
                    || !plain(&r.name)
                    || collections
                        .get(r.name.as_str())
                        .is_some_and(|t| t.has_all(r.actions.iter().map(|a| a.name.as_str())))
            })
        };
        if known(&self.collections.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut collections = self.collections.write().unwrap_or_else(|e| e.into_inner());
        for r in resources {
            if r.name == OTHER || !plain(&r.name) {
                continue;
            }
            let actions = r.actions.iter().map(|a| a.name.as_str());
            match collections.get_mut(r.name.as_str()) {
                Some(table) => table.add(actions),
                None => {
                    collections.insert(r.name.as_str().into(), CollectionTable::new(actions));
                }
            }
        }
    }

    /// The latency histogram of a store operation.
    pub(crate) fn store_op(&self, op: StoreOp) -> &Histogram {
        &self.store_ops[op as usize]
    }

    /// Calls `f` with `(collection, action, metrics)` for every label set, sorted, `other`
    /// last.
    pub(crate) fn each_action(&self, mut f: impl FnMut(&str, &str, &ActionMetrics)) {
        let collections = self.collections.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<&str> = collections.keys().map(|k| &**k).collect();
        names.sort_unstable();
        let tables = names
            .into_iter()
            .filter_map(|n| collections.get(n).map(|t| (n, t)))
            .chain(std::iter::once((OTHER, &self.undeclared)));
        for (collection, table) in tables {
            for (action, metrics) in table.sorted() {
                f(collection, action, metrics);
            }
        }
    }
}

/// Times `fut` into the histogram of store operation `op`.
pub(crate) async fn timed_store<T>(
    metrics: &Metrics,
    op: StoreOp,
    fut: impl std::future::Future<Output = T>,
) -> T {
    let start = Instant::now();
    let out = fut.await;
    metrics.store_op(op).observe(start.elapsed());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{ActionInfo, ActionKind};

    fn info(name: &str, actions: &[&str]) -> ResourceInfo {
        ResourceInfo {
            name: name.to_owned(),
            schema: serde_json::json!({}),
            actions: actions
                .iter()
                .map(|a| ActionInfo {
                    name: (*a).to_owned(),
                    kind: ActionKind::Mutate,
                    doc: None,
                    args_schema: None,
                    result_schema: serde_json::json!({}),
                })
                .collect(),
            text_index: Vec::new(),
        }
    }

    #[test]
    fn undeclared_names_share_other() {
        let metrics = Metrics::new();
        metrics.declare(&[info("power", &["square"])]);
        let square = metrics.action("power", "square");
        assert!(Arc::ptr_eq(&square, &metrics.action("power", "square")));
        let made_up = metrics.action("power", "x-123");
        assert!(Arc::ptr_eq(&made_up, &metrics.action("power", "y-456")));
        let unknown = metrics.action("nosuch", "get");
        assert!(Arc::ptr_eq(&unknown, &metrics.action("other-thing", "get")));
        assert!(!Arc::ptr_eq(&unknown, &metrics.action("power", "get")));
        // Declared again (a heartbeat), nothing changes.
        metrics.declare(&[info("power", &["square"])]);
        assert!(Arc::ptr_eq(&square, &metrics.action("power", "square")));
        let mut labels = Vec::new();
        metrics.each_action(|c, a, _| labels.push(format!("{c}/{a}")));
        assert!(labels.contains(&"power/square".to_owned()));
        assert!(labels.contains(&"other/other".to_owned()));
        assert!(
            !labels
                .iter()
                .any(|l| l.contains("x-123") || l.contains("nosuch"))
        );
    }

    /// Names the text encoder would write as they are and that would break the text are not
    /// declared: counted under `other`.
    #[test]
    fn names_that_are_not_plain_are_not_label_values() {
        let metrics = Metrics::new();
        let hostile = "x\"} 1\nzs_fake 2";
        let long = "a".repeat(129);
        metrics.declare(&[
            info(hostile, &["get"]),
            info(&long, &[]),
            info("power", &["ok_action", "bad\naction", "quote\"d"]),
        ]);
        let other = metrics.action("nosuch", "get");
        assert!(Arc::ptr_eq(&other, &metrics.action(hostile, "get")));
        assert!(Arc::ptr_eq(&other, &metrics.action(&long, "get")));
        let power_other = metrics.action("power", "nosuch");
        assert!(Arc::ptr_eq(
            &power_other,
            &metrics.action("power", "bad\naction")
        ));
        assert!(Arc::ptr_eq(
            &power_other,
            &metrics.action("power", "quote\"d")
        ));
        assert!(!Arc::ptr_eq(
            &power_other,
            &metrics.action("power", "ok_action")
        ));
        let mut labels = Vec::new();
        metrics.each_action(|c, a, _| labels.push(format!("{c}{a}")));
        assert!(labels.iter().all(|l| plain(l)), "{labels:?}");
    }

    #[test]
    fn histograms_bucket_and_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(buckets[0], 2, "le=0.0001 is inclusive");
        assert_eq!(buckets[5], 1, "3 ms is under 5 ms");
        assert_eq!(buckets[BUCKETS.len()], 1, "+Inf");
        assert!((sum - 60.00315).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn outcomes_are_the_error_kinds() {
        assert_eq!(OUTCOMES[outcome(None)], "ok");
        for e in [
            Error::unknown_collection("x"),
            Error::not_found("power", "1"),
            Error::internal("boom"),
            Error::unavailable("gone"),
        ] {
            assert_eq!(OUTCOMES[outcome(Some(&e))], e.kind());
        }
    }
}
