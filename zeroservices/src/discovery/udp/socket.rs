//! The two sockets (see the [module documentation](super)): the group socket, the unicast
//! socket, and the address announced for the latter.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::NetworkConfig;

/// The multicast TTL: announcements never cross a router.
const MULTICAST_TTL: u32 = 1;

pub(crate) fn unicast_socket(config: &NetworkConfig) -> io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if config.multicast && config.discovery_port == Some(config.multicast_group.port()) {
        // Shares its port with the group socket.
        socket.set_reuse_address(true)?;
    }
    let port = config.discovery_port.unwrap_or(0);
    socket.bind(&SocketAddrV4::new(config.interface, port).into())?;
    socket.set_multicast_ttl_v4(MULTICAST_TTL)?;
    socket.set_multicast_loop_v4(true)?;
    if !config.interface.is_unspecified() {
        socket.set_multicast_if_v4(&config.interface)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// The group socket, or an error message that says what failed and how to fix it.
pub(crate) fn multicast_socket(
    config: &NetworkConfig,
) -> std::result::Result<StdUdpSocket, String> {
    let group = config.multicast_group;
    let interface = config.interface;
    let bind =
        |e: io::Error| format!("discovery: cannot bind the multicast socket to {group}: {e}");
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    socket.set_reuse_address(true).map_err(bind)?;
    #[cfg(all(
        unix,
        not(any(target_os = "solaris", target_os = "illumos", target_os = "cygwin"))
    ))]
    socket.set_reuse_port(true).map_err(bind)?;
    // Bound to the group address, the socket hears only this group (Linux would otherwise
    // deliver every group joined by anyone on this port). Windows cannot bind to a group.
    let ip = if cfg!(windows) {
        Ipv4Addr::UNSPECIFIED
    } else {
        *group.ip()
    };
    socket
        .bind(&SocketAddrV4::new(ip, group.port()).into())
        .map_err(bind)?;
    socket
        .join_multicast_v4(group.ip(), &interface)
        .map_err(|e| {
            format!(
                "discovery: cannot join multicast group {} on interface {interface}: {e}. On \
             loopback, check that `ip link set lo multicast on` and `ip route add 224.0.0.0/4 dev \
             lo` are in place; where multicast is unavailable set ZS_MULTICAST=off and list seed \
             peers in ZS_PEERS",
                group.ip()
            )
        })?;
    socket.set_multicast_loop_v4(true).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    Ok(socket.into())
}

/// The address peers reach the unicast socket at: the bound one, or with interface `0.0.0.0`
/// the local address the OS routes from toward the group (or the first seed).
pub(crate) fn advertised_addr(config: &NetworkConfig, bound: SocketAddr) -> SocketAddr {
    if !config.interface.is_unspecified() {
        return bound;
    }
    let targets =
        std::iter::once(SocketAddr::V4(config.multicast_group)).chain(config.peers.iter().copied());
    for target in targets {
        // Connecting a UDP socket only picks a route and a source address; nothing is sent.
        let local = StdUdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect(target).and_then(|()| s.local_addr()));
        if let Ok(local) = local
            && !local.ip().is_unspecified()
        {
            return SocketAddr::new(local.ip(), bound.port());
        }
    }
    tracing::warn!(
        "discovery: no route to {} nor to any seed peer; announcing 127.0.0.1 (set \
         ZS_DISCOVERY_INTERFACE)",
        config.multicast_group
    );
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_interface_announces_a_routable_address() {
        // Connecting a UDP socket sends nothing: this only asks the routing table.
        let config = NetworkConfig {
            interface: Ipv4Addr::UNSPECIFIED,
            ..NetworkConfig::default()
        };
        let bound: SocketAddr = "0.0.0.0:4000".parse().unwrap();
        let addr = advertised_addr(&config, bound);
        assert!(!addr.ip().is_unspecified());
        assert_eq!(addr.port(), 4000);
        let loopback = NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            ..NetworkConfig::default()
        };
        let bound: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert_eq!(advertised_addr(&loopback, bound), bound);
    }

    #[test]
    fn the_unicast_socket_binds_the_interface() {
        let config = NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            multicast: false,
            discovery_port: None,
            ..NetworkConfig::default()
        };
        let socket = unicast_socket(&config).unwrap();
        let bound = socket.local_addr().unwrap();
        assert_eq!(bound.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_ne!(bound.port(), 0);
        assert_eq!(advertised_addr(&config, bound), bound);
    }
}
