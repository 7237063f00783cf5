//! [`HttpConfig`]: what an HTTP server serves and its limits, with their defaults.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use super::auth::BasicAuth;
use super::{JwtAuth, Users};
use crate::Result;
use crate::access::Authorizer;

/// The default largest request body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The default number of messages queued for one websocket client before it is disconnected.
pub const DEFAULT_WS_BUFFER: usize = 1024;
/// The default time [`HttpServer::shutdown`](super::HttpServer::shutdown) waits for requests and websockets to finish
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
/// The default number of changes a websocket client's stream may fall behind a change log's
/// newest entry before it is told "too slow" and disconnected (`ZS_WS_MAX_LAG`): a quarter of
/// the default change log ([`crate::changes::DEFAULT_LOG_MAX_ENTRIES`]), so a client told is
/// still well inside what the log keeps when it resumes.
pub const DEFAULT_WS_MAX_LAG: u64 = 25_000;
/// The default largest number of websocket clients of one node: 1024.
pub const DEFAULT_WS_MAX_CLIENTS: usize = 1024;
/// The default time `GET /readyz` gives each store to answer: 1 s.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Settings of the HTTP server of a node.
#[derive(Clone)]
pub struct HttpConfig {
    /// The address to listen on (default `127.0.0.1`; `0.0.0.0` for every interface).
    pub host: IpAddr,
    /// The port (`0` = any free port; see [`HttpServer::local_addr`](super::HttpServer::local_addr)).
    pub port: u16,
    /// Origins allowed by CORS (`ZS_ALLOWED_ORIGINS`): empty = no CORS headers, `"*"` = any.
    pub allowed_origins: Vec<String>,
    /// Basic auth required on every route when set (`ZS_BASIC_AUTH=user:password`).
    pub basic_auth: Option<BasicAuth>,
    /// Require HTTP Basic auth with one of these users (`ZS_BASIC_AUTH_FILE`); with
    /// [`HttpConfig::basic_auth`] too, either is accepted.
    pub users: Option<Arc<Users>>,
    /// Accept (and, with no Basic auth configured, require) JWT bearer tokens verified with
    /// these keys (`ZS_JWT_SECRET`, `ZS_JWT_PUBLIC_KEY`).
    pub jwt: Option<JwtAuth>,
    /// Decides, per user, collection and operation, what a client may do.
    pub authorizer: Option<Arc<dyn Authorizer>>,
    /// Largest accepted request body (`ZS_MAX_BODY_BYTES`, default 1 MiB); larger ones get a
    /// 413 naming the limit.
    pub max_body_bytes: usize,
    /// Messages queued per websocket client (default 1024); a client that falls further behind
    /// is told so and disconnected.
    pub ws_buffer: usize,
    /// How long [`HttpServer::shutdown`](super::HttpServer::shutdown) waits for in-flight requests and websockets (default
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
    /// How many changes a websocket client's stream may fall behind the newest entry of a
    /// change log (`ZS_WS_MAX_LAG`, default 25,000; 0: no bound), counted from the closest it
    /// has been to it (a resume starts where its cursor is): further behind, it is told
    /// `too_slow` and disconnected (1008), as for a full queue, and resumes from its cursor.
    pub ws_max_lag: u64,
    /// Whether `GET /healthz` and `GET /readyz` need a user like every other route
    /// (`ZS_HEALTH_AUTH`, default off: probes from a load balancer or Kubernetes carry no
    /// credentials). Without authentication configured, they are open either way.
    pub health_auth: bool,
    /// Whether `GET /metrics` needs a user like every other route (`ZS_METRICS_AUTH`, default
    /// on: the counters name the cluster's collections and show its traffic; Prometheus sends
    /// Basic credentials or a bearer token with `basic_auth` / `authorization` in its scrape
    /// config). Without authentication configured, it is open either way.
    pub metrics_auth: bool,
    /// How long `GET /readyz` waits for each store of the node's collections
    /// (`ZS_READY_TIMEOUT_MS`, default 1 s); a store slower than that makes the node not ready.
    pub ready_timeout: Duration,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("allowed_origins", &self.allowed_origins)
            .field("basic_auth", &self.basic_auth)
            .field("users", &self.users)
            .field("jwt", &self.jwt)
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
            .field("ws_max_lag", &self.ws_max_lag)
            .field("health_auth", &self.health_auth)
            .field("metrics_auth", &self.metrics_auth)
            .field("ready_timeout", &self.ready_timeout)
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
            users: None,
            jwt: None,
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
            ws_max_lag: DEFAULT_WS_MAX_LAG,
            health_auth: false,
            metrics_auth: true,
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }

    /// Reads `ZS_HTTP_PORT` (else `default_port`), `ZS_HTTP_HOST`, `ZS_ALLOWED_ORIGINS`,
    /// `ZS_BASIC_AUTH`, `ZS_MAX_BODY_BYTES`, `ZS_HTTP_HEADER_TIMEOUT_MS`,
    /// `ZS_HTTP_IDLE_TIMEOUT_MS`, `ZS_HTTP_MAX_CONNECTIONS`, `ZS_WS_MAX_MESSAGE_BYTES`,
    /// `ZS_WS_MAX_TOPICS`, `ZS_WS_MAX_CLIENTS`, `ZS_WS_MAX_LAG` and `ZS_SHUTDOWN_TIMEOUT_MS` (through
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

    /// Requires HTTP Basic auth with one of `users` (a users file, see [`Users`]).
    pub fn users(mut self, users: Users) -> Self {
        self.users = Some(Arc::new(users));
        self
    }

    /// Accepts JWT bearer tokens verified by `jwt`; every request then needs a valid token
    /// (or valid Basic credentials, when those are configured too).
    pub fn jwt(mut self, jwt: JwtAuth) -> Self {
        self.jwt = Some(jwt);
        self
    }

    /// Whether every request must authenticate: Basic credentials, a users file or JWT keys
    /// are configured.
    pub fn requires_auth(&self) -> bool {
        self.basic_auth.is_some() || self.users.is_some() || self.jwt.is_some()
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

    /// Tells a websocket client "too slow" and disconnects it when its stream falls more than
    /// `changes` behind a change log's newest entry ([`HttpConfig::ws_max_lag`]; 0: no bound).
    pub fn ws_max_lag(mut self, changes: u64) -> Self {
        self.ws_max_lag = changes;
        self
    }

    /// Whether `GET /healthz` and `GET /readyz` need a user ([`HttpConfig::health_auth`]).
    pub fn health_auth(mut self, on: bool) -> Self {
        self.health_auth = on;
        self
    }

    /// Whether `GET /metrics` needs a user ([`HttpConfig::metrics_auth`]).
    pub fn metrics_auth(mut self, on: bool) -> Self {
        self.metrics_auth = on;
        self
    }

    /// How long `GET /readyz` waits for each store ([`HttpConfig::ready_timeout`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}
