//! `UdpDiscovery` on loopback only: multicast bound to 127.0.0.1 (TTL 1), a random group and
//! port per test so parallel tests never hear each other.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use zeroservices::config::NetworkConfig;
use zeroservices::discovery::udp::MAX_DATAGRAM_BYTES;
use zeroservices::discovery::{
    Discovery, DiscoveryStats, LeaveReason, PeerEvent, PeerSink, UdpDiscovery,
};
use zeroservices::security::ClusterKey;
use zeroservices::{NodeInfo, NodeKind, ResourceInfo};

const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Records every peer event.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<PeerEvent>>,
}

impl PeerSink for Recorder {
    fn peer_event(&self, event: PeerEvent) {
        self.events.lock().unwrap().push(event);
    }
}

impl Recorder {
    fn events(&self) -> Vec<PeerEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The peers known after replaying the events, with what they announced last.
    fn peers(&self) -> BTreeMap<String, NodeInfo> {
        let mut peers = BTreeMap::new();
        for event in self.events() {
            match event {
                PeerEvent::Seen(info) => {
                    peers.insert(info.id.clone(), info);
                }
                PeerEvent::Left { id, .. } => {
                    peers.remove(&id);
                }
            }
        }
        peers
    }

    fn knows(&self, ids: &[&str]) -> bool {
        let peers = self.peers();
        peers.len() == ids.len() && ids.iter().all(|id| peers.contains_key(*id))
    }

    fn left(&self, id: &str) -> Option<LeaveReason> {
        self.events().into_iter().find_map(|e| match e {
            PeerEvent::Left { id: left, reason } if left == id => Some(reason),
            _ => None,
        })
    }
}

/// Waits until `done` holds, or fails naming `what`.
async fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A fresh group: an admin-scoped address and a free port, both random.
fn fresh_group() -> SocketAddrV4 {
    let port = UdpSocket::bind((LOOPBACK, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = uuid::Uuid::new_v4();
    let b = r.as_bytes();
    SocketAddrV4::new(Ipv4Addr::new(239, 255, b[0], b[1].max(1)), port)
}

fn config(group: SocketAddrV4) -> NetworkConfig {
    NetworkConfig {
        interface: LOOPBACK,
        multicast_group: group,
        multicast: true,
        heartbeat: Duration::from_millis(100),
        peer_timeout: Duration::from_millis(500),
        ..NetworkConfig::default()
    }
}

fn info(name: &str) -> NodeInfo {
    let mut info: NodeInfo = serde_json::from_value(json!({
        "id": format!("{name}-{}", uuid::Uuid::new_v4()),
        "name": name,
        "endpoints": {"router": "tcp://127.0.0.1:1", "pub": "tcp://127.0.0.1:2"},
    }))
    .unwrap();
    info.kind = NodeKind::Node;
    info
}

struct Member {
    info: NodeInfo,
    discovery: UdpDiscovery,
    sink: Arc<Recorder>,
}

impl Member {
    fn id(&self) -> &str {
        &self.info.id
    }

    fn stats(&self) -> DiscoveryStats {
        self.discovery.stats()
    }

    fn addr(&self) -> SocketAddr {
        self.discovery.local_addr().expect("started")
    }
}

async fn member(name: &str, config: NetworkConfig) -> Member {
    member_with(info(name), config).await
}

async fn member_with(info: NodeInfo, config: NetworkConfig) -> Member {
    let discovery = UdpDiscovery::new(config);
    let sink = Arc::new(Recorder::default());
    discovery
        .start(info.clone(), sink.clone())
        .await
        .expect("discovery starts");
    let addr = discovery
        .local_addr()
        .expect("a local address once started");
    assert!(
        addr.ip().is_loopback(),
        "tests stay on loopback, got {addr}"
    );
    Member {
        info,
        discovery,
        sink,
    }
}

const SOON: Duration = Duration::from_secs(2);

#[tokio::test]
async fn two_discoveries_see_each_other() {
    let group = fresh_group();
    let a = member("a", config(group)).await;
    let b = member("b", config(group)).await;
    wait_until("a and b to see each other", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    assert_eq!(a.sink.peers()[b.id()], b.info, "the full NodeInfo crosses");
    assert_eq!(b.stats().peers, 1);
    a.discovery.stop().await;
    b.discovery.stop().await;
}

#[tokio::test]
async fn a_third_joins_and_all_converge() {
    let group = fresh_group();
    let a = member("a", config(group)).await;
    let b = member("b", config(group)).await;
    wait_until("a and b", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    let c = member("c", config(group)).await;
    wait_until("all three to converge", SOON, || {
        a.sink.knows(&[b.id(), c.id()])
            && b.sink.knows(&[a.id(), c.id()])
            && c.sink.knows(&[a.id(), b.id()])
    })
    .await;
    for m in [&a, &b, &c] {
        m.discovery.stop().await;
    }
}

#[tokio::test]
async fn the_newcomer_learns_the_cluster_from_replies_before_any_heartbeat() {
    let group = fresh_group();
    let slow = NetworkConfig {
        heartbeat: Duration::from_secs(30),
        peer_timeout: Duration::from_secs(60),
        ..config(group)
    };
    let a = member("a", slow.clone()).await;
    let b = member("b", slow.clone()).await;
    let c = member("c", slow).await;
    wait_until("replies to introduce everyone", SOON, || {
        a.sink.knows(&[b.id(), c.id()])
            && b.sink.knows(&[a.id(), c.id()])
            && c.sink.knows(&[a.id(), b.id()])
    })
    .await;
    for m in [&a, &b, &c] {
        m.discovery.stop().await;
    }
}

#[tokio::test]
async fn a_changed_announcement_is_seen_again() {
    let group = fresh_group();
    let a = member("a", config(group)).await;
    let b = member("b", config(group)).await;
    wait_until("a and b", SOON, || a.sink.knows(&[b.id()])).await;
    let mut changed = b.info.clone();
    changed
        .endpoints
        .insert("router".to_owned(), "tcp://127.0.0.1:9".to_owned());
    b.discovery.announce(changed.clone()).await.unwrap();
    wait_until("a to see b's new endpoints", SOON, || {
        a.sink.peers().get(b.id()) == Some(&changed)
    })
    .await;
    // Unchanged heartbeats are not reported again.
    let seen = || {
        a.sink
            .events()
            .iter()
            .filter(|e| matches!(e, PeerEvent::Seen(i) if i.id == b.info.id))
            .count()
    };
    let before = seen();
    let received = a.stats().received;
    wait_until("a few heartbeats", SOON, || {
        a.stats().received >= received + 6
    })
    .await;
    assert_eq!(
        seen(),
        before,
        "heartbeats with unchanged info are not reported"
    );
    a.discovery.stop().await;
    b.discovery.stop().await;
}

#[tokio::test]
async fn stop_says_goodbye() {
    let group = fresh_group();
    let slow_timeout = NetworkConfig {
        peer_timeout: Duration::from_secs(30),
        ..config(group)
    };
    let a = member("a", slow_timeout.clone()).await;
    let b = member("b", slow_timeout.clone()).await;
    let c = member("c", slow_timeout).await;
    wait_until("all three", SOON, || {
        a.sink.knows(&[b.id(), c.id()]) && b.sink.knows(&[a.id(), c.id()])
    })
    .await;
    c.discovery.stop().await;
    wait_until("a and b to see c's goodbye", Duration::from_secs(1), || {
        a.sink.left(c.id()) == Some(LeaveReason::Goodbye)
            && b.sink.left(c.id()) == Some(LeaveReason::Goodbye)
    })
    .await;
    // c never comes back (no late heartbeat revives it).
    let received = a.stats().received;
    wait_until("a few heartbeats", SOON, || {
        a.stats().received >= received + 6
    })
    .await;
    assert!(a.sink.knows(&[b.id()]));
    assert!(b.sink.knows(&[a.id()]));
    a.discovery.stop().await;
    b.discovery.stop().await;
}

#[tokio::test]
async fn a_killed_peer_times_out() {
    let group = fresh_group();
    let a = member("a", config(group)).await;
    let b = member("b", config(group)).await;
    wait_until("a and b", SOON, || a.sink.knows(&[b.id()])).await;
    let killed_at = std::time::Instant::now();
    b.discovery.kill();
    wait_until("a to drop b", SOON, || a.sink.left(b.id()).is_some()).await;
    let after = killed_at.elapsed();
    assert_eq!(a.sink.left(b.id()), Some(LeaveReason::Timeout));
    assert!(
        after >= Duration::from_millis(400),
        "dropped after {after:?}, before its timeout"
    );
    assert_eq!(a.stats().peers, 0);
    a.discovery.stop().await;
}

#[tokio::test]
async fn cluster_keys_partition_the_group() {
    let group = fresh_group();
    let keyed = |k: Option<&str>| NetworkConfig {
        cluster_key: k.map(ClusterKey::new),
        ..config(group)
    };
    let red1 = member("red1", keyed(Some("red"))).await;
    let red2 = member("red2", keyed(Some("red"))).await;
    let blue = member("blue", keyed(Some("blue"))).await;
    let open = member("open", keyed(None)).await;
    wait_until("same keys to see each other", SOON, || {
        red1.sink.knows(&[red2.id()]) && red2.sink.knows(&[red1.id()])
    })
    .await;
    // Several heartbeats of everyone reach everyone: none crosses a key boundary.
    wait_until("others' heartbeats to be dropped", SOON, || {
        [&red1, &red2, &blue, &open]
            .iter()
            .all(|m| m.stats().dropped_unsigned >= 6)
    })
    .await;
    assert!(red1.sink.knows(&[red2.id()]));
    assert!(red2.sink.knows(&[red1.id()]));
    assert!(blue.sink.knows(&[]));
    assert!(open.sink.knows(&[]));
    for m in [&red1, &red2, &blue, &open] {
        m.discovery.stop().await;
    }
}

#[tokio::test]
async fn static_peers_converge_without_multicast() {
    let group = fresh_group();
    let unicast = |peers: Vec<SocketAddr>| NetworkConfig {
        multicast: false,
        peers,
        ..config(group)
    };
    let a = member("a", unicast(vec![])).await;
    let b = member("b", unicast(vec![a.addr()])).await;
    wait_until("a and b", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    // c knows only a, and learns b through a.
    let c = member("c", unicast(vec![a.addr()])).await;
    wait_until("all three to converge", SOON, || {
        a.sink.knows(&[b.id(), c.id()])
            && b.sink.knows(&[a.id(), c.id()])
            && c.sink.knows(&[a.id(), b.id()])
    })
    .await;
    // Heartbeats keep them, well past the peer timeout.
    let received = b.stats().received;
    wait_until("a peer timeout of heartbeats", SOON, || {
        b.stats().received >= received + 12
    })
    .await;
    assert!(b.sink.knows(&[a.id(), c.id()]));
    assert!(c.sink.knows(&[a.id(), b.id()]));
    // Goodbyes also travel by unicast; a kill is noticed by timeout.
    b.discovery.stop().await;
    c.discovery.kill();
    wait_until("a to see b leave and c time out", SOON, || {
        a.sink.left(b.id()) == Some(LeaveReason::Goodbye)
            && a.sink.left(c.id()) == Some(LeaveReason::Timeout)
    })
    .await;
    a.discovery.stop().await;
}

/// `ZS_PEERS` with a DNS name, as a Kubernetes headless service is given: `localhost:<port>`
/// resolves through the system resolver (`/etc/hosts`) to 127.0.0.1 (and perhaps ::1, which
/// discovery skips: it speaks IPv4). Two nodes with multicast off find each other through it.
#[tokio::test]
async fn a_seed_given_by_dns_name_is_resolved_and_found() {
    let group = fresh_group();
    let settings = |vars: Vec<(&'static str, String)>| {
        zeroservices::settings::Settings::from_lookup(&move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        })
    };
    let tuned = |mut c: NetworkConfig| {
        c.multicast_group = group;
        c.heartbeat = Duration::from_millis(100);
        c.peer_timeout = Duration::from_millis(500);
        c
    };
    let a_config = settings(vec![("ZS_MULTICAST", "off".into())])
        .unwrap()
        .network();
    let a = member("a", tuned(a_config)).await;
    let port = a.addr().port();
    let b_config = settings(vec![
        ("ZS_MULTICAST", "off".into()),
        ("ZS_PEERS", format!("localhost:{port}")),
        ("ZS_PEERS_RESOLVE_MS", "200".into()),
    ])
    .unwrap()
    .network();
    assert!(
        b_config.peers.is_empty(),
        "a name, not resolved while parsing"
    );
    assert_eq!(b_config.peer_names.len(), 1);
    let b = member("b", tuned(b_config)).await;
    wait_until("a and b to find each other through localhost", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    let seed = SocketAddr::from((LOOPBACK, port));
    assert_eq!(b.discovery.seeds(), [seed], "127.0.0.1 only, ::1 skipped");
    assert_eq!(b.stats().seeds, 1);
    assert!(a.discovery.seeds().is_empty());
    // Re-resolved every 200 ms, the seed stays and so do the peers, past a peer timeout.
    let received = b.stats().received;
    wait_until("a peer timeout of heartbeats", SOON, || {
        b.stats().received >= received + 8
    })
    .await;
    assert_eq!(b.discovery.seeds(), [seed]);
    assert!(a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()]));
    b.discovery.stop().await;
    wait_until("a to see b's goodbye", SOON, || {
        a.sink.left(b.id()) == Some(LeaveReason::Goodbye)
    })
    .await;
    a.discovery.stop().await;
}

/// A malformed `ZS_PEERS` entry is refused at start, naming the variable and the entry; a name
/// is never resolved while parsing.
#[test]
fn a_malformed_seed_is_refused_at_start() {
    for bad in [
        "localhost",
        "localhost:0",
        "seed host:4000",
        "[::1]:4000",
        "300.1.2.3:4000",
    ] {
        let err = zeroservices::settings::Settings::from_lookup(&|name: &str| {
            (name == "ZS_PEERS").then(|| format!("127.0.0.1:4000,{bad}"))
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("ZS_PEERS") && err.contains(bad),
            "{bad}: {err}"
        );
    }
}

/// A plain socket sending to loopback and to the group (kept on loopback).
fn garbage_sender() -> UdpSocket {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    socket.set_multicast_if_v4(&LOOPBACK).unwrap();
    socket.set_multicast_ttl_v4(1).unwrap();
    socket.set_multicast_loop_v4(true).unwrap();
    socket
        .bind(&SocketAddr::from((LOOPBACK, 0)).into())
        .unwrap();
    socket.into()
}

fn signed(key: &ClusterKey, json: &[u8]) -> Vec<u8> {
    zeroservices::security::testing::seal_datagram(key, json)
}

#[tokio::test]
async fn garbage_is_counted_and_discovery_keeps_working() {
    let group = fresh_group();
    let key = ClusterKey::new("secret");
    let keyed = NetworkConfig {
        cluster_key: Some(key.clone()),
        ..config(group)
    };
    let a = member("a", keyed.clone()).await;
    let b = member("b", keyed.clone()).await;
    wait_until("a and b", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    let base = a.stats();

    let sender = garbage_sender();
    let announce = |v: serde_json::Value, reply_to: &str| {
        serde_json::to_vec(&json!({
            "v": v, "type": "announce", "reply_to": reply_to,
            "node": {"id": "intruder", "name": "intruder"},
        }))
        .unwrap()
    };
    let good = announce(json!(2), "127.0.0.1:9");
    let mut random = vec![0u8; 512];
    for (i, byte) in random.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    let mut forged = signed(&key, &good);
    let n = forged.len();
    forged[n - 1] ^= 1;
    let wrong_key = signed(&ClusterKey::new("other"), &good);
    let truncated = signed(&key, &good[..good.len() / 2]);
    let wrong_version = signed(&key, &announce(json!(7), "127.0.0.1:9"));
    let bad_shape = signed(&key, br#"{"v":2,"type":"announce","node":42}"#);
    let elsewhere = signed(&key, &announce(json!(2), "192.0.2.1:9"));
    let oversized = vec![b'{'; MAX_DATAGRAM_BYTES + 1000];
    let empty = Vec::new();

    let targets = [a.addr(), SocketAddr::V4(group)];
    for to in targets {
        for datagram in [
            &random,
            &good,
            &forged,
            &wrong_key,
            &truncated,
            &wrong_version,
            &bad_shape,
            &elsewhere,
            &oversized,
            &empty,
        ] {
            sender.send_to(datagram, to).unwrap();
        }
    }
    // a gets everything twice (unicast and group), b once (group). The second copy of a
    // sealed datagram is a replay for a.
    wait_until("a to count every drop", SOON, || {
        let s = a.stats();
        s.dropped_unsigned >= base.dropped_unsigned + 8
            && s.dropped_malformed >= base.dropped_malformed + 3
            && s.dropped_version > base.dropped_version
            && s.dropped_oversized >= base.dropped_oversized + 2
            && s.dropped_replayed >= base.dropped_replayed + 4
    })
    .await;
    wait_until("b to count the group's drops", SOON, || {
        let s = b.stats();
        s.dropped_unsigned >= 4
            && s.dropped_malformed >= 2
            && s.dropped_version >= 1
            && s.dropped_oversized >= 1
    })
    .await;
    assert!(!a.sink.peers().contains_key("intruder"));
    assert!(!b.sink.peers().contains_key("intruder"));

    // Still working: a newcomer is seen and sees everyone.
    let c = member("c", keyed).await;
    wait_until("a newcomer after the garbage", SOON, || {
        a.sink.knows(&[b.id(), c.id()]) && c.sink.knows(&[a.id(), b.id()])
    })
    .await;

    // Without a key: garbage counts as malformed, signed datagrams as unsigned.
    let open_group = fresh_group();
    let open = member("open", config(open_group)).await;
    let plain_truncated = good[..good.len() / 2].to_vec();
    for datagram in [&random, &plain_truncated, &signed(&key, &good)] {
        sender.send_to(datagram, open.addr()).unwrap();
    }
    wait_until("the open node to count them", SOON, || {
        let s = open.stats();
        s.dropped_malformed >= 2 && s.dropped_unsigned >= 1
    })
    .await;
    for m in [&a, &b, &c, &open] {
        m.discovery.stop().await;
    }
}

/// A realistic resource: what `#[resource]` announces for a struct like this one.
#[derive(schemars::JsonSchema)]
#[allow(dead_code)]
struct Power {
    /// What it is called.
    name: String,
    /// Watts.
    value: i64,
    /// `pending`, `running` or `done`.
    status: String,
    /// Who asked for it.
    owner: Option<String>,
    /// Free-form labels.
    tags: Vec<String>,
    /// When it was last changed (RFC 3339).
    updated_at: String,
}

fn typical_resource() -> ResourceInfo {
    let schema = serde_json::to_value(schemars::schema_for!(Power)).unwrap();
    serde_json::from_value(json!({
        "name": "power",
        "schema": schema,
        "actions": [
            {"name": "power", "kind": "read", "doc": "The value times two.", "result_schema": {"type": "integer"}},
            {"name": "start", "kind": "mutate", "doc": "Starts it.",
             "args_schema": {"type": "object", "properties": {"delay": {"type": "integer"}}},
             "result_schema": {"type": "null"}},
        ],
    }))
    .unwrap()
}

/// A resource with a schema of `fields` string fields.
fn resource(name: &str, fields: usize) -> ResourceInfo {
    let properties: serde_json::Map<String, serde_json::Value> = (0..fields)
        .map(|i| {
            (
                format!("field_{i}"),
                json!({"type": "string", "description": format!("The field number {i} of {name}.")}),
            )
        })
        .collect();
    serde_json::from_value(json!({
        "name": name,
        "schema": {"title": name, "type": "object", "properties": properties},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_node_info_over_the_datagram_limit_is_not_sent() {
    let group = fresh_group();
    let mut typical = info("typical");
    typical.resources = vec![typical_resource()];
    let one = serde_json::to_vec(&typical).unwrap().len();
    typical.resources.push(resource("user", 8));
    let typical_size = serde_json::to_vec(&typical).unwrap().len();
    eprintln!(
        "NodeInfo sizes: one 6-field resource with 2 actions {one} bytes; plus an 8-field \
         resource {typical_size} bytes"
    );
    assert!(typical_size < MAX_DATAGRAM_BYTES / 10);

    let mut huge = info("huge");
    huge.resources = (0..40).map(|i| resource(&format!("r{i}"), 30)).collect();
    let huge_size = serde_json::to_vec(&huge).unwrap().len();
    assert!(huge_size > MAX_DATAGRAM_BYTES, "{huge_size}");
    let a = member("a", config(group)).await;
    let h = member_with(huge, config(group)).await;
    let t = member_with(typical, config(group)).await;
    // The huge node hears the others (their datagrams are small) but is never seen.
    wait_until("h to see a and t", SOON, || h.sink.knows(&[a.id(), t.id()])).await;
    let received = a.stats().received;
    wait_until("a few heartbeats", SOON, || {
        a.stats().received >= received + 6
    })
    .await;
    assert!(a.sink.knows(&[t.id()]));
    assert_eq!(
        a.stats().dropped_oversized,
        0,
        "never sent, so never dropped"
    );
    for m in [&a, &h, &t] {
        m.discovery.stop().await;
    }
}

#[tokio::test]
async fn starting_twice_is_an_error() {
    let a = member("a", config(fresh_group())).await;
    assert!(
        a.discovery
            .start(a.info.clone(), a.sink.clone())
            .await
            .is_err()
    );
    a.discovery.stop().await;
}

/// With a key, a goodbye (or announcement) that does not open is dropped, and a captured
/// datagram sent again is a replay: dropped and counted, whatever it says.
#[tokio::test]
async fn forged_goodbyes_and_replayed_datagrams_are_ignored() {
    let group = fresh_group();
    let key = ClusterKey::new("secret");
    let keyed = NetworkConfig {
        cluster_key: Some(key.clone()),
        // The ghost below sends no heartbeats: it must not time out during the test.
        peer_timeout: Duration::from_secs(30),
        ..config(group)
    };
    let a = member("a", keyed.clone()).await;
    let b = member("b", keyed).await;
    wait_until("a and b", SOON, || {
        a.sink.knows(&[b.id()]) && b.sink.knows(&[a.id()])
    })
    .await;
    let sender = garbage_sender();
    let datagram = |kind: &str, id: &str| {
        serde_json::to_vec(&json!({
            "v": 2, "type": kind, "reply_to": "127.0.0.1:9",
            "node": {"id": id, "name": "svc"},
        }))
        .unwrap()
    };
    let base = a.stats();

    // A goodbye naming b: in clear, and sealed under another key.
    sender
        .send_to(&datagram("goodbye", b.id()), a.addr())
        .unwrap();
    sender
        .send_to(
            &signed(&ClusterKey::new("other"), &datagram("goodbye", b.id())),
            a.addr(),
        )
        .unwrap();
    wait_until("a to drop both goodbyes", SOON, || {
        a.stats().dropped_unsigned >= base.dropped_unsigned + 2
    })
    .await;
    assert_eq!(a.sink.left(b.id()), None);
    assert!(a.sink.peers().contains_key(b.id()));

    // A key holder's announcement and goodbye, captured.
    let hello = signed(&key, &datagram("announce", "ghost"));
    let bye = signed(&key, &datagram("goodbye", "ghost"));
    sender.send_to(&hello, a.addr()).unwrap();
    wait_until("a to see the ghost", SOON, || {
        a.sink.peers().contains_key("ghost")
    })
    .await;
    sender.send_to(&bye, a.addr()).unwrap();
    wait_until("the ghost to leave", SOON, || {
        a.sink.left("ghost") == Some(LeaveReason::Goodbye)
    })
    .await;
    // Both again: replays, dropped and counted; the ghost does not come back.
    sender.send_to(&hello, a.addr()).unwrap();
    sender.send_to(&bye, a.addr()).unwrap();
    wait_until("the replays to be dropped", SOON, || {
        a.stats().dropped_replayed >= base.dropped_replayed + 2
    })
    .await;
    assert!(!a.sink.peers().contains_key("ghost"));
    assert!(a.sink.peers().contains_key(b.id()));
    for m in [&a, &b] {
        m.discovery.stop().await;
    }
}
