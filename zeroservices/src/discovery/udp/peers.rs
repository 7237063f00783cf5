//! The peer table: who is known, since when, who said goodbye, which gossiped addresses were
//! probed; what a datagram changes in it, and failure detection (peers silent past the
//! timeout). Pure: times are given, nothing is sent; callers send what it asks for.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::MAX_GOSSIP_PEERS;
use super::datagram::{Incoming, Kind};
use crate::NodeInfo;
use crate::discovery::{LeaveReason, PeerEvent};

/// One known peer.
pub(crate) struct PeerState {
    pub(crate) info: NodeInfo,
    pub(crate) reply_to: SocketAddr,
    last_seen: Instant,
    /// When it was last heard on the group socket: peers not heard there get unicast heartbeats.
    last_group: Option<Instant>,
}

/// The limits the table keeps to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_peers: usize,
    pub(crate) peer_timeout: Duration,
    pub(crate) heartbeat: Duration,
}

/// This node and the peers it knows.
#[derive(Default)]
pub(crate) struct Table {
    pub(crate) me: Option<NodeInfo>,
    pub(crate) peers: HashMap<String, PeerState>,
    /// Ids that said goodbye, ignored for a peer timeout so a late heartbeat cannot revive them.
    gone: HashMap<String, Instant>,
    /// Gossiped addresses announced to lately, so each is probed at most once per heartbeat.
    probed: HashMap<SocketAddr, Instant>,
}

/// What taking one datagram asks of the caller.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Applied {
    /// To report, in order.
    pub(crate) events: Vec<PeerEvent>,
    /// Answer the sender with a `reply` (it is new or changed, and it announced).
    pub(crate) reply: bool,
    /// Announce this node to these gossiped addresses it does not know yet.
    pub(crate) introduce: Vec<SocketAddr>,
    /// A new node id was refused: `max_peers` peers are known already (the log line).
    pub(crate) over_cap: Option<String>,
}

impl Table {
    /// Known peers' addresses, for gossip (at most 64).
    pub(crate) fn gossip(&self) -> Vec<SocketAddr> {
        let mut peers: Vec<SocketAddr> = self.peers.values().map(|p| p.reply_to).collect();
        peers.sort();
        peers.dedup();
        peers.truncate(MAX_GOSSIP_PEERS);
        peers
    }

    /// Peers not heard on the group within `timeout`: they get unicast heartbeats.
    pub(crate) fn not_heard_on_group(&self, now: Instant, timeout: Duration) -> Vec<SocketAddr> {
        self.peers
            .values()
            .filter(|p| p.last_group.is_none_or(|t| now.duration_since(t) > timeout))
            .map(|p| p.reply_to)
            .collect()
    }

    /// Takes one datagram heard at `now` (`via_group`: on the group socket). `own` is this
    /// node's `reply_to`; `reachable` says whether this node may send to an address.
    pub(crate) fn apply(
        &mut self,
        msg: Incoming,
        via_group: bool,
        now: Instant,
        limits: Limits,
        own: Option<SocketAddr>,
        reachable: impl Fn(SocketAddr) -> bool,
    ) -> Applied {
        let mut applied = Applied::default();
        let Some(me) = self.me.as_ref().map(|me| me.id.clone()) else {
            return applied;
        };
        let id = msg.node.id.clone();
        if id == me {
            return applied;
        }
        if msg.kind == Kind::Goodbye {
            // Remembered only for known peers (a late heartbeat of theirs must not revive them),
            // so forged goodbyes cannot grow this map beyond the peer cap.
            if self.peers.contains_key(&id) && self.gone.len() < limits.max_peers {
                self.gone.insert(id.clone(), now);
            }
            if self.peers.remove(&id).is_some() {
                applied.events.push(PeerEvent::Left {
                    id,
                    reason: LeaveReason::Goodbye,
                });
            }
            return applied;
        }
        if self.gone.contains_key(&id) {
            return applied;
        }
        let full = self.peers.len() >= limits.max_peers;
        let changed = match self.peers.get_mut(&id) {
            Some(peer) => {
                peer.last_seen = now;
                peer.reply_to = msg.reply_to;
                if via_group {
                    peer.last_group = Some(now);
                }
                if peer.info != msg.node {
                    peer.info = msg.node.clone();
                    true
                } else {
                    false
                }
            }
            None if full => {
                applied.over_cap = Some(format!(
                    "{} peers known already (max_peers): announcements from new node ids are \
                     dropped (first: {id} from {}; this is logged once)",
                    self.peers.len(),
                    msg.reply_to
                ));
                return applied;
            }
            None => {
                self.peers.insert(
                    id.clone(),
                    PeerState {
                        info: msg.node.clone(),
                        reply_to: msg.reply_to,
                        last_seen: now,
                        last_group: via_group.then_some(now),
                    },
                );
                true
            }
        };
        if changed {
            tracing::debug!(node = %me, peer = %id, reply_to = %msg.reply_to, "discovery: peer seen");
            applied.events.push(PeerEvent::Seen(msg.node));
        }
        applied.reply = changed && msg.kind == Kind::Announce;
        // Introduce ourselves to the peers the sender knows and we do not.
        let known: HashSet<SocketAddr> = self.peers.values().map(|p| p.reply_to).collect();
        let fresh = msg.peers.into_iter().filter(|a| {
            Some(*a) != own
                && !known.contains(a)
                && reachable(*a)
                && !a.ip().is_multicast()
                && self
                    .probed
                    .get(a)
                    .is_none_or(|t| now.duration_since(*t) >= limits.heartbeat)
        });
        for addr in fresh.take(MAX_GOSSIP_PEERS).collect::<Vec<_>>() {
            // Bounded like the peers: beyond it, gossiped addresses wait for the reaper.
            if self.probed.len() >= limits.max_peers {
                break;
            }
            self.probed.insert(addr, now);
            applied.introduce.push(addr);
        }
        applied
    }

    /// Drops the peers silent past the timeout (returns their ids), and forgets goodbyes and
    /// probes that are old enough.
    pub(crate) fn reap(&mut self, now: Instant, limits: Limits) -> Vec<String> {
        let expired: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > limits.peer_timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.peers.remove(id);
        }
        self.gone
            .retain(|_, t| now.duration_since(*t) <= limits.peer_timeout);
        self.probed
            .retain(|_, t| now.duration_since(*t) < limits.heartbeat);
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_peers: 3,
        peer_timeout: Duration::from_secs(3),
        heartbeat: Duration::from_secs(1),
    };

    fn info(id: &str) -> NodeInfo {
        serde_json::from_value(serde_json::json!({"id": id, "name": "svc"})).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn msg(kind: Kind, id: &str, port: u16, peers: &[u16]) -> Incoming {
        Incoming {
            kind,
            reply_to: addr(port),
            node: info(id),
            peers: peers.iter().map(|p| addr(*p)).collect(),
        }
    }

    fn table() -> Table {
        Table {
            me: Some(info("me")),
            ..Table::default()
        }
    }

    fn apply(t: &mut Table, m: Incoming, now: Instant) -> Applied {
        t.apply(m, false, now, LIMITS, Some(addr(1)), |_| true)
    }

    #[test]
    fn a_new_peer_is_seen_and_answered_once() {
        let mut t = table();
        let now = Instant::now();
        let first = apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now);
        assert_eq!(first.events, vec![PeerEvent::Seen(info("a"))]);
        assert!(first.reply);
        // A heartbeat with the same information changes nothing.
        let again = apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now);
        assert_eq!(again, Applied::default());
        // A reply is never answered.
        let reply = apply(&mut t, msg(Kind::Reply, "b", 11, &[]), now);
        assert_eq!(reply.events.len(), 1);
        assert!(!reply.reply);
        // Our own datagrams are ignored.
        assert_eq!(
            apply(&mut t, msg(Kind::Announce, "me", 1, &[]), now),
            Applied::default()
        );
        assert_eq!(t.gossip(), vec![addr(10), addr(11)]);
    }

    #[test]
    fn a_goodbye_removes_the_peer_and_a_late_heartbeat_does_not_revive_it() {
        let mut t = table();
        let now = Instant::now();
        apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now);
        let bye = apply(&mut t, msg(Kind::Goodbye, "a", 10, &[]), now);
        assert_eq!(
            bye.events,
            vec![PeerEvent::Left {
                id: "a".into(),
                reason: LeaveReason::Goodbye
            }]
        );
        assert_eq!(
            apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now),
            Applied::default()
        );
        // After a peer timeout it may come back.
        let later = now + LIMITS.peer_timeout + Duration::from_millis(1);
        t.reap(later, LIMITS);
        assert_eq!(
            apply(&mut t, msg(Kind::Announce, "a", 10, &[]), later)
                .events
                .len(),
            1
        );
        // A goodbye from a stranger is not remembered.
        apply(&mut t, msg(Kind::Goodbye, "z", 19, &[]), later);
        assert_eq!(
            apply(&mut t, msg(Kind::Announce, "z", 19, &[]), later)
                .events
                .len(),
            1
        );
    }

    #[test]
    fn silent_peers_time_out() {
        let mut t = table();
        let now = Instant::now();
        apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now);
        apply(
            &mut t,
            msg(Kind::Announce, "b", 11, &[]),
            now + Duration::from_secs(2),
        );
        assert!(t.reap(now + LIMITS.peer_timeout, LIMITS).is_empty());
        let expired = t.reap(now + Duration::from_millis(3001), LIMITS);
        assert_eq!(expired, vec!["a".to_owned()]);
        assert_eq!(t.peers.len(), 1);
    }

    #[test]
    fn new_ids_beyond_max_peers_are_refused() {
        let mut t = table();
        let now = Instant::now();
        for (id, port) in [("a", 10), ("b", 11), ("c", 12)] {
            apply(&mut t, msg(Kind::Announce, id, port, &[]), now);
        }
        let refused = apply(&mut t, msg(Kind::Announce, "d", 13, &[]), now);
        assert!(refused.events.is_empty());
        assert!(refused.over_cap.unwrap().contains("first: d"));
        // Known peers keep refreshing.
        let mut changed = info("a");
        changed.name = "renamed".into();
        let refresh = Incoming {
            node: changed.clone(),
            ..msg(Kind::Announce, "a", 10, &[])
        };
        assert_eq!(
            apply(&mut t, refresh, now).events,
            vec![PeerEvent::Seen(changed)]
        );
    }

    #[test]
    fn gossiped_addresses_are_probed_once_per_heartbeat() {
        let mut t = table();
        let now = Instant::now();
        apply(&mut t, msg(Kind::Announce, "a", 10, &[]), now);
        // Known (10), our own (1), unreachable (12) and the group are skipped.
        let gossip = Incoming {
            peers: vec![
                addr(10),
                addr(1),
                addr(11),
                addr(12),
                "239.1.1.1:5".parse().unwrap(),
            ],
            ..msg(Kind::Reply, "b", 20, &[])
        };
        let applied = t.apply(gossip, false, now, LIMITS, Some(addr(1)), |a| a != addr(12));
        assert_eq!(applied.introduce, vec![addr(11)]);
        let again = apply(&mut t, msg(Kind::Reply, "b", 20, &[11]), now);
        assert!(again.introduce.is_empty());
        let later = now + LIMITS.heartbeat;
        let probe = apply(&mut t, msg(Kind::Reply, "b", 20, &[11]), later);
        assert_eq!(probe.introduce, vec![addr(11)]);
    }

    #[test]
    fn peers_heard_on_the_group_get_no_unicast_heartbeat() {
        let mut t = table();
        let now = Instant::now();
        t.apply(
            msg(Kind::Announce, "a", 10, &[]),
            true,
            now,
            LIMITS,
            None,
            |_| true,
        );
        apply(&mut t, msg(Kind::Announce, "b", 11, &[]), now);
        assert_eq!(
            t.not_heard_on_group(now, LIMITS.peer_timeout),
            vec![addr(11)]
        );
        let later = now + LIMITS.peer_timeout + Duration::from_millis(1);
        let mut due = t.not_heard_on_group(later, LIMITS.peer_timeout);
        due.sort();
        assert_eq!(due, vec![addr(10), addr(11)]);
    }
}
