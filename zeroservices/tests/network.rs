//! Multi-process clusters over real ZeroMQ sockets and real UDP multicast, bound to 127.0.0.1.
//!
//! The test binary re-executes itself as the child nodes: `child_node` below does nothing in a
//! normal run, and runs a node when `ZS_TEST_CHILD` is set. A child exits when its stdin closes,
//! so no child outlives a failed test.

mod mongo_common;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use zeroservices::config::NetworkConfig;
use zeroservices::prelude::*;
use zeroservices::security::ClusterKey;

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Its square, once computed.
    pub result: Option<i64>,
}

#[actions]
impl Power {
    /// The id of the node that served this call.
    #[action(collection)]
    async fn whoami(ctx: &Context) -> Result<String> {
        Ok(ctx.node().id().to_owned())
    }
}

fn power(value: i64) -> Power {
    Power {
        value,
        result: None,
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

/// The settings of one test's cluster: its own group port, loopback only, short timers.
#[derive(Clone)]
struct Net {
    port: u16,
    key: Option<String>,
    multicast: bool,
    peers: Vec<String>,
    discovery_port: Option<u16>,
    /// `ZS_STORE` of the children.
    store: Option<String>,
}

impl Net {
    fn new() -> Self {
        Self {
            port: free_udp_port(),
            key: None,
            multicast: true,
            peers: Vec::new(),
            discovery_port: None,
            store: None,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("ZS_DISCOVERY_INTERFACE".into(), "127.0.0.1".into()),
            (
                "ZS_MULTICAST_GROUP".into(),
                format!("237.252.249.227:{}", self.port),
            ),
            ("ZS_HEARTBEAT_MS".into(), "200".into()),
            ("ZS_PEER_TIMEOUT_MS".into(), "1500".into()),
            ("ZS_REQUEST_TIMEOUT_MS".into(), "1000".into()),
            (
                "ZS_MULTICAST".into(),
                if self.multicast { "on" } else { "off" }.into(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ];
        if let Some(key) = &self.key {
            env.push(("ZS_CLUSTER_KEY".into(), key.clone()));
        }
        if !self.peers.is_empty() {
            env.push(("ZS_PEERS".into(), self.peers.join(",")));
        }
        if let Some(port) = self.discovery_port {
            env.push(("ZS_DISCOVERY_PORT".into(), port.to_string()));
        }
        if let Some(store) = &self.store {
            env.push(("ZS_STORE".into(), store.clone()));
        }
        env
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            interface: "127.0.0.1".parse().unwrap(),
            multicast_group: format!("237.252.249.227:{}", self.port).parse().unwrap(),
            multicast: self.multicast,
            peers: self.peers.iter().map(|p| p.parse().unwrap()).collect(),
            discovery_port: self.discovery_port,
            cluster_key: self.key.as_deref().map(|k| ClusterKey::parse(k).unwrap()),
            request_timeout: Duration::from_millis(1000),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_millis(1500),
            ..NetworkConfig::default()
        }
    }

    async fn node(&self, name: &str) -> Node {
        Node::builder(name)
            .network(self.config())
            .start()
            .await
            .unwrap()
    }
}

/// A child process running a node; killed (SIGKILL) when dropped.
struct ChildNode {
    child: Child,
    id: String,
}

impl ChildNode {
    fn spawn(role: &str, net: &Net) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_node", "--nocapture", "--test-threads=1"])
            .env("ZS_TEST_CHILD", role)
            .envs(net.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                // libtest prints "test child_node ... " before the child's own output.
                if let Some((_, id)) = line.split_once("READY ") {
                    let _ = tx.send(id.trim().to_owned());
                }
            }
        });
        let id = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child node did not start within 20 s");
        Self { child, id }
    }

    /// `kill -9`: no goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test: the body of the child processes.
#[test]
fn child_node() {
    let Ok(role) = std::env::var("ZS_TEST_CHILD") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let config = NetworkConfig::from_env().unwrap();
        let mut builder = Node::builder(format!("child_{role}")).network(config);
        // Owners of one collection must share a store: ZS_STORE when the test gives one.
        if let Ok(spec) = std::env::var("ZS_STORE") {
            let store = zeroservices::store::open(&spec).await.unwrap();
            builder = builder.shared_store(store);
        }
        let builder = match role.as_str() {
            "power" => builder.resource::<Power>(),
            _ => builder,
        };
        let node = builder.start().await.unwrap();
        println!("READY {}", node.id());
        // Serve until the parent closes our stdin (or kills us).
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin()
                .read_line(&mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                line.clear();
            }
        })
        .await
        .unwrap();
        node.stop().await;
    });
    std::process::exit(0);
}

/// Waits until `client` knows `n` peers that own something, at most `within`.
async fn owners_known(client: &Node, n: usize, within: Duration) {
    eventually(within, "the owners known", || {
        client
            .peers()
            .iter()
            .filter(|p| !p.info.resources.is_empty())
            .count()
            == n
    })
    .await;
}

async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_find_each_other_and_exchange_requests_and_events() {
    let net = Net::new();
    let child = ChildNode::spawn("power", &net);
    let started = Instant::now();
    let client = net.node("client").await;
    client
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    println!("discovered the owner in {:?}", started.elapsed());
    assert!(client.peers().iter().any(|p| p.info.id == child.id));

    let powers = client.collection::<Power>();
    // Synced: the owner process sends this node `power.create` events before the first create,
    // so the very first event arrives (no slow-joiner loss), and so does every later one.
    let mut events = client.subscribe_synced("power.create").await;
    let id = powers.create(power(2)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("the first create's event crossed within 5 s")
        .unwrap();
    assert_eq!(first.topic, format!("power.create.{id}"));
    for v in 0..20 {
        let id = powers.create(power(v)).await.unwrap();
        let ev = loop {
            let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await
                .unwrap()
                .unwrap();
            if ev.topic == format!("power.create.{id}") {
                break ev;
            }
        };
        assert_eq!(ev.data["resource_data"]["value"], v);
        assert_eq!(powers.get(&id).await.unwrap(), power(v));
    }
    let owner: String = powers.call_collection("whoami", ()).await.unwrap();
    assert_eq!(owner, child.id);
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_converge() {
    let net = Net::new();
    let a = ChildNode::spawn("power", &net);
    let b = ChildNode::spawn("bare", &net);
    let client = net.node("client").await;
    eventually(Duration::from_secs(3), "client sees both children", || {
        let ids: Vec<String> = client.peers().into_iter().map(|p| p.info.id).collect();
        ids.contains(&a.id) && ids.contains(&b.id)
    })
    .await;
    // The directory as another process sees it, through the CLI.
    let out = Command::new(env!("CARGO_BIN_EXE_zeroservices"))
        .args(["nodes", "--json", "--wait-ms", "1200"])
        .envs(net.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    for id in [a.id.as_str(), b.id.as_str(), client.id()] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let power_node = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == a.id.as_str())
        .unwrap();
    assert_eq!(power_node["resources"], serde_json::json!(["power"]));
    // The store behind the collection: a memory store, its fingerprint random.
    assert_eq!(power_node["stores"]["power"]["store"], "memory");
    assert!(
        power_node["stores"]["power"]["fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("memory:")
    );
    // Keyless on loopback: not insecure.
    assert_eq!(power_node["insecure"], false);
    assert!(
        power_node["endpoints"]["router"]
            .as_str()
            .unwrap()
            .starts_with("tcp://127.0.0.1:")
    );
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_owner_fails_fast_is_dropped_and_is_used_again_once_restarted() {
    let net = Net::new();
    let mut child = ChildNode::spawn("power", &net);
    let client = net.node("client").await;
    client
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    let powers = client.collection::<Power>();
    powers.create(power(1)).await.unwrap();

    child.kill();
    let started = Instant::now();
    let err = powers.create(power(2)).await.unwrap_err();
    // Within the request timeout (1 s) plus scheduling slack; never a hang.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::Timeout { .. } | Error::Unavailable { .. } | Error::OwnerGone { .. }
        ),
        "{err:?}"
    );
    let dead = child.id.clone();
    eventually(
        Duration::from_secs(4),
        "dead peer dropped after the heartbeat timeout",
        || client.peers().iter().all(|p| p.info.id != dead),
    )
    .await;
    assert!(matches!(
        powers.get("x").await,
        Err(Error::OwnerGone { .. })
    ));

    let restarted = ChildNode::spawn("power", &net);
    client
        .wait_for_collection("power", Duration::from_secs(3))
        .await
        .unwrap();
    let id = powers.create(power(3)).await.unwrap();
    assert_eq!(powers.get(&id).await.unwrap(), power(3));
    let owner: String = powers.call_collection("whoami", ()).await.unwrap();
    assert_eq!(owner, restarted.id);
    client.stop().await;
}

/// Two processes can share only a MongoDB database: two owners over two private stores are
/// refused (tests/one_store.rs; in-process owners over one shared store there too).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs ZS_TEST_MONGODB_URI (scripts/test.sh starts nx-27017)"]
async fn two_owners_share_the_load_and_survive_one_being_killed() {
    let mut net = Net::new();
    let uri = mongo_common::mongodb_uri("two_owners_share_the_load_and_survive_one_being_killed");
    net.store = Some(uri);
    let mut a = ChildNode::spawn("power", &net);
    let b = ChildNode::spawn("power", &net);
    let client = net.node("client").await;
    owners_known(&client, 2, Duration::from_secs(3)).await;
    let powers = client.collection::<Power>();
    let mut served = std::collections::HashMap::<String, u32>::new();
    for _ in 0..20 {
        let who: String = powers.call_collection("whoami", ()).await.unwrap();
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(served.get(&a.id), Some(&10), "{served:?}");
    assert_eq!(served.get(&b.id), Some(&10), "{served:?}");

    a.kill();
    // Every call succeeds: the dead owner's calls fail over to the live one, or time out only
    // until the directory drops it; after that, all go to b.
    let dead = a.id.clone();
    eventually(Duration::from_secs(4), "dead owner dropped", || {
        client.peers().iter().all(|p| p.info.id != dead)
    })
    .await;
    for _ in 0..10 {
        let who: String = powers.call_collection("whoami", ()).await.unwrap();
        assert_eq!(who, b.id);
    }
    client.stop().await;
}

/// One of two owners stops (`Node::stop`: goodbye, drain) while a client keeps calling: no
/// call fails, and once the stop has returned every call is served by the other owner (README
/// "Stopping"; over NATS: `nats.rs`, `nats_balances_requests_among_the_owners_of_a_collection`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_an_owners_stop_all_succeed() {
    let net = Net::new();
    // Two owners in one process over one store (the one-store rule).
    let store: std::sync::Arc<dyn zeroservices::store::Store> =
        std::sync::Arc::new(zeroservices::store::MemoryStore::new());
    let mut owners = Vec::new();
    for _ in 0..2 {
        owners.push(
            Node::builder("power")
                .network(net.config())
                .shared_store(store.clone())
                .resource::<Power>()
                .start()
                .await
                .unwrap(),
        );
    }
    let client = net.node("client").await;
    owners_known(&client, 2, Duration::from_secs(5)).await;
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let survivor = owners[1].id().to_owned();
    let caller = {
        let powers = client.collection::<Power>();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let (mut wrong, mut calls, mut after) = (Vec::new(), 0u32, 0u32);
            // Bounded: at most 5,000 calls, and 40 once the stop has returned.
            while calls < 5000 && after <= 40 {
                calls += 1;
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                }
                match powers.call_collection::<String>("whoami", ()).await {
                    Err(e) => wrong.push(format!("call {calls} failed: {e}")),
                    Ok(who) if after > 0 && who != survivor => {
                        wrong.push(format!("call {calls} served after the stop by {who}"));
                    }
                    Ok(_) => {}
                }
            }
            (wrong, calls, after)
        })
    };
    eventually(
        Duration::from_secs(5),
        "calls served by both owners",
        || owners.iter().all(|o| o.stats().requests_served >= 20),
    )
    .await;
    owners[0].stop().await;
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    let (wrong, calls, after) = caller.await.unwrap();
    assert!(
        wrong.is_empty(),
        "calls went wrong in an owner's stop: {wrong:?}"
    );
    assert!(
        after > 40,
        "the calls ran past the stop ({after} of {calls} after it)"
    );
    client.stop().await;
    owners[1].stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_with_another_cluster_key_is_never_joined() {
    let mut net = Net::new();
    net.key = Some("blue".into());
    let _blue = ChildNode::spawn("power", &net);
    let mut red = net.clone();
    red.key = Some("red".into());
    let stranger = red.node("stranger").await;
    let friend = net.node("friend").await;
    friend
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    // The friend, with the same key, found the owner; the stranger, in the same time and on
    // the same group, sees nobody.
    assert!(stranger.peers().is_empty(), "{:?}", stranger.peers());
    assert!(friend.peers().iter().all(|p| p.info.id != stranger.id()));
    let err = stranger
        .collection::<Power>()
        .list(Query::all())
        .await
        .unwrap_err();
    assert_eq!(err, Error::unknown_collection("power"));
    stranger.stop().await;
    friend.stop().await;
}

/// `ZS_PEERS` naming its seed by DNS name, as a Kubernetes headless service is given: the child
/// process reads `ZS_PEERS=localhost:<port>` from its environment, resolves it through the
/// system resolver (`/etc/hosts`: 127.0.0.1, and perhaps ::1, which discovery skips) and finds
/// the client; multicast is off on both, so only the name can bring them together.
#[tokio::test(flavor = "multi_thread")]
async fn a_seed_given_by_dns_name_works_without_multicast() {
    let mut net = Net::new();
    net.multicast = false;
    net.discovery_port = Some(free_udp_port());
    let client = net.node("client").await;
    let mut child_net = net.clone();
    child_net.discovery_port = None;
    child_net.peers = vec![format!("localhost:{}", net.discovery_port.unwrap())];
    let child = ChildNode::spawn("power", &child_net);
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let id = client.collection::<Power>().create(power(6)).await.unwrap();
    assert_eq!(
        client.collection::<Power>().get(&id).await.unwrap(),
        power(6)
    );
    assert!(client.peers().iter().any(|p| p.info.id == child.id));
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn static_peers_work_without_multicast() {
    let mut seed = Net::new();
    seed.multicast = false;
    seed.discovery_port = Some(free_udp_port());
    let child = ChildNode::spawn("power", &seed);
    let mut net = seed.clone();
    net.discovery_port = None;
    net.peers = vec![format!("127.0.0.1:{}", seed.discovery_port.unwrap())];
    let client = net.node("client").await;
    client
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    let id = client.collection::<Power>().create(power(5)).await.unwrap();
    assert_eq!(
        client.collection::<Power>().get(&id).await.unwrap(),
        power(5)
    );
    assert!(client.peers().iter().any(|p| p.info.id == child.id));
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sniffer_prints_events_of_the_cluster() {
    sniffer_prints_events(None).await;
}

/// With the cluster's key (here a keyring of two), the sniffer opens the sealed events.
#[tokio::test(flavor = "multi_thread")]
async fn the_sniffer_with_the_key_prints_sealed_events() {
    sniffer_prints_events(Some("new-key,old-key")).await;
}

async fn sniffer_prints_events(key: Option<&str>) {
    let mut net = Net::new();
    net.key = key.map(str::to_owned);
    let _owner = ChildNode::spawn("power", &net);
    let client = net.node("client").await;
    client
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    let mut sniff = Command::new(env!("CARGO_BIN_EXE_zeroservices"))
        .args(["sniff", "power.create", "--count", "1"])
        .envs(net.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = sniff.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
            let _ = tx.send(line);
        }
    });
    // Keep creating until the sniffer has found the owner and printed one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        client.collection::<Power>().create(power(7)).await.unwrap();
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            break line;
        }
        assert!(
            Instant::now() < deadline,
            "the sniffer printed nothing within 10 s"
        );
    };
    let (topic, json) = line.split_once(' ').unwrap();
    assert!(topic.starts_with("power.create."), "{line}");
    let data: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(data["resource_data"]["value"], 7);
    assert_eq!(data["action"], "create");
    let status = sniff.wait().unwrap();
    assert!(status.success());
    client.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_at_a_node_leaves_it_serving() {
    use zeromq::{DealerSocket, Socket, SocketSend, ZmqMessage};
    let mut net = Net::new();
    net.key = Some("k".into());
    let child = ChildNode::spawn("power", &net);
    let client = net.node("client").await;
    client
        .wait_for_collection("power", Duration::from_secs(2))
        .await
        .unwrap();
    let router = client
        .peers()
        .into_iter()
        .find(|p| p.info.id == child.id)
        .unwrap()
        .info
        .endpoints["router"]
        .clone();

    // At the ROUTER: wrong frame counts, noise, truncated JSON, an unknown version, a huge
    // message, unsigned and forged envelopes.
    let mut raw = DealerSocket::new();
    raw.connect(&router).await.unwrap();
    let frames = |parts: Vec<Vec<u8>>| -> ZmqMessage {
        let mut parts = parts.into_iter();
        let mut msg = ZmqMessage::from(parts.next().unwrap());
        for p in parts {
            msg.push_back(p.into());
        }
        msg
    };
    let good = format!(r#"{{"v":{},"kind":"request","id":1,"from":"x","request":{{"collection":"power","action":"list"}}}}"#, zeroservices::medium::PROTOCOL_VERSION).into_bytes();
    let garbage: Vec<Vec<Vec<u8>>> = vec![
        vec![good.clone()],
        vec![good.clone(), b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
        vec![vec![0xff, 0, 1, 2], Vec::new()],
        vec![good[..good.len() / 2].to_vec(), b"00".repeat(32)],
        vec![br#"{"v":99,"kind":"request","id":2}"#.to_vec(), Vec::new()],
        vec![vec![b'x'; 20 * 1024 * 1024], Vec::new()],
        vec![good.clone(), Vec::new()],
        vec![good.clone(), b"ab".repeat(32)],
    ];
    for parts in garbage {
        raw.send(frames(parts)).await.unwrap();
    }
    // At the discovery group: noise, truncated and forged announcements.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_multicast_ttl_v4(1).unwrap();
    let group = format!("237.252.249.227:{}", net.port);
    for datagram in [
        b"\x00\x01garbage".to_vec(),
        br#"{"v":1,"type":"announce","node":{"id":"#.to_vec(),
        br#"{"v":1,"type":"announce","reply_to":"127.0.0.1:9","node":{"id":"forged","name":"f"}}"#
            .to_vec(),
        vec![b'{'; 65_000],
    ] {
        let _ = udp.send_to(&datagram, &group);
    }

    // The node still serves, and nobody forged joined.
    let powers = client.collection::<Power>();
    for v in 0..10 {
        let id = powers.create(power(v)).await.unwrap();
        assert_eq!(powers.get(&id).await.unwrap().value, v);
    }
    assert!(client.peers().iter().all(|p| p.info.id != "forged"));
    client.stop().await;
}

/// The command, like a node, refuses an interface beyond loopback without a key: exit 2, before
/// anything is bound, naming the key and `ZS_INSECURE`.
#[test]
fn the_command_refuses_an_open_interface_without_a_key() {
    for args in [
        &["nodes", "--interface", "192.0.2.1"][..],
        &["--interface", "0.0.0.0", "sniff"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_zeroservices"))
            .args(args)
            .env_remove("ZS_DISCOVERY_INTERFACE")
            .env_remove("ZS_CLUSTER_KEY")
            .env_remove("ZS_CLUSTER_KEY_FILE")
            .env_remove("ZS_INSECURE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("ZS_CLUSTER_KEY") && stderr.contains("ZS_INSECURE"),
            "{stderr}"
        );
    }
}

/// A node with neither key nor interface, built in code, binds loopback: its announced ROUTER
/// and PUB endpoints are on 127.0.0.1. One built to bind every interface without a key does
/// not start.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_key_binds_loopback() {
    let net = Net::new();
    let node = Node::builder("plain")
        .network(NetworkConfig {
            multicast_group: format!("237.252.249.227:{}", net.port).parse().unwrap(),
            ..NetworkConfig::default()
        })
        .start()
        .await
        .unwrap();
    let info = node.info();
    assert!(!info.insecure);
    assert_eq!(info.endpoints.len(), 2, "{:?}", info.endpoints);
    for endpoint in info.endpoints.values() {
        assert!(endpoint.starts_with("tcp://127.0.0.1:"), "{endpoint}");
    }
    node.stop().await;
    let open = Node::builder("open")
        .network(NetworkConfig {
            interface: std::net::Ipv4Addr::UNSPECIFIED,
            multicast_group: format!("237.252.249.227:{}", net.port).parse().unwrap(),
            ..NetworkConfig::default()
        })
        .start()
        .await;
    let Err(err) = open else {
        panic!("an open node without a key started");
    };
    let err = err.to_string();
    assert!(
        err.contains("ZS_CLUSTER_KEY") && err.contains("ZS_INSECURE"),
        "{err}"
    );
}
