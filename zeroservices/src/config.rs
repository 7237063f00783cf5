//! The network configuration of a node and the parsers of its values; the `ZS_*` variables
//! and flags that set it are read by [`Settings`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use crate::security::ClusterKey;
use crate::settings::Settings;
use crate::{Error, Result};

/// The original framework's multicast group and port.
pub const DEFAULT_MULTICAST_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(237, 252, 249, 227), 32000);

/// The subject prefix of a cluster on NATS when `ZS_CLUSTER` is not given.
pub const DEFAULT_CLUSTER: &str = "zs";

/// How nodes reach each other (`ZS_TRANSPORT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Transport {
    /// ZeroMQ sockets between nodes and UDP discovery (the default: nothing to run, one machine
    /// or one LAN).
    #[default]
    ZeroMq,
    /// Requests, events and discovery through these NATS servers (one server, or several of
    /// one NATS cluster: the client moves to another when one is lost). Needs the `nats`
    /// Cargo feature.
    Nats(Vec<NatsServer>),
}

/// One NATS server URL: `nats://host:port` or `tls://host:port`, with `user:password@` if the
/// server wants them. Its `Debug` and [`NatsServer::redacted`] hide the password.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsServer {
    url: String,
    host: String,
}

impl NatsServer {
    /// Checks and takes a URL: scheme `nats` or `tls`, a host, an optional port (a number),
    /// optional `user[:password]@`, nothing after the port but an optional `/`.
    ///
    /// # Errors
    /// What was expected, for a message naming the setting.
    pub fn parse(url: &str) -> std::result::Result<Self, String> {
        let url = url.trim();
        let expected = || {
            format!(
                "a NATS server URL like nats://127.0.0.1:4222 or tls://user:password@host:4222 \
                 (got {})",
                redact(url)
            )
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(expected());
        };
        if scheme != "nats" && scheme != "tls" {
            return Err(expected());
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let hostport = match rest.rsplit_once('@') {
            Some((userinfo, hostport)) if !userinfo.is_empty() => hostport,
            Some(_) => return Err(expected()),
            None => rest,
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(expected());
            };
            (host, after.strip_prefix(':'))
        } else {
            match hostport.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        let bad_host = host.is_empty()
            || host
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'));
        let bad_port = port.is_some_and(|p| p.parse::<u16>().map_or(true, |p| p == 0));
        if bad_host || bad_port {
            return Err(expected());
        }
        Ok(Self {
            url: url.to_owned(),
            host: host.to_ascii_lowercase(),
        })
    }

    /// The URL as given (with its password, if any).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL without its password (for logs).
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the host is a loopback address (`127.0.0.0/8`, `::1`, `localhost`): traffic to
    /// it stays on this machine.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NatsServer({})", self.redacted())
    }
}

/// `url` with the password of its `user:password@` replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{hostport}")
            } else {
                format!("{scheme}://***@{hostport}")
            }
        }
        None => url.to_owned(),
    }
}

/// Parses a `ZS_TRANSPORT` value: `zeromq`, or NATS server URLs separated by commas.
pub(crate) fn parse_transport(v: &str) -> std::result::Result<Transport, String> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("zeromq") {
        return Ok(Transport::ZeroMq);
    }
    if !(v.starts_with("nats://") || v.starts_with("tls://")) {
        return Err(
            "zeromq, or NATS server URLs like nats://127.0.0.1:4222[,nats://host2:4222]".into(),
        );
    }
    if !cfg!(feature = "nats") {
        return Err(
            "zeromq: this build has no NATS transport (the `nats` Cargo feature is off)".into(),
        );
    }
    let servers = v
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(NatsServer::parse)
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Transport::Nats(servers))
}

/// Whether `token` can be one token of a NATS subject: not empty, no whitespace or control
/// character, no `.`, `*` or `>`.
pub fn is_subject_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>'))
}

/// Parses a `ZS_CLUSTER` value: NATS subject tokens separated by dots, at most 64 bytes.
pub(crate) fn parse_cluster(v: &str) -> std::result::Result<String, &'static str> {
    let v = v.trim();
    if v.len() <= 64 && v.split('.').all(is_subject_token) {
        Ok(v.to_owned())
    } else {
        Err(
            "a NATS subject prefix: letters, digits, `-` or `_`, tokens separated by dots \
             (no spaces, `*` or `>`), at most 64 bytes",
        )
    }
}

/// Network settings of a node.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// `ZS_TRANSPORT`: ZeroMQ with UDP discovery (default), or NATS.
    pub transport: Transport,
    /// `ZS_CLUSTER`: the subject prefix of this cluster on NATS (default `zs`), so several
    /// clusters can share one NATS.
    pub cluster: String,
    /// `ZS_NATS_CREDS`: a NATS credentials file (a user JWT and its NKey seed), for a server
    /// that wants them.
    pub nats_creds: Option<std::path::PathBuf>,
    /// `ZS_NATS_JETSTREAM`: with NATS, keep the change logs on a JetStream stream too (default
    /// on; a server without JetStream is warned about once and the node works without it).
    pub nats_jetstream: bool,
    /// `ZS_NATS_REPLICAS`: the replicas of the change-log stream (default 1).
    pub nats_replicas: usize,
    /// `ZS_NATS_LOG_QUEUE`: the change-log entries an owner queues for the stream at most
    /// (default 65536); past it they are dropped from the queue, counted, and re-published from
    /// the store's log once the publisher catches up.
    pub nats_log_queue: usize,
    /// `ZS_NATS_CONNECT_MS`: with NATS, how long a starting node tries to reach a server (each
    /// listed server in turn, again and again, each failed attempt logged) before it gives up
    /// with an error naming the servers (default 30000): a node may start before its NATS.
    /// Once connected, the client reconnects by itself, forever.
    pub nats_connect: Duration,
    /// `ZS_DISCOVERY_INTERFACE`: the interface address multicast is sent and received on, and
    /// that the node's sockets bind to (default `127.0.0.1`; [`Settings`] make it `0.0.0.0`,
    /// every interface announcing the first non-loopback address, when a cluster key is given).
    /// Without a cluster key only a loopback address is allowed, unless [`Self::insecure`]:
    /// see [`NetworkConfig::check_exposure`].
    pub interface: Ipv4Addr,
    /// `ZS_MULTICAST_GROUP`: `group:port` (default `237.252.249.227:32000`).
    pub multicast_group: SocketAddrV4,
    /// `ZS_MULTICAST=off` disables multicast (use `ZS_PEERS`).
    pub multicast: bool,
    /// `ZS_PEERS`: the seed peers' discovery addresses given as IPv4 addresses (`ip:port`).
    /// The entries given by name are in [`Self::peer_names`].
    pub peers: Vec<SocketAddr>,
    /// `ZS_PEERS`: the seed peers given by DNS name (`host:port`, e.g. a Kubernetes headless
    /// service). Each is resolved at start and again every [`Self::peers_resolve`]; every IPv4
    /// address it resolves to is a seed while the name resolves to it (at most
    /// [`Self::max_peers`] per name and in all).
    pub peer_names: Vec<PeerName>,
    /// `ZS_PEERS_RESOLVE_MS`: how often the names of [`Self::peer_names`] are resolved again
    /// (default 30000). Each lookup is bounded by the smaller of this and
    /// [`PEER_LOOKUP_TIMEOUT`].
    pub peers_resolve: Duration,
    /// `ZS_DISCOVERY_PORT`: the unicast port this node's discovery listens on for direct
    /// replies and seed peers (default: a free port; a node that others list in `ZS_PEERS`
    /// needs a fixed one).
    pub discovery_port: Option<u16>,
    /// `ZS_CLUSTER_KEY`: seal (encrypt and authenticate) every envelope and datagram; a keyring
    /// of comma-separated keys, the first used to seal, all accepted.
    pub cluster_key: Option<ClusterKey>,
    /// `ZS_INSECURE=1`: allows an interface other than loopback without a cluster key. The node
    /// warns at start and announces itself as insecure (`zeroservices nodes` shows it).
    pub insecure: bool,
    /// `ZS_CLUSTER_KEY_FILE`: where the cluster key was read from; the medium re-reads it into
    /// the keyring on SIGHUP (key rotation without a restart).
    pub cluster_key_file: Option<std::path::PathBuf>,
    /// `ZS_REPLAY_WINDOW_MS`: with a cluster key, a message whose timestamp is further than this
    /// from the receiver's clock is dropped, and one seen before within it too (default 60000:
    /// clocks are assumed within a few seconds of each other, e.g. by NTP).
    pub replay_window: Duration,
    /// `ZS_REQUEST_TIMEOUT_MS` (default 5000).
    pub request_timeout: Duration,
    /// `ZS_HEARTBEAT_MS`: how often a node re-announces itself (default 1000).
    pub heartbeat: Duration,
    /// `ZS_PEER_TIMEOUT_MS`: a peer silent this long is dropped (default 5000).
    pub peer_timeout: Duration,
    /// `ZS_DISCOVERY_WARMUP_MS`: how long a node that owns collections listens at start, before
    /// it announces them, for the owners already there (default `None`: one [`Self::heartbeat`],
    /// in which every live peer announces itself at least once; `Some(ZERO)`: no wait). See
    /// [`NetworkConfig::discovery_warmup`].
    pub discovery_warmup: Option<Duration>,
    /// `ZS_MAX_MESSAGE_BYTES`: larger messages are dropped (default 16 MiB; discovery datagrams
    /// are capped at the smaller of this and 60 KiB). It is also the largest ZeroMQ frame a
    /// peer may announce: a connection whose frame header claims more is closed before anything
    /// is allocated for it.
    pub max_message_bytes: usize,
    /// `ZS_MAX_PEERS`: the most peers a node tracks (default 1024). Announcements from new node
    /// ids beyond it are dropped, counted and logged once; known peers keep refreshing.
    pub max_peers: usize,
    /// `ZS_MAX_SUBSCRIBER_QUEUE` (ZeroMQ): the most events this node's PUB socket queues for
    /// one subscribing connection (default 100,000). A subscriber that falls that far behind,
    /// or never reads, loses the events past it (counted: `ZmqStats::events_undelivered`);
    /// the others are not slowed.
    pub max_subscriber_queue: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            transport: Transport::ZeroMq,
            cluster: DEFAULT_CLUSTER.to_owned(),
            nats_creds: None,
            nats_jetstream: true,
            nats_replicas: 1,
            nats_log_queue: DEFAULT_NATS_LOG_QUEUE,
            nats_connect: DEFAULT_NATS_CONNECT,
            interface: Ipv4Addr::LOCALHOST,
            multicast_group: DEFAULT_MULTICAST_GROUP,
            multicast: true,
            peers: Vec::new(),
            peer_names: Vec::new(),
            peers_resolve: DEFAULT_PEERS_RESOLVE,
            discovery_port: None,
            cluster_key: None,
            insecure: false,
            cluster_key_file: None,
            replay_window: DEFAULT_REPLAY_WINDOW,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            discovery_warmup: None,
            max_message_bytes: 16 * 1024 * 1024,
            max_peers: DEFAULT_MAX_PEERS,
            max_subscriber_queue: DEFAULT_MAX_SUBSCRIBER_QUEUE,
        }
    }
}

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::bad_request(format!("{name}={value:?}: expected {expected}"))
}

/// The default of [`NetworkConfig::replay_window`]: ±60 s.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(60);

/// The default of [`NetworkConfig::nats_log_queue`].
pub const DEFAULT_NATS_LOG_QUEUE: usize = 65_536;

/// The default of [`NetworkConfig::max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 1024;

/// The default of [`NetworkConfig::nats_connect`]: 30 s.
pub const DEFAULT_NATS_CONNECT: Duration = Duration::from_secs(30);

/// The default of [`NetworkConfig::peers_resolve`]: 30 s.
pub const DEFAULT_PEERS_RESOLVE: Duration = Duration::from_secs(30);

/// The longest one lookup of a [`PeerName`] may take (or [`NetworkConfig::peers_resolve`] when
/// shorter); a slower one counts as failed and is tried again next period.
pub const PEER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// A `ZS_PEERS` entry given by DNS name: `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName {
    /// The DNS name (letters, digits, `-`, `_`, dots).
    pub host: String,
    /// The seeds' discovery port (their `ZS_DISCOVERY_PORT`).
    pub port: u16,
}

impl std::fmt::Display for PeerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `ZS_PEERS`, parsed: the entries given as addresses, and those given by name (resolved by
/// discovery, at start and periodically; never while parsing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerList {
    /// `ip:port` entries.
    pub addrs: Vec<SocketAddr>,
    /// `name:port` entries.
    pub names: Vec<PeerName>,
}

/// The default time a request waits for the owner's reply.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `ZS_REQUEST_TIMEOUT_MS`, or [`DEFAULT_REQUEST_TIMEOUT`]; a malformed `ZS_*` value is an
/// error that names it (read through [`Settings`]).
#[cfg(feature = "mongodb")]
pub(crate) fn request_timeout_from_env() -> Result<Duration> {
    Ok(Settings::from_env()?.request_timeout())
}

impl NetworkConfig {
    /// Reads the `ZS_*` variables (through [`Settings`]); a malformed value is an error that
    /// names it.
    pub fn from_env() -> Result<Self> {
        Ok(Settings::from_env()?.network())
    }

    /// The discovery warm-up: [`Self::discovery_warmup`], or one heartbeat.
    pub fn discovery_warmup(&self) -> Duration {
        self.discovery_warmup.unwrap_or(self.heartbeat)
    }

    /// Whether this node is open beyond its machine without a cluster key: an interface other
    /// than loopback (ZeroMQ), or a NATS server that is not on loopback, and no key (allowed
    /// only with [`Self::insecure`]).
    pub fn is_insecure(&self) -> bool {
        self.cluster_key.is_none()
            && match &self.transport {
                Transport::ZeroMq => !self.interface.is_loopback(),
                Transport::Nats(servers) => !servers.iter().all(NatsServer::is_loopback),
            }
    }

    /// Refuses an interface other than loopback without a cluster key, unless
    /// [`Self::insecure`] says so: without a key anyone who reaches the sockets could run any
    /// request and pose as any node. The medium and discovery check it before binding.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming `ZS_CLUSTER_KEY` and `ZS_INSECURE`.
    pub fn check_exposure(&self) -> Result<()> {
        if !self.is_insecure() || self.insecure {
            return Ok(());
        }
        if let Transport::Nats(servers) = &self.transport {
            let open = servers
                .iter()
                .find(|s| !s.is_loopback())
                .map(NatsServer::redacted)
                .unwrap_or_default();
            return Err(Error::bad_request(format!(
                "ZS_TRANSPORT={open}: expected {}",
                nats_exposure_refusal()
            )));
        }
        Err(Error::bad_request(format!(
            "ZS_DISCOVERY_INTERFACE={}: expected {}",
            self.interface,
            exposure_refusal(self.interface)
        )))
    }
}

/// Why a NATS server beyond loopback is refused without a key: what the setting expected.
pub(crate) fn nats_exposure_refusal() -> String {
    "a NATS server on loopback: without a cluster key a node talks to a NATS server on this \
     machine only (every client of a NATS server beyond it could read the cluster's traffic and \
     run any request). Set ZS_CLUSTER_KEY (or ZS_CLUSTER_KEY_FILE) on every node to use it, or \
     ZS_INSECURE=1 to use it without a key"
        .to_owned()
}

/// Why an interface is refused without a key, naming what to set: what a setting expected.
pub(crate) fn exposure_refusal(interface: Ipv4Addr) -> String {
    format!(
        "a loopback address: without a cluster key a node listens on loopback only. Set \
         ZS_CLUSTER_KEY (or ZS_CLUSTER_KEY_FILE) on every node to listen on {interface}, or \
         ZS_INSECURE=1 to listen there without a key (anyone who reaches the node can then \
         run any request)"
    )
}

/// The default of [`NetworkConfig::max_subscriber_queue`].
pub const DEFAULT_MAX_SUBSCRIBER_QUEUE: usize = 100_000;

/// Parses a positive count (white space around it allowed); else `expected`.
fn positive(v: &str, expected: &'static str) -> std::result::Result<usize, &'static str> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or(expected)
}

/// Parses a `ZS_MAX_SUBSCRIBER_QUEUE` value: a positive number of events.
pub(crate) fn parse_max_subscriber_queue(v: &str) -> std::result::Result<usize, &'static str> {
    positive(v, "a positive number of events")
}

/// Parses a `ZS_MAX_PEERS` value: a positive number of peers.
pub(crate) fn parse_max_peers(v: &str) -> std::result::Result<usize, &'static str> {
    positive(v, "a positive number of peers")
}

/// Parses a `ZS_MAX_MESSAGE_BYTES` value: a number of bytes, at least 1024.
pub(crate) fn parse_max_message_bytes(v: &str) -> std::result::Result<usize, &'static str> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1024)
        .ok_or("a number of bytes, at least 1024")
}

/// Parses `237.252.249.227:32000` (the port defaults to 32000).
pub(crate) fn parse_group(v: &str) -> Result<SocketAddrV4> {
    let v = v.trim();
    let addr = if v.contains(':') {
        v.parse::<SocketAddrV4>().ok()
    } else {
        v.parse::<Ipv4Addr>()
            .ok()
            .map(|ip| SocketAddrV4::new(ip, DEFAULT_MULTICAST_GROUP.port()))
    };
    addr.filter(|a| a.ip().is_multicast()).ok_or_else(|| {
        bad(
            "ZS_MULTICAST_GROUP",
            v,
            "a multicast address like 237.252.249.227:32000",
        )
    })
}

/// What a `ZS_PEERS` entry must look like.
const PEER_FORM: &str = "host:port, the host an IPv4 address or a DNS name (letters, digits, \
                         `-`, `_`, dots) and the port 1 to 65535";

/// Parses `host:port,host:port`: each host an IPv4 address or a DNS name. Nothing is resolved
/// here (discovery resolves names, at start and periodically); a malformed entry is an error
/// saying what was expected and which entry is not (the settings name `ZS_PEERS`). Each entry
/// is kept once.
pub(crate) fn parse_peers(v: &str) -> std::result::Result<PeerList, String> {
    let mut list = PeerList::default();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match parse_peer(part).ok_or_else(|| format!("{PEER_FORM}; {part:?} is not"))? {
            Seed::Addr(addr) if !list.addrs.contains(&addr) => list.addrs.push(addr),
            Seed::Name(name) if !list.names.contains(&name) => list.names.push(name),
            _ => {}
        }
    }
    Ok(list)
}

enum Seed {
    Addr(SocketAddr),
    Name(PeerName),
}

fn parse_peer(part: &str) -> Option<Seed> {
    if let Ok(addr) = part.parse::<SocketAddr>() {
        // Discovery speaks IPv4 only.
        return (addr.is_ipv4() && addr.port() != 0 && !addr.ip().is_unspecified())
            .then_some(Seed::Addr(addr));
    }
    let (host, port) = part.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    is_dns_name(host).then(|| {
        Seed::Name(PeerName {
            host: host.to_ascii_lowercase(),
            port,
        })
    })
}

/// A DNS name as resolvers take it: at most 253 characters, labels of 1 to 63 letters, digits,
/// `-` (not first or last) and `_`, one trailing dot allowed; the last label not all digits
/// (`300.1.2.3` is a malformed address, not a name).
fn is_dns_name(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(label_ok)
        && !host
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_and_peers_parse() {
        assert_eq!(
            parse_group("237.252.249.227").unwrap(),
            DEFAULT_MULTICAST_GROUP
        );
        assert_eq!(parse_group("239.1.2.3:4000").unwrap().port(), 4000);
        assert!(parse_group("127.0.0.1:4000").is_err());
    }

    #[test]
    fn peers_are_addresses_or_names_resolved_later() {
        let peers =
            parse_peers("127.0.0.1:4000, localhost:4001,,zs.default.svc.cluster.local.:7").unwrap();
        assert_eq!(
            peers.addrs,
            ["127.0.0.1:4000".parse::<SocketAddr>().unwrap()]
        );
        let names: Vec<String> = peers.names.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["localhost:4001", "zs.default.svc.cluster.local.:7"]);
        // Names are not resolved while parsing: one that resolves nowhere is still taken.
        let later =
            parse_peers("Seeds.Invalid:4000, seeds.invalid:4000, 127.0.0.1:4000, 127.0.0.1:4000")
                .unwrap();
        assert_eq!(later.names.len(), 1, "kept once, lower case");
        assert_eq!(later.names[0].host, "seeds.invalid");
        assert_eq!(later.addrs.len(), 1);
        assert_eq!(parse_peers(" , ").unwrap(), PeerList::default());
    }

    #[test]
    fn a_malformed_peer_is_refused_naming_the_entry() {
        for bad in [
            "nonsense",
            "localhost",
            "localhost:",
            "localhost:0",
            "localhost:70000",
            "localhost:port",
            ":4000",
            "local host:4000",
            "-seed:4000",
            "seed-:4000",
            "a..b:4000",
            "seed/x:4000",
            "300.1.2.3:4000",
            "127.0.0.1:0",
            "0.0.0.0:4000",
            "[::1]:4000",
            "::1:4000",
            "http://seed:4000",
        ] {
            let err = parse_peers(&format!("127.0.0.1:4000,{bad}")).expect_err(bad);
            assert!(err.contains(&format!("{bad:?} is not")), "{bad}: {err}");
        }
        let long = format!("{}:4000", "a".repeat(64));
        assert!(parse_peers(&long).is_err());
        let long_name = format!("{}a:4000", "a.".repeat(127));
        assert!(parse_peers(&long_name).is_err());
    }

    #[test]
    fn limits_parse() {
        assert_eq!(parse_max_peers(" 16 "), Ok(16));
        assert!(parse_max_peers("0").is_err());
        assert_eq!(parse_max_subscriber_queue(" 500 "), Ok(500));
        assert!(parse_max_subscriber_queue("0").is_err());
        assert!(parse_max_subscriber_queue("many").is_err());
        assert!(parse_max_peers("many").is_err());
        assert_eq!(parse_max_message_bytes("4096"), Ok(4096));
        assert!(parse_max_message_bytes("1023").is_err());
        let error = bad("ZS_MAX_PEERS", "x", "a positive number of peers").to_string();
        assert!(error.contains("ZS_MAX_PEERS"), "{error}");
    }
}
