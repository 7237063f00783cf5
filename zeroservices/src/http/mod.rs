//! HTTP for a node: the REST routes of every collection known in the cluster, an OpenAPI 3.1
//! document (`/openapi.json`) built from the schemas discovery carries, a realtime websocket of
//! change events and its AsyncAPI 3.0 document (`/asyncapi.json`, from the same schemas),
//! authentication (Basic, a users file of Argon2 hashes, JWT bearer tokens), an [`Authorizer`]
//! hook and CORS; the probes `GET /healthz` and `GET /readyz` (open unless
//! [`HttpConfig::health_auth`]) and `GET /metrics` (Prometheus, behind authentication unless
//! [`HttpConfig::metrics_auth`] is off), also on an operations port of their own
//! ([`serve_ops`], `ZS_METRICS_PORT`).
//!
//! Any node can serve HTTP, one that owns nothing included: every REST call goes through
//! [`Node::request`], which routes it to the owner of the collection.
//!
//! ```no_run
//! # async fn run(node: zeroservices::Node) -> zeroservices::Result<()> {
//! use zeroservices::http::{HttpConfig, serve};
//!
//! let server = serve(node, HttpConfig::new(5001).allowed_origins("*")).await?;
//! println!("listening on http://{}", server.local_addr());
//! // ... later
//! server.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See `docs/http.md` for the routes, the status of every error and the websocket protocol.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request as HttpRequest, State};
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use crate::{Error, Node, Result};

mod asyncapi;
mod auth;
mod config;
mod error;
mod health;
mod jwt;
mod openapi;
mod page;
mod realtime;
mod rest;
mod server;
mod users;

pub use crate::access::{Authorizer, Operation, User};
pub use asyncapi::document as asyncapi_document;
pub use auth::BasicAuth;
pub use config::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READY_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_WS_BUFFER, DEFAULT_WS_MAX_CLIENTS,
    DEFAULT_WS_MAX_LAG, DEFAULT_WS_MAX_MESSAGE_BYTES, DEFAULT_WS_MAX_TOPICS, HttpConfig,
};
pub use error::status_for;
pub use jwt::JwtAuth;
pub use openapi::{document as openapi_document, document_with as openapi_document_with};
pub use users::{Users, hash_password};

/// What every handler shares: one `Arc`, so the per-request clones (the `State` extractor, the
/// middleware) are one atomic increment each.
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppInner>);

impl AppState {
    fn new(inner: AppInner) -> Self {
        Self(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// The fields of [`AppState`].
pub(crate) struct AppInner {
    pub(crate) node: Node,
    pub(crate) config: Arc<HttpConfig>,
    /// Turns `true` when the server shuts down (closed sender: shut down too).
    pub(crate) shutdown: watch::Receiver<bool>,
    /// Held by every websocket task: the server waits until every clone is dropped.
    pub(crate) drain: mpsc::Sender<()>,
    /// The websocket clients connected now (at most `ws_max_clients`).
    pub(crate) ws_clients: AtomicUsize,
    /// Keeps the shutdown channel open for a router built without [`serve`].
    _keep: Option<Arc<watch::Sender<bool>>>,
}

/// The user authentication let in (`None` when the server requires none), for the
/// [`Authorizer`].
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthUser(pub(crate) Option<User>);

/// The router of every HTTP route, to serve yourself or to merge into a bigger axum app.
///
/// Websockets of a router served this way are not closed on shutdown: use [`serve`] for that.
pub fn router(node: Node, config: HttpConfig) -> Router {
    let (tx, rx) = watch::channel(false);
    let (drain, _) = mpsc::channel(1);
    build(
        AppState::new(AppInner {
            node,
            config: Arc::new(config),
            shutdown: rx,
            drain,
            ws_clients: AtomicUsize::new(0),
            _keep: Some(Arc::new(tx)),
        }),
        Routes::Api(None),
    )
}

/// What a server serves.
enum Routes {
    /// Every route (the REST API, the probes, ...), with routes of the caller's own.
    Api(Option<Router>),
    /// The operations port (`ZS_METRICS_PORT`): the probes and the metrics only.
    Ops,
}

fn build(state: AppState, routes: Routes) -> Router {
    match routes {
        Routes::Api(extra) => build_api(state, extra),
        Routes::Ops => {
            let routes = Router::new()
                .route("/healthz", get(health::healthz))
                .route("/readyz", get(health::readyz))
                .route(health::METRICS, get(health::metrics))
                .fallback(rest::no_route)
                .with_state(state.clone());
            layered(state, routes)
        }
    }
}

fn build_api(state: AppState, extra: Option<Router>) -> Router {
    let routes = Router::new()
        .route("/", get(rest::index))
        // Fixed routes win over `/{collection}`; collections may not take these names
        // (`resource::RESERVED_COLLECTIONS`).
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(health::METRICS, get(health::metrics))
        .route("/openapi.json", get(openapi::handler))
        .route("/asyncapi.json", get(asyncapi::handler))
        .route("/live", get(page::live))
        .route("/realtime", get(realtime::handler))
        .route("/{collection}", get(rest::list).post(rest::create))
        .route(
            "/{collection}/{id}",
            get(rest::get)
                .patch(rest::patch)
                .delete(rest::delete)
                .post(rest::collection_action),
        )
        .route("/{collection}/{id}/{action}", post(rest::resource_action))
        .fallback(rest::no_route);
    let routes = match extra {
        Some(extra) => routes.with_state(state.clone()).merge(extra),
        None => routes.with_state(state.clone()),
    };
    layered(state, routes)
}

/// The layers every server has: the body limit, the one middleware, CORS when configured.
///
/// Without CORS, [`allow`] and [`per_request`] run as one middleware ([`allow_per_request`]):
/// each `from_fn` layer costs a few allocations per request (a clone of the inner service, a
/// boxed `Next`, a boxed future), which showed in the GET profile.
fn layered(state: AppState, routes: Router) -> Router {
    let config = state.config.clone();
    let app = routes.layer(DefaultBodyLimit::max(config.max_body_bytes));
    match cors_layer(&config.allowed_origins) {
        Some(cors) => app
            .layer(middleware::from_fn_with_state(state.clone(), per_request))
            // With CORS on, preflights (answered by the CORS layer) get an id too: one more
            // layer, only then.
            .layer(cors)
            .layer(middleware::from_fn(with_request_id))
            .layer(middleware::from_fn_with_state(state, allow)),
        None => app.layer(middleware::from_fn_with_state(state, allow_per_request)),
    }
}

/// [`allow`] around [`per_request`], in one layer (no CORS layer between them).
async fn allow_per_request(
    State(state): State<AppState>,
    request: HttpRequest,
    next: Next,
) -> Response {
    allow_in(state, request, |state, request| {
        per_request_with(state, request, next)
    })
    .await
}

/// `OPTIONS` (but a CORS preflight) answers 204 with the `Allow` of the operations the OpenAPI
/// document lists for the path, and a 405 carries the same `Allow`.
async fn allow(State(state): State<AppState>, request: HttpRequest, next: Next) -> Response {
    allow_in(state, request, |_, request| next.run(request)).await
}

/// [`allow`], then `inner` (given the state) for what it does not answer itself.
async fn allow_in<F, Fut>(state: AppState, request: HttpRequest, inner: F) -> Response
where
    F: FnOnce(AppState, HttpRequest) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if request.method() != Method::OPTIONS || preflight {
        // Only a 405 needs the path: the `Uri` shares the bytes hyper parsed (no copy), and the
        // node is found again from it then.
        let uri = request.uri().clone();
        let node = state.node.clone();
        let mut response = inner(state, request).await;
        if response.status() == axum::http::StatusCode::METHOD_NOT_ALLOWED
            && let Some(methods) = openapi::allowed_methods(&node.resource_infos(), uri.path())
        {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(methods));
        }
        return response;
    }
    match openapi::allowed_methods(&state.node.resource_infos(), request.uri().path()) {
        Some(methods) => (
            axum::http::StatusCode::NO_CONTENT,
            [(header::ALLOW, HeaderValue::from_static(methods))],
        )
            .into_response(),
        None => inner(state, request).await,
    }
}

/// `X-Request-Id`: on every failed response (4xx, 5xx) and in its log line; a client's own id is
/// echoed on every response.
pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of a request: the client's `X-Request-Id` when it is sane (1 to 64 characters of
/// `A-Z a-z 0-9 - _ . :`), else a new one.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(pub(crate) HeaderValue);

impl RequestId {
    fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

fn sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    (1..=64).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// A new request id: this process's random prefix and a counter, unique and cheap.
fn new_request_id() -> HeaderValue {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let prefix = PREFIX.get_or_init(|| uuid::Uuid::new_v4().simple().to_string()[..12].to_owned());
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    HeaderValue::from_str(&format!("{prefix}-{n:x}"))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's `X-Request-Id`, when it is sane.
fn given_request_id(headers: &axum::http::HeaderMap) -> Option<HeaderValue> {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| sane_request_id(v))
        .cloned()
}

async fn with_request_id(mut request: HttpRequest, next: Next) -> Response {
    let id = given_request_id(request.headers()).unwrap_or_else(new_request_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        // A browser script reads the version of what it got, for its next `If-Match`.
        .expose_headers([axum::http::header::ETAG])
        .max_age(Duration::from_secs(3600));
    if origins.iter().any(|o| o == "*") {
        return Some(layer.allow_origin(AllowOrigin::any()));
    }
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring an allowed origin that is not a header value");
                None
            }
        })
        .collect();
    // Listed origins may send credentials (Basic auth from a browser); `*` may not, by the
    // CORS rules.
    Some(
        layer
            .allow_origin(AllowOrigin::list(list))
            .allow_credentials(true),
    )
}

/// The one middleware every request goes through (one layer instead of three): Basic auth,
/// the handler, the JSON rewrite of error responses that are not JSON yet, and one log line
/// (debug, or warn for a server-side failure, 5xx).
/// The 403 of a write from a page of another site.
fn cross_site_write(headers: &axum::http::HeaderMap) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("?");
    error::ApiError::forbidden(format!(
        "a write from a page of another site ({origin}) is refused; \
         list its origin in ZS_ALLOWED_ORIGINS to allow it"
    ))
    .into_response()
}

async fn per_request(State(state): State<AppState>, request: HttpRequest, next: Next) -> Response {
    per_request_with(state, request, next).await
}

async fn per_request_with(state: AppState, request: HttpRequest, next: Next) -> Response {
    // The request's span (`http.request`, continuing a `traceparent`): nothing when nobody
    // listens.
    let span = crate::telemetry::http_span(&request);
    if span.is_disabled() {
        return per_request_in(state, request, next).await;
    }
    let response =
        tracing::Instrument::instrument(per_request_in(state, request, next), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn per_request_in(state: AppState, mut request: HttpRequest, next: Next) -> Response {
    // What the log line needs, only when a line can be written: no allocation here (a `Uri`
    // clone shares the bytes hyper parsed; standard methods are copied).
    let log = tracing::enabled!(tracing::Level::WARN).then(|| {
        (
            request.method().clone(),
            request.uri().clone(),
            Instant::now(),
        )
    });
    // The id a client sent (or the CORS layer's): kept. A new one is made only for a response
    // that needs it (a failure, whose log line and body carry it): nothing per success.
    let given = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .or_else(|| given_request_id(request.headers()));
    let max_body_bytes = state.config.max_body_bytes;
    // A write from a page of another site (a browser sends its `Origin`) is refused before
    // anything else: a body-less POST to an action is a "simple" request no CORS preflight
    // guards. Clients that send no `Origin` (not browsers) and the allowed origins pass.
    let write = matches!(
        *request.method(),
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    );
    let response =
        if write && !realtime::origin_allowed(&state.config.allowed_origins, request.headers()) {
            cross_site_write(request.headers())
        } else if health::open_probe(&state, request.uri().path()) {
            // A probe, open by default (`ZS_HEALTH_AUTH`), or the metrics with
            // `ZS_METRICS_AUTH=off`: no credentials asked.
            request.extensions_mut().insert(AuthUser::default());
            drop(state);
            next.run(request).await
        } else {
            match auth::authenticate(&state.config, request.headers()).await {
                Ok(user) => {
                    request.extensions_mut().insert(user);
                    drop(state);
                    next.run(request).await
                }
                Err(rejection) => rejection.into_response(),
            }
        };
    let response = error::json_errors(response).await;
    let failed = !response.status().is_success() && !response.status().is_redirection();
    let id = match given {
        Some(id) => Some(RequestId(id)),
        None if failed => Some(RequestId(new_request_id())),
        None => None,
    };
    let mut response = match &id {
        Some(id) if failed => error::finish(response, id.as_str(), max_body_bytes).await,
        _ => response,
    };
    if let Some(id) = &id {
        response
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), id.0.clone());
    }
    if let Some((method, uri, start)) = log {
        log_request(&method, &uri, start, &response, id.as_ref());
    }
    response
}

/// One log line per request: debug, or warn for a server-side failure (5xx), with the full
/// error (the client got a generic message and the request id).
fn log_request(
    method: &Method,
    uri: &Uri,
    start: Instant,
    response: &Response,
    id: Option<&RequestId>,
) {
    let id = id.map_or("", RequestId::as_str);
    let status = response.status();
    if !status.is_server_error() && !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let path = uri.path();
    let elapsed_ms = start.elapsed().as_secs_f64() * 1000.0;
    let message = response
        .extensions()
        .get::<error::ErrorMessage>()
        .map(|m| m.0.as_str())
        .unwrap_or("");
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), elapsed_ms, request_id = id, error = message, "http request failed");
    } else {
        tracing::debug!(%method, %path, status = status.as_u16(), elapsed_ms, request_id = id, error = message, "http request");
    }
}

/// A running HTTP server; see [`serve`].
///
/// It stops with its node too: [`Node::stop`] stops it accepting and waits (at most the
/// shutdown timeout) for its in-flight requests. Dropping it without [`HttpServer::shutdown`]
/// also stops the server, in the background.
#[must_use = "dropping the HttpServer stops it"]
pub struct HttpServer {
    addr: SocketAddr,
    /// Cancelled to stop: a child of the node's stopping token.
    stop: CancellationToken,
    /// Stops accepting, then drains the connections and websockets (bounded); tracked as the
    /// node's work, so a stopping node waits for it.
    drainer: Option<tokio::task::JoinHandle<()>>,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// The address the server listens on (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<local_addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops gracefully: stops accepting connections, lets in-flight requests finish, closes
    /// every websocket (close code 1001), all within the configured shutdown timeout, after
    /// which whatever is left is dropped.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(drainer) = self.drainer.take() {
            let _ = drainer.await;
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What [`drain`] stops and waits for.
struct Running {
    addr: SocketAddr,
    /// Tells the accept loop and the websockets to stop.
    shutdown: watch::Sender<bool>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
    /// `None` once the last websocket has ended (each holds a sender).
    drained: mpsc::Receiver<()>,
    /// At most this long.
    timeout: Duration,
}

/// Waits for `stop`, then stops the accept loop and waits for it and the websockets, at most
/// the timeout or until the node gives up (`abort`); then drops what is left.
async fn drain(stop: CancellationToken, abort: CancellationToken, running: Running) {
    let Running {
        addr,
        shutdown,
        mut task,
        mut drained,
        timeout,
    } = running;
    stop.cancelled().await;
    let _ = shutdown.send(true);
    let graceful = async {
        let _ = (&mut task).await;
        while drained.recv().await.is_some() {}
    };
    let bounded = abort.run_until_cancelled(tokio::time::timeout(timeout, graceful));
    if !matches!(bounded.await, Some(Ok(()))) {
        tracing::warn!(%addr, "http shutdown timed out; dropping what is left");
        task.abort();
    }
    tracing::info!(%addr, "http server stopped");
}

/// Reads the users file again on every `SIGHUP` until `stop`: a file that cannot be read or has a
/// malformed line is logged and the users stay as they were.
#[cfg(unix)]
fn reload_users_on_sighup(users: Arc<Users>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP: the users file will not be reloaded: {e}");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                got = hangups.recv() => if got.is_none() { return },
            }
            let file = users
                .source()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            match users.reload() {
                Ok(count) => tracing::info!(%file, users = count, "users file reloaded"),
                Err(e) => tracing::error!(%file, "users file not reloaded: {e}"),
            }
        }
    });
}

/// Binds `config.host:config.port`, serves [`router`] in a background task, and returns at once.
pub async fn serve(node: Node, config: HttpConfig) -> Result<HttpServer> {
    serve_inner(node, config, Routes::Api(None)).await
}

/// Serves the operations routes only (`GET /healthz`, `GET /readyz`, `GET /metrics`) on `config.host:config.port`:
/// the `ZS_METRICS_PORT` listener of a node without HTTP (an [`App`](crate::App) starts it when
/// the port is set). Authentication, [`HttpConfig::health_auth`], the timeouts and the shutdown
/// are those of [`serve`]; any other path is a 404.
pub async fn serve_ops(node: Node, config: HttpConfig) -> Result<HttpServer> {
    serve_inner(node, config, Routes::Ops).await
}

/// Like [`serve`], with routes of your own next to the node's (they get the same auth, CORS,
/// body limit and JSON errors; fixed paths like `/chat` win over `/{collection}`).
pub async fn serve_with(node: Node, config: HttpConfig, extra: Router) -> Result<HttpServer> {
    serve_inner(node, config, Routes::Api(Some(extra))).await
}

async fn serve_inner(node: Node, config: HttpConfig, routes: Routes) -> Result<HttpServer> {
    let bind = SocketAddr::new(config.host, config.port);
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .map_err(|e| Error::unavailable(format!("cannot listen on {bind}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let (shutdown, rx) = watch::channel(false);
    let (drain_tx, drained) = mpsc::channel(1);
    let timeout = config.shutdown_timeout;
    let stop = node.shutdown().stopping().child_token();
    let work = node.shutdown().work().clone();
    let abort = node.shutdown().abort().clone();
    #[cfg(unix)]
    if let Some(users) = config.users.clone()
        && users.source().is_some()
    {
        reload_users_on_sighup(users, stop.clone());
    }
    let limits = server::Limits {
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        max_connections: config.max_connections,
    };
    let app = build(
        AppState::new(AppInner {
            node,
            config: Arc::new(config),
            shutdown: rx.clone(),
            drain: drain_tx,
            ws_clients: AtomicUsize::new(0),
            _keep: None,
        }),
        routes,
    );
    let task = tokio::spawn(server::run(listener, app, limits, rx));
    let running = Running {
        addr,
        shutdown,
        task,
        drained,
        timeout,
    };
    let drainer = work.spawn(drain(stop.clone(), abort, running));
    tracing::info!(%addr, "http server listening");
    Ok(HttpServer {
        addr,
        stop,
        drainer: Some(drainer),
    })
}

/// `Content-Type: application/json`.
pub(crate) const JSON: (header::HeaderName, &str) = (header::CONTENT_TYPE, "application/json");
