//! [`NatsLink`]: the one NATS connection a node's medium and discovery share, its state
//! (connected or not, which calls in flight watch), and closing it when both are done.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, ServerAddr};
use tokio::sync::{OnceCell, watch};
use tokio::time::Instant;

use crate::config::{NatsServer, NetworkConfig, Transport};
use crate::{Error, Result};

/// The longest wait between two reconnect attempts: a NATS server back after a restart is
/// found again within this (plus the connect).
const RECONNECT_MAX: Duration = Duration::from_millis(1000);

/// The first pause between two attempts of the first connect (doubling up to
/// [`RECONNECT_MAX`]).
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(100);

/// The connection to NATS of one node, shared by its [`NatsMedium`](super::NatsMedium) and
/// [`NatsDiscovery`](crate::discovery::NatsDiscovery): connected when the first of them starts,
/// closed (flushed, then drained) when the last of them stops.
///
/// The first connect is tried again and again (each failed attempt logged) for
/// [`NetworkConfig::nats_connect`] (`ZS_NATS_CONNECT_MS`), so a node may start before its NATS
/// server; then it fails naming the servers. Once connected, the client reconnects by itself,
/// forever, trying the listed servers (and those the server's cluster tells it about) with a
/// backoff of at most one second; its subscriptions come back with it. While it is down, calls fail at once with [`Error::Unavailable`] and calls
/// in flight fail when it drops.
pub struct NatsLink {
    servers: Vec<NatsServer>,
    creds: Option<std::path::PathBuf>,
    request_timeout: Duration,
    connect_within: Duration,
    client: OnceCell<Client>,
    connected: watch::Sender<bool>,
    users: AtomicUsize,
}

impl std::fmt::Debug for NatsLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsLink")
            .field("servers", &self.servers)
            .field("connected", &*self.connected.borrow())
            .finish_non_exhaustive()
    }
}

impl NatsLink {
    /// A link to the NATS servers of `config` (its [`Transport::Nats`]); nothing connects
    /// before the medium or the discovery starts.
    pub fn new(config: &NetworkConfig) -> Arc<Self> {
        let servers = match &config.transport {
            Transport::Nats(servers) => servers.clone(),
            Transport::ZeroMq => Vec::new(),
        };
        Arc::new(Self {
            servers,
            creds: config.nats_creds.clone(),
            request_timeout: config.request_timeout,
            connect_within: config.nats_connect,
            client: OnceCell::new(),
            connected: watch::Sender::new(false),
            users: AtomicUsize::new(0),
        })
    }

    /// The servers, without passwords (for logs).
    pub fn describe(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::redacted)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The connection's state as it changes (true: up).
    pub(crate) fn watch(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Resolves when the connection is down (at once if it is).
    pub(crate) async fn down(&self) {
        let mut state = self.connected.subscribe();
        let _ = state.wait_for(|up| !*up).await;
    }

    /// The client, connecting the first time (one user more: [`NatsLink::release`] once done).
    ///
    /// # Errors
    /// [`Error::Unavailable`] naming the servers and `ZS_NATS_CONNECT_MS` when none answers
    /// within it;
    /// [`Error::BadRequest`] for no server or a credentials file that does not read.
    pub(crate) async fn acquire(&self) -> Result<Client> {
        let client = self.client.get_or_try_init(|| self.connect()).await?;
        self.users.fetch_add(1, Ordering::SeqCst);
        Ok(client.clone())
    }

    /// One user less; the last one flushes what is buffered and closes the connection.
    pub(crate) async fn release(&self) {
        if self.users.fetch_sub(1, Ordering::SeqCst) != 1 {
            return;
        }
        if let Some(client) = self.client.get() {
            let within = self.request_timeout.min(Duration::from_secs(2));
            let _ = tokio::time::timeout(within, client.flush()).await;
            let _ = tokio::time::timeout(within, client.drain()).await;
        }
        self.connected.send_replace(false);
    }

    /// The server the client is connected to now, as it names itself (`host:port` and its
    /// server name), or `None` while down. For logs and tests (which server of a NATS cluster
    /// a node uses).
    pub fn server(&self) -> Option<String> {
        if !self.is_connected() {
            return None;
        }
        let info = self.client.get()?.server_info();
        if info.port == 0 {
            return None;
        }
        Some(format!(
            "{}:{} ({})",
            info.host, info.port, info.server_name
        ))
    }

    /// Connects, trying the servers again until one answers or [`NetworkConfig::nats_connect`]
    /// (`ZS_NATS_CONNECT_MS`) has passed: a node may start before its NATS server. Each failed
    /// attempt is logged.
    async fn connect(&self) -> Result<Client> {
        if self.servers.is_empty() {
            return Err(Error::bad_request(
                "ZS_TRANSPORT: the NATS transport needs at least one server URL",
            ));
        }
        let addrs = self
            .servers
            .iter()
            .map(|s| {
                s.url()
                    .parse::<ServerAddr>()
                    .map_err(|e| Error::bad_request(format!("ZS_TRANSPORT={}: {e}", s.redacted())))
            })
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let deadline = started + self.connect_within;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            // One attempt tries each server once; it is cut at the deadline (but given at least
            // a connect timeout, so a slow first handshake is not cut at once).
            let within = deadline
                .saturating_duration_since(Instant::now())
                .max(self.connect_timeout());
            let attempt_result =
                tokio::time::timeout(within, self.options().await?.connect(addrs.clone())).await;
            let error = match attempt_result {
                Err(_) => format!("no answer within {} ms", within.as_millis()),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(client)) => {
                    self.connected.send_replace(true);
                    tracing::info!(
                        servers = %self.describe(),
                        attempt,
                        "nats: connected"
                    );
                    return Ok(client);
                }
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::unavailable(format!(
                    "cannot connect to NATS at {} (tried for {} ms, {attempt} attempt(s); \
                     ZS_NATS_CONNECT_MS): {error}",
                    self.describe(),
                    now.duration_since(started).as_millis()
                )));
            }
            let pause = (CONNECT_RETRY_FIRST * 2u32.pow(attempt.min(4) - 1))
                .min(RECONNECT_MAX)
                .min(deadline - now);
            tracing::warn!(
                servers = %self.describe(),
                attempt,
                left_ms = (deadline - now).as_millis() as u64,
                "nats: no server answers ({error}); trying again (ZS_NATS_CONNECT_MS)"
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// How long one server gets to answer a connect: the request timeout, within 0.5 to 5 s.
    fn connect_timeout(&self) -> Duration {
        self.request_timeout
            .clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// The client's options (built anew for each connect attempt: connecting consumes them).
    async fn options(&self) -> Result<ConnectOptions> {
        let connected = self.connected.clone();
        let mut options = ConnectOptions::new()
            .name("zeroservices")
            // A node never wants its own events or heartbeats back.
            .no_echo()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                let shift = attempts.min(5) as u32;
                (Duration::from_millis(50) * 2u32.pow(shift)).min(RECONNECT_MAX)
            })
            .connection_timeout(self.connect_timeout())
            .ping_interval(Duration::from_secs(10))
            .request_timeout(Some(self.request_timeout))
            .event_callback(move |event| {
                let connected = connected.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!("nats: connected");
                            connected.send_replace(true);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            tracing::warn!("nats: {event}");
                            connected.send_replace(false);
                        }
                        other => tracing::warn!("nats: {other}"),
                    }
                }
            });
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                Error::bad_request(format!(
                    "ZS_NATS_CREDS={}: expected a NATS credentials file ({e})",
                    path.display()
                ))
            })?;
        }
        Ok(options)
    }
}
