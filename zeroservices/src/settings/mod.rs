//! [`Settings`]: every `ZS_*` variable, read in one place.
//!
//! Each setting is a variable and the same flag on a `#[service]` main (and the `zeroservices`
//! command, for the network ones): a flag wins over its variable, which wins over the value in
//! the code (`#[service(http(port = ...))]`, a builder call), which wins over the default. An
//! unset or empty variable counts as not given. A value that does not parse is an error
//! everywhere, a [`SettingsError::Invalid`] that names the variable and the flag, the value and
//! what was expected:
//!
//! ```text
//! ZS_WORKER_POLL_MS / --worker-poll-ms="soon": expected a positive number of milliseconds
//! ```
//!
//! [`App`](crate::App) reads them with its flags; [`NodeBuilder::start`](crate::NodeBuilder)
//! (unless given [`NodeBuilder::settings`](crate::NodeBuilder::settings)),
//! [`Worker::start`](crate::worker::Worker::start), [`NetworkConfig::from_env`],
//! [`Limits::from_env`], [`HttpConfig::from_env`] and [`StoreConfig::from_env`] read them
//! with [`Settings::from_env`].
//!
#![doc = include_str!("../../docs/settings.md")]

use std::ffi::OsString;
use std::fmt;
#[cfg(feature = "http")]
use std::net::IpAddr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};

use crate::config::NetworkConfig;
#[cfg(feature = "http")]
use crate::http::{BasicAuth, HttpConfig, JwtAuth, Users};
use crate::security::ClusterKey;
use crate::store::{StoreConfig, StoreOptions};
use crate::{Error, Limits};

mod parse;

use parse::Check;

/// The default of [`Settings::shutdown_timeout`]: how long a stopping node waits for the work in
/// flight (HTTP requests, requests from peers, worker handlers).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The default worker poll-check interval (the original's 10 s).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The default lease of a worker replica's claim on a change (`ZS_WORKER_LEASE_MS`).
pub const DEFAULT_WORKER_LEASE: Duration = Duration::from_secs(30);

/// A setting that does not parse, or a command line that clap refuses.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A variable or flag with a value that does not parse.
    #[error("{name}={value:?}: expected {expected}")]
    Invalid {
        /// The variable and its flag: `ZS_MAX_PEERS / --max-peers`.
        name: String,
        /// The value as given.
        value: String,
        /// What the setting takes.
        expected: String,
    },
    /// The command line: an unknown flag, `--help`, `--version` (clap's own text).
    #[error("{}", .0.render())]
    Command(clap::Error),
}

impl SettingsError {
    /// As clap's error for `command`, rendered and exiting as clap's own usage errors do.
    #[cfg(feature = "app")]
    pub(crate) fn into_clap(self, command: &clap::Command) -> clap::Error {
        match self {
            SettingsError::Invalid {
                name,
                value,
                expected,
            } => parse::invalid(command, name, value, expected),
            SettingsError::Command(err) => err,
        }
    }
}

impl From<SettingsError> for Error {
    fn from(err: SettingsError) -> Self {
        Error::bad_request(err.to_string())
    }
}

/// Peers, as one value (`host:port,host:port`): addresses, and names resolved by discovery.
pub use crate::config::PeerList;

/// `--store`: `None` for `embedded` (the default place, `./data/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec(pub Option<StoreConfig>);

/// `--cluster-key-file`: the file and the key read from it when the settings were read (see
/// [`read_key_file`]). Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The file, as given.
    pub path: PathBuf,
    key: String,
}

impl KeyFile {
    /// Reads the key from `path` ([`read_key_file`]).
    ///
    /// # Errors
    /// What [`read_key_file`] says: the file cannot be read, or holds nothing.
    pub fn read(path: impl Into<PathBuf>) -> Result<Self, String> {
        let path = path.into();
        let key = read_key_file(&path)?;
        Ok(Self { path, key })
    }

    /// The key's text.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The cluster key held in the file at `path`: its content, trimmed. The one place a key file is
/// read.
///
/// # Errors
/// What was expected, for a [`SettingsError::Invalid`] naming `ZS_CLUSTER_KEY_FILE`: a file
/// that cannot be read (the reason), or one that holds only whitespace.
pub fn read_key_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("a readable file holding the cluster key ({e})"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err("a file holding the cluster key (this one is empty)".into());
    }
    Ok(key.to_owned())
}

/// The settings that hold secrets, by id, with the variable of the file to use instead: given
/// as flags they show in `ps` to every user of the machine.
const SECRET_FLAGS: &[(&str, &str)] = &[
    ("cluster_key", "ZS_CLUSTER_KEY_FILE"),
    ("basic_auth", "ZS_BASIC_AUTH_FILE"),
    ("jwt_secret", "ZS_JWT_SECRET_FILE"),
];

/// The warnings a command line deserves: a secret given as a flag (`--cluster-key`), which
/// every user of the machine sees in `ps`. Its variable, or its file, shows nowhere.
pub fn command_line_warnings(matches: &ArgMatches) -> Vec<String> {
    SECRET_FLAGS
        .iter()
        .filter(|(id, _)| {
            // `try_get_raw` first: a command without this setting has nothing to say.
            matches.try_get_raw(id).is_ok()
                && matches.value_source(id) == Some(ValueSource::CommandLine)
        })
        .map(|(id, file)| {
            format!(
                "--{} on the command line shows in `ps` to every user of this machine: use \
                 {file} (or {}) instead",
                id.replace('_', "-"),
                parse::env_name(id)
            )
        })
        .collect()
}

/// Every setting of a node; `None` where neither a flag nor a variable gave one. See the
/// [module docs](self).
#[derive(Parser, Debug, Clone, Default)]
#[command(name = "zeroservices")]
pub struct Settings {
    /// HTTP.
    #[cfg(feature = "http")]
    #[command(flatten, next_help_heading = "HTTP")]
    pub http: HttpSettings,
    /// Where resources live: `memory`, `embedded:<dir>` or a `mongodb://` URI (default:
    /// `embedded:./data/<name>`, or memory without resources).
    #[arg(long, env = "ZS_STORE", value_name = "SPEC", value_parser = Check(parse::store),
          help_heading = "Storage")]
    pub store: Option<StoreSpec>,
    /// The embedded store commits at most this many waiting writes together, in one
    /// transaction and one fsync; each is still answered only after its commit (1: every write
    /// commits alone) [default: 256].
    #[arg(long, env = "ZS_STORE_BATCH_MAX", value_name = "N",
          value_parser = Check(parse::store_batch_max), help_heading = "Storage")]
    pub store_batch_max: Option<usize>,
    /// Discovery and the medium.
    #[command(flatten, next_help_heading = "Cluster")]
    pub network: NetworkSettings,
    /// What clients may send.
    #[command(flatten, next_help_heading = "Limits (what clients may send)")]
    pub limits: LimitSettings,
    /// Workers and stopping.
    #[command(flatten, next_help_heading = "Workers and shutdown")]
    pub run: RunSettings,
}

/// Discovery and medium settings.
#[derive(Args, Clone, Default)]
pub struct NetworkSettings {
    /// How nodes reach each other: `zeromq` (ZeroMQ sockets and UDP discovery), or NATS server
    /// URLs `nats://host:port[,nats://host2:port..]` (also `tls://`; `user:password@` in the URL
    /// if the server wants it) for requests, events and discovery through NATS [default: zeromq].
    #[arg(long, env = "ZS_TRANSPORT", value_name = "TRANSPORT",
          hide_env_values = true, value_parser = Check(parse::transport))]
    pub transport: Option<crate::config::Transport>,
    /// With NATS: the subject prefix of this cluster, so several clusters can share one NATS
    /// [default: zs].
    #[arg(long, env = "ZS_CLUSTER", value_name = "PREFIX", value_parser = Check(parse::cluster))]
    pub cluster: Option<String>,
    /// With NATS: a credentials file (user JWT and NKey seed) to connect with.
    #[arg(long, env = "ZS_NATS_CREDS", value_name = "PATH", value_parser = Check(parse::nats_creds))]
    pub nats_creds: Option<PathBuf>,
    /// With NATS: keep the change logs on a JetStream stream too (owners publish every entry,
    /// readers read gaps and resume from it, even after the owner is gone) [default: on].
    #[arg(long, env = "ZS_NATS_JETSTREAM", value_name = "on|off", value_parser = Check(parse::on_off))]
    pub nats_jetstream: Option<bool>,
    /// With NATS and JetStream: the replicas of the change-log stream (1 to 5; more than 1 on a
    /// NATS cluster) [default: 1].
    #[arg(long, env = "ZS_NATS_REPLICAS", value_name = "N", value_parser = Check(parse::nats_replicas))]
    pub nats_replicas: Option<usize>,
    /// With NATS and JetStream: the change-log entries an owner queues for the stream at most;
    /// past it entries are dropped from the queue (counted) and re-published from the store's
    /// log later [default: 65536].
    #[arg(long, env = "ZS_NATS_LOG_QUEUE", value_name = "N", value_parser = Check(parse::nats_log_queue))]
    pub nats_log_queue: Option<usize>,
    /// With NATS: how long a starting node tries to reach a NATS server before it gives up
    /// (each failed attempt is logged; once connected it reconnects by itself) [default: 30000].
    #[arg(long, env = "ZS_NATS_CONNECT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub nats_connect_ms: Option<Duration>,
    /// The interface address for multicast discovery and the node's sockets; without a cluster
    /// key only a loopback address is accepted (unless insecure is on) [default: 127.0.0.1, or
    /// 0.0.0.0 with a cluster key].
    #[arg(long, visible_alias = "interface", env = "ZS_DISCOVERY_INTERFACE", value_name = "ADDR",
          value_parser = Check(parse::ipv4))]
    pub discovery_interface: Option<Ipv4Addr>,
    /// The multicast group of the cluster [default: 237.252.249.227:32000].
    #[arg(long, env = "ZS_MULTICAST_GROUP", value_name = "GROUP:PORT", value_parser = Check(parse::group))]
    pub multicast_group: Option<SocketAddrV4>,
    /// Multicast discovery on or off (off: seed peers only) [default: on].
    #[arg(long, env = "ZS_MULTICAST", value_name = "on|off", value_parser = Check(parse::on_off))]
    pub multicast: Option<bool>,
    /// Seed peers' discovery addresses, where multicast is absent: each host an IPv4 address or
    /// a DNS name (resolved at start and every --peers-resolve-ms; every address it resolves to
    /// is a seed, e.g. a Kubernetes headless service).
    #[arg(long, env = "ZS_PEERS", value_name = "HOST:PORT,...", value_parser = Check(parse::peers))]
    pub peers: Option<PeerList>,
    /// How often the names in the seed peers are resolved again [default: 30000].
    #[arg(long, env = "ZS_PEERS_RESOLVE_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub peers_resolve_ms: Option<Duration>,
    /// This node's unicast discovery port (set it on seeds) [default: a free port].
    #[arg(long, env = "ZS_DISCOVERY_PORT", value_name = "PORT", value_parser = Check(parse::port))]
    pub discovery_port: Option<u16>,
    /// Seal (encrypt and authenticate) every message with this shared secret; several
    /// comma-separated keys are a keyring: the first seals, all are accepted (as a flag it
    /// shows in `ps`: prefer the variable, or the keys in a file).
    #[arg(long, env = "ZS_CLUSTER_KEY", value_name = "KEY[,KEY..]", hide_env_values = true,
          value_parser = Check(parse::text))]
    pub cluster_key: Option<String>,
    /// The cluster key (or keyring: one key per line or comma-separated) from this file, re-read
    /// on SIGHUP; not with --cluster-key.
    #[arg(long, env = "ZS_CLUSTER_KEY_FILE", value_name = "PATH", value_parser = Check(parse::key_file))]
    pub cluster_key_file: Option<KeyFile>,
    /// Allow an interface other than loopback without a cluster key: anyone who reaches the
    /// node's sockets can then talk to it [default: off].
    #[arg(long, env = "ZS_INSECURE", value_name = "on|off", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = Check(parse::on_off))]
    pub insecure: Option<bool>,
    /// With a cluster key: drop messages stamped further than this from this node's clock, and
    /// those seen before within it [default: 60000].
    #[arg(long, env = "ZS_REPLAY_WINDOW_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub replay_window_ms: Option<Duration>,
    /// How long a request waits for the owner's reply [default: 5000].
    #[arg(long, env = "ZS_REQUEST_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub request_timeout_ms: Option<Duration>,
    /// How often a node re-announces itself [default: 1000].
    #[arg(long, env = "ZS_HEARTBEAT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub heartbeat_ms: Option<Duration>,
    /// A peer silent this long is dropped [default: 5000].
    #[arg(long, env = "ZS_PEER_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub peer_timeout_ms: Option<Duration>,
    /// A node that owns collections listens this long at start, before it announces them, for
    /// the owners already there (a second owner over another store is refused); 0: no wait
    /// [default: the heartbeat period].
    #[arg(long, env = "ZS_DISCOVERY_WARMUP_MS", value_name = "MS", value_parser = Check(parse::millis_or_zero))]
    pub discovery_warmup_ms: Option<Duration>,
    /// The largest message (and ZeroMQ frame) a peer may send; a connection announcing a larger
    /// frame is closed [default: 16777216].
    #[arg(long, env = "ZS_MAX_MESSAGE_BYTES", value_name = "BYTES",
          value_parser = Check(parse::max_message_bytes))]
    pub max_message_bytes: Option<usize>,
    /// The most peers this node tracks; announcements from new node ids beyond it are dropped
    /// [default: 1024].
    #[arg(long, env = "ZS_MAX_PEERS", value_name = "N", value_parser = Check(parse::max_peers))]
    pub max_peers: Option<usize>,
    /// ZeroMQ: the most events queued for one subscribing connection; a subscriber that falls
    /// that far behind, or never reads, loses the events past it (counted) [default: 100000].
    #[arg(long, env = "ZS_MAX_SUBSCRIBER_QUEUE", value_name = "EVENTS",
          value_parser = Check(parse::max_subscriber_queue))]
    pub max_subscriber_queue: Option<usize>,
}

/// The cluster key is never printed (logs, panics): `<redacted>`.
impl std::fmt::Debug for NetworkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkSettings")
            .field("transport", &self.transport)
            .field("cluster", &self.cluster)
            .field("nats_creds", &self.nats_creds)
            .field("nats_jetstream", &self.nats_jetstream)
            .field("nats_replicas", &self.nats_replicas)
            .field("nats_log_queue", &self.nats_log_queue)
            .field("nats_connect_ms", &self.nats_connect_ms)
            .field("discovery_interface", &self.discovery_interface)
            .field("multicast_group", &self.multicast_group)
            .field("multicast", &self.multicast)
            .field("peers", &self.peers)
            .field("peers_resolve_ms", &self.peers_resolve_ms)
            .field("discovery_port", &self.discovery_port)
            .field(
                "cluster_key",
                &self.cluster_key.as_ref().map(|_| "<redacted>"),
            )
            .field("cluster_key_file", &self.cluster_key_file)
            .field("insecure", &self.insecure)
            .field("replay_window_ms", &self.replay_window_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("peer_timeout_ms", &self.peer_timeout_ms)
            .field("discovery_warmup_ms", &self.discovery_warmup_ms)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("max_peers", &self.max_peers)
            .field("max_subscriber_queue", &self.max_subscriber_queue)
            .finish()
    }
}

/// HTTP settings.
#[cfg(feature = "http")]
#[derive(Args, Debug, Clone, Default)]
pub struct HttpSettings {
    /// Serve HTTP on this port (0: any free port) [default: the `#[service]` attribute's,
    /// else 5001].
    #[arg(long, env = "ZS_HTTP_PORT", value_name = "PORT", value_parser = Check(parse::port))]
    pub http_port: Option<u16>,
    /// The address HTTP binds to [default: 127.0.0.1].
    #[arg(long, env = "ZS_HTTP_HOST", value_name = "ADDR", value_parser = Check(parse::ip))]
    pub http_host: Option<IpAddr>,
    /// CORS: the allowed origins, comma-separated, or `*`.
    #[arg(long, env = "ZS_ALLOWED_ORIGINS", value_name = "ORIGINS", value_parser = Check(parse::text))]
    pub allowed_origins: Option<String>,
    /// Require HTTP Basic auth with these credentials.
    #[arg(long, env = "ZS_BASIC_AUTH", value_name = "USER:PASSWORD", hide_env_values = true,
          value_parser = Check(parse::basic_auth))]
    pub basic_auth: Option<BasicAuth>,
    /// Require HTTP Basic auth with the users of this file: `user:$argon2id$...[:role,...]` per
    /// line (`zeroservices hash-password` prints a hash); with `ZS_BASIC_AUTH` too, either is
    /// accepted.
    #[arg(long, env = "ZS_BASIC_AUTH_FILE", value_name = "PATH",
          value_parser = Check(parse::users_file))]
    pub basic_auth_file: Option<std::sync::Arc<Users>>,
    /// Accept (and require) JWT bearer tokens signed with this HS256 secret (32 bytes or
    /// more); prefer `ZS_JWT_SECRET_FILE`.
    #[arg(long, env = "ZS_JWT_SECRET", value_name = "SECRET", hide_env_values = true,
          value_parser = Check(parse::jwt_secret))]
    pub jwt_secret: Option<JwtAuth>,
    /// `ZS_JWT_SECRET`, read from this file (one trailing newline ignored).
    #[arg(long, env = "ZS_JWT_SECRET_FILE", value_name = "PATH",
          value_parser = Check(parse::jwt_secret_file))]
    pub jwt_secret_file: Option<JwtAuth>,
    /// Accept (and require) JWT bearer tokens signed with the private key of this public key
    /// (RS256 for RSA, EdDSA for Ed25519): PEM text, or the path of a PEM file.
    #[arg(long, env = "ZS_JWT_PUBLIC_KEY", value_name = "PEM|PATH",
          value_parser = Check(parse::jwt_public_key))]
    pub jwt_public_key: Option<JwtAuth>,
    /// The largest request body, in bytes; larger ones get a 413 [default: 1048576].
    #[arg(long, env = "ZS_MAX_BODY_BYTES", value_name = "BYTES", value_parser = Check(parse::count))]
    pub max_body_bytes: Option<usize>,
    /// Close a connection whose request headers take longer than this, or whose request body
    /// stops arriving for this long [default: 10000].
    #[arg(long, env = "ZS_HTTP_HEADER_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub http_header_timeout_ms: Option<Duration>,
    /// Close a keep-alive connection with no request in flight for this long [default: 60000].
    #[arg(long, env = "ZS_HTTP_IDLE_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub http_idle_timeout_ms: Option<Duration>,
    /// The most open HTTP connections, websockets included; further ones wait until one closes
    /// [default: 1024].
    #[arg(long, env = "ZS_HTTP_MAX_CONNECTIONS", value_name = "N", value_parser = Check(parse::count))]
    pub http_max_connections: Option<usize>,
    /// The largest websocket message a client may send, in bytes [default: 65536].
    #[arg(long, env = "ZS_WS_MAX_MESSAGE_BYTES", value_name = "BYTES", value_parser = Check(parse::count))]
    pub ws_max_message_bytes: Option<usize>,
    /// The most topics one websocket client may subscribe to [default: 256].
    #[arg(long, env = "ZS_WS_MAX_TOPICS", value_name = "N", value_parser = Check(parse::count))]
    pub ws_max_topics: Option<usize>,
    /// The most websocket clients at once; further upgrades get a 503 [default: 1024].
    #[arg(long, env = "ZS_WS_MAX_CLIENTS", value_name = "N", value_parser = Check(parse::count))]
    pub ws_max_clients: Option<usize>,
    /// How many changes a websocket client may fall behind a change log's newest entry before
    /// it is told "too slow" and disconnected (it resumes from its cursor); 0: no bound
    /// [default: 25000].
    #[arg(long, env = "ZS_WS_MAX_LAG", value_name = "N", value_parser = Check(parse::count_or_zero))]
    pub ws_max_lag: Option<u64>,
    /// Whether /healthz and /readyz need a user like every other route (off: probes carry no
    /// credentials) [default: off].
    #[arg(long, env = "ZS_HEALTH_AUTH", value_name = "on|off", value_parser = Check(parse::on_off))]
    pub health_auth: Option<bool>,
    /// Whether /metrics needs a user like every other route (off: open like the probes)
    /// [default: on].
    #[arg(long, env = "ZS_METRICS_AUTH", value_name = "on|off", value_parser = Check(parse::on_off))]
    pub metrics_auth: Option<bool>,
    /// How long /readyz waits for each store of the node's collections [default: 1000].
    #[arg(long, env = "ZS_READY_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub ready_timeout_ms: Option<Duration>,
    /// Serve the operations routes (/healthz, /readyz, /metrics) on this port too, on the HTTP address;
    /// for a node without HTTP.
    #[arg(long, env = "ZS_METRICS_PORT", value_name = "PORT", value_parser = Check(parse::port))]
    pub metrics_port: Option<u16>,
    /// Do not serve HTTP, whatever the attribute and the port say.
    #[arg(long)]
    pub no_http: bool,
}

/// The limits of what clients may send (see [`Limits`]).
#[derive(Args, Debug, Clone, Default)]
pub struct LimitSettings {
    /// The deepest nesting of a stored document, at most 100 [default: 32].
    #[arg(long, env = "ZS_MAX_DEPTH", value_name = "LEVELS", value_parser = Check(parse::max_depth))]
    pub max_depth: Option<usize>,
    /// The largest stored document, in bytes of JSON [default: 1048576].
    #[arg(long, env = "ZS_MAX_DOCUMENT_BYTES", value_name = "BYTES",
          value_parser = Check(parse::max_document_bytes))]
    pub max_document_bytes: Option<usize>,
    /// The most paths one patch may touch [default: 256].
    #[arg(long, env = "ZS_MAX_PATCH_PATHS", value_name = "N", value_parser = Check(parse::max_patch_paths))]
    pub max_patch_paths: Option<usize>,
    /// The most segments in one patch path (`a.b.c` has 3) [default: 32].
    #[arg(long, env = "ZS_MAX_PATH_SEGMENTS", value_name = "N",
          value_parser = Check(parse::max_path_segments))]
    pub max_path_segments: Option<usize>,
    /// The deepest nesting of a list filter [default: 16].
    #[arg(long, env = "ZS_MAX_FILTER_DEPTH", value_name = "LEVELS",
          value_parser = Check(parse::max_filter_depth))]
    pub max_filter_depth: Option<usize>,
    /// The most fields and operators in a list filter [default: 256].
    #[arg(long, env = "ZS_MAX_FILTER_CLAUSES", value_name = "N",
          value_parser = Check(parse::max_filter_clauses))]
    pub max_filter_clauses: Option<usize>,
    /// The longest resource id, in bytes [default: 256].
    #[arg(long, env = "ZS_MAX_ID_BYTES", value_name = "BYTES", value_parser = Check(parse::max_id_bytes))]
    pub max_id_bytes: Option<usize>,
    /// The largest page a list answers; more follow by `Link: rel="next"` [default: 1000].
    #[arg(long, env = "ZS_MAX_PAGE", value_name = "N", value_parser = Check(parse::max_page))]
    pub max_page: Option<usize>,
    /// How long a mutating request's reply is remembered by request id, so a retry returns it
    /// instead of running again [default: 600000].
    #[arg(long, env = "ZS_REQUEST_MEMORY_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub request_memory_ms: Option<Duration>,
    /// How long the reply to a request with an HTTP `Idempotency-Key` is remembered
    /// [default: 86400000].
    #[arg(long, env = "ZS_IDEMPOTENCY_KEY_TTL_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub idempotency_key_ttl_ms: Option<Duration>,
    /// The most entries each collection's change log keeps, per owner; 0 turns the log off
    /// (events are then not resumable) [default: 100000].
    #[arg(long, env = "ZS_CHANGE_LOG_MAX", value_name = "N", value_parser = Check(parse::count_or_zero))]
    pub change_log_max: Option<u64>,
    /// The oldest entry a change log keeps: cursors older than this expire [default: 86400000].
    #[arg(long, env = "ZS_CHANGE_LOG_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub change_log_ms: Option<Duration>,
}

/// How log lines look (`ZS_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One line of text an event (`2026-01-01T00:00:00Z  INFO span{field=1}: message`).
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, the event's fields (`message`
    /// among them), `span` (the current span's name and fields) and `spans` (the whole list).
    Json,
}

impl LogFormat {
    /// `ZS_LOG_FORMAT` from the process environment (unset: [`LogFormat::Text`]).
    ///
    /// # Errors
    /// A message naming the variable for a value other than `text` or `json`.
    pub fn from_env() -> std::result::Result<Self, String> {
        match std::env::var("ZS_LOG_FORMAT") {
            Err(_) => Ok(Self::Text),
            Ok(v) => parse::log_format(v.trim())
                .map_err(|expected| format!("ZS_LOG_FORMAT: {v:?} is not {expected}")),
        }
    }
}

/// Workers and stopping.
#[derive(Args, Debug, Clone, Default)]
pub struct RunSettings {
    /// How often a worker re-checks the resources its rules match [default: 10000].
    #[arg(long, env = "ZS_WORKER_POLL_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub worker_poll_ms: Option<Duration>,
    /// How long a worker replica's claim on a change holds without renewal: another replica
    /// of the same worker takes the change over after it [default: 30000].
    #[arg(long, env = "ZS_WORKER_LEASE_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub worker_lease_ms: Option<Duration>,
    /// Where a worker keeps the cursor it resumes from (`worker-cursor.json`); `off` keeps
    /// none [default: ./data/WORKER_NAME].
    #[arg(long, env = "ZS_WORKER_STATE_DIR", value_name = "DIR|off", value_parser = Check(parse::text))]
    pub worker_state_dir: Option<String>,
    /// How long a stopping node waits for in-flight HTTP requests, requests from peers and
    /// worker handlers before it closes anyway [default: 5000].
    #[arg(long, env = "ZS_SHUTDOWN_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub shutdown_timeout_ms: Option<Duration>,
    /// How log lines look on stderr: text for people, or json (one object a line, with the
    /// span fields) for a log collector [default: text].
    #[arg(long, env = "ZS_LOG_FORMAT", value_name = "text|json", value_parser = Check(parse::log_format))]
    pub log_format: Option<LogFormat>,
}

/// Where a setting's variables come from: the process environment, or a test's table.
pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment: the [`Lookup`] of every reader but tests'. The one place the
/// crate reads a variable.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The environment as clap arguments: each argument with a `ZS_*` variable that `lookup` gives
/// (non-empty) gets it as its lowest-ranking value, so a flag still wins. Clap's own reading of
/// the process environment is turned off, so `lookup` is the only source. For a command that
/// flattens these settings into its own (the `zeroservices` command does).
pub fn with_env(command: clap::Command, lookup: Lookup<'_>) -> clap::Command {
    command.mut_args(|arg| {
        let Some(env) = arg.get_env().map(|e| e.to_string_lossy().into_owned()) else {
            return arg;
        };
        let help = match arg.get_help() {
            Some(help) => format!("{help} [env: {env}]"),
            None => format!("[env: {env}]"),
        };
        let arg = arg.env(None::<&'static str>).help(help);
        match lookup(&env).filter(|v| !v.trim().is_empty()) {
            Some(value) => arg.default_value(value).hide_default_value(true),
            None => arg,
        }
    })
}

impl Settings {
    /// The `ZS_*` variables of the process (no flags).
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] naming the first variable that does not parse.
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(&process_env)
    }

    /// [`Settings::from_env`] over any source of variables (tests).
    ///
    /// # Errors
    /// As [`Settings::from_env`].
    pub fn from_lookup(lookup: Lookup<'_>) -> Result<Self, SettingsError> {
        Self::from_args_with(["zeroservices"], lookup)
    }

    /// The flags in `args` (the first item is the program name) over the process's variables.
    ///
    /// # Errors
    /// [`SettingsError::Invalid`] for a value that does not parse, [`SettingsError::Command`]
    /// for anything else clap refuses (and for `--help`).
    pub fn from_args<I, T>(args: I) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_args_with(args, &process_env)
    }

    /// [`Settings::from_args`] over any source of variables.
    ///
    /// # Errors
    /// As [`Settings::from_args`].
    pub fn from_args_with<I, T>(args: I, lookup: Lookup<'_>) -> Result<Self, SettingsError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = with_env(Self::command(), lookup);
        let matches = command.try_get_matches_from_mut(args)?;
        let settings = Self::from_arg_matches(&matches)?;
        settings.check()?;
        for warning in command_line_warnings(&matches) {
            tracing::warn!("{warning}");
        }
        Ok(settings)
    }

    /// What the settings say together, beyond each value: the cluster key given one way only,
    /// and no interface but loopback without a key unless `ZS_INSECURE` says so (see
    /// [`NetworkConfig::check_exposure`]). The readers above call it.
    ///
    /// # Errors
    /// A [`SettingsError::Invalid`] naming the variables involved.
    pub fn check(&self) -> Result<(), SettingsError> {
        let n = &self.network;
        if let (Some(_), Some(file)) = (&n.cluster_key, &n.cluster_key_file) {
            return Err(SettingsError::Invalid {
                name: "ZS_CLUSTER_KEY_FILE / --cluster-key-file".into(),
                value: file.path.display().to_string(),
                expected: "no ZS_CLUSTER_KEY / --cluster-key as well: give the key one way".into(),
            });
        }
        if let Some(crate::config::Transport::Nats(servers)) = &n.transport
            && self.cluster_key().is_none()
            && n.insecure != Some(true)
            && let Some(open) = servers.iter().find(|s| !s.is_loopback())
        {
            return Err(SettingsError::Invalid {
                name: "ZS_TRANSPORT / --transport".into(),
                value: open.redacted(),
                expected: crate::config::nats_exposure_refusal(),
            });
        }
        if let Some(interface) = n.discovery_interface
            && self.cluster_key().is_none()
            && !interface.is_loopback()
            && n.insecure != Some(true)
        {
            return Err(SettingsError::Invalid {
                name: "ZS_DISCOVERY_INTERFACE / --discovery-interface".into(),
                value: interface.to_string(),
                expected: crate::config::exposure_refusal(interface),
            });
        }
        Ok(())
    }

    /// The cluster key's text: `ZS_CLUSTER_KEY`, or what `ZS_CLUSTER_KEY_FILE` holds.
    pub fn cluster_key(&self) -> Option<&str> {
        let n = &self.network;
        n.cluster_key
            .as_deref()
            .or_else(|| n.cluster_key_file.as_ref().map(KeyFile::key))
    }

    /// The network configuration: the defaults with what was given. Without an interface the
    /// node binds loopback, or every interface (`0.0.0.0`) when it has a cluster key.
    pub fn network(&self) -> NetworkConfig {
        let n = &self.network;
        let mut c = NetworkConfig::default();
        if let Some(v) = &n.transport {
            c.transport = v.clone();
        }
        if let Some(v) = &n.cluster {
            c.cluster.clone_from(v);
        }
        c.nats_creds.clone_from(&n.nats_creds);
        if let Some(v) = n.nats_jetstream {
            c.nats_jetstream = v;
        }
        if let Some(v) = n.nats_replicas {
            c.nats_replicas = v;
        }
        if let Some(v) = n.nats_log_queue {
            c.nats_log_queue = v;
        }
        if let Some(v) = n.nats_connect_ms {
            c.nats_connect = v;
        }
        let key = self.cluster_key();
        c.interface = match (n.discovery_interface, key) {
            (Some(v), _) => v,
            (None, Some(_)) => Ipv4Addr::UNSPECIFIED,
            (None, None) => Ipv4Addr::LOCALHOST,
        };
        c.insecure = n.insecure.unwrap_or(false);
        if let Some(v) = n.multicast_group {
            c.multicast_group = v;
        }
        if let Some(v) = n.multicast {
            c.multicast = v;
        }
        if let Some(v) = &n.peers {
            c.peers.clone_from(&v.addrs);
            c.peer_names.clone_from(&v.names);
        }
        if let Some(v) = n.peers_resolve_ms {
            c.peers_resolve = v;
        }
        if let Some(v) = n.discovery_port {
            c.discovery_port = Some(v);
        }
        if let Some(key) = key {
            c.cluster_key = Some(ClusterKey::parse(key).unwrap_or_else(|_| ClusterKey::new(key)));
            c.cluster_key_file = n.cluster_key_file.as_ref().map(|f| f.path.clone());
        }
        if let Some(v) = n.replay_window_ms {
            c.replay_window = v;
        }
        c.request_timeout = self.request_timeout();
        if let Some(v) = n.heartbeat_ms {
            c.heartbeat = v;
        }
        if let Some(v) = n.peer_timeout_ms {
            c.peer_timeout = v;
        }
        if let Some(v) = n.discovery_warmup_ms {
            c.discovery_warmup = Some(v);
        }
        if let Some(v) = n.max_message_bytes {
            c.max_message_bytes = v;
        }
        if let Some(v) = n.max_peers {
            c.max_peers = v;
        }
        if let Some(v) = n.max_subscriber_queue {
            c.max_subscriber_queue = v;
        }
        c
    }

    /// `ZS_REQUEST_TIMEOUT_MS`, or [`crate::config::DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(&self) -> Duration {
        self.network
            .request_timeout_ms
            .unwrap_or(crate::config::DEFAULT_REQUEST_TIMEOUT)
    }

    /// `ZS_LOG_FORMAT`, or [`LogFormat::Text`].
    pub fn log_format(&self) -> LogFormat {
        self.run.log_format.unwrap_or_default()
    }

    /// `ZS_SHUTDOWN_TIMEOUT_MS`, or [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn shutdown_timeout(&self) -> Duration {
        self.run
            .shutdown_timeout_ms
            .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// `ZS_WORKER_POLL_MS`, or [`DEFAULT_POLL_INTERVAL`].
    pub fn worker_poll_interval(&self) -> Duration {
        self.run.worker_poll_ms.unwrap_or(DEFAULT_POLL_INTERVAL)
    }

    /// `ZS_WORKER_LEASE_MS`, or [`DEFAULT_WORKER_LEASE`].
    pub fn worker_lease(&self) -> Duration {
        self.run.worker_lease_ms.unwrap_or(DEFAULT_WORKER_LEASE)
    }

    /// `ZS_WORKER_STATE_DIR` (`None` for `off`), or `./data/<worker>`.
    pub fn worker_state_dir(&self, worker: &str) -> Option<PathBuf> {
        match self.run.worker_state_dir.as_deref() {
            Some("off") => None,
            Some(dir) => Some(PathBuf::from(dir)),
            None => Some(Path::new("data").join(worker)),
        }
    }

    /// The limits: the defaults with what was given.
    pub fn limits(&self) -> Limits {
        let l = &self.limits;
        let d = Limits::default();
        Limits {
            max_depth: l.max_depth.unwrap_or(d.max_depth),
            max_document_bytes: l.max_document_bytes.unwrap_or(d.max_document_bytes),
            max_patch_paths: l.max_patch_paths.unwrap_or(d.max_patch_paths),
            max_path_segments: l.max_path_segments.unwrap_or(d.max_path_segments),
            max_filter_depth: l.max_filter_depth.unwrap_or(d.max_filter_depth),
            max_filter_clauses: l.max_filter_clauses.unwrap_or(d.max_filter_clauses),
            max_id_bytes: l.max_id_bytes.unwrap_or(d.max_id_bytes),
            max_page: l.max_page.unwrap_or(d.max_page),
            request_memory: l.request_memory_ms.unwrap_or(d.request_memory),
            idempotency_key_ttl: l.idempotency_key_ttl_ms.unwrap_or(d.idempotency_key_ttl),
            change_log: crate::changes::Retention {
                max_entries: l.change_log_max.unwrap_or(d.change_log.max_entries),
                max_age: l.change_log_ms.unwrap_or(d.change_log.max_age),
            },
        }
    }

    /// How the store is opened ([`StoreOptions`]): `ZS_STORE_BATCH_MAX`.
    pub fn store_options(&self) -> StoreOptions {
        let d = StoreOptions::default();
        StoreOptions {
            batch_max: self.store_batch_max.unwrap_or(d.batch_max),
        }
    }

    /// The store of a node named `node_name`: the one given, else the embedded store in
    /// `./data/<name>` when it owns resources, else memory.
    pub fn store(&self, node_name: &str, has_resources: bool) -> StoreConfig {
        match &self.store {
            Some(StoreSpec(Some(store))) => store.clone(),
            _ if !has_resources => StoreConfig::Memory,
            _ => StoreConfig::default_for(node_name),
        }
    }

    #[cfg(feature = "http")]
    /// HTTP as the code describes it (`code`: the `#[service(http)]` defaults, if any) with the
    /// settings over it; `None` when HTTP is off (`--no-http`, or neither the code nor a port
    /// asks for it).
    pub fn http(&self, code: Option<HttpConfig>) -> Option<HttpConfig> {
        let h = &self.http;
        let mut config = match (code, h.http_port) {
            _ if h.no_http => return None,
            (Some(config), _) => config,
            (None, Some(port)) => HttpConfig::new(port),
            (None, None) => return None,
        };
        self.apply_http(&mut config);
        Some(config)
    }

    #[cfg(feature = "http")]
    /// Applies every HTTP setting given (the port too) to `config`.
    pub fn apply_http(&self, config: &mut HttpConfig) {
        let h = &self.http;
        if let Some(port) = h.http_port {
            config.port = port;
        }
        if let Some(host) = h.http_host {
            config.host = host;
        }
        if let Some(origins) = &h.allowed_origins {
            *config = std::mem::take(config).allowed_origins(origins);
        }
        if let Some(auth) = &h.basic_auth {
            config.basic_auth = Some(auth.clone());
        }
        if let Some(users) = &h.basic_auth_file {
            config.users = Some(users.clone());
        }
        for jwt in [&h.jwt_secret, &h.jwt_secret_file, &h.jwt_public_key]
            .into_iter()
            .flatten()
        {
            config.jwt = Some(match config.jwt.take() {
                Some(keys) => keys.and(jwt.clone()),
                None => jwt.clone(),
            });
        }
        if let Some(v) = h.max_body_bytes {
            config.max_body_bytes = v;
        }
        if let Some(v) = h.http_header_timeout_ms {
            config.header_timeout = v;
        }
        if let Some(v) = h.http_idle_timeout_ms {
            config.idle_timeout = v;
        }
        if let Some(v) = h.http_max_connections {
            config.max_connections = v;
        }
        if let Some(v) = h.ws_max_message_bytes {
            config.ws_max_message_bytes = v;
        }
        if let Some(v) = h.ws_max_topics {
            config.ws_max_topics = v;
        }
        if let Some(v) = h.ws_max_clients {
            config.ws_max_clients = v;
        }
        if let Some(v) = h.ws_max_lag {
            config.ws_max_lag = v;
        }
        if let Some(v) = self.run.shutdown_timeout_ms {
            config.shutdown_timeout = v;
        }
        if let Some(v) = h.health_auth {
            config.health_auth = v;
        }
        if let Some(v) = h.metrics_auth {
            config.metrics_auth = v;
        }
        if let Some(v) = h.ready_timeout_ms {
            config.ready_timeout = v;
        }
    }

    #[cfg(feature = "http")]
    /// The operations listener (`ZS_METRICS_PORT`: `/healthz`, `/readyz`, `/metrics`), when a port is
    /// given (`--no-http` does not turn it off): on the HTTP address, with the HTTP settings (authentication,
    /// `ZS_HEALTH_AUTH`, timeouts).
    pub fn metrics(&self) -> Option<HttpConfig> {
        let h = &self.http;
        let port = h.metrics_port?;
        let mut config = HttpConfig::new(port);
        self.apply_http(&mut config);
        config.port = port;
        Some(config)
    }
}

#[cfg(test)]
mod tests;
