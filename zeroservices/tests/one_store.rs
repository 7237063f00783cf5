//! One store per collection, over real ZeroMQ sockets and real UDP multicast on 127.0.0.1:
//! owners that share a store share the load; a second live owner over another store is refused
//! at start-up; an owner restarted on its own data is not refused by its dead predecessor.
//!
//! The test binary re-executes itself as the child owners (killed with SIGKILL): `child_owner`
//! below does nothing in a normal run, and runs an owner when `ZS_TEST_CHILD` is set.

mod mongo_common;

use mongo_common::mongodb_uri;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroservices::NodeBuilder;
use zeroservices::config::NetworkConfig;
use zeroservices::prelude::*;
use zeroservices::store::{MemoryStore, Store, StoreConfig};

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
}

#[actions]
impl Power {
    /// The id of the node that served this call.
    #[action(collection)]
    async fn whoami(ctx: &Context) -> Result<String> {
        Ok(ctx.node().id().to_owned())
    }
}

/// One test's cluster: its own multicast group port on loopback, short timers.
#[derive(Clone)]
struct Net {
    port: u16,
    peer_timeout_ms: u64,
}

impl Net {
    fn new() -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self {
            port,
            peer_timeout_ms: 1500,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ZS_DISCOVERY_INTERFACE".into(), "127.0.0.1".into()),
            (
                "ZS_MULTICAST_GROUP".into(),
                format!("237.252.249.227:{}", self.port),
            ),
            ("ZS_HEARTBEAT_MS".into(), "200".into()),
            (
                "ZS_PEER_TIMEOUT_MS".into(),
                self.peer_timeout_ms.to_string(),
            ),
            ("ZS_REQUEST_TIMEOUT_MS".into(), "1000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            interface: "127.0.0.1".parse().unwrap(),
            multicast_group: format!("237.252.249.227:{}", self.port).parse().unwrap(),
            request_timeout: Duration::from_millis(1000),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_millis(self.peer_timeout_ms),
            ..NetworkConfig::default()
        }
    }

    fn builder(&self, name: &str) -> NodeBuilder {
        Node::builder(name).network(self.config())
    }

    /// An owner of `power` over `store`.
    async fn owner(&self, store: Arc<dyn Store>) -> Result<Node> {
        self.builder("power_service")
            .shared_store(store)
            .resource::<Power>()
            .start()
            .await
    }
}

async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn owners(node: &Node) -> Vec<String> {
    node.peers()
        .into_iter()
        .filter(|p| p.info.resources.iter().any(|r| r.name == "power"))
        .map(|p| p.info.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_owners_over_one_store_share_the_load() {
    let net = Net::new();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = net.owner(store.clone()).await.unwrap();
    let b = net.owner(store.clone()).await.unwrap();
    let fingerprint = store.fingerprint().await.unwrap().unwrap();
    assert_eq!(a.info().stores["power"].fingerprint, fingerprint);
    assert_eq!(b.info().stores["power"].fingerprint, fingerprint);
    let client = net.builder("client").start().await.unwrap();
    eventually(Duration::from_secs(3), "both owners known", || {
        owners(&client).len() == 2
    })
    .await;
    let powers = client.collection::<Power>();
    let mut served = std::collections::HashMap::<String, u32>::new();
    for _ in 0..20 {
        let who: String = powers.call_collection("whoami", ()).await.unwrap();
        *served.entry(who).or_default() += 1;
    }
    assert_eq!(served.get(a.id()), Some(&10), "{served:?}");
    assert_eq!(served.get(b.id()), Some(&10), "{served:?}");
    // One data set: what one owner created, the other reads.
    let id = powers.create(Power { value: 4 }).await.unwrap();
    assert_eq!(a.collection::<Power>().get(&id).await.unwrap().value, 4);
    assert_eq!(b.collection::<Power>().get(&id).await.unwrap().value, 4);
    assert_eq!(a.stats().store_conflicts, 0);
    for node in [client, a, b] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_owner_over_another_store_is_refused() {
    let net = Net::new();
    let first = net.owner(Arc::new(MemoryStore::new())).await.unwrap();
    let client = net.builder("client").start().await.unwrap();
    eventually(Duration::from_secs(3), "the first owner known", || {
        owners(&client).len() == 1
    })
    .await;

    let err = net
        .owner(Arc::new(MemoryStore::new()))
        .await
        .expect_err("a second owner over another store");
    let Error::StoreConflict {
        collection,
        message,
    } = &err
    else {
        panic!("not a store conflict: {err:?}");
    };
    assert_eq!(collection, "power");
    for part in [
        "`power`",
        first.id(),
        "power_service",
        "memory",
        &first.info().stores["power"].fingerprint,
        "ZS_STORE",
        "one owner",
    ] {
        assert!(message.contains(part), "{part} missing from {message}");
    }

    // The refused node never announced the collection: the client still has one owner, and
    // every request goes to it.
    assert_eq!(owners(&client), [first.id().to_owned()]);
    let powers = client.collection::<Power>();
    for _ in 0..4 {
        let who: String = powers.call_collection("whoami", ()).await.unwrap();
        assert_eq!(who, first.id());
    }
    assert_eq!(
        first.stats().store_conflicts,
        0,
        "no announcement, no conflict"
    );

    // A node that owns nothing is never refused.
    let gateway = net.builder("gateway").start().await.unwrap();
    gateway.stop().await;
    client.stop().await;
    first.stop().await;
}

/// A child process running an owner of `power` over `ZS_STORE`; killed (SIGKILL) when dropped.
struct ChildOwner {
    child: Child,
    id: String,
}

impl ChildOwner {
    fn spawn(net: &Net, store: &str) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_owner", "--nocapture", "--test-threads=1"])
            .env("ZS_TEST_CHILD", "owner")
            .env("ZS_STORE", store)
            .envs(net.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some((_, id)) = line.split_once("READY ") {
                    let _ = tx.send(Ok(id.trim().to_owned()));
                } else if let Some((_, why)) = line.split_once("REFUSED ") {
                    let _ = tx.send(Err(why.to_owned()));
                }
            }
        });
        let id = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Ok(id)) => id,
            Ok(Err(why)) => panic!("the child owner was refused: {why}"),
            Err(_) => panic!("the child owner did not start within 20 s"),
        };
        Self { child, id }
    }

    /// `kill -9`: no goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildOwner {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test: the body of the child processes.
#[test]
fn child_owner() {
    let Ok(role) = std::env::var("ZS_TEST_CHILD") else {
        return;
    };
    assert_eq!(role, "owner");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let config = NetworkConfig::from_env().unwrap();
        let spec = std::env::var("ZS_STORE").unwrap();
        let store = StoreConfig::parse(&spec).unwrap().open().await.unwrap();
        let started = Node::builder("power_service")
            .network(config)
            .shared_store(store)
            .resource::<Power>()
            .start()
            .await;
        let node = match started {
            Ok(node) => node,
            Err(e) => {
                println!("REFUSED {e}");
                return;
            }
        };
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
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_restarted_on_its_own_data_is_not_refused_by_its_dead_predecessor() {
    let mut net = Net::new();
    // Long enough for the dead owner to stay listed through the restart.
    net.peer_timeout_ms = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("embedded:{}", dir.path().display());
    let mut first = ChildOwner::spawn(&net, &spec);
    let witness = net.builder("witness").start().await.unwrap();
    eventually(Duration::from_secs(3), "the first owner known", || {
        owners(&witness) == [first.id.clone()]
    })
    .await;
    let fingerprint = witness
        .peers()
        .into_iter()
        .find(|p| p.info.id == first.id)
        .unwrap()
        .info
        .stores["power"]
        .fingerprint
        .clone();
    let id = witness
        .collection::<Power>()
        .create(Power { value: 6 })
        .await
        .unwrap();

    first.kill();
    let dead = first.id.clone();
    let restarted = ChildOwner::spawn(&net, &spec);
    assert!(
        witness.peers().iter().any(|p| p.info.id == dead),
        "the dead owner is still listed by the witness"
    );
    eventually(Duration::from_secs(3), "the restarted owner known", || {
        owners(&witness).contains(&restarted.id)
    })
    .await;
    let info = witness
        .peers()
        .into_iter()
        .find(|p| p.info.id == restarted.id)
        .unwrap()
        .info;
    assert_eq!(info.stores["power"].fingerprint, fingerprint, "same data");
    // Its data survived. The witness takes turns between the corpse (a timeout) and the live
    // owner: within a few tries the live one answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    let back = loop {
        match witness.collection::<Power>().get(&id).await {
            Ok(back) => break back,
            Err(e) => assert!(Instant::now() < deadline, "no answer: {e}"),
        }
    };
    assert_eq!(back.value, 6);

    // A fresh owner over a dir of its own is refused by the live restarted owner...
    let other_dir = tempfile::tempdir().unwrap();
    let other_spec = format!("embedded:{}", other_dir.path().display());
    let other_store = || {
        let spec = other_spec.clone();
        async move { StoreConfig::parse(&spec).unwrap().open().await.unwrap() }
    };
    let err = net
        .owner(other_store().await)
        .await
        .expect_err("the restarted owner is alive, over another store");
    assert!(err.to_string().contains(&restarted.id), "{err}");

    // ... but not by dead ones: with both owners killed and still listed by the witness, it
    // starts (a listed owner over another store counts only while it answers).
    let mut restarted = restarted;
    restarted.kill();
    assert!(
        witness
            .peers()
            .iter()
            .any(|p| p.info.id == dead || p.info.id == restarted.id),
        "the corpses are still listed"
    );
    let fresh = net.owner(other_store().await).await.unwrap();
    assert_eq!(
        owners(&fresh),
        Vec::<String>::new(),
        "it never heard a corpse"
    );
    fresh.stop().await;
    witness.stop().await;
}

/// `uri` with its database replaced by `db`.
fn with_database(uri: &str, db: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap();
    let (hosts, query) = match rest.split_once('/') {
        Some((hosts, path)) => (hosts, path.split_once('?').map(|(_, q)| q)),
        None => (rest, None),
    };
    match query {
        Some(q) => format!("{scheme}://{hosts}/{db}?{q}"),
        None => format!("{scheme}://{hosts}/{db}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs ZS_TEST_MONGODB_URI (scripts/test.sh starts nx-27017)"]
async fn two_owners_over_one_mongodb_database_share_a_fingerprint_and_both_serve() {
    let uri = with_database(
        &mongodb_uri("one_store"),
        &format!("zs_one_store_{}", &zeroservices::store::new_id()[..8]),
    );
    let net = Net::new();
    // Two connections, as two processes would have: the fingerprint comes from the database.
    let a_store = StoreConfig::parse(&uri).unwrap().open().await.unwrap();
    let b_store = StoreConfig::parse(&uri).unwrap().open().await.unwrap();
    let (fa, fb) = (
        a_store.fingerprint().await.unwrap().unwrap(),
        b_store.fingerprint().await.unwrap().unwrap(),
    );
    assert_eq!(fa, fb);
    assert!(fa.starts_with("mongodb:zs_one_store_"), "{fa}");
    let a = net.owner(a_store).await.unwrap();
    let b = net.owner(b_store).await.unwrap();
    let client = net.builder("client").start().await.unwrap();
    eventually(Duration::from_secs(3), "both owners known", || {
        owners(&client).len() == 2
    })
    .await;
    let powers = client.collection::<Power>();
    let mut served = std::collections::HashSet::new();
    for _ in 0..4 {
        let who: String = powers.call_collection("whoami", ()).await.unwrap();
        served.insert(who);
    }
    assert_eq!(served.len(), 2, "both serve: {served:?}");
    let id = powers.create(Power { value: 5 }).await.unwrap();
    assert_eq!(a.collection::<Power>().get(&id).await.unwrap().value, 5);
    assert_eq!(b.collection::<Power>().get(&id).await.unwrap().value, 5);
    // Another database is another store.
    let other = StoreConfig::parse(&with_database(&uri, "zs_one_store_other"))
        .unwrap()
        .open()
        .await
        .unwrap();
    assert_ne!(other.fingerprint().await.unwrap().unwrap(), fa);
    let err = net.owner(other).await.expect_err("another database");
    assert!(matches!(err, Error::StoreConflict { .. }), "{err:?}");
    for node in [client, a, b] {
        node.stop().await;
    }
}
