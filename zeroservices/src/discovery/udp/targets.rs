//! Where datagrams go: the group, the static seed peers (`ZS_PEERS`, for networks without
//! multicast), the known peers not heard on the group; and the rule that keeps a node on a
//! loopback interface on loopback. Pure: addresses in, addresses out.

use std::net::{Ipv4Addr, SocketAddr};

/// Whether a node on `interface` may send to `to`: never to port 0 or an unspecified address;
/// to a multicast address only when it is `group`; on a loopback interface, only to loopback
/// addresses (and the group, which `IP_MULTICAST_IF` keeps on loopback).
pub(crate) fn allowed(interface: Ipv4Addr, group: SocketAddr, to: SocketAddr) -> bool {
    if to.port() == 0 || to.ip().is_unspecified() {
        return false;
    }
    if to.ip().is_multicast() {
        return to == group;
    }
    !interface.is_loopback() || to.ip().is_loopback()
}

/// The unicast targets of a heartbeat: every seed, and every known peer not heard on the group
/// lately; sorted, each once, never `own`.
pub(crate) fn announcements(
    seeds: &[SocketAddr],
    not_heard_on_group: Vec<SocketAddr>,
    own: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = seeds.to_vec();
    targets.extend(not_heard_on_group);
    targets.sort();
    targets.dedup();
    targets.retain(|t| Some(*t) != own);
    targets
}

/// The targets of a goodbye: the group first (when multicast is on), every seed and every known
/// peer; each once, never `own`.
pub(crate) fn goodbyes(
    group: Option<SocketAddr>,
    seeds: &[SocketAddr],
    known: impl Iterator<Item = SocketAddr>,
    own: Option<SocketAddr>,
) -> Vec<SocketAddr> {
    let mut targets: Vec<SocketAddr> = seeds.to_vec();
    targets.extend(known);
    targets.sort();
    targets.dedup();
    if let Some(group) = group {
        targets.insert(0, group);
    }
    targets.retain(|t| Some(*t) != own);
    targets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_loopback_node_stays_on_loopback() {
        let group = addr("237.252.249.227:32000");
        let lo = Ipv4Addr::LOCALHOST;
        assert!(allowed(lo, group, addr("127.0.0.1:4000")));
        assert!(allowed(lo, group, group));
        assert!(!allowed(lo, group, addr("10.0.0.1:4000")));
        assert!(!allowed(lo, group, addr("239.0.0.1:32000")));
        assert!(!allowed(lo, group, addr("127.0.0.1:0")));
        assert!(!allowed(lo, group, addr("0.0.0.0:4000")));
        let any = Ipv4Addr::UNSPECIFIED;
        assert!(allowed(any, group, addr("10.0.0.1:4000")));
        assert!(allowed(any, group, addr("127.0.0.1:4000")));
        assert!(!allowed(any, group, addr("224.0.0.1:32000")));
    }

    #[test]
    fn heartbeats_go_to_seeds_and_to_peers_not_heard_on_the_group() {
        let seeds = [addr("127.0.0.1:3"), addr("127.0.0.1:1")];
        let targets = announcements(
            &seeds,
            vec![addr("127.0.0.1:2"), addr("127.0.0.1:3")],
            Some(addr("127.0.0.1:1")),
        );
        assert_eq!(targets, vec![addr("127.0.0.1:2"), addr("127.0.0.1:3")]);
        assert!(announcements(&[], Vec::new(), None).is_empty());
    }

    #[test]
    fn goodbyes_go_to_the_group_first_then_everyone_known() {
        let group = addr("237.252.249.227:32000");
        let seeds = [addr("127.0.0.1:5")];
        let known = [
            addr("127.0.0.1:4"),
            addr("127.0.0.1:5"),
            addr("127.0.0.1:9"),
        ];
        let targets = goodbyes(
            Some(group),
            &seeds,
            known.into_iter(),
            Some(addr("127.0.0.1:9")),
        );
        assert_eq!(
            targets,
            vec![group, addr("127.0.0.1:4"), addr("127.0.0.1:5")]
        );
        assert_eq!(
            goodbyes(None, &seeds, std::iter::empty(), None),
            vec![addr("127.0.0.1:5")]
        );
    }
}
