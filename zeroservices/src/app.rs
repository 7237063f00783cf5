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
//! Every setting is a flag that also reads its environment variable, all of them read by
//! [`crate::settings::Settings`]; a flag wins over its variable, which wins over the
//! value written in `#[service(...)]`, which wins over the built-in default. A bad value is a
//! usage error that names the variable and the flag.
//!
#![doc = include_str!("../docs/settings.md")]
//!
//! # Stopping
//!
//! At SIGINT or SIGTERM (or when the body fails) the app stops its node with
//! [`Node::stop`](crate::Node::stop): HTTP stops accepting, and in-flight HTTP requests,
//! requests from peers and worker handlers get `ZS_SHUTDOWN_TIMEOUT_MS` (default 5000) to
//! finish; then the node says goodbye. A second signal leaves at once.
//!
//! # Exit codes
//!
//! 0 after a signal (or `--help`, `--version`); 1 when the node cannot start or the body
//! returns an error; 2 for a bad flag or variable (a message on stderr, like clap's), and for a
//! store that does not fit the cluster: another live owner of one of the service's collections
//! over another store ([`crate::Error::StoreConflict`], its message on stderr).

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::{ExitCode, Termination};
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

use crate::config::NetworkConfig;
use crate::http::{self, HttpConfig, HttpServer};
use crate::settings::{self, LogFormat, Lookup, Settings};
use crate::signal::Signals;
use crate::store::{StoreConfig, StoreOptions};
use crate::{Limits, Node, NodeBuilder, NodeKind, Resource, Result};

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
        let mut command = Settings::command()
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
        self.configure_with(args, &settings::process_env)
    }

    /// [`App::configure`] with the variables from `lookup` instead of the process environment.
    ///
    /// # Errors
    /// As [`App::configure`].
    pub fn configure_with<I, T>(
        self,
        args: I,
        lookup: Lookup<'_>,
    ) -> std::result::Result<Configured, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut command = settings::with_env(self.command(), lookup);
        let matches = command.try_get_matches_from_mut(args).map_err(CliError)?;
        let settings = Settings::from_arg_matches(&matches).map_err(CliError)?;
        settings
            .check()
            .map_err(|err| CliError(err.into_clap(&command)))?;
        Ok(Configured {
            warnings: settings::command_line_warnings(&matches),
            network: settings.network(),
            limits: settings.limits(),
            store: settings.store(&self.name, self.has_resources),
            store_options: settings.store_options(),
            http: settings.http(self.http),
            metrics: settings.metrics(),
            shutdown_timeout: settings.shutdown_timeout(),
            log_format: settings.log_format(),
            name: self.name,
            kind: self.kind,
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
        // Flushes the spans still queued when dropped, after the runtime stopped.
        let _exporting = init_tracing(Some(&configured.name), configured.log_format, "info");
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
    /// How the store is opened (`ZS_STORE_BATCH_MAX`).
    pub store_options: StoreOptions,
    /// HTTP, when on.
    pub http: Option<HttpConfig>,
    /// The operations port (`ZS_METRICS_PORT`: `/healthz`, `/readyz`, `/metrics`), when set.
    pub metrics: Option<HttpConfig>,
    /// How long stopping waits for the work in flight (`ZS_SHUTDOWN_TIMEOUT_MS`).
    pub shutdown_timeout: Duration,
    /// How [`App::run`] writes its log lines (`ZS_LOG_FORMAT`).
    pub log_format: LogFormat,
    setup: Vec<Setup>,
    /// Logged at start (a secret given as a flag).
    warnings: Vec<String>,
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
        for warning in &self.warnings {
            tracing::warn!("{}: {warning}", self.name);
        }
        let store = self.store.open_with(self.store_options).await?;
        let mut builder = Node::builder(&self.name)
            .kind(self.kind)
            .network(self.network)
            .limits(self.limits)
            .shutdown_timeout(self.shutdown_timeout)
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
                        "{}: HTTP on http://{addr}/ (REST, /openapi.json, /asyncapi.json, /realtime)",
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
        let ops = match self.metrics {
            None => None,
            Some(config) => match http::serve_ops(node.clone(), config).await {
                Ok(server) => {
                    let addr = server.local_addr();
                    tracing::info!(
                        "{}: operations on http://{addr}/ (/healthz, /readyz, /metrics)",
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
            ops,
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
            // A configuration that does not fit the cluster: the message says what to change.
            Err(err @ crate::Error::StoreConflict { .. }) => {
                tracing::error!("{name} refused to start: {err}");
                return Exit::Usage;
            }
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
    /// The operations listener (`ZS_METRICS_PORT`).
    ops: Option<HttpServer>,
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

    /// Where the operations port (`ZS_METRICS_PORT`) listens, when it is set.
    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().map(HttpServer::local_addr)
    }

    /// Stops the node ([`Node::stop`]): HTTP stops accepting, in-flight HTTP requests and
    /// websockets, requests from peers and worker handlers get the shutdown timeout
    /// (`ZS_SHUTDOWN_TIMEOUT_MS`) to finish, then the node says goodbye and closes.
    pub async fn shutdown(self) {
        self.node.stop().await;
        // Drained by the node's stop already: these return at once.
        for server in [self.http, self.ops].into_iter().flatten() {
            server.shutdown().await;
        }
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
    /// 2: a bad flag or environment variable, or a store that does not fit the cluster
    /// ([`crate::Error::StoreConflict`]).
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

/// Checks that a `#[service]` main returns `()` or `Result<()>` (the error lands on the
/// user's return type), and converts what it returned.
#[doc(hidden)]
pub fn service_output<O: ServiceOutput>(output: O) -> std::result::Result<(), String> {
    output.into_result()
}

/// The HTTP defaults written in `#[service(http(...))]` (the host was checked by the
/// macro; a bad one falls back to loopback).
#[doc(hidden)]
pub fn service_http(
    port: Option<u16>,
    host: Option<&str>,
    allowed_origins: Option<&str>,
) -> HttpConfig {
    let mut config = HttpConfig::new(port.unwrap_or(DEFAULT_HTTP_PORT));
    if let Some(host) = host.and_then(|host| host.parse().ok()) {
        config.host = host;
    }
    if let Some(origins) = allowed_origins {
        config = config.allowed_origins(origins);
    }
    config
}

/// What keeps trace export running (`None` without it): flushes when dropped.
#[cfg(feature = "otel")]
type Exporting = Option<crate::telemetry::export::Guard>;
#[cfg(not(feature = "otel"))]
type Exporting = Option<std::convert::Infallible>;

/// The process's log subscriber: `RUST_LOG` (else `default_filter`) on stderr, as text or as
/// one JSON object a line (`ZS_LOG_FORMAT`); no trace export. Keeps a subscriber already set
/// (a test, a user's own). The `zeroservices` command calls it; [`App::run`] sets the same up
/// with trace export ([`crate::telemetry`]).
///
/// A JSON line carries `timestamp`, `level`, `target`, the event's fields (`message` among
/// them) flattened into the object, `span` (the current span: its name and fields) and `spans`
/// (every span it is in, outermost first).
#[doc(hidden)]
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let _ = init_tracing(None, format, default_filter);
}

/// The log lines' layer, text or JSON; `traced`: spans are exported, and a JSON line logged
/// inside one carries its `trace_id`.
fn log_layer<S>(
    format: LogFormat,
    traced: bool,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer as _;
    match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed(),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr);
            if traced {
                json.map_event_format(WithTraceId).boxed()
            } else {
                json.boxed()
            }
        }
    }
}

/// A JSON log line's format plus, inside an exported span, `"trace_id"`: the 32 hex digits of
/// the span's trace, as a trace viewer shows it.
struct WithTraceId<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let trace = crate::telemetry::current().map(|t| t.trace_id());
        match (trace, line.strip_suffix("}\n")) {
            // The id is hex: nothing to escape.
            (Some(id), Some(head)) => writeln!(writer, "{head},\"trace_id\":\"{id}\"}}"),
            _ => writer.write_str(&line),
        }
    }
}

/// `RUST_LOG` (else `default_filter`) on stderr as `format` says; with the `otel` feature, a
/// `service` name and an `OTEL_EXPORTER_OTLP_ENDPOINT`, an OpenTelemetry layer too (see
/// [`crate::telemetry`]).
fn init_tracing(service: Option<&str>, format: LogFormat, default_filter: &str) -> Exporting {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    #[cfg(feature = "otel")]
    if let Some(service) = service
        && let Some((otel, guard)) = crate::telemetry::export::layer(service)
    {
        // Each layer its own filter: the log lines as before, the spans for export.
        let logs = log_layer(format, true).with_filter(filter);
        return tracing_subscriber::registry()
            .with(logs)
            .with(otel)
            .try_init()
            .is_ok()
            .then_some(guard);
    }
    let _ = service;
    // Already set (a test, or a user's own subscriber): keep it.
    let _ = tracing_subscriber::registry()
        .with(log_layer(format, false).with_filter(filter))
        .try_init();
    None
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use crate::Error;

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

    /// Another interface than loopback without a key: a usage error (exit 2) naming the key
    /// and `ZS_INSECURE`; with `--insecure` (or a key) the app is configured, and says so.
    #[test]
    fn an_open_interface_without_a_key_is_a_usage_error() {
        let args = ["rest_api", "--discovery-interface", "10.1.2.3"];
        let err = gateway().configure(args).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);
        let text = err.to_string();
        for name in ["ZS_DISCOVERY_INTERFACE", "ZS_CLUSTER_KEY", "ZS_INSECURE"] {
            assert!(text.contains(name), "{name} missing from {text}");
        }
        let lookup = |name: &str| (name == "ZS_DISCOVERY_INTERFACE").then(|| "0.0.0.0".to_owned());
        let err = gateway().configure_with(["rest_api"], &lookup).unwrap_err();
        assert_eq!(err.exit(), Exit::Usage);

        let insecure = gateway()
            .configure([
                "rest_api",
                "--discovery-interface",
                "10.1.2.3",
                "--insecure",
            ])
            .unwrap();
        assert!(insecure.network.insecure && insecure.network.is_insecure());
        let keyed = gateway()
            .configure([
                "rest_api",
                "--discovery-interface",
                "10.1.2.3",
                "--cluster-key",
                "k",
            ])
            .unwrap();
        assert!(!keyed.network.is_insecure());
        assert_eq!(keyed.warnings.len(), 1, "--cluster-key shows in ps");
        // Nothing given: loopback.
        let plain = gateway().configure(["rest_api"]).unwrap();
        assert_eq!(plain.network.interface, Ipv4Addr::LOCALHOST);
        assert!(plain.warnings.is_empty());
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
