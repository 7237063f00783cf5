//! `GET /metrics`: the node's counters in the Prometheus text format (`text/plain;
//! version=0.0.4`, the default) or in OpenMetrics (`application/openmetrics-text;
//! version=1.0.0`, when the scrape's `Accept` asks for it), encoded by `prometheus-client` at
//! scrape time.
//!
//! Nothing is registered ahead: one [`Collector`] reads, per scrape, the node's atomics
//! ([`super::Metrics`]), its [`NodeStats`](crate::NodeStats), its directory, and the stats of
//! its medium ([`ZmqStats`](crate::medium::ZmqStats), [`NatsStats`](crate::medium::NatsStats))
//! and discovery ([`DiscoveryStats`](crate::discovery::DiscoveryStats),
//! [`NatsDiscoveryStats`](crate::discovery::NatsDiscoveryStats)) as they are.
//!
//! `prometheus-client` writes OpenMetrics only. The classic text differs in three ways, which
//! [`Format::Prometheus`] rewrites: a counter family is named by its sample (`# TYPE
//! zs_requests_total counter`, where OpenMetrics says `zs_requests`: a 0.0.4 parser would
//! read `zs_requests_total` as an untyped metric), there are no `# UNIT` lines, and no `# EOF`.

use std::fmt::{self, Write as _};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{BUCKETS, Histogram, OUTCOMES, Side, StoreOp};
use crate::Node;

/// The exposition format of a scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0.0 text.
    OpenMetrics,
}

/// The most of an `Accept` header read (Prometheus sends about 150 bytes); past it the header
/// is ignored and the default format served.
const ACCEPT_MAX: usize = 1024;

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it lists
    /// `application/openmetrics-text` with a quality above 0 and at least that of the classic
    /// text (`text/plain`, `text/*`, `*/*`); otherwise (no header, garbage, too long) the
    /// classic text.
    pub(crate) fn from_accept(accept: Option<&str>) -> Self {
        let Some(accept) = accept.filter(|a| a.len() <= ACCEPT_MAX) else {
            return Self::Prometheus;
        };
        let (mut open, mut text) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .filter_map(|q| q.trim().parse::<f32>().ok())
                .find(|q| (0.0..=1.0).contains(q))
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => open = open.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if open > 0.0 && open >= text {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// The `Content-Type` of a scrape in this format.
    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The node's metrics as text in `format` (OpenMetrics ends with `# EOF`).
pub(crate) fn render(node: &Node, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Scrape(node.clone())));
    let mut text = String::with_capacity(16 * 1024);
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        // Writing to a String does not fail; say so in the text if it ever does.
        tracing::warn!("metrics not encoded: {e}");
        let _ = writeln!(text, "# error: {e}\n# EOF");
    }
    match format {
        Format::OpenMetrics => text,
        Format::Prometheus => classic(&text),
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: counter families named `<name>_total`
/// in their `# HELP` and `# TYPE` lines, no `# UNIT`, no `# EOF`.
fn classic(open: &str) -> String {
    let lines: Vec<&str> = open.lines().collect();
    let mut out = String::with_capacity(open.len() + 1024);
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        // `# HELP <name> ...` is followed by its `# TYPE <name> <type>`.
        let counter = |name: &str| {
            lines[i..]
                .iter()
                .take(2)
                .any(|l| *l == format!("# TYPE {name} counter"))
        };
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            (!name.ends_with("_total") && counter(name))
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Debug)]
struct Scrape(Node);

/// A value read at scrape time: a counter or a gauge.
struct Value {
    value: u64,
    kind: MetricType,
}

impl EncodeMetric for Value {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        match self.kind {
            MetricType::Gauge => encoder.encode_gauge(&(self.value as i64)),
            _ => encoder.encode_counter::<NoLabelSet, _, u64>(&self.value, None),
        }
    }

    fn metric_type(&self) -> MetricType {
        self.kind
    }
}

fn counter(value: u64) -> Value {
    Value {
        value,
        kind: MetricType::Counter,
    }
}

fn gauge(value: i64) -> Value {
    Value {
        value: value.max(0) as u64,
        kind: MetricType::Gauge,
    }
}

impl EncodeMetric for &Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let (sum, count, counts) = self.snapshot();
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::MAX))
            .zip(counts)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let kind = metric.metric_type();
    metric.encode(encoder.encode_descriptor(name, help, None, kind)?)
}

/// One family of `(labels, value)`.
fn family<'a, L>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, Value)>,
) -> fmt::Result
where
    L: prometheus_client::encoding::EncodeLabelSet + 'a,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let node = &self.0;
        let metrics = node.metrics();
        requests(&mut encoder, metrics)?;

        let c = &metrics.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let load_i =
            |a: &std::sync::atomic::AtomicI64| a.load(std::sync::atomic::Ordering::Relaxed);
        let stats = node.stats();

        single(
            &mut encoder,
            "zs_events_published",
            "Events this node published (its changes and Node::publish).",
            counter(load(&c.events_published)),
        )?;
        single(
            &mut encoder,
            "zs_events_delivered",
            "Events handed to this node's own subscribers (hooks, streams, websockets).",
            counter(load(&c.events_delivered)),
        )?;
        family(
            &mut encoder,
            "zs_events_dropped",
            "Events lost on this node: lagged = a subscriber fell behind the event bus.",
            MetricType::Counter,
            [([("reason", "lagged")], counter(stats.events_lagged))],
        )?;

        single(
            &mut encoder,
            "zs_peers",
            "Peers this node knows now.",
            gauge(node.peers().len() as i64),
        )?;
        single(
            &mut encoder,
            "zs_peer_joins",
            "Peers that joined.",
            counter(load(&c.peers_joined)),
        )?;
        single(
            &mut encoder,
            "zs_peer_leaves",
            "Peers that left (goodbye or silence).",
            counter(load(&c.peers_left)),
        )?;
        single(
            &mut encoder,
            "zs_peers_incompatible",
            "Peer announcements ignored for another protocol version.",
            counter(stats.peers_incompatible),
        )?;

        single(
            &mut encoder,
            "zs_websocket_clients",
            "Websocket clients connected now.",
            gauge(load_i(&c.ws_clients)),
        )?;
        single(
            &mut encoder,
            "zs_websocket_queued_messages",
            "Messages queued to websocket clients, not written yet.",
            gauge(load_i(&c.ws_queued)),
        )?;
        single(
            &mut encoder,
            "zs_websocket_too_slow",
            "Websocket clients told too slow and disconnected: their queue was full, or their stream fell more than ZS_WS_MAX_LAG changes behind.",
            counter(load(&c.ws_too_slow)),
        )?;
        single(
            &mut encoder,
            "zs_websocket_too_far_behind",
            "Websocket clients disconnected because their stream fell more than ZS_WS_MAX_LAG changes behind a change log's newest entry.",
            counter(load(&c.ws_too_far_behind)),
        )?;

        {
            let mut metric = encoder.encode_descriptor(
                "zs_store_operation_duration",
                "Latency of the store operations of the collections this node owns.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for op in StoreOp::ALL {
                let labels = [("operation", op.label())];
                (&metrics.store_op(op)).encode(metric.encode_family(&labels)?)?;
            }
        }

        single(
            &mut encoder,
            "zs_worker_changes_handled",
            "Changes a worker handler handled.",
            counter(load(&c.worker_handled)),
        )?;
        single(
            &mut encoder,
            "zs_worker_changes_retried",
            "Worker handler runs that failed and were tried again.",
            counter(load(&c.worker_retried)),
        )?;
        single(
            &mut encoder,
            "zs_worker_changes_failed",
            "Changes whose worker handler failed every attempt (the poll check runs them again).",
            counter(load(&c.worker_failed)),
        )?;

        for (name, help, value) in [
            (
                "zs_node_requests_served",
                "Requests served for peers.",
                stats.requests_served,
            ),
            (
                "zs_node_requests_sent",
                "Requests sent to peers.",
                stats.requests_sent,
            ),
            (
                "zs_node_requests_timed_out",
                "Requests to peers that timed out (ZS_REQUEST_TIMEOUT_MS).",
                stats.requests_timed_out,
            ),
            (
                "zs_requests_deduplicated",
                "Copies of mutating requests answered with the first reply.",
                stats.requests_deduplicated,
            ),
            (
                "zs_documents_skipped",
                "Listed documents the typed client could not decode.",
                stats.documents_skipped,
            ),
            (
                "zs_store_conflicts",
                "Peers met that own a collection of this node's over another store.",
                stats.store_conflicts,
            ),
        ] {
            single(&mut encoder, name, help, counter(value))?;
        }

        medium(&mut encoder, node)?;
        discovery(&mut encoder, node)
    }
}

/// `zs_requests_total` and `zs_request_duration_seconds`: the label sets that counted
/// something.
fn requests(encoder: &mut DescriptorEncoder, metrics: &super::Metrics) -> fmt::Result {
    {
        let mut family = encoder.encode_descriptor(
            "zs_requests",
            "Requests by side (caller: this node asked; owner: this node's service handled it), \
             collection, action and outcome (ok or the error's kind).",
            None,
            MetricType::Counter,
        )?;
        let mut result = Ok(());
        metrics.each_action(|collection, action, m| {
            for side in Side::ALL {
                let s = m.side(side);
                if result.is_err() || !s.used() {
                    continue;
                }
                for (i, outcome) in OUTCOMES.iter().enumerate() {
                    let n = s.outcomes[i].load(std::sync::atomic::Ordering::Relaxed);
                    // `ok` always (a rate of errors over all needs it), errors once seen.
                    if n == 0 && i != 0 {
                        continue;
                    }
                    let labels = [
                        ("side", side.label()),
                        ("collection", collection),
                        ("action", action),
                        ("outcome", *outcome),
                    ];
                    result = family
                        .encode_family(&labels)
                        .and_then(|e| counter(n).encode(e));
                    if result.is_err() {
                        return;
                    }
                }
            }
        });
        result?;
    }
    let mut family = encoder.encode_descriptor(
        "zs_request_duration",
        "Request latency by side, collection and action.",
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    let mut result = Ok(());
    metrics.each_action(|collection, action, m| {
        for side in Side::ALL {
            let s = m.side(side);
            if result.is_err() || !s.used() {
                continue;
            }
            let labels = [
                ("side", side.label()),
                ("collection", collection),
                ("action", action),
            ];
            result = family
                .encode_family(&labels)
                .and_then(|e| (&s.latency).encode(e));
        }
    });
    result
}

/// The medium's counters: `zs_medium_dropped_total{transport, reason}` for the messages it
/// dropped (garbage, forged, replayed, oversized, another version), and its other counters
/// as `zs_zmq_*` / `zs_nats_*`.
fn medium(encoder: &mut DescriptorEncoder, node: &Node) -> fmt::Result {
    let medium = node.medium();
    #[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(unused_mut))]
    let mut drops: Vec<([(&str, &str); 2], Value)> = Vec::new();
    #[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(unused_mut))]
    let mut others: Vec<(&str, &str, u64)> = Vec::new();
    #[cfg(feature = "zeromq")]
    if let Some(zmq) = medium.as_zmq() {
        let s = zmq.stats();
        for (reason, n) in [
            ("malformed", s.dropped_malformed),
            ("unsigned", s.dropped_unsigned),
            ("replayed", s.dropped_replayed),
            ("oversized", s.dropped_oversized),
            ("version", s.dropped_version),
        ] {
            drops.push(([("transport", "zeromq"), ("reason", reason)], counter(n)));
        }
        others.extend([
            (
                "zs_zmq_requests_served",
                "Well-formed requests handed to the node.",
                s.requests_served,
            ),
            (
                "zs_zmq_replies_undeliverable",
                "Replies the ROUTER could not deliver (the caller is gone).",
                s.replies_undeliverable,
            ),
            (
                "zs_zmq_requests_refused_busy",
                "Requests refused at once: too many being served.",
                s.requests_refused_busy,
            ),
            ("zs_zmq_calls_sent", "Calls sent to peers.", s.calls_sent),
            (
                "zs_zmq_calls_failed_unavailable",
                "Calls failed: the peer's connection was lost or not made.",
                s.calls_failed_unavailable,
            ),
            (
                "zs_zmq_connections_closed_oversized",
                "Connections closed for a frame over ZS_MAX_MESSAGE_BYTES.",
                s.connections_closed_oversized,
            ),
            (
                "zs_zmq_events_published",
                "Events written on the PUB socket.",
                s.events_published,
            ),
            (
                "zs_zmq_events_dropped",
                "Events the PUB socket did not take (its fan-out queue full, or closing).",
                s.events_dropped,
            ),
            (
                "zs_zmq_events_undelivered",
                "Event copies a subscriber's queue in the PUB socket did not take (a slow or leaving subscriber).",
                s.events_undelivered,
            ),
            (
                "zs_zmq_events_received",
                "Events received from peers.",
                s.events_received,
            ),
            (
                "zs_zmq_events_unwanted",
                "Events not published: no peer wants their topic.",
                s.events_unwanted,
            ),
        ]);
    }
    #[cfg(feature = "nats")]
    if let Some(nats) = medium.as_nats() {
        let s = nats.stats();
        for (reason, n) in [
            ("malformed", s.dropped_malformed),
            ("unsigned", s.dropped_unsigned),
            ("replayed", s.dropped_replayed),
            ("oversized", s.dropped_oversized),
            ("version", s.dropped_version),
        ] {
            drops.push(([("transport", "nats"), ("reason", reason)], counter(n)));
        }
        others.extend([
            (
                "zs_nats_requests_served",
                "Requests answered.",
                s.requests_served,
            ),
            (
                "zs_nats_requests_refused_busy",
                "Requests refused at once: too many being served.",
                s.refused_busy,
            ),
            (
                "zs_nats_events_received",
                "Events handed to the node.",
                s.events_received,
            ),
            (
                "zs_nats_log_published",
                "Change-log entries stored on the JetStream stream.",
                s.log_published,
            ),
            (
                "zs_nats_log_retried",
                "Change-log publishes that failed and are retried.",
                s.log_retried,
            ),
            (
                "zs_nats_log_resynced",
                "Change-log entries published by a re-sync.",
                s.log_resynced,
            ),
            (
                "zs_nats_log_dropped",
                "Change-log entries dropped from a full publish queue (ZS_NATS_LOG_QUEUE).",
                s.log_dropped,
            ),
            (
                "zs_nats_log_read",
                "Change-log entries read from the stream.",
                s.log_read,
            ),
            (
                "zs_nats_log_rejected",
                "Messages of the change-log stream not handed out (garbage, forged).",
                s.log_rejected,
            ),
        ]);
    }
    let _ = medium;
    family(
        encoder,
        "zs_medium_dropped",
        "Messages the medium dropped, by transport and reason.",
        MetricType::Counter,
        drops,
    )?;
    for (name, help, value) in others {
        single(encoder, name, help, counter(value))?;
    }
    Ok(())
}

/// `zs_discovery_received_total` and `zs_discovery_dropped_total{transport, reason}`.
fn discovery(encoder: &mut DescriptorEncoder, node: &Node) -> fmt::Result {
    #[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(unused_mut))]
    let mut received: Vec<([(&str, &str); 1], Value)> = Vec::new();
    #[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(unused_mut))]
    let mut drops: Vec<([(&str, &str); 2], Value)> = Vec::new();
    let any = node.discovery().as_any();
    #[cfg(feature = "zeromq")]
    if let Some(udp) = any.and_then(|a| a.downcast_ref::<crate::discovery::UdpDiscovery>()) {
        let s = udp.stats();
        received.push(([("transport", "udp")], counter(s.received)));
        for (reason, n) in [
            ("malformed", s.dropped_malformed),
            ("unsigned", s.dropped_unsigned),
            ("replayed", s.dropped_replayed),
            ("version", s.dropped_version),
            ("oversized", s.dropped_oversized),
            ("over_peer_cap", s.dropped_over_peer_cap),
        ] {
            drops.push(([("transport", "udp"), ("reason", reason)], counter(n)));
        }
    }
    #[cfg(feature = "nats")]
    if let Some(nats) = any.and_then(|a| a.downcast_ref::<crate::discovery::NatsDiscovery>()) {
        let s = nats.stats();
        received.push(([("transport", "nats")], counter(s.received)));
        for (reason, n) in [
            ("malformed", s.dropped_malformed),
            ("unsigned", s.dropped_unsigned),
            ("replayed", s.dropped_replayed),
            ("version", s.dropped_version),
            ("oversized", s.dropped_oversized),
            ("over_peer_cap", s.dropped_over_peer_cap),
        ] {
            drops.push(([("transport", "nats"), ("reason", reason)], counter(n)));
        }
    }
    let _ = any;
    family(
        encoder,
        "zs_discovery_received",
        "Discovery messages received.",
        MetricType::Counter,
        received,
    )?;
    family(
        encoder,
        "zs_discovery_dropped",
        "Discovery messages dropped, by transport and reason.",
        MetricType::Counter,
        drops,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
            version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let cases = [
            (None, Format::Prometheus),
            (Some(""), Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain; version=0.0.4"), Format::Prometheus),
            (Some(prometheus), Format::OpenMetrics),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; version=1.0.0"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
            (
                Some("text/plain, application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            (
                Some("application/openmetrics-text;q=0.9, text/plain;q=0.2"),
                Format::OpenMetrics,
            ),
            (
                Some(";;;,,,q=2,application/openmetrics-text;q=nan"),
                Format::OpenMetrics,
            ),
            (Some("garbage\u{1}"), Format::Prometheus),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
        let huge = format!("{},application/openmetrics-text", " ".repeat(ACCEPT_MAX));
        assert_eq!(Format::from_accept(Some(&huge)), Format::Prometheus);
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples() {
        let open = "# HELP zs_events_published Events published.\n\
            # TYPE zs_events_published counter\n\
            zs_events_published_total 3\n\
            # HELP zs_peers Peers.\n\
            # TYPE zs_peers gauge\n\
            zs_peers 2\n\
            # HELP zs_store_seconds Store latency.\n\
            # TYPE zs_store_seconds histogram\n\
            # UNIT zs_store_seconds seconds\n\
            zs_store_seconds_sum 0.5\n\
            # HELP zs_x_total Odd.\n\
            # TYPE zs_x_total counter\n\
            zs_x_total 1\n\
            # EOF\n";
        assert_eq!(
            classic(open),
            "# HELP zs_events_published_total Events published.\n\
             # TYPE zs_events_published_total counter\n\
             zs_events_published_total 3\n\
             # HELP zs_peers Peers.\n\
             # TYPE zs_peers gauge\n\
             zs_peers 2\n\
             # HELP zs_store_seconds Store latency.\n\
             # TYPE zs_store_seconds histogram\n\
             zs_store_seconds_sum 0.5\n\
             # HELP zs_x_total Odd.\n\
             # TYPE zs_x_total counter\n\
             zs_x_total 1\n"
        );
    }
}
