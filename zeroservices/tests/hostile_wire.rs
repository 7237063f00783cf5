//! Hostile input on the node-to-node wire and discovery (issue #11): frame headers claiming
//! huge lengths, random bytes on every port, forged discovery ids, and a slow request that must
//! not stall the ROUTER. Real sockets on 127.0.0.1 only; every wait is a condition with a
//! deadline.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use proptest::prelude::*;
use serde_json::{Value, json};
use zeroservices::config::NetworkConfig;
use zeroservices::discovery::{Discovery, PeerSink, UdpDiscovery};
use zeroservices::medium::{Endpoints, Inbound, Medium, Request, ZmqMedium};
use zeroservices::prelude::*;
use zeroservices::{Event, NodeInfo};

/// An item; `crunch` computes synchronously for a while.
#[resource(collection = "item")]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// A number.
    pub value: i64,
    /// Some text.
    pub note: Option<String>,
}

/// The crunch started / finished (one test uses it).
static CRUNCH_STARTED: AtomicBool = AtomicBool::new(false);
static CRUNCH_DONE: AtomicBool = AtomicBool::new(false);

#[actions]
impl Item {
    /// Blocks its thread 1.5 s, like CPU-heavy work written as it should be: in
    /// `block_in_place`, which hands the worker's other tasks to another thread. Run inline on
    /// the ROUTER task, it would still hold the ROUTER for 1.5 s; on its own task it holds
    /// nothing else. (A bare `thread::sleep` also blocks whatever tokio parked in that worker's
    /// non-stealable LIFO slot, in the test's client as much as in the owner: a flaky test.)
    #[action(collection)]
    async fn crunch(_ctx: &Context) -> Result<u64> {
        CRUNCH_STARTED.store(true, Ordering::SeqCst);
        tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(1500)));
        CRUNCH_DONE.store(true, Ordering::SeqCst);
        Ok(42)
    }
}

// ---------------------------------------------------------------------------------------------
// Harness

/// A medium shared with the test, which reads its counters.
struct SharedMedium(Arc<ZmqMedium>);

#[async_trait]
impl Medium for SharedMedium {
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints> {
        self.0.start(node_id, inbound).await
    }
    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        self.0.call(peer, request).await
    }
    async fn call_raw(
        &self,
        peer: &NodeInfo,
        request: Request,
    ) -> Result<Box<serde_json::value::RawValue>> {
        self.0.call_raw(peer, request).await
    }
    async fn publish(&self, event: &Event) -> Result<()> {
        self.0.publish(event).await
    }
    async fn peer_joined(&self, peer: &NodeInfo) {
        self.0.peer_joined(peer).await
    }
    fn set_interest(&self, prefixes: Vec<String>) {
        self.0.set_interest(prefixes)
    }
    fn wants(&self, topic: &str) -> bool {
        self.0.wants(topic)
    }
    async fn sync_interest(&self) {
        self.0.sync_interest().await
    }
    async fn peer_left(&self, peer_id: &str) {
        self.0.peer_left(peer_id).await
    }
    async fn stop(&self) {
        self.0.stop().await
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A discovery shared with the test, which reads its counters.
struct SharedDiscovery(Arc<UdpDiscovery>);

#[async_trait]
impl Discovery for SharedDiscovery {
    async fn start(&self, me: NodeInfo, sink: Arc<dyn PeerSink>) -> Result<()> {
        self.0.start(me, sink).await
    }
    async fn announce(&self, me: NodeInfo) -> Result<()> {
        self.0.announce(me).await
    }
    async fn stop(&self) {
        self.0.stop().await
    }
}

/// A free UDP port on loopback, for a multicast group of this test's own.
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Loopback only, a group of this test's own, short timers.
fn config(group_port: u16) -> NetworkConfig {
    NetworkConfig {
        interface: "127.0.0.1".parse().unwrap(),
        multicast_group: format!("237.252.249.227:{group_port}").parse().unwrap(),
        request_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_millis(1500),
        ..NetworkConfig::default()
    }
}

/// A node owning `item`, with handles on its medium and discovery.
struct Owner {
    node: Node,
    medium: Arc<ZmqMedium>,
    discovery: Arc<UdpDiscovery>,
}

impl Owner {
    async fn start(cfg: NetworkConfig) -> Self {
        let medium = Arc::new(ZmqMedium::new(cfg.clone()));
        let discovery = Arc::new(UdpDiscovery::new(cfg.clone()));
        let node = Node::builder("owner")
            .medium(SharedMedium(medium.clone()))
            .discovery(SharedDiscovery(discovery.clone()))
            .request_timeout(cfg.request_timeout)
            .resource::<Item>()
            .start()
            .await
            .unwrap();
        Self {
            node,
            medium,
            discovery,
        }
    }

    fn endpoint(&self, name: &str) -> SocketAddr {
        let endpoint = &self.medium.endpoints()[name];
        endpoint.trim_start_matches("tcp://").parse().unwrap()
    }

    fn discovery_addr(&self) -> SocketAddr {
        self.discovery.local_addr().unwrap()
    }
}

/// A client node of the same cluster that can reach `item`.
async fn client(cfg: NetworkConfig) -> Node {
    let node = Node::builder("client").network(cfg).start().await.unwrap();
    node.wait_for_collection("item", Duration::from_secs(5))
        .await
        .unwrap();
    node
}

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

/// The node still serves: a create and a get through the client.
async fn still_serves(client: &Node) {
    let items = client.collection::<Item>();
    let id = items
        .create(Item {
            value: 7,
            note: None,
        })
        .await
        .unwrap();
    assert_eq!(items.get(&id).await.unwrap().value, 7);
}

// ---------------------------------------------------------------------------------------------
// ZMTP by hand

/// A ZMTP 3.0 greeting, NULL mechanism, as a client.
fn greeting() -> Vec<u8> {
    let mut g = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 3, 0];
    let mut mechanism = b"NULL".to_vec();
    mechanism.resize(20, 0);
    g.extend_from_slice(&mechanism);
    g.push(0); // as-server
    g.resize(64, 0);
    g
}

/// A READY command announcing `socket_type`.
fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&(socket_type.len() as u32).to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut frame = vec![0x04, body.len() as u8];
    frame.extend_from_slice(&body);
    frame
}

/// A long message-frame header claiming `len` bytes.
fn long_header(len: u64) -> Vec<u8> {
    let mut h = vec![0x02];
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Greeting, READY, then `then`, on a fresh TCP connection.
fn zmtp(addr: SocketAddr, socket_type: &str, then: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut bytes = greeting();
    bytes.extend_from_slice(&ready(socket_type));
    bytes.extend_from_slice(then);
    stream.write_all(&bytes).unwrap();
    stream
}

/// Whether the peer closes `stream` within `within` (EOF or a reset), reading and discarding
/// what it sends (its greeting and READY).
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

/// 2^62 claimed on the ROUTER and on the PUB port: the connection is closed (no allocation, no
/// abort), counted, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_header_claiming_2_pow_62_closes_the_connection_at_router_and_pub() {
    let cfg = config(free_udp_port());
    let owner = Owner::start(cfg.clone()).await;
    let client = client(cfg).await;
    still_serves(&client).await;
    let before = owner.medium.stats().connections_closed_oversized;

    for (port, socket_type) in [("router", "DEALER"), ("pub", "SUB")] {
        let addr = owner.endpoint(port);
        let closed = tokio::task::spawn_blocking(move || {
            let mut stream = zmtp(addr, socket_type, &long_header(1 << 62));
            closed_within(&mut stream, Duration::from_secs(5))
        })
        .await
        .unwrap();
        assert!(closed, "the {port} connection was not closed");
    }
    wait_until("both connections counted", Duration::from_secs(5), || {
        owner.medium.stats().connections_closed_oversized >= before + 2
    })
    .await;
    still_serves(&client).await;
    client.stop().await;
    owner.node.stop().await;
}

/// With a small `max_message_bytes`: a header one byte over it closes the connection; a frame
/// exactly at it is read (and dropped by the medium as a one-frame message), the connection
/// staying open.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frame_just_over_max_message_bytes_closes_and_one_at_it_does_not() {
    // Small, yet above the owner's discovery announcement (its collection's schema and actions:
    // over 4 KiB since the schemas carry their constraints), which shares the limit.
    const LIMIT: usize = 16_384;
    let mut cfg = config(free_udp_port());
    cfg.max_message_bytes = LIMIT;
    let owner = Owner::start(cfg.clone()).await;
    let client = client(cfg).await;
    let router = owner.endpoint("router");

    let over = tokio::task::spawn_blocking(move || {
        let mut stream = zmtp(router, "DEALER", &long_header(LIMIT as u64 + 1));
        closed_within(&mut stream, Duration::from_secs(5))
    })
    .await
    .unwrap();
    assert!(over, "a header of max + 1 did not close the connection");
    wait_until("the close counted", Duration::from_secs(5), || {
        owner.medium.stats().connections_closed_oversized >= 1
    })
    .await;

    let malformed = owner.medium.stats().dropped_malformed;
    let mut at = long_header(LIMIT as u64);
    at.resize(at.len() + LIMIT, b'x');
    let stream = zmtp(router, "DEALER", &at);
    wait_until(
        "the frame at the limit read",
        Duration::from_secs(5),
        || owner.medium.stats().dropped_malformed > malformed,
    )
    .await;
    assert_eq!(owner.medium.stats().connections_closed_oversized, 1);
    drop(stream);
    still_serves(&client).await;
    client.stop().await;
    owner.node.stop().await;
}

/// A request that computes synchronously for 1.5 s goes first, a `get` second on the same
/// connection: the `get` is answered while the first is still computing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_request_does_not_stall_the_router() {
    let cfg = config(free_udp_port());
    let owner = Owner::start(cfg.clone()).await;
    let client = client(cfg).await;
    let items = client.collection::<Item>();
    let id = items
        .create(Item {
            value: 1,
            note: None,
        })
        .await
        .unwrap();

    let slow = {
        let items = items.clone();
        tokio::spawn(async move { items.call_collection::<u64>("crunch", ()).await })
    };
    wait_until("the crunch started", Duration::from_secs(5), || {
        CRUNCH_STARTED.load(Ordering::SeqCst)
    })
    .await;
    assert_eq!(items.get(&id).await.unwrap().value, 1);
    assert!(
        !CRUNCH_DONE.load(Ordering::SeqCst),
        "the get was answered only after the slow request completed"
    );
    assert_eq!(slow.await.unwrap().unwrap(), 42);
    client.stop().await;
    owner.node.stop().await;
}

/// A request body over 64 KiB (verified and parsed off the ROUTER task) is served like any.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_request_body_is_served() {
    let cfg = config(free_udp_port());
    let owner = Owner::start(cfg.clone()).await;
    let client = client(cfg).await;
    let items = client.collection::<Item>();
    let note = "n".repeat(200 * 1024);
    let id = items
        .create(Item {
            value: 5,
            note: Some(note.clone()),
        })
        .await
        .unwrap();
    let got = items.get(&id).await.unwrap();
    assert_eq!((got.value, got.note.as_deref()), (5, Some(note.as_str())));
    still_serves(&client).await;
    client.stop().await;
    owner.node.stop().await;
}

/// A forged announcement: `like` under another `id`, answered at `reply_to`.
fn forged(like: &NodeInfo, id: &str, reply_to: SocketAddr) -> Vec<u8> {
    let mut node = like.clone();
    node.id = id.to_owned();
    node.endpoints = Default::default();
    json!({"v": zeroservices::discovery::udp::DISCOVERY_VERSION, "type": "announce", "reply_to": reply_to.to_string(), "node": node})
        .to_string()
        .into_bytes()
}

/// 500 forged ids against a node with `max_peers = 4`: its peers stay within the cap, the drops
/// are counted, the real peer (known first) keeps refreshing, and the node serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_discovery_ids_beyond_max_peers_are_dropped() {
    let port = free_udp_port();
    let mut cfg = config(port);
    cfg.max_peers = 4;
    let owner = Owner::start(cfg.clone()).await;
    let client = client(config(port)).await;
    wait_until("the owner knows the client", Duration::from_secs(5), || {
        owner.node.peers().iter().any(|p| p.info.id == client.id())
    })
    .await;

    let like = client.info();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let reply_to = sink.local_addr().unwrap();
    let target = owner.discovery_addr();
    let group: SocketAddr = format!("237.252.249.227:{port}").parse().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.set_multicast_ttl_v4(1).unwrap();
    for n in 0..500 {
        let datagram = forged(&like, &format!("forged-{n}"), reply_to);
        let to = if n % 2 == 0 { target } else { group };
        let _ = sender.send_to(&datagram, to);
        assert!(owner.discovery.stats().peers <= 4);
    }
    wait_until("drops over the cap counted", Duration::from_secs(5), || {
        owner.discovery.stats().dropped_over_peer_cap > 0
    })
    .await;
    let stats = owner.discovery.stats();
    assert_eq!(stats.dropped_malformed, 0, "{stats:?}");
    assert!(
        owner.discovery.stats().peers <= 4,
        "{:?}",
        owner.discovery.stats()
    );
    assert!(owner.node.peers().len() <= 4);
    // The real peer outlives a peer timeout: its heartbeats still refresh it.
    let past = tokio::time::Instant::now() + Duration::from_millis(2000);
    wait_until("a peer timeout to pass", Duration::from_secs(5), || {
        tokio::time::Instant::now() >= past
    })
    .await;
    assert!(owner.node.peers().iter().any(|p| p.info.id == client.id()));
    assert!(owner.discovery.stats().peers <= 4);
    still_serves(&client).await;
    client.stop().await;
    owner.node.stop().await;
}

/// What one proptest case sends.
#[derive(Debug, Clone)]
enum Garbage {
    /// Raw bytes on a TCP port (0: ROUTER, 1: PUB).
    Tcp(usize, Vec<u8>),
    /// A ZMTP greeting and READY first, then raw bytes.
    Zmtp(usize, Vec<u8>),
    /// A UDP datagram to the discovery socket.
    Udp(Vec<u8>),
}

fn garbage() -> impl Strategy<Value = Garbage> {
    let bytes = prop::collection::vec(any::<u8>(), 0..600);
    prop_oneof![
        (0..2usize, bytes.clone()).prop_map(|(p, b)| Garbage::Tcp(p, b)),
        (0..2usize, bytes.clone()).prop_map(|(p, b)| Garbage::Zmtp(p, b)),
        bytes.prop_map(Garbage::Udp),
    ]
}

/// Random bytes at the ROUTER, the PUB and the discovery socket: no panic, no crash, and the
/// node answers a request after each case.
#[test]
fn random_bytes_on_every_port_leave_the_node_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let cfg = config(free_udp_port());
    let (owner, client) = rt.block_on(async {
        let owner = Owner::start(cfg.clone()).await;
        let client = client(cfg).await;
        (owner, client)
    });
    let ports = [owner.endpoint("router"), owner.endpoint("pub")];
    let types = ["DEALER", "SUB"];
    let discovery = owner.discovery_addr();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let items = client.collection::<Item>();
    let id = rt
        .block_on(items.create(Item {
            value: 3,
            note: None,
        }))
        .unwrap();

    proptest!(ProptestConfig::with_cases(64), |(case in garbage())| {
        match &case {
            Garbage::Tcp(port, bytes) => {
                let mut stream = TcpStream::connect(ports[*port]).unwrap();
                let _ = stream.write_all(bytes);
            }
            Garbage::Zmtp(port, bytes) => {
                let mut stream = TcpStream::connect(ports[*port]).unwrap();
                let mut all = greeting();
                all.extend_from_slice(&ready(types[*port]));
                all.extend_from_slice(bytes);
                let _ = stream.write_all(&all);
            }
            Garbage::Udp(bytes) => {
                let _ = udp.send_to(bytes, discovery);
            }
        }
        let got = rt.block_on(items.get(&id));
        prop_assert_eq!(got.map(|item| item.value).ok(), Some(3));
    });
    rt.block_on(async {
        client.stop().await;
        owner.node.stop().await;
    });
}

/// One ZMTP message frame (short or long form).
fn frame(body: &[u8], more: bool) -> Vec<u8> {
    let flag = u8::from(more);
    let mut f = if body.len() < 256 {
        vec![flag, body.len() as u8]
    } else {
        let mut f = vec![flag | 0x02];
        f.extend_from_slice(&(body.len() as u64).to_be_bytes());
        f
    };
    f.extend_from_slice(body);
    f
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z$._ ]{0,10}".prop_map(serde_json::Value::from),
    ]
}

/// Random JSON, up to 6 levels.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    json_leaf().prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("collection".to_owned()),
                        Just("action".to_owned()),
                        Just("resource_id".to_owned()),
                        Just("args".to_owned()),
                        Just("kind".to_owned()),
                        "[a-z_$]{1,8}"
                    ],
                    inner
                ),
                0..5
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// What one envelope case sends to the ROUTER, as well-formed ZMTP messages.
fn envelope_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Any JSON as the whole body.
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // A request envelope around a random `request`.
        (json_value(), any::<u64>()).prop_map(|(request, id)| {
            serde_json::json!({"v": zeroservices::medium::PROTOCOL_VERSION, "kind": "request", "id": id, "from": "x", "request": request})
                .to_string()
                .into_bytes()
        }),
        // A request for the real collection with random arguments and ids.
        (json_value(), prop::option::of("[a-z.*> ]{0,6}"), prop::sample::select(&["create", "get", "patch", "list", "delete", "nope"][..])).prop_map(
            |(args, resource_id, action)| {
                serde_json::json!({"v": zeroservices::medium::PROTOCOL_VERSION, "kind": "request", "id": 1, "from": "x",
                    "request": {"collection": "item", "action": action, "resource_id": resource_id, "args": args}})
                .to_string()
                .into_bytes()
            }
        ),
        // Nested deeper than any JSON reader goes.
        (100usize..3000).prop_map(|depth| {
            let mut s = "[".repeat(depth);
            s.push_str(&"]".repeat(depth));
            s.into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

/// Random JSON in well-formed ZeroMQ messages at the ROUTER (the envelope parser): a reply or a
/// drop each time, never a panic, and the node answers a request after each case.
#[test]
fn random_envelopes_at_the_router_leave_the_node_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let cfg = config(free_udp_port());
    let (owner, client) = rt.block_on(async {
        let owner = Owner::start(cfg.clone()).await;
        let client = client(cfg).await;
        (owner, client)
    });
    let router = owner.endpoint("router");
    let items = client.collection::<Item>();
    let id = rt
        .block_on(items.create(Item {
            value: 5,
            note: None,
        }))
        .unwrap();

    proptest!(ProptestConfig::with_cases(96), |(body in envelope_body(), frames in 1usize..4)| {
        // [body, mac] is the expected shape; other frame counts are malformed.
        let mut message = Vec::new();
        for i in 0..frames {
            let part: &[u8] = if i == 0 { &body } else { b"" };
            message.extend_from_slice(&frame(part, i + 1 < frames));
        }
        let mut stream = zmtp(router, "DEALER", &message);
        let _ = stream.flush();
        let got = rt.block_on(items.get(&id));
        prop_assert_eq!(got.map(|item| item.value).ok(), Some(5));
    });
    // The envelopes reached the parser: some were dropped as malformed, some were answered.
    let wanted = |stats: &zeroservices::medium::zeromq::ZmqStats| {
        stats.dropped_malformed > 0 && stats.requests_served > 2
    };
    rt.block_on(wait_until(
        "the envelopes to be read",
        Duration::from_secs(5),
        || wanted(&owner.medium.stats()),
    ));
    rt.block_on(async {
        client.stop().await;
        owner.node.stop().await;
    });
}
