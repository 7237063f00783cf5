//! The network configuration of a node and the parsers of its values; the `ZS_*` variables
//! and flags that set it are read by [`Settings`].

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::time::Duration;

use crate::security::ClusterKey;
use crate::settings::Settings;
use crate::{Error, Result};

/// The original framework's multicast group and port.
pub const DEFAULT_MULTICAST_GROUP: SocketAddrV4 =
    SocketAddrV4::new(Ipv4Addr::new(237, 252, 249, 227), 32000);

/// Network settings of a node.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
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
    /// `ZS_PEERS`: static seed peers' discovery addresses, `host:port,...`.
    pub peers: Vec<SocketAddr>,
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
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            interface: Ipv4Addr::LOCALHOST,
            multicast_group: DEFAULT_MULTICAST_GROUP,
            multicast: true,
            peers: Vec::new(),
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
        }
    }
}

fn bad(name: &str, value: &str, expected: &str) -> Error {
    Error::bad_request(format!("{name}={value:?}: expected {expected}"))
}

/// The default of [`NetworkConfig::replay_window`]: ±60 s.
pub const DEFAULT_REPLAY_WINDOW: Duration = Duration::from_secs(60);

/// The default of [`NetworkConfig::max_peers`].
pub const DEFAULT_MAX_PEERS: usize = 1024;

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
    /// than loopback and no key (allowed only with [`Self::insecure`]).
    pub fn is_insecure(&self) -> bool {
        self.cluster_key.is_none() && !self.interface.is_loopback()
    }

    /// Refuses an interface other than loopback without a cluster key, unless
    /// [`Self::insecure`] says so: without a key anyone who reaches the sockets could run any
    /// request and pose as any node. The medium and discovery check it before binding.
    ///
    /// # Errors
    /// [`Error::BadRequest`] naming `ZS_CLUSTER_KEY` and `ZS_INSECURE`.
    pub fn check_exposure(&self) -> Result<()> {
        if self.is_insecure() && !self.insecure {
            return Err(Error::bad_request(format!(
                "ZS_DISCOVERY_INTERFACE={}: expected {}",
                self.interface,
                exposure_refusal(self.interface)
            )));
        }
        Ok(())
    }
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

/// Parses a `ZS_MAX_PEERS` value: a positive number of peers.
pub(crate) fn parse_max_peers(v: &str) -> std::result::Result<usize, &'static str> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or("a positive number of peers")
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

/// Parses `host:port,host:port`.
pub(crate) fn parse_peers(v: &str) -> Result<Vec<SocketAddr>> {
    let mut peers = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addrs = part
            .to_socket_addrs()
            .map_err(|e| bad("ZS_PEERS", part, &format!("host:port ({e})")))?;
        let addr = addrs
            .into_iter()
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| bad("ZS_PEERS", part, "a host with an IPv4 address"))?;
        peers.push(addr);
    }
    Ok(peers)
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
        let peers = parse_peers("127.0.0.1:4000, localhost:4001").unwrap();
        assert_eq!(peers.len(), 2);
        assert!(parse_peers("nonsense").is_err());
    }

    #[test]
    fn limits_parse() {
        assert_eq!(parse_max_peers(" 16 "), Ok(16));
        assert!(parse_max_peers("0").is_err());
        assert!(parse_max_peers("many").is_err());
        assert_eq!(parse_max_message_bytes("4096"), Ok(4096));
        assert!(parse_max_message_bytes("1023").is_err());
        let error = bad("ZS_MAX_PEERS", "x", "a positive number of peers").to_string();
        assert!(error.contains("ZS_MAX_PEERS"), "{error}");
    }
}
