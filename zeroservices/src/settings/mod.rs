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
#[cfg(feature = "http")]
use std::net::IpAddr;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::config::NetworkConfig;
#[cfg(feature = "http")]
use crate::http::{BasicAuth, HttpConfig};
use crate::security::ClusterKey;
use crate::store::StoreConfig;
use crate::{Error, Limits};

mod parse;

use parse::Check;

/// The default of [`Settings::shutdown_timeout`]: how long a stopping node waits for the work in
/// flight (HTTP requests, requests from peers, worker handlers).
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The default worker poll-check interval (the original's 10 s).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

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

impl From<SettingsError> for Error {
    fn from(err: SettingsError) -> Self {
        Error::bad_request(err.to_string())
    }
}

/// Peers, as one value (`host:port,host:port`).
pub type PeerList = Vec<SocketAddr>;

/// `--store`: `None` for `embedded` (the default place, `./data/<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec(pub Option<StoreConfig>);

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
#[derive(Args, Debug, Clone, Default)]
pub struct NetworkSettings {
    /// The interface address for multicast discovery and the node's sockets (tests use
    /// 127.0.0.1) [default: 0.0.0.0].
    #[arg(long, visible_alias = "interface", env = "ZS_DISCOVERY_INTERFACE", value_name = "ADDR",
          value_parser = Check(parse::ipv4))]
    pub discovery_interface: Option<Ipv4Addr>,
    /// The multicast group of the cluster [default: 237.252.249.227:32000].
    #[arg(long, env = "ZS_MULTICAST_GROUP", value_name = "GROUP:PORT", value_parser = Check(parse::group))]
    pub multicast_group: Option<SocketAddrV4>,
    /// Multicast discovery on or off (off: seed peers only) [default: on].
    #[arg(long, env = "ZS_MULTICAST", value_name = "on|off", value_parser = Check(parse::on_off))]
    pub multicast: Option<bool>,
    /// Static seed peers' discovery addresses, where multicast is absent.
    #[arg(long, env = "ZS_PEERS", value_name = "HOST:PORT,...", value_parser = Check(parse::peers))]
    pub peers: Option<PeerList>,
    /// This node's unicast discovery port (set it on seeds) [default: a free port].
    #[arg(long, env = "ZS_DISCOVERY_PORT", value_name = "PORT", value_parser = Check(parse::port))]
    pub discovery_port: Option<u16>,
    /// Seal (encrypt and authenticate) every message with this shared secret; several
    /// comma-separated keys are a keyring: the first seals, all are accepted.
    #[arg(long, env = "ZS_CLUSTER_KEY", value_name = "KEY[,KEY..]", hide_env_values = true,
          value_parser = Check(parse::text))]
    pub cluster_key: Option<String>,
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
    /// The largest message (and ZeroMQ frame) a peer may send; a connection announcing a larger
    /// frame is closed [default: 16777216].
    #[arg(long, env = "ZS_MAX_MESSAGE_BYTES", value_name = "BYTES",
          value_parser = Check(parse::max_message_bytes))]
    pub max_message_bytes: Option<usize>,
    /// The most peers this node tracks; announcements from new node ids beyond it are dropped
    /// [default: 1024].
    #[arg(long, env = "ZS_MAX_PEERS", value_name = "N", value_parser = Check(parse::max_peers))]
    pub max_peers: Option<usize>,
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
}

/// Workers and stopping.
#[derive(Args, Debug, Clone, Default)]
pub struct RunSettings {
    /// How often a worker re-checks the resources its rules match [default: 10000].
    #[arg(long, env = "ZS_WORKER_POLL_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub worker_poll_ms: Option<Duration>,
    /// How long a stopping node waits for in-flight HTTP requests, requests from peers and
    /// worker handlers before it closes anyway [default: 5000].
    #[arg(long, env = "ZS_SHUTDOWN_TIMEOUT_MS", value_name = "MS", value_parser = Check(parse::millis))]
    pub shutdown_timeout_ms: Option<Duration>,
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
        Ok(Self::from_arg_matches(&matches)?)
    }

    /// The network configuration: the defaults with what was given.
    pub fn network(&self) -> NetworkConfig {
        let n = &self.network;
        let mut c = NetworkConfig::default();
        if let Some(v) = n.discovery_interface {
            c.interface = v;
        }
        if let Some(v) = n.multicast_group {
            c.multicast_group = v;
        }
        if let Some(v) = n.multicast {
            c.multicast = v;
        }
        if let Some(v) = &n.peers {
            c.peers.clone_from(v);
        }
        if let Some(v) = n.discovery_port {
            c.discovery_port = Some(v);
        }
        if let Some(v) = &n.cluster_key {
            c.cluster_key = Some(ClusterKey::parse(v).unwrap_or_else(|_| ClusterKey::new(v)));
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
        if let Some(v) = n.max_message_bytes {
            c.max_message_bytes = v;
        }
        if let Some(v) = n.max_peers {
            c.max_peers = v;
        }
        c
    }

    /// `ZS_REQUEST_TIMEOUT_MS`, or [`crate::config::DEFAULT_REQUEST_TIMEOUT`].
    pub fn request_timeout(&self) -> Duration {
        self.network
            .request_timeout_ms
            .unwrap_or(crate::config::DEFAULT_REQUEST_TIMEOUT)
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
        if let Some(v) = self.run.shutdown_timeout_ms {
            config.shutdown_timeout = v;
        }
    }
}

#[cfg(test)]
mod tests;
