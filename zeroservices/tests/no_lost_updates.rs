//! No lost updates: two owners of `power` over one database, behind a gateway that spreads the
//! requests over both (round robin), with clients racing `$inc` patches against `&mut self`
//! actions on one resource. Each owner's per-resource lock only covers its own requests; only
//! the store's compare-and-set on the version keeps the other owner's changes.
//!
//! `square` sets `result` and `status` from `value` and leaves `value` alone, so before versions
//! it wrote back a stale `value` over patches made meanwhile (4 × 50 `$inc` ended at 166, not
//! 200); `add` changes `value` itself, so it must not lose its own increments either.
//!
//! What runs where: the race itself ([`race`]: the clients, over the gateway's REST API on
//! 127.0.0.1) always runs in the test process, and so does the gateway. The owners are either
//! - nodes in this process on an in-process [`MemoryCluster`], each with its own store object
//!   over the shared database (as two processes would have): over one embedded store file
//!   always, over one MongoDB database when `ZS_TEST_MONGODB_URI` is set (`scripts/test.sh`
//!   starts nx-27017); or
//! - two child processes over one MongoDB database (`ZS_TEST_MONGODB_URI`), on the network
//!   medium (ZeroMQ sockets and UDP multicast discovery on 127.0.0.1, a multicast group port of
//!   the test's own), with the gateway in this process on the same private cluster. The test
//!   binary re-executes itself as the children: `child_owner` below does nothing in a normal
//!   run, and runs an owner when `ZS_RACE_CHILD` is set, until its stdin closes; the parent
//!   kills them if the test fails.

mod http_common;
mod mongo_common;

use mongo_common::mongodb_uri;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http_common::*;
use serde_json::json;
use zeroservices::config::NetworkConfig;
use zeroservices::http::HttpConfig;
use zeroservices::medium::MemoryCluster;
use zeroservices::store::{EmbeddedStore, MongoStore, Store};
use zeroservices::{Error, Node};

const PATCHERS: usize = 4;
const PATCHES: usize = 50;
const SQUARERS: usize = 2;
const SQUARES: usize = 50;
const ADDERS: usize = 2;
const ADDS: usize = 25;

async fn owner_over(cluster: &MemoryCluster, store: impl Store) -> Node {
    Node::builder("power_service")
        .memory(cluster)
        .store(store)
        .resource::<Power>()
        .start()
        .await
        .unwrap()
}

/// Polls `f` every 20 ms until it holds; fails the test after `within`.
async fn eventually<F: FnMut() -> bool>(within: Duration, what: &str, mut f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The race through the gateway's REST API at `base`, against two owners of `power` over one
/// database: creates a power, races the patches and actions on it, and checks that every change
/// is there. `served` gives the owners' `requests_served`; each must serve a share of the race.
async fn race(base: &str, mut served: impl FnMut() -> Vec<u64>) {
    let http = client();
    let id = format!("race-{}", &zeroservices::store::new_id()[..8]);
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": id, "resource_data": {"value": 0}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{base}/power/{id}");
    let served_before = served();
    assert_eq!(served_before.len(), 2, "two owners");

    let mut tasks = Vec::new();
    for _ in 0..PATCHERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PATCHES {
                let (status, body) = json(
                    http.patch(&url)
                        .json(&json!({"patch": {"$inc": {"value": 1}}}))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(status, 200, "patch: {body}");
            }
        }));
    }
    for _ in 0..SQUARERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..SQUARES {
                let (status, body) =
                    json(http.post(format!("{url}/square")).send().await.unwrap()).await;
                assert_eq!(status, 200, "square: {body}");
            }
        }));
    }
    for _ in 0..ADDERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ADDS {
                let (status, body) = json(
                    http.post(format!("{url}/add"))
                        .json(&json!({"amount": 1}))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(status, 200, "add: {body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let (status, body) = json(http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let expected = (PATCHERS * PATCHES + ADDERS * ADDS) as i64;
    assert_eq!(
        body["resource_data"]["value"], expected,
        "every $inc and every add is there: {body}"
    );
    // Each patch and add is one version; a square that changed nothing is none.
    let version = body["version"].as_u64().unwrap();
    let changes = (PATCHERS * PATCHES + ADDERS * ADDS) as u64;
    assert!(
        (1 + changes..=1 + changes + (SQUARERS * SQUARES) as u64).contains(&version),
        "version {version}"
    );
    // Both owners served the race.
    let shares: Vec<u64> = served()
        .into_iter()
        .zip(served_before)
        .map(|(after, before)| after - before)
        .collect();
    println!("version {version}; the owners served {shares:?} requests of the race");
    for share in shares {
        assert!(share > 10, "an owner served {share} requests only");
    }
}

/// Two owners in this process over `first` and `second` (one database), a gateway that knows
/// both, and the race.
async fn race_in_process(first: impl Store, second: impl Store) {
    let cluster = MemoryCluster::new();
    let owners = [
        owner_over(&cluster, first).await,
        owner_over(&cluster, second).await,
    ];
    let api = gateway(&cluster, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(10),
        "the gateway learns both owners",
        || api.peers().len() >= 2,
    )
    .await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    race(&base, || {
        owners.iter().map(|o| o.stats().requests_served).collect()
    })
    .await;
    server.shutdown().await;
    api.stop().await;
    for owner in owners {
        owner.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_over_one_embedded_store_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    race_in_process(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ZS_TEST_MONGODB_URI (scripts/test.sh starts nx-27017)"]
async fn two_owners_over_one_mongodb_database_lose_no_update() {
    let uri = mongodb_uri("no_lost_updates");
    // Two connections, as two processes would have.
    let timeout = Duration::from_secs(10);
    let first = MongoStore::connect_with_timeout(&uri, timeout)
        .await
        .unwrap();
    let second = MongoStore::connect_with_timeout(&uri, timeout)
        .await
        .unwrap();
    race_in_process(first, second).await;
}

/// Set (to `owner`) in the child processes: `child_owner` runs an owner.
const CHILD: &str = "ZS_RACE_CHILD";
/// The multicast group port of the parent's private cluster, for the children.
const GROUP_PORT: &str = "ZS_RACE_GROUP_PORT";

/// The network settings of one test's private cluster, shared by the parent and its children:
/// loopback only, a multicast group port of its own, short heartbeats (quick discovery), a peer
/// timeout loose enough for owners busy with the race, and the in-process gateway's timeout.
fn race_network(group_port: u16) -> NetworkConfig {
    NetworkConfig {
        interface: "127.0.0.1".parse().unwrap(),
        multicast_group: format!("237.252.249.227:{group_port}").parse().unwrap(),
        request_timeout: Duration::from_secs(30),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_secs(5),
        ..NetworkConfig::default()
    }
}

/// A child process owning `power` over the MongoDB database of `ZS_TEST_MONGODB_URI`; killed
/// (SIGKILL) when dropped, so a failed test leaves no child behind.
struct ChildOwner {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    id: String,
}

impl ChildOwner {
    fn spawn(group_port: u16, uri: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_owner", "--nocapture", "--test-threads=1"])
            .env(CHILD, "owner")
            .env(GROUP_PORT, group_port.to_string())
            .env("ZS_TEST_MONGODB_URI", uri)
            .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut owner = Self {
            child,
            stdin,
            lines,
            id: String::new(),
        };
        owner.id = owner
            .line("READY ", Duration::from_secs(30))
            .expect("the child owner did not start within 30 s");
        owner
    }

    /// What follows `tag` on the next line of the child's that has it (libtest may print
    /// `test child_owner ... ` before the child's own output), within `timeout`.
    fn line(&self, tag: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once(tag) {
                        return Some(rest.trim().to_owned());
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// The child's `requests_served`, asked on its stdin.
    fn served(&mut self) -> u64 {
        tokio::task::block_in_place(|| {
            let stdin = self.stdin.as_mut().expect("stdin open");
            writeln!(stdin, "served").unwrap();
            stdin.flush().unwrap();
            self.line("SERVED ", Duration::from_secs(10))
                .expect("the child owner answers within 10 s")
                .parse()
                .unwrap()
        })
    }

    /// Closes the child's stdin (it stops its node and exits) and waits for it; kills it if it
    /// has not exited within `timeout`. Fails the test unless it exited cleanly in time.
    async fn stop(mut self, timeout: Duration) {
        drop(self.stdin.take());
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the child owner {} did not exit within {timeout:?} (killed)",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "the child owner {}: {status}", self.id);
    }
}

impl Drop for ChildOwner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Not a test: the body of the child processes of
/// `two_owner_processes_over_one_mongodb_database_lose_no_update`. Without `ZS_RACE_CHILD` (any
/// normal run, `--include-ignored` too) it does nothing. With it, it runs an owner of `power`
/// over `ZS_TEST_MONGODB_URI` on the cluster of `ZS_RACE_GROUP_PORT`, prints `READY <node id>`,
/// answers `served` on stdin with `SERVED <requests_served>`, and stops when stdin closes.
#[test]
fn child_owner() {
    let Ok(role) = std::env::var(CHILD) else {
        return;
    };
    assert_eq!(role, "owner");
    let group_port: u16 = std::env::var(GROUP_PORT).unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let store = MongoStore::connect_with_timeout(
            &mongodb_uri("no_lost_updates"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let node = Node::builder("power_service")
            .network(race_network(group_port))
            .store(store)
            .resource::<Power>()
            .start()
            .await
            .unwrap();
        println!("READY {}", node.id());
        std::io::stdout().flush().unwrap();
        let stats = node.clone();
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            while std::io::stdin()
                .read_line(&mut line)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                if line.trim() == "served" {
                    println!("SERVED {}", stats.stats().requests_served);
                    std::io::stdout().flush().unwrap();
                }
                line.clear();
            }
        })
        .await
        .unwrap();
        node.stop().await;
    });
}

/// The setup: two owner processes over one MongoDB database (nx-27017 under
/// `scripts/test.sh`), on ZeroMQ and UDP discovery on loopback, behind a gateway in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ZS_TEST_MONGODB_URI (scripts/test.sh starts nx-27017)"]
async fn two_owner_processes_over_one_mongodb_database_lose_no_update() {
    let uri = mongodb_uri("no_lost_updates");
    // A multicast group port of this test's own: no other test's nodes on its cluster.
    let group_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // One after the other: the second owner's warm-up hears the first (same store, accepted).
    let mut owners = [
        ChildOwner::spawn(group_port, &uri),
        ChildOwner::spawn(group_port, &uri),
    ];
    assert_ne!(owners[0].id, owners[1].id);
    let api = Node::builder("api")
        .network(race_network(group_port))
        .start()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the gateway learns both owner processes",
        || {
            let peers: Vec<String> = api
                .peers()
                .into_iter()
                .filter(|p| p.info.resources.iter().any(|r| r.name == "power"))
                .map(|p| p.info.id)
                .collect();
            owners.iter().all(|o| peers.contains(&o.id))
        },
    )
    .await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    race(&base, || {
        owners.iter_mut().map(ChildOwner::served).collect()
    })
    .await;
    server.shutdown().await;
    api.stop().await;
    for owner in owners {
        owner.stop(Duration::from_secs(15)).await;
    }
}

/// A `&mut self` action that keeps losing its compare-and-set gives up with 409 after the
/// retries, having changed nothing; with the version given, the first loss is a 412.
#[tokio::test]
async fn an_action_that_always_loses_gives_up_with_409() {
    /// A store whose compare-and-set always finds another version (as if another owner
    /// changed the document between every read and write).
    struct AlwaysChanged(zeroservices::store::MemoryStore);

    #[async_trait::async_trait]
    impl Store for AlwaysChanged {
        async fn insert(
            &self,
            c: &str,
            id: Option<&str>,
            doc: serde_json::Value,
        ) -> zeroservices::Result<String> {
            self.0.insert(c, id, doc).await
        }
        async fn get(&self, c: &str, id: &str) -> zeroservices::Result<Option<serde_json::Value>> {
            self.0.get(c, id).await
        }
        async fn replace(
            &self,
            c: &str,
            id: &str,
            _: serde_json::Value,
            expect: Option<u64>,
        ) -> zeroservices::Result<u64> {
            Err(Error::PreconditionFailed {
                collection: c.into(),
                id: id.into(),
                expected: expect.unwrap_or(0),
                actual: expect.unwrap_or(0) + 1,
            })
        }
        async fn patch(
            &self,
            c: &str,
            id: &str,
            p: &zeroservices::Patch,
            e: Option<u64>,
        ) -> zeroservices::Result<serde_json::Value> {
            self.0.patch(c, id, p, e).await
        }
        async fn delete(&self, c: &str, id: &str, e: Option<u64>) -> zeroservices::Result<u64> {
            self.0.delete(c, id, e).await
        }
        async fn list(
            &self,
            c: &str,
            q: &zeroservices::Query,
        ) -> zeroservices::Result<Vec<(String, serde_json::Value)>> {
            self.0.list(c, q).await
        }
        fn describe(&self) -> String {
            "always-changed".into()
        }
        async fn claim_request(
            &self,
            c: &str,
            r: &str,
            f: &str,
            lease: std::time::Duration,
        ) -> zeroservices::Result<zeroservices::store::Claim> {
            self.0.claim_request(c, r, f, lease).await
        }
        async fn complete_request(
            &self,
            c: &str,
            r: &str,
            reply: &serde_json::Value,
            keep: std::time::Duration,
        ) -> zeroservices::Result<()> {
            self.0.complete_request(c, r, reply, keep).await
        }
        async fn release_request(&self, c: &str, r: &str) -> zeroservices::Result<()> {
            self.0.release_request(c, r).await
        }
    }

    let cluster = MemoryCluster::new();
    let node = owner_over(&cluster, AlwaysChanged(Default::default())).await;
    let powers = node.collection::<Power>();
    powers
        .create_with_id(
            "p",
            Power {
                value: 3,
                status: Status::Pending,
                result: None,
                description: None,
            },
        )
        .await
        .unwrap();
    let err = powers.call::<i64>("p", "square", ()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { message } if message.contains("16 attempts")),
        "{err:?}"
    );
    let err = node
        .request(
            zeroservices::medium::Request::new("power", "square")
                .id("p")
                .if_version(Some(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PreconditionFailed { .. }), "{err:?}");
    let (power, version) = powers.get_versioned("p").await.unwrap();
    assert_eq!((power.result, version), (None, 1), "nothing changed");
    node.stop().await;
}

/// The typed client's versioned reads and conditional changes.
#[tokio::test]
async fn the_typed_client_reads_versions_and_changes_conditionally() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let powers = node.collection::<Power>();
    let power = Power {
        value: 2,
        status: Status::Pending,
        result: None,
        description: None,
    };
    powers.create_with_id("p", power).await.unwrap();
    let (read, version) = powers.get_versioned("p").await.unwrap();
    assert_eq!((read.value, version), (2, 1));
    let (patched, version) = powers
        .patch_if("p", 1, zeroservices::patch!({"$inc": {"value": 1}}))
        .await
        .unwrap();
    assert_eq!((patched.value, version), (3, 2));
    let err = powers
        .patch_if("p", 1, zeroservices::patch!({"$inc": {"value": 1}}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PreconditionFailed {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = powers.delete_if("p", 1).await.unwrap_err();
    assert!(matches!(err, Error::PreconditionFailed { .. }), "{err:?}");
    // Listed documents carry their versions.
    let listed = powers.list(zeroservices::Query::all()).await.unwrap();
    assert_eq!(listed[0].version, 2);
    // Events carry the version after the change.
    let mut events = node.subscribe("power");
    powers.call::<i64>("p", "square", ()).await.unwrap();
    powers.delete_if("p", 3).await.unwrap();
    use futures::StreamExt;
    let square = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (square.topic.as_str(), &square.data["version"]),
        ("power.square.p", &json!(3))
    );
    let delete = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (delete.topic.as_str(), &delete.data["version"]),
        ("power.delete.p", &json!(4))
    );
    node.stop().await;
}
