//! `GET /healthz` and `GET /readyz`: the probes of a load balancer or an orchestrator.
//!
//! - `/healthz` (liveness): the process answers HTTP. Always 200 `{"status": "ok"}` while the
//!   server runs; it asks nothing else, so a slow store never gets a live process restarted.
//! - `/readyz` (readiness): [`Node::readiness`](crate::Node::readiness) within
//!   [`HttpConfig::ready_timeout`](super::HttpConfig::ready_timeout): 200
//!   `{"status": "ready", "checks": {...}}`, or 503 `{"status": "not_ready", "error": "<reason>",
//!   "checks": {...}}` (the full error is in the log line of the request, never in the body).
//!
//! `GET /metrics` (the node's counters for Prometheus, [`metrics`]) sits next to them, behind
//! authentication unless [`HttpConfig::metrics_auth`](super::HttpConfig::metrics_auth) is off
//! (`ZS_METRICS_AUTH=off`).
//!
//! Both probes are open without credentials unless [`HttpConfig::health_auth`](super::HttpConfig::health_auth)
//! (`ZS_HEALTH_AUTH=on`) says they need a user like every other route. They are served on the
//! HTTP port and on the operations port (`ZS_METRICS_PORT`, [`serve_ops`](super::serve_ops)).
//! Collections may not take their names ([`RESERVED_COLLECTIONS`](crate::resource::RESERVED_COLLECTIONS)).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::ErrorMessage;

/// The paths of the probes.
pub(crate) const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// The path of the metrics.
pub(crate) const METRICS: &str = "/metrics";

/// Whether `path` is a probe (or the metrics) that this server lets in without credentials.
pub(crate) fn open_probe(state: &AppState, path: &str) -> bool {
    (!state.config.health_auth && PROBES.contains(&path))
        || (!state.config.metrics_auth && path == METRICS)
}

/// `GET /metrics`: the node's counters in the Prometheus text format, or OpenMetrics when the
/// `Accept` header asks for it (see [`crate::metrics`]), behind authentication unless
/// `ZS_METRICS_AUTH=off`.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    use crate::metrics::export::{Format, render};
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let format = Format::from_accept(accept);
    let text = render(&state.node, format);
    (
        [(axum::http::header::CONTENT_TYPE, format.content_type())],
        text,
    )
        .into_response()
}

/// `GET /healthz`.
pub(crate) async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// `GET /readyz`.
pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let readiness = state.node.readiness(state.config.ready_timeout).await;
    if readiness.is_ready() {
        return axum::Json(readiness.to_json()).into_response();
    }
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(readiness.to_json()),
    )
        .into_response();
    // The request's log line (a 5xx is logged as a warning) carries the full errors.
    response
        .extensions_mut()
        .insert(ErrorMessage(format!("not ready: {}", readiness.detail())));
    response
}
