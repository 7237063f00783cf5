//! [`App`]: a whole service process, the runtime behind `#[service]`.
//!
//! It goes through three stages, each usable on its own:
//!
//! 1. [`App`] is what the code says: the service's name, its resources, its HTTP defaults
//!    (`#[service(name = "power_service", resources(Power), http(port = 5001))]` builds one).
//! 2. [`App::configure`] adds what the command line and the environment say and gives a
//!    [`Configured`] app: the final network, store and HTTP settings.
//! 3. [`Configured::start`] opens the store, starts the node and HTTP and gives a
//!    [`RunningApp`]; [`RunningApp::shutdown`] drains HTTP and says goodbye to the cluster.
//!
//! [`App::run`] does all of it for a `main`: flags, logging, the tokio runtime, the user's
//! body, serving until Ctrl-C / SIGTERM, a clean goodbye, and the process's exit code.
//!
//! # Settings
//!
//! Every setting is a flag that also reads its environment variable; a flag wins over its
//! variable, which wins over the value written in `#[service(...)]`, which wins over the
//! built-in default.
//!
//! | flag | variable | default |
//! |---|---|---|
//! | `--http-port PORT` | `ZS_HTTP_PORT` | the attribute's `http(port)`, else 5001; `0` takes any free port |
//! | `--http-host ADDR` | `ZS_HTTP_HOST` | the attribute's `http(host)`, else `127.0.0.1` |
//! | `--allowed-origins LIST` | `ZS_ALLOWED_ORIGINS` | the attribute's `http(allowed_origins)`, else none (no CORS) |
//! | `--basic-auth USER:PASSWORD` | `ZS_BASIC_AUTH` | none |
//! | `--max-body-bytes N` | `ZS_MAX_BODY_BYTES` | 1048576 (1 MiB); larger request bodies get a 413 |
//! | `--http-header-timeout-ms MS` | `ZS_HTTP_HEADER_TIMEOUT_MS` | 10000; a connection whose request headers take longer (or whose body stalls that long) is closed |
//! | `--http-idle-timeout-ms MS` | `ZS_HTTP_IDLE_TIMEOUT_MS` | 60000; a keep-alive connection with no request in flight that long is closed |
//! | `--http-max-connections N` | `ZS_HTTP_MAX_CONNECTIONS` | 1024 open connections (websockets included); further ones wait until one closes |
//! | `--ws-max-message-bytes N` | `ZS_WS_MAX_MESSAGE_BYTES` | 65536; a bigger websocket message closes the socket (1009) |
//! | `--ws-max-topics N` | `ZS_WS_MAX_TOPICS` | 256 topics per websocket client |
//! | `--ws-max-clients N` | `ZS_WS_MAX_CLIENTS` | 1024 websocket clients per node; further upgrades get a 503 |
//! | `--no-http` | | HTTP is on when the attribute has `http` or a port is set |
//! | `--store SPEC` | `ZS_STORE` | `embedded:./data/<name>`; `memory` for a node without resources |
//! | `--discovery-interface ADDR` | `ZS_DISCOVERY_INTERFACE` | `0.0.0.0` |
//! | `--multicast-group GROUP:PORT` | `ZS_MULTICAST_GROUP` | `237.252.249.227:32000` |
//! | `--peers HOST:PORT,...` | `ZS_PEERS` | none |
//! | `--cluster-key KEY` | `ZS_CLUSTER_KEY` | none |
//! | `--request-timeout-ms MS` | `ZS_REQUEST_TIMEOUT_MS` | 5000 |
//! | `--max-message-bytes BYTES` | `ZS_MAX_MESSAGE_BYTES` | 16777216 (16 MiB); also the largest ZeroMQ frame a peer may announce |
//! | `--max-peers N` | `ZS_MAX_PEERS` | 1024; announcements from new node ids beyond it are dropped |
//!
//! The other network variables of [`NetworkConfig::from_env`] (`ZS_MULTICAST`,
//! `ZS_DISCOVERY_PORT`, `ZS_HEARTBEAT_MS`, ...) apply too; `RUST_LOG` sets the log filter
//! (default `info`).
//!
//! # Exit codes
//!
//! 0 after a signal (or `--help`, `--version`); 1 when the node cannot start or the body
//! returns an error; 2 for a bad flag or variable (a message on stderr, like clap's).

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{ExitCode, Termination};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, FromArgMatches, Parser};

use crate::config::{self, NetworkConfig};
use crate::http::{self, BasicAuth, HttpConfig, HttpServer};
use crate::security::ClusterKey;
use crate::store::StoreConfig;
use crate::{Error, Limits, Node, NodeBuilder, NodeKind, Resource, Result};

/// The HTTP port of `#[service(http)]` when the attribute gives none.
pub const DEFAULT_HTTP_PORT: u16 = 5001;

type Setup = Box<dyn FnOnce(NodeBuilder) -> NodeBuilder + Send>;

/// A service process as the code describes it: a name, resources, HTTP defaults.
///
/// `#[service]` builds one; it can also be used directly:
///
/// ```no_run
/// use zeroservices::App;
///
/// fn main() -> std::process::ExitCode {
///     App::new("rest_api")
///         .http(zeroservices::http::HttpConfig::new(5001))
///         .run(|_node| async { Ok::<(), zeroservices::Error>(()) })
/// }
/// ```
pub struct App {
    name: String,
    version: Option<&'static str>,
    about: Option<&'static str>,
    kind: NodeKind,
    has_resources: bool,
    setup: Vec<Setup>,
    http: Option<HttpConfig>,
}

impl fmt::Debug for App {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("App")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("http", &self.http.as_ref().map(|h| h.port))
            .finish_non_exhaustive()
    }
}

impl App {
    /// A service named `name` (its name in the cluster, and in `--version`).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: None,
            about: None,
            kind: NodeKind::Node,
            has_resources: false,
            setup: Vec::new(),
            http: None,
        }
    }

    /// Owns collection `R` (in the configured store).
    pub fn resource<R: Resource>(mut self) -> Self {
        self.has_resources = true;
        self.setup.push(Box::new(|builder| builder.resource::<R>()));
        self
    }

    /// Serves HTTP with these defaults (the flags and the environment override them).
    pub fn http(mut self, config: HttpConfig) -> Self {
        self.http = Some(config);
        self
    }

    /// Announces the node as this kind (default [`NodeKind::Node`]).
    pub fn kind(mut self, kind: NodeKind) -> Self {
        self.kind = kind;
        self
    }

    /// The version `--version` prints (`#[service]` passes the crate's `CARGO_PKG_VERSION`).
    pub fn version(mut self, version: &'static str) -> Self {
        self.version = Some(version);
        self
    }

    /// The description `--help` prints (`#[service]` passes the doc comment of `main`).
    pub fn about(mut self, about: &'static str) -> Self {
        self.about = Some(about);
        self
    }

    /// Customises the node before it starts: hooks (`on_peer_join`, `on_event`, ...),
    /// watches, resources in their own stores.
    pub fn node_builder(
        mut self,
        setup: impl FnOnce(NodeBuilder) -> NodeBuilder + Send + 'static,
    ) -> Self {
        self.setup.push(Box::new(setup));
        self
    }

    /// The command line this app accepts, for `--help` and parsing.
    fn command(&self) -> clap::Command {
        // clap wants a `'static` name; one small string per app.
        let name: &'static str = Box::leak(self.name.clone().into_boxed_str());
        let mut command = Flags::command()
            .name(name)
            .about(
                self.about
                    .unwrap_or("A zeroservices node: resources, discovery, REST and websocket."),
            )
            .after_help(
                "A flag wins over its environment variable, which wins over the value in \
                 #[service(...)]. RUST_LOG sets the log filter (default: info).",
            );
        if let Some(version) = self.version {
            command = command.version(version);
        }
        command
    }

    /// Reads the flags in `args` (the first item is the program name) and the environment
    /// into the final settings.
    ///
    /// # Errors
    /// A [`CliError`] for `--help` and `--version` (its text is the output, its exit code 0)
    /// and for bad flags or variables (exit code 2).
    pub fn configure<I, T>(self, args: I) -> std::result::Result<Configured, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = self.command();
        let flags = command
            .try_get_matches_from_mut(args)
            .and_then(|matches| Flags::from_arg_matches(&matches))
            .map_err(CliError)?;
        let invalid = |command: &mut clap::Command, message: String| {
            CliError(command.error(ErrorKind::ValueValidation, message))
        };

        let mut network =
            NetworkConfig::from_env().map_err(|e| invalid(&mut command, message(e)))?;
        flags.network.apply(&mut network);
        // The flags are read from the variables too, so this checks each value once.
        let mut limits = Limits::default();
        flags
            .limits
            .apply(&mut limits)
            .map_err(|e| invalid(&mut command, e))?;

        let store = match given(flags.store) {
            Some(StoreArg(Some(store))) => store,
            _ if !self.has_resources => StoreConfig::Memory,
            _ => StoreConfig::default_for(&self.name),
        };

        let http = match (self.http, given(flags.http.http_port)) {
            _ if flags.http.no_http => None,
            (Some(mut config), port) => {
                if let Some(port) = port {
                    config.port = port;
                }
                Some(config)
            }
            (None, Some(port)) => Some(HttpConfig::new(port)),
            (None, None) => None,
        };
        let http = match http {
            None => None,
            Some(mut config) => {
                flags.http.limits.apply(&mut config);
                if let Some(host) = given(flags.http.http_host) {
                    config.host = host;
                }
                if let Some(origins) = given(flags.http.allowed_origins) {
                    config = config.allowed_origins(&origins);
                }
                if let Some(credentials) = given(flags.http.basic_auth) {
                    let auth = BasicAuth::parse(&credentials).map_err(|e| {
                        invalid(
                            &mut command,
                            format!("--basic-auth / ZS_BASIC_AUTH: {}", message(e)),
                        )
                    })?;
                    config.basic_auth = Some(auth);
                }
                Some(config)
            }
        };

        Ok(Configured {
            name: self.name,
            kind: self.kind,
            network,
            limits,
            store,
            http,
            setup: self.setup,
        })
    }

    /// Runs the service with the process's arguments: see [`App::run_with_args`].
    pub fn run<F, Fut>(self, body: F) -> ExitCode
    where
        F: FnOnce(Node) -> Fut,
        Fut: Future,
        Fut::Output: ServiceOutput,
    {
        self.run_with_args(std::env::args_os(), body).into()
    }

    /// Runs the whole service: reads the flags in `args` and the environment (printing help,
    /// version or the error and returning at once when asked to or when they are wrong), sets
    /// up logging, builds a multi-thread tokio runtime, starts the node (and HTTP), runs
    /// `body`, serves until Ctrl-C or SIGTERM, then drains HTTP and says goodbye.
    pub fn run_with_args<I, T, F, Fut>(self, args: I, body: F) -> Exit
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
        F: FnOnce(Node) -> Fut,
        Fut: Future,
        Fut::Output: ServiceOutput,
    {
        let configured = match self.configure(args) {
            Ok(configured) => configured,
            Err(err) => {
                err.print();
                return err.exit();
            }
        };
        init_tracing();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(err) => {
                tracing::error!("cannot start the tokio runtime: {err}");
                return Exit::Failure;
            }
        };
        let exit = runtime.block_on(configured.serve(body));
        // Do not wait forever for blocking tasks (a stdin read, a slow file).
        runtime.shutdown_timeout(Duration::from_secs(2));
        exit
    }
}

/// An [`App`] with its final settings, ready to start. The fields can still be changed.
pub struct Configured {
    /// The service's name.
    pub name: String,
    /// Node or worker.
    pub kind: NodeKind,
    /// Discovery and medium settings.
    pub network: NetworkConfig,
    /// What clients may send to this node's collections.
    pub limits: Limits,
    /// Where the resources live.
    pub store: StoreConfig,
    /// HTTP, when on.
    pub http: Option<HttpConfig>,
    setup: Vec<Setup>,
}

impl fmt::Debug for Configured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Configured")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("network", &self.network)
            .field("store", &self.store)
            .field(
                "http",
                &self.http.as_ref().map(|h| SocketAddr::new(h.host, h.port)),
            )
            .finish_non_exhaustive()
    }
}

impl Configured {
    /// Opens the store, starts the node on the network and, when configured, HTTP.
    ///
    /// # Errors
    /// What opening the store, starting the node or binding the HTTP port returns.
    pub async fn start(self) -> Result<RunningApp> {
        let store = self.store.open().await?;
        let mut builder = Node::builder(&self.name)
            .kind(self.kind)
            .network(self.network)
            .limits(self.limits)
            .shared_store(store);
        for setup in self.setup {
            builder = setup(builder);
        }
        let node = builder.start().await?;
        let http = match self.http {
            None => None,
            Some(config) => match http::serve(node.clone(), config).await {
                Ok(server) => {
                    let addr = server.local_addr();
                    tracing::info!(
                        "{}: HTTP on http://{addr}/ (REST, /openapi.json, /realtime)",
                        self.name
                    );
                    Some(server)
                }
                Err(err) => {
                    node.stop().await;
                    return Err(err);
                }
            },
        };
        Ok(RunningApp {
            name: self.name,
            node,
            http,
        })
    }

    /// Starts, runs `body`, serves until Ctrl-C or SIGTERM (a signal during `body` ends it
    /// too), then shuts down; the result is the process's exit status. Needs a tokio runtime
    /// with IO and time enabled; [`App::run`] builds one.
    pub async fn serve<F, Fut>(self, body: F) -> Exit
    where
        F: FnOnce(Node) -> Fut,
        Fut: Future,
        Fut::Output: ServiceOutput,
    {
        // Listen before starting, so that an early signal is not lost.
        let mut signals = Signals::new();
        let name = self.name.clone();
        let running = match self.start().await {
            Ok(running) => running,
            Err(err) => {
                tracing::error!("{name} could not start: {err}");
                return Exit::Failure;
            }
        };
        let finished = tokio::select! {
            result = body(running.node().clone()) => Some(result.into_result()),
            signal = signals.recv() => {
                tracing::info!("{name} received {signal} while its main was running, leaving");
                None
            }
        };
        let exit = match finished {
            Some(Ok(())) => {
                tracing::info!("{name} serving; stop it with Ctrl-C or SIGTERM");
                let signal = signals.recv().await;
                tracing::info!("{name} received {signal}, leaving");
                Exit::Success
            }
            Some(Err(err)) => {
                tracing::error!("{name} failed: {err}");
                Exit::Failure
            }
            None => Exit::Success,
        };
        tokio::select! {
            () = running.shutdown() => {}
            signal = signals.recv() => {
                tracing::warn!("{name} received {signal} again: leaving without draining");
            }
        }
        exit
    }
}

/// A started service: the node, and the HTTP server when configured.
pub struct RunningApp {
    name: String,
    node: Node,
    http: Option<HttpServer>,
}

impl fmt::Debug for RunningApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningApp")
            .field("node", &self.node)
            .field("http", &self.http_addr())
            .finish()
    }
}

impl RunningApp {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Where HTTP listens, when it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// Drains HTTP (in-flight requests and websockets, for at most the configured
    /// `shutdown_timeout` of [`HttpConfig`]), then says goodbye to the cluster and stops the node.
    pub async fn shutdown(self) {
        if let Some(server) = self.http {
            server.shutdown().await;
        }
        self.node.stop().await;
        tracing::info!("{} said goodbye", self.name);
    }
}

/// How a run ended; converts into the process's [`ExitCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: stopped by a signal, or `--help` / `--version`.
    Success,
    /// 1: the node could not start, or the body returned an error.
    Failure,
    /// 2: a bad flag or environment variable.
    Usage,
}

impl Exit {
    /// The numeric exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

impl Termination for Exit {
    fn report(self) -> ExitCode {
        self.into()
    }
}

/// What [`App::configure`] says instead of settings: help, version, or a usage error.
pub struct CliError(clap::Error);

impl CliError {
    /// Prints it the way clap does: help and version on stdout, errors on stderr.
    pub fn print(&self) {
        // Printing can only fail when the stream is closed; nothing is left to tell then.
        let _ = self.0.print();
    }

    /// The exit status: [`Exit::Success`] for help and version, [`Exit::Usage`] otherwise.
    pub fn exit(&self) -> Exit {
        if self.0.use_stderr() {
            Exit::Usage
        } else {
            Exit::Success
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.render())
    }
}

impl fmt::Debug for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for CliError {}

/// What the body of a service may return: `()` or `Result<(), E>` with a displayable `E`.
#[diagnostic::on_unimplemented(
    message = "a #[service] main returns `()` or `Result<()>`, not `{Self}`",
    label = "return `()` or `Result<()>` here"
)]
pub trait ServiceOutput {
    /// `Err` with the message to log when the body failed.
    fn into_result(self) -> std::result::Result<(), String>;
}

impl ServiceOutput for () {
    fn into_result(self) -> std::result::Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> ServiceOutput for std::result::Result<(), E> {
    fn into_result(self) -> std::result::Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// The message of a configuration error, without the "bad request: " of its display.
fn message(err: Error) -> String {
    match err {
        Error::BadRequest { message } => message,
        other => other.to_string(),
    }
}

/// `RUST_LOG` (default `info`), on stderr.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Already set (a test, or a user's own subscriber): keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// SIGINT and SIGTERM, registered once.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!("cannot listen for {name}: {err}");
                    None
                }
            };
            Self {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the next signal and names it.
    async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => "SIGINT",
                () = next(self.terminate.as_mut()) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// The command-line flags; each also reads its `ZS_*` variable. An empty variable counts as
/// unset (like [`NetworkConfig::from_env`]), hence the [`Given`] values.
#[derive(Parser, Debug)]
struct Flags {
    #[command(flatten, next_help_heading = "HTTP")]
    http: HttpFlags,
    /// Where resources live: `memory`, `embedded:<dir>` or a `mongodb://` URI [default:
    /// embedded:./data/<name>, or memory without resources].
    #[arg(long, env = "ZS_STORE", value_name = "SPEC", value_parser = parse_store,
          help_heading = "Storage")]
    store: Option<Given<StoreArg>>,
    #[command(flatten, next_help_heading = "Cluster")]
    network: NetworkFlags,
    #[command(flatten, next_help_heading = "Limits (what clients may send)")]
    limits: LimitsFlags,
}

#[derive(Args, Debug)]
struct LimitsFlags {
    /// The deepest nesting of a stored document, at most 100 [default: 32].
    #[arg(long, env = "ZS_MAX_DEPTH", value_name = "LEVELS", value_parser = parsed::<String>)]
    max_depth: Option<Given<String>>,
    /// The largest stored document, in bytes of JSON [default: 1048576].
    #[arg(long, env = "ZS_MAX_DOCUMENT_BYTES", value_name = "BYTES", value_parser = parsed::<String>)]
    max_document_bytes: Option<Given<String>>,
    /// The most paths one patch may touch [default: 256].
    #[arg(long, env = "ZS_MAX_PATCH_PATHS", value_name = "N", value_parser = parsed::<String>)]
    max_patch_paths: Option<Given<String>>,
    /// The most segments in one patch path (`a.b.c` has 3) [default: 32].
    #[arg(long, env = "ZS_MAX_PATH_SEGMENTS", value_name = "N", value_parser = parsed::<String>)]
    max_path_segments: Option<Given<String>>,
    /// The deepest nesting of a list filter [default: 16].
    #[arg(long, env = "ZS_MAX_FILTER_DEPTH", value_name = "LEVELS", value_parser = parsed::<String>)]
    max_filter_depth: Option<Given<String>>,
    /// The most fields and operators in a list filter [default: 256].
    #[arg(long, env = "ZS_MAX_FILTER_CLAUSES", value_name = "N", value_parser = parsed::<String>)]
    max_filter_clauses: Option<Given<String>>,
    /// The longest resource id, in bytes [default: 256].
    #[arg(long, env = "ZS_MAX_ID_BYTES", value_name = "BYTES", value_parser = parsed::<String>)]
    max_id_bytes: Option<Given<String>>,
    /// The largest page a list answers; more follow by `Link: rel="next"` [default: 1000].
    #[arg(long, env = "ZS_MAX_PAGE", value_name = "N", value_parser = parsed::<String>)]
    max_page: Option<Given<String>>,
}

impl LimitsFlags {
    fn apply(self, limits: &mut Limits) -> std::result::Result<(), String> {
        let given_values = [
            ("--max-depth", "ZS_MAX_DEPTH", self.max_depth),
            (
                "--max-document-bytes",
                "ZS_MAX_DOCUMENT_BYTES",
                self.max_document_bytes,
            ),
            (
                "--max-patch-paths",
                "ZS_MAX_PATCH_PATHS",
                self.max_patch_paths,
            ),
            (
                "--max-path-segments",
                "ZS_MAX_PATH_SEGMENTS",
                self.max_path_segments,
            ),
            (
                "--max-filter-depth",
                "ZS_MAX_FILTER_DEPTH",
                self.max_filter_depth,
            ),
            (
                "--max-filter-clauses",
                "ZS_MAX_FILTER_CLAUSES",
                self.max_filter_clauses,
            ),
            ("--max-id-bytes", "ZS_MAX_ID_BYTES", self.max_id_bytes),
            ("--max-page", "ZS_MAX_PAGE", self.max_page),
        ];
        for (flag, var, value) in given_values {
            if let Some(value) = given(value) {
                limits
                    .set(var, &value)
                    .map_err(|e| format!("{flag} / {}", message(e)))?;
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
struct HttpFlags {
    /// Serve HTTP on this port (0: any free port) [default: the #[service] attribute's, else
    /// 5001].
    #[arg(long, env = "ZS_HTTP_PORT", value_name = "PORT", value_parser = parsed::<u16>)]
    http_port: Option<Given<u16>>,
    /// The address HTTP binds to [default: 127.0.0.1].
    #[arg(long, env = "ZS_HTTP_HOST", value_name = "ADDR", value_parser = parsed::<IpAddr>)]
    http_host: Option<Given<IpAddr>>,
    /// CORS: the allowed origins, comma-separated, or `*`.
    #[arg(long, env = "ZS_ALLOWED_ORIGINS", value_name = "ORIGINS", value_parser = parsed::<String>)]
    allowed_origins: Option<Given<String>>,
    /// Require HTTP Basic auth with these credentials.
    #[arg(
        long,
        env = "ZS_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true,
        value_parser = parsed::<String>
    )]
    basic_auth: Option<Given<String>>,
    #[command(flatten)]
    limits: HttpLimitFlags,
    /// Do not serve HTTP, whatever the attribute and the port say.
    #[arg(long)]
    no_http: bool,
}

#[derive(Args, Debug)]
struct NetworkFlags {
    /// The interface address for multicast discovery and the node's sockets (tests use
    /// 127.0.0.1) [default: 0.0.0.0].
    #[arg(long, env = "ZS_DISCOVERY_INTERFACE", value_name = "ADDR", value_parser = parsed::<Ipv4Addr>)]
    discovery_interface: Option<Given<Ipv4Addr>>,
    /// The multicast group of the cluster [default: 237.252.249.227:32000].
    #[arg(long, env = "ZS_MULTICAST_GROUP", value_name = "GROUP:PORT", value_parser = parse_group)]
    multicast_group: Option<Given<SocketAddrV4>>,
    /// Static seed peers' discovery addresses, where multicast is absent.
    #[arg(long, env = "ZS_PEERS", value_name = "HOST:PORT,...", value_parser = parse_peers)]
    peers: Option<Given<Vec<SocketAddr>>>,
    /// Sign and check every message with this shared secret.
    #[arg(
        long,
        env = "ZS_CLUSTER_KEY",
        value_name = "KEY",
        hide_env_values = true,
        value_parser = parsed::<String>
    )]
    cluster_key: Option<Given<String>>,
    /// How long a request waits for the owner's reply [default: 5000].
    #[arg(long, env = "ZS_REQUEST_TIMEOUT_MS", value_name = "MS", value_parser = parse_millis)]
    request_timeout_ms: Option<Given<Duration>>,
    /// The largest message (and ZeroMQ frame) a peer may send; a connection announcing a larger
    /// frame is closed [default: 16777216].
    #[arg(long, env = "ZS_MAX_MESSAGE_BYTES", value_name = "BYTES", value_parser = parse_max_message_bytes_flag)]
    max_message_bytes: Option<Given<usize>>,
    /// The most peers this node tracks; announcements from new node ids beyond it are dropped
    /// [default: 1024].
    #[arg(long, env = "ZS_MAX_PEERS", value_name = "N", value_parser = parse_max_peers_flag)]
    max_peers: Option<Given<usize>>,
}

fn parse_max_message_bytes_flag(value: &str) -> std::result::Result<Given<usize>, String> {
    parse_with(value, |value| {
        crate::config::parse_max_message_bytes(value).map_err(|e| format!("expected {e}"))
    })
}

fn parse_max_peers_flag(value: &str) -> std::result::Result<Given<usize>, String> {
    parse_with(value, |value| {
        crate::config::parse_max_peers(value).map_err(|e| format!("expected {e}"))
    })
}

/// The HTTP server's limits.
#[derive(Args, Debug)]
struct HttpLimitFlags {
    /// The largest request body, in bytes; larger ones get a 413 [default: 1048576].
    #[arg(long, env = "ZS_MAX_BODY_BYTES", value_name = "BYTES", value_parser = parse_count)]
    max_body_bytes: Option<Given<usize>>,
    /// Close a connection whose request headers take longer than this, or whose request body
    /// stops arriving for this long [default: 10000].
    #[arg(long, env = "ZS_HTTP_HEADER_TIMEOUT_MS", value_name = "MS", value_parser = parse_millis)]
    http_header_timeout_ms: Option<Given<Duration>>,
    /// Close a keep-alive connection with no request in flight for this long [default: 60000].
    #[arg(long, env = "ZS_HTTP_IDLE_TIMEOUT_MS", value_name = "MS", value_parser = parse_millis)]
    http_idle_timeout_ms: Option<Given<Duration>>,
    /// The most open HTTP connections, websockets included; further ones wait until one closes
    /// [default: 1024].
    #[arg(long, env = "ZS_HTTP_MAX_CONNECTIONS", value_name = "N", value_parser = parse_count)]
    http_max_connections: Option<Given<usize>>,
    /// The largest websocket message a client may send, in bytes [default: 65536].
    #[arg(long, env = "ZS_WS_MAX_MESSAGE_BYTES", value_name = "BYTES", value_parser = parse_count)]
    ws_max_message_bytes: Option<Given<usize>>,
    /// The most topics one websocket client may subscribe to [default: 256].
    #[arg(long, env = "ZS_WS_MAX_TOPICS", value_name = "N", value_parser = parse_count)]
    ws_max_topics: Option<Given<usize>>,
    /// The most websocket clients at once; further upgrades get a 503 [default: 1024].
    #[arg(long, env = "ZS_WS_MAX_CLIENTS", value_name = "N", value_parser = parse_count)]
    ws_max_clients: Option<Given<usize>>,
}

impl HttpLimitFlags {
    /// The limits given on the command line or in the environment.
    fn apply(&self, config: &mut HttpConfig) {
        let flag = |value: &Option<Given<usize>>| value.as_ref().and_then(|Given(v)| *v);
        let millis = |value: &Option<Given<Duration>>| value.as_ref().and_then(|Given(v)| *v);
        if let Some(bytes) = flag(&self.max_body_bytes) {
            config.max_body_bytes = bytes;
        }
        if let Some(timeout) = millis(&self.http_header_timeout_ms) {
            config.header_timeout = timeout;
        }
        if let Some(timeout) = millis(&self.http_idle_timeout_ms) {
            config.idle_timeout = timeout;
        }
        if let Some(n) = flag(&self.http_max_connections) {
            config.max_connections = n;
        }
        if let Some(bytes) = flag(&self.ws_max_message_bytes) {
            config.ws_max_message_bytes = bytes;
        }
        if let Some(n) = flag(&self.ws_max_topics) {
            config.ws_max_topics = n;
        }
        if let Some(n) = flag(&self.ws_max_clients) {
            config.ws_max_clients = n;
        }
    }
}

impl NetworkFlags {
    fn apply(self, network: &mut NetworkConfig) {
        if let Some(interface) = given(self.discovery_interface) {
            network.interface = interface;
        }
        if let Some(group) = given(self.multicast_group) {
            network.multicast_group = group;
        }
        if let Some(peers) = given(self.peers) {
            network.peers = peers;
        }
        if let Some(key) = given(self.cluster_key) {
            network.cluster_key = Some(ClusterKey::new(key));
        }
        if let Some(timeout) = given(self.request_timeout_ms) {
            network.request_timeout = timeout;
        }
        if let Some(bytes) = given(self.max_message_bytes) {
            network.max_message_bytes = bytes;
        }
        if let Some(peers) = given(self.max_peers) {
            network.max_peers = peers;
        }
    }
}

/// A flag's value; `Given(None)` for an empty environment variable.
#[derive(Debug, Clone)]
struct Given<T>(Option<T>);

fn given<T>(value: Option<Given<T>>) -> Option<T> {
    value.and_then(|Given(value)| value)
}

/// Parses a non-empty value with `FromStr`, after trimming it.
fn parse_with<T>(
    value: &str,
    parse: impl FnOnce(&str) -> std::result::Result<T, String>,
) -> std::result::Result<Given<T>, String> {
    match value.trim() {
        "" => Ok(Given(None)),
        value => parse(value).map(|value| Given(Some(value))),
    }
}

fn parsed<T>(value: &str) -> std::result::Result<Given<T>, String>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    parse_with(value, |value| {
        value.parse().map_err(|e: T::Err| e.to_string())
    })
}

/// `--store`: `None` for `embedded` (the default place).
#[derive(Debug, Clone)]
struct StoreArg(Option<StoreConfig>);

fn parse_store(value: &str) -> std::result::Result<Given<StoreArg>, String> {
    parse_with(value, |value| match value {
        "embedded" => Ok(StoreArg(None)),
        spec => StoreConfig::parse(spec)
            .map(|store| StoreArg(Some(store)))
            .map_err(|_| "expected `memory`, `embedded:<dir>` or a `mongodb://` URI".to_owned()),
    })
}

fn parse_group(value: &str) -> std::result::Result<Given<SocketAddrV4>, String> {
    parse_with(value, |value| {
        config::parse_group(value)
            .map_err(|_| "expected a multicast address like 237.252.249.227:32000".to_owned())
    })
}

fn parse_peers(value: &str) -> std::result::Result<Given<Vec<SocketAddr>>, String> {
    parse_with(value, |value| config::parse_peers(value).map_err(message))
}

fn parse_millis(value: &str) -> std::result::Result<Given<Duration>, String> {
    parse_with(value, |value| match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err("expected a positive number of milliseconds".to_owned()),
    })
}

fn parse_count(value: &str) -> std::result::Result<Given<usize>, String> {
    parse_with(value, |value| match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a positive whole number".to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> App {
        App::new("rest_api")
            .version("1.2.3")
            .http(HttpConfig::new(5001).allowed_origins("*"))
    }

    #[test]
    fn the_attribute_gives_the_defaults() {
        let configured = gateway().configure(["rest_api"]).unwrap();
        let http = configured.http.expect("http is on");
        assert_eq!(http.port, 5001);
        assert_eq!(http.host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(http.allowed_origins, ["*"]);
        // Nothing to store: a gateway keeps no data directory.
        assert_eq!(configured.store, StoreConfig::Memory);
    }

    #[test]
    fn flags_override_the_attribute() {
        let configured = gateway()
            .configure([
                "rest_api",
                "--http-port",
                "6001",
                "--http-host",
                "0.0.0.0",
                "--allowed-origins",
                "https://a.example,https://b.example",
                "--basic-auth",
                "admin:secret",
                "--store",
                "embedded:/tmp/zs",
                "--discovery-interface",
                "127.0.0.1",
                "--multicast-group",
                "239.1.2.3:4000",
                "--peers",
                "127.0.0.1:4001,127.0.0.1:4002",
                "--cluster-key",
                "k",
                "--request-timeout-ms",
                "250",
                "--max-body-bytes",
                "2048",
                "--http-header-timeout-ms",
                "1500",
                "--http-idle-timeout-ms",
                "2500",
                "--http-max-connections",
                "10",
                "--ws-max-message-bytes",
                "4096",
                "--ws-max-topics",
                "3",
                "--ws-max-clients",
                "2",
                "--max-message-bytes",
                "65536",
                "--max-peers",
                "8",
            ])
            .unwrap();
        let http = configured.http.expect("http is on");
        assert_eq!(http.port, 6001);
        assert_eq!(http.host, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            http.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(http.basic_auth.is_some());
        assert_eq!(http.max_body_bytes, 2048);
        assert_eq!(http.header_timeout, Duration::from_millis(1500));
        assert_eq!(http.idle_timeout, Duration::from_millis(2500));
        assert_eq!(http.max_connections, 10);
        assert_eq!(http.ws_max_message_bytes, 4096);
        assert_eq!(http.ws_max_topics, 3);
        assert_eq!(http.ws_max_clients, 2);
        assert_eq!(configured.store, StoreConfig::Embedded("/tmp/zs".into()));
        let network = &configured.network;
        assert_eq!(network.interface, Ipv4Addr::LOCALHOST);
        assert_eq!(network.multicast_group.to_string(), "239.1.2.3:4000");
        assert_eq!(network.peers.len(), 2);
        assert!(network.cluster_key.is_some());
        assert_eq!(network.request_timeout, Duration::from_millis(250));
        assert_eq!(network.max_message_bytes, 65536);
        assert_eq!(network.max_peers, 8);
    }

    #[test]
    fn limits_flags() {
        let configured = gateway()
            .configure(["rest_api", "--max-depth", "8", "--max-page", "50"])
            .unwrap();
        assert_eq!(configured.limits.max_depth, 8);
        assert_eq!(configured.limits.max_page, 50);
        assert_eq!(
            configured.limits.max_patch_paths,
            Limits::default().max_patch_paths
        );
        for bad in [
            &["rest_api", "--max-depth", "500"][..],
            &["rest_api", "--max-page", "0"],
            &["rest_api", "--max-id-bytes", "x"],
        ] {
            let err = gateway().configure(bad).unwrap_err();
            assert_eq!(err.exit(), Exit::Usage, "{bad:?}");
            assert!(err.to_string().contains(bad[1]), "{err}");
        }
        let help = gateway()
            .configure(["rest_api", "--help"])
            .unwrap_err()
            .to_string();
        for var in Limits::variables() {
            assert!(help.contains(var), "{var} missing from --help");
        }
    }

    #[test]
    fn http_is_on_with_the_attribute_or_a_port() {
        let none = App::new("power_service").configure(["power"]).unwrap();
        assert!(none.http.is_none());
        let by_port = App::new("power_service")
            .configure(["power", "--http-port", "0"])
            .unwrap();
        assert_eq!(by_port.http.map(|h| h.port), Some(0));
        let off = gateway().configure(["rest_api", "--no-http"]).unwrap();
        assert!(off.http.is_none());
    }

    #[test]
    fn help_version_and_errors() {
        let help = gateway().configure(["rest_api", "--help"]).unwrap_err();
        assert_eq!(help.exit(), Exit::Success);
        let text = help.to_string();
        for name in [
            "--http-port",
            "ZS_HTTP_PORT",
            "--store",
            "ZS_STORE",
            "--peers",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        let version = gateway().configure(["rest_api", "--version"]).unwrap_err();
        assert_eq!(version.exit(), Exit::Success);
        assert_eq!(version.to_string().trim(), "rest_api 1.2.3");

        for bad in [
            &["rest_api", "--http-port", "99999"][..],
            &["rest_api", "--multicast-group", "127.0.0.1:4000"],
            &["rest_api", "--store", "redis://x"],
            &["rest_api", "--basic-auth", "nocolon"],
            &["rest_api", "--request-timeout-ms", "0"],
            &["rest_api", "--max-body-bytes", "1MB"],
            &["rest_api", "--http-header-timeout-ms", "0"],
            &["rest_api", "--http-idle-timeout-ms", "soon"],
            &["rest_api", "--http-max-connections", "0"],
            &["rest_api", "--ws-max-message-bytes", "-1"],
            &["rest_api", "--ws-max-topics", "x"],
            &["rest_api", "--ws-max-clients", "0"],
            &["rest_api", "--max-peers", "0"],
            &["rest_api", "--max-message-bytes", "10"],
            &["rest_api", "--bogus"],
        ] {
            let err = gateway().configure(bad).unwrap_err();
            assert_eq!(err.exit(), Exit::Usage, "{bad:?}");
            assert_eq!(Exit::Usage.code(), 2);
        }
    }

    #[test]
    fn service_outputs() {
        assert_eq!(().into_result(), Ok(()));
        assert_eq!(
            Err::<(), _>(Error::failed("boom")).into_result(),
            Err("boom".to_owned())
        );
    }
}
