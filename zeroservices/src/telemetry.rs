//! Tracing: the spans a node opens, the W3C trace context they continue and pass on, and (with
//! the `otel` feature) their export with OpenTelemetry over OTLP/HTTP.
//!
//! # Spans
//!
//! Every span is a `tracing` span at `DEBUG` level, target `zeroservices::…`, named:
//!
//! | span | where | attributes |
//! |---|---|---|
//! | `http.request` | the HTTP server, one per request | `http.request.method`, `url.path`, `http.response.status_code` |
//! | `zs.call` | the calling side of a request to another node | `collection`, `action` |
//! | `zs.serve` | the owning side of a request from another node | `collection`, `action` |
//! | `zs.store` | a built-in action's store operation on the owner | `collection`, `action` |
//! | `zs.publish` | an event published to the cluster | `topic` |
//! | `zs.deliver` | an event from a peer, handed to this node's subscribers | `topic` |
//! | `zs.worker` | a worker handler's run on one change (linked to the span that made it) | `collection`, `topic` |
//!
//! With `RUST_LOG` at its default (`info`) and no export, nothing listens at `DEBUG`: a span is
//! then a disabled callsite check, its fields are not evaluated, and no trace context is
//! computed or put on the wire ([`Span::is_disabled`] is checked first).
//!
//! # Trace context
//!
//! A W3C `traceparent` (with its `tracestate`) on an incoming HTTP request is continued: the
//! `http.request` span is its child. A request to another node carries the calling span's
//! context in its envelope (`"tp"`, the `traceparent` text, and `"ts"`, the `tracestate`; both
//! optional, ignored by older peers, see [`crate::medium::zeromq`]'s envelope contract); the
//! owner's `zs.serve` span is its child, so the gateway's and the owner's spans form one trace.
//! An event carries its publisher's context the same way, and a subscriber's `zs.deliver` span
//! *links* to it (a link, not a parent: one publish fans out to many deliveries).
//!
//! A change also carries the context of the span that made it *in its payload*: a resource
//! event made while a span is exported gets `"traceparent"` (and `"tracestate"`) beside
//! `resource_id` and `version` ([`EVENT_TRACEPARENT`]), so the owner's change log keeps it
//! with the entry, in every store (memory, embedded, MongoDB), and it reaches a worker however
//! the change does: live, read back from an owner's log, or from the JetStream change-log
//! stream. A worker's `zs.worker` span links to it, as `zs.deliver` does. Without export
//! nothing is added: the payload is what it was.
//!
//! What arrives is checked before use: a `traceparent` is exactly the W3C version-00 form
//! (`00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero; a later version's first 55
//! characters), at most 55 bytes; a `tracestate` at most 512 bytes of printable ASCII and 32
//! members (the W3C limits), or it is dropped alone. Anything else (not a string, too long,
//! malformed) is ignored, counted ([`rejected_contexts`]) and logged at `debug`: the request or
//! event itself goes on untouched.
//!
//! # Export (feature `otel`)
//!
//! [`App`](crate::app::App) adds an OpenTelemetry layer when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and `OTEL_SDK_DISABLED` is not `true`): spans of
//! target `zeroservices` at `DEBUG` and above (with its log events at `INFO` and above as span
//! events) go to a batch processor (its own thread) and out
//! over OTLP/HTTP, `OTEL_EXPORTER_OTLP_PROTOCOL` (or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`)
//! `http/protobuf` (the default; anything else than `http/json` is warned about and taken as
//! it) or `http/json`.
//! `OTEL_SERVICE_NAME` names the service (default: the service's own name),
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` pick the sampler (default
//! `parentbased_always_on`), `OTEL_BSP_*` tune the batches, `OTEL_RESOURCE_ATTRIBUTES` adds
//! attributes. The spans still queued are flushed when the app stops. Without an endpoint no
//! exporter is built and no thread started. The client is plain HTTP (a local collector or
//! agent); `https://` endpoints are not compiled in.

use std::sync::atomic::{AtomicU64, Ordering};

use tracing::Span;

/// The W3C version-00 `traceparent` length.
pub(crate) const TRACEPARENT_LEN: usize = 55;
/// The most `tracestate` kept (W3C: at least 512 characters propagated).
pub(crate) const TRACESTATE_MAX: usize = 512;
/// The most `tracestate` members (W3C).
const TRACESTATE_MEMBERS: usize = 32;

static REJECTED: AtomicU64 = AtomicU64::new(0);

/// How many trace contexts (an HTTP `traceparent`, an envelope's `"tp"`) were ignored as
/// malformed by this process.
pub fn rejected_contexts() -> u64 {
    REJECTED.load(Ordering::Relaxed)
}

/// Counts and logs a trace context that was not usable.
#[cfg_attr(
    not(any(feature = "zeromq", feature = "nats", feature = "http")),
    allow(dead_code)
)]
pub(crate) fn reject(from: &str, why: &str) {
    REJECTED.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(from, why, "trace context ignored");
}

/// A W3C trace context: the parent a span continues, as it travels in `traceparent` and
/// `tracestate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    state: Option<Box<str>>,
}

fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Some(())
}

impl TraceParent {
    /// Parses a `traceparent` (and a `tracestate`, dropped alone when unusable); `None` when
    /// the `traceparent` is not a valid W3C one.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        if traceparent.len() < TRACEPARENT_LEN || traceparent.len() > 4 * TRACEPARENT_LEN {
            return None;
        }
        let mut version = [0u8; 1];
        hex_into(traceparent.get(..2)?, &mut version)?;
        // Version 00 is exactly 55 characters; a later one starts the same way (and "ff" is
        // invalid).
        match version[0] {
            0 if traceparent.len() != TRACEPARENT_LEN => return None,
            0xff => return None,
            0 => {}
            _ if traceparent.len() > TRACEPARENT_LEN
                && traceparent.as_bytes()[TRACEPARENT_LEN] != b'-' =>
            {
                return None;
            }
            _ => {}
        }
        let b = traceparent.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let mut parent = TraceParent {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
            state: None,
        };
        hex_into(traceparent.get(3..35)?, &mut parent.trace_id)?;
        hex_into(traceparent.get(36..52)?, &mut parent.span_id)?;
        let mut flags = [0u8; 1];
        hex_into(traceparent.get(53..55)?, &mut flags)?;
        parent.flags = flags[0];
        if parent.trace_id == [0; 16] || parent.span_id == [0; 8] {
            return None;
        }
        parent.state = tracestate.and_then(valid_state).map(Box::from);
        Some(parent)
    }

    /// The `traceparent` text (version 00).
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }

    /// The `tracestate` text, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// The trace id, 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// Parses what an envelope or a header carried: counted and logged (as from `from`) when
    /// present and unusable.
    #[cfg_attr(
        not(any(feature = "zeromq", feature = "nats", feature = "http")),
        allow(dead_code)
    )]
    pub(crate) fn received(
        from: &str,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Option<Self> {
        let text = traceparent?;
        let parsed = Self::parse(text, tracestate);
        if parsed.is_none() {
            reject(from, "not a W3C traceparent");
        }
        parsed
    }
}

/// A `tracestate` within the W3C limits: printable ASCII, at most 512 bytes, 32 members.
fn valid_state(state: &str) -> Option<&str> {
    let state = state.trim();
    (!state.is_empty()
        && state.len() <= TRACESTATE_MAX
        && state.bytes().all(|b| (0x20..0x7f).contains(&b))
        && state.split(',').count() <= TRACESTATE_MEMBERS)
        .then_some(state)
}

/// The trace context of `span` to send along, or `None` when nothing exports it (the span is
/// disabled, or no OpenTelemetry layer records it).
pub(crate) fn context_of(span: &Span) -> Option<TraceParent> {
    if span.is_disabled() {
        return None;
    }
    otel::context_of(span)
}

/// The trace context of the current span (see [`context_of`]).
#[cfg_attr(not(any(feature = "zeromq", feature = "nats")), allow(dead_code))]
pub(crate) fn current() -> Option<TraceParent> {
    context_of(&Span::current())
}

/// The payload key of a resource event that carries the trace context of the change
/// (`traceparent` text; see the module docs).
pub const EVENT_TRACEPARENT: &str = "traceparent";
/// The payload key of a resource event's `tracestate`, next to [`EVENT_TRACEPARENT`].
pub const EVENT_TRACESTATE: &str = "tracestate";

/// Puts the current span's trace context into a resource event's payload (`traceparent`, and
/// `tracestate` when there is one), unless it carries one already; nothing when no span is
/// exported, so without export the payload is what it always was.
pub(crate) fn stamp(payload: &mut serde_json::Map<String, serde_json::Value>) {
    if payload.contains_key(EVENT_TRACEPARENT) {
        return;
    }
    if let Some(trace) = current() {
        payload.insert(EVENT_TRACEPARENT.to_owned(), trace.traceparent().into());
        if let Some(state) = trace.tracestate() {
            payload.insert(EVENT_TRACESTATE.to_owned(), state.into());
        }
    }
}

/// The trace context a resource event's payload carries (see [`stamp`]): `None` when it has
/// none; a malformed one (not a string, not a W3C `traceparent`) is counted and logged as
/// from `from`, and ignored.
pub(crate) fn carried(from: &str, payload: &serde_json::Value) -> Option<TraceParent> {
    let text = payload.get(EVENT_TRACEPARENT)?;
    let Some(text) = text.as_str() else {
        reject(from, "\"traceparent\" is not a string");
        return None;
    };
    let state = payload.get(EVENT_TRACESTATE).and_then(|s| s.as_str());
    TraceParent::received(from, Some(text), state)
}

/// Makes `parent` (a remote span) the parent of `span`, which must not have been entered yet.
pub(crate) fn set_parent(span: &Span, parent: &TraceParent) {
    if !span.is_disabled() {
        otel::set_parent(span, parent);
    }
}

/// Links `span` to `to`: an event's publisher (`why` is `"published"`) or the span that made
/// a change (`"changed"`); the link's attribute `zs.link` says which.
pub(crate) fn add_link(span: &Span, to: &TraceParent, why: &'static str) {
    if !span.is_disabled() {
        otel::add_link(span, to, why);
    }
}

/// The span of an HTTP request, a child of its `traceparent` (and `tracestate`) when it has a
/// valid one; a malformed one is counted and ignored.
#[cfg(feature = "http")]
pub(crate) fn http_span(request: &axum::extract::Request) -> Span {
    let span = tracing::debug_span!(
        "http.request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let headers = request.headers();
    if let Some(traceparent) = headers.get("traceparent") {
        let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok());
        let parent = match traceparent.to_str() {
            Ok(text) => TraceParent::received("an HTTP traceparent", Some(text), tracestate),
            Err(_) => {
                reject("an HTTP traceparent", "not ASCII");
                None
            }
        };
        if let Some(parent) = parent {
            set_parent(&span, &parent);
        }
    }
    span
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{Context, KeyValue};
    use tracing::Span;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TraceParent;

    fn span_context(parent: &TraceParent) -> SpanContext {
        let state = parent
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.span_id),
            TraceFlags::new(parent.flags),
            true,
            state,
        )
    }

    pub(super) fn context_of(span: &Span) -> Option<TraceParent> {
        let context = span.context();
        let otel = context.span();
        let sc = otel.span_context();
        if !sc.is_valid() {
            return None;
        }
        let state = sc.trace_state().header();
        Some(TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
            state: (!state.is_empty()).then(|| state.into_boxed_str()),
        })
    }

    pub(super) fn set_parent(span: &Span, parent: &TraceParent) {
        let context = Context::new().with_remote_span_context(span_context(parent));
        let _ = span.set_parent(context);
    }

    pub(super) fn add_link(span: &Span, to: &TraceParent, why: &'static str) {
        span.add_link_with_attributes(span_context(to), vec![KeyValue::new("zs.link", why)]);
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use tracing::Span;

    use super::TraceParent;

    pub(super) fn context_of(_: &Span) -> Option<TraceParent> {
        None
    }

    pub(super) fn set_parent(_: &Span, _: &TraceParent) {}

    pub(super) fn add_link(_: &Span, _: &TraceParent, _: &'static str) {}
}

/// The OTLP exporter of an [`App`](crate::app::App): built when an endpoint is set.
#[cfg(all(feature = "otel", feature = "app"))]
pub(crate) mod export {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::Level;
    use tracing_subscriber::Layer;
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::registry::LookupSpan;

    /// Flushes and stops the exporter when dropped (outside the tokio runtime: the batch
    /// processor's thread sends the last spans).
    pub(crate) struct Guard {
        provider: SdkTracerProvider,
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            if let Err(e) = self.provider.shutdown() {
                eprintln!("OpenTelemetry: the last spans were not exported: {e}");
            }
        }
    }

    fn set(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    /// Whether the environment asks for trace export.
    pub(crate) fn wanted() -> bool {
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        !disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some())
    }

    /// The OpenTelemetry layer and its guard, when the environment asks for export; an error
    /// (a bad variable) is printed and export stays off.
    pub(crate) fn layer<S>(service: &str) -> Option<(impl Layer<S> + Send + Sync, Guard)>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        if !wanted() {
            return None;
        }
        // Endpoint, headers and timeout from the OTEL_EXPORTER_OTLP_* variables. The protocol
        // is chosen here: with both encodings compiled in, opentelemetry-otlp 0.33 defaults to
        // JSON (pretty-printed, ~8 times the bytes), where the specification says protobuf.
        let asked = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = match asked.as_deref().map(str::trim) {
            Some("http/json") => Protocol::HttpJson,
            None | Some("http/protobuf") => Protocol::HttpBinary,
            Some(other) => {
                eprintln!(
                    "OpenTelemetry: protocol {other:?} is not supported (http/protobuf or \
                     http/json): using http/protobuf"
                );
                Protocol::HttpBinary
            }
        };
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("OpenTelemetry: no trace export: {e}");
                return None;
            }
        };
        let mut resource = Resource::builder();
        if set("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        // The sampler from OTEL_TRACES_SAMPLER(_ARG), the batches from OTEL_BSP_*.
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("zeroservices");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(filter_fn(|meta| {
                // The spans of `zeroservices` at DEBUG and above; its log events at INFO and
                // above (span events: a warning in a request's trace).
                let level = if meta.is_span() {
                    Level::DEBUG
                } else {
                    Level::INFO
                };
                meta.target().starts_with("zeroservices") && *meta.level() <= level
            }));
        Some((layer, Guard { provider }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_w3c_traceparent_round_trips() {
        let parent = TraceParent::parse(TP, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(parent.traceparent(), TP);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.tracestate(), Some("congo=t61rcWkgMzE"));
        // A later version: its first 55 characters, then '-'.
        let later = format!("01{}-more", &TP[2..]);
        assert!(TraceParent::parse(&later, None).is_some());
    }

    #[test]
    fn garbage_is_refused_not_a_crash() {
        let bad = [
            "",
            "00",
            "garbage",
            &TP.to_uppercase(),
            &TP.replace("-01", "-1"),
            &format!("{TP}-extra"),
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
            &"0".repeat(100_000),
        ];
        for text in bad {
            assert_eq!(TraceParent::parse(text, None), None, "{text:.80}");
        }
        // A bad tracestate is dropped alone.
        let huge = "a=b,".repeat(1000);
        for state in [huge.as_str(), "x=\u{1}", "", &"k=v,".repeat(40)] {
            let parent = TraceParent::parse(TP, Some(state)).unwrap();
            assert_eq!(parent.tracestate(), None);
        }
        let before = rejected_contexts();
        assert_eq!(TraceParent::received("test", Some("nope"), None), None);
        assert_eq!(TraceParent::received("test", None, None), None);
        assert_eq!(rejected_contexts(), before + 1);
    }

    #[test]
    fn a_change_payload_carries_a_context_or_nothing() {
        use serde_json::json;
        let state = "congo=t61rcWkgMzE";
        let carried_tp = carried("test", &json!({"traceparent": TP, "tracestate": state}));
        assert_eq!(carried_tp, TraceParent::parse(TP, Some(state)));
        // None, untouched, or garbage: ignored; garbage is counted.
        let before = rejected_contexts();
        assert_eq!(carried("test", &json!({"resource_id": "1"})), None);
        assert_eq!(carried("test", &json!("not an object")), None);
        assert_eq!(carried("test", &json!({"traceparent": 42})), None);
        assert_eq!(
            carried("test", &json!({"traceparent": "x".repeat(9000)})),
            None
        );
        assert!(rejected_contexts() >= before + 2);
        // Nothing exported here: stamping adds nothing, and keeps what is there.
        let mut payload = serde_json::Map::new();
        stamp(&mut payload);
        assert!(payload.is_empty());
        payload.insert(EVENT_TRACEPARENT.to_owned(), json!(TP));
        stamp(&mut payload);
        assert_eq!(payload[EVENT_TRACEPARENT], json!(TP));
    }

    #[test]
    fn nothing_listening_means_no_context() {
        // No subscriber in this test: the span is disabled and no context is computed.
        let span = tracing::debug_span!("zs.call");
        assert!(span.is_disabled());
        assert_eq!(context_of(&span), None);
    }
}
