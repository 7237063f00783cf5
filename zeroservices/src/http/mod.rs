//! HTTP for a node: the REST routes of every collection known in the cluster, an OpenAPI 3.1
//! document built from the schemas discovery carries, a realtime websocket of change events,
//! Basic auth, an [`Authorizer`] hook and CORS.
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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

mod auth;
mod error;
mod openapi;
mod page;
mod realtime;
mod rest;
mod server;

pub use auth::{Authorizer, BasicAuth, Operation};
pub use error::status_for;
pub use openapi::document as openapi_document;

/// The default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default number of messages queued for one websocket client before it is disconnected.
pub const DEFAULT_WS_BUFFER: usize = 1024;
/// The default time [`HttpServer::shutdown`] waits for requests and websockets to finish
/// (`ZS_SHUTDOWN_TIMEOUT_MS`).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = crate::settings::DEFAULT_SHUTDOWN_TIMEOUT;
/// The default time a client has to send a request's headers: 10 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a keep-alive connection may wait for its next request: 60 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The default largest number of open connections (websockets included): 1024.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The default largest websocket message (and frame) a client may send: 64 KiB.
pub const DEFAULT_WS_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The default largest number of topics one websocket client may subscribe to: 256.
pub const DEFAULT_WS_MAX_TOPICS: usize = 256;
/// The default largest number of websocket clients of one node: 1024.
pub const DEFAULT_WS_MAX_CLIENTS: usize = 1024;

/// Settings of the HTTP server of a node.
#[derive(Clone)]
pub struct HttpConfig {
    /// The address to listen on (default `127.0.0.1`; `0.0.0.0` for every interface).
    pub host: IpAddr,
    /// The port (`0` = any free port; see [`HttpServer::local_addr`]).
    pub port: u16,
    /// Origins allowed by CORS (`ZS_ALLOWED_ORIGINS`): empty = no CORS headers, `"*"` = any.
    pub allowed_origins: Vec<String>,
    /// Basic auth required on every route when set (`ZS_BASIC_AUTH=user:password`).
    pub basic_auth: Option<BasicAuth>,
    /// Decides, per user, collection and operation, what a client may do.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Largest accepted request body (`ZS_MAX_BODY_BYTES`, default 1 MiB); larger ones get a
    /// 413 naming the limit.
    pub max_body_bytes: usize,
    /// Messages queued per websocket client (default 1024); a client that falls further behind
    /// is told so and disconnected.
    pub ws_buffer: usize,
    /// How long [`HttpServer::shutdown`] waits for in-flight requests and websockets (default
    /// 5 s).
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers, from the connection's accept or
    /// the first byte of the request (`ZS_HTTP_HEADER_TIMEOUT_MS`, default 10 s); the connection
    /// is closed after that. A request body that stops arriving for that long while it is read
    /// closes the connection too.
    pub header_timeout: Duration,
    /// How long a keep-alive connection with no request in flight stays open
    /// (`ZS_HTTP_IDLE_TIMEOUT_MS`, default 60 s).
    pub idle_timeout: Duration,
    /// The largest number of open connections, websockets included (`ZS_HTTP_MAX_CONNECTIONS`,
    /// default 1024). At the cap the server stops accepting: new connections wait in the listen
    /// backlog until an open one closes (logged as a warning each time the cap is reached).
    pub max_connections: usize,
    /// The largest websocket message (and frame) a client may send (`ZS_WS_MAX_MESSAGE_BYTES`,
    /// default 64 KiB); a bigger one gets an error message and the socket is closed (1009).
    pub ws_max_message_bytes: usize,
    /// The largest number of topics one websocket client may subscribe to (`ZS_WS_MAX_TOPICS`,
    /// default 256); a subscribe going over it gets an error message, the socket stays open.
    pub ws_max_topics: usize,
    /// The largest number of websocket clients of this node (`ZS_WS_MAX_CLIENTS`, default
    /// 1024); further upgrades get a 503.
    pub ws_max_clients: usize,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("allowed_origins", &self.allowed_origins)
            .field("basic_auth", &self.basic_auth)
            .field("authorizer", &self.authorizer.as_ref().map(|_| "..."))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("ws_buffer", &self.ws_buffer)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("ws_max_message_bytes", &self.ws_max_message_bytes)
            .field("ws_max_topics", &self.ws_max_topics)
            .field("ws_max_clients", &self.ws_max_clients)
            .finish()
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self::new(0)
    }
}

impl HttpConfig {
    /// Listens on `127.0.0.1:port`, no CORS, no auth, default limits.
    pub fn new(port: u16) -> Self {
        Self {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
            allowed_origins: Vec::new(),
            basic_auth: None,
            authorizer: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            ws_buffer: DEFAULT_WS_BUFFER,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ws_max_message_bytes: DEFAULT_WS_MAX_MESSAGE_BYTES,
            ws_max_topics: DEFAULT_WS_MAX_TOPICS,
            ws_max_clients: DEFAULT_WS_MAX_CLIENTS,
        }
    }

    /// Reads `ZS_HTTP_PORT` (else `default_port`), `ZS_HTTP_HOST`, `ZS_ALLOWED_ORIGINS`,
    /// `ZS_BASIC_AUTH`, `ZS_MAX_BODY_BYTES`, `ZS_HTTP_HEADER_TIMEOUT_MS`,
    /// `ZS_HTTP_IDLE_TIMEOUT_MS`, `ZS_HTTP_MAX_CONNECTIONS`, `ZS_WS_MAX_MESSAGE_BYTES`,
    /// `ZS_WS_MAX_TOPICS`, `ZS_WS_MAX_CLIENTS` and `ZS_SHUTDOWN_TIMEOUT_MS` (through
    /// [`Settings`](crate::settings::Settings)); a malformed value is an error naming the
    /// variable.
    pub fn from_env(default_port: u16) -> Result<Self> {
        let mut config = Self::new(default_port);
        crate::settings::Settings::from_env()?.apply_http(&mut config);
        Ok(config)
    }

    /// Listens on this address.
    pub fn host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// Listens on this port (`0` = any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Allows these origins, comma-separated (`"*"` = any; empty = no CORS).
    pub fn allowed_origins(mut self, origins: &str) -> Self {
        self.allowed_origins = origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        self
    }

    /// Requires Basic auth with these credentials.
    pub fn basic_auth(mut self, auth: BasicAuth) -> Self {
        self.basic_auth = Some(auth);
        self
    }

    /// Asks `authorizer` before every operation and every websocket event.
    pub fn authorizer(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Refuses request bodies larger than `bytes` with a 413.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Queues at most `messages` per websocket client (at least 1).
    pub fn ws_buffer(mut self, messages: usize) -> Self {
        self.ws_buffer = messages.max(1);
        self
    }

    /// Waits at most this long for requests and websockets on shutdown.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Closes a connection whose request headers take longer than `timeout` to arrive, or whose
    /// request body stops arriving for that long.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Closes a keep-alive connection with no request in flight for `timeout`.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Keeps at most `connections` open (at least 1); further ones wait until one closes.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections.max(1);
        self
    }

    /// Refuses websocket messages (and frames) from clients larger than `bytes`.
    pub fn ws_max_message_bytes(mut self, bytes: usize) -> Self {
        self.ws_max_message_bytes = bytes;
        self
    }

    /// Lets one websocket client subscribe to at most `topics` topics.
    pub fn ws_max_topics(mut self, topics: usize) -> Self {
        self.ws_max_topics = topics;
        self
    }

    /// Serves at most `clients` websocket clients at once; further upgrades get a 503.
    pub fn ws_max_clients(mut self, clients: usize) -> Self {
        self.ws_max_clients = clients;
        self
    }
}

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

/// The user Basic auth let in (`None` without Basic auth), for the [`Authorizer`].
#[derive(Clone, Debug, Default)]
pub(crate) struct AuthUser(pub(crate) Option<String>);

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
        None,
    )
}

fn build(state: AppState, extra: Option<Router>) -> Router {
    let config = state.config.clone();
    let routes = Router::new()
        .route("/", get(rest::index))
        .route("/openapi.json", get(openapi::handler))
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
    let mut app = routes
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state, per_request));
    if let Some(cors) = cors_layer(&config.allowed_origins) {
        // With CORS on, preflights (answered by the CORS layer) get an id too: one more
        // layer, only then.
        app = app.layer(cors).layer(middleware::from_fn(with_request_id));
    }
    app
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
async fn per_request(
    State(state): State<AppState>,
    mut request: HttpRequest,
    next: Next,
) -> Response {
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
    let response = match auth::authenticate(&state.config, request.headers()) {
        Ok(user) => {
            request.extensions_mut().insert(user);
            drop(state);
            next.run(request).await
        }
        Err(rejection) => rejection.into_response(),
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

/// Binds `config.host:config.port`, serves [`router`] in a background task, and returns at once.
pub async fn serve(node: Node, config: HttpConfig) -> Result<HttpServer> {
    serve_inner(node, config, None).await
}

/// Like [`serve`], with routes of your own next to the node's (they get the same auth, CORS,
/// body limit and JSON errors; fixed paths like `/chat` win over `/{collection}`).
pub async fn serve_with(node: Node, config: HttpConfig, extra: Router) -> Result<HttpServer> {
    serve_inner(node, config, Some(extra)).await
}

async fn serve_inner(node: Node, config: HttpConfig, extra: Option<Router>) -> Result<HttpServer> {
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
        extra,
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
