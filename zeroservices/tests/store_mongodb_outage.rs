//! A MongoDB outage: the server stops mid-run, requests fail within the request timeout with
//! [`Error::Unavailable`], the server comes back, and the same store object serves again.
//!
//! The test runs its own nx-27017 server (MongoDB's wire protocol over SQLite), found through
//! `ZS_TEST_NX27017` (the `nx-27017` executable; `scripts/test.sh` sets it). The test is
//! `#[ignore]`d (`scripts/test.sh` runs it); asked to run without `ZS_TEST_NX27017`, it fails.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use zeroservices::store::{MongoStore, Store};
use zeroservices::{Error, Patch, Query};

/// The request timeout the store is given.
const TIMEOUT: Duration = Duration::from_secs(2);

struct Server {
    child: Child,
}

impl Server {
    fn start(exe: &str, dir: &Path, port: u16) -> Server {
        let child = Command::new(exe)
            .arg("--db")
            .arg(dir.join("outage.db"))
            .args(["--host", "127.0.0.1", "-p", &port.to_string()])
            .arg("--log-file")
            .arg(dir.join("nx.log"))
            .arg("--pid-file")
            .arg(dir.join("nx.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let mut server = Server { child };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("nx-27017 exited at start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nx-27017 did not listen on {port} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: zeroservices::Result<T>, took: Duration) {
    match r {
        Err(Error::Unavailable { message }) => {
            eprintln!("{what}: unavailable after {took:?}: {message}");
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
    assert!(
        took <= TIMEOUT + Duration::from_millis(300),
        "{what}: took {took:?}, more than the request timeout {TIMEOUT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nx-27017 (ZS_TEST_NX27017): run by scripts/test.sh"]
async fn outage_gives_unavailable_then_recovers() {
    let exe = std::env::var("ZS_TEST_NX27017")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the MongoDB outage test needs nx-27017: ZS_TEST_NX27017 (the nx-27017 \
                 executable) is not set (scripts/test.sh installs nx-27017 and sets it)"
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(&exe, dir.path(), port);
    let uri = format!("mongodb://127.0.0.1:{port}/outage");
    let store = MongoStore::connect_with_timeout(&uri, TIMEOUT)
        .await
        .unwrap();

    // Up: the store works.
    store
        .insert("power", Some("p1"), json!({"value": 1}))
        .await
        .unwrap();
    assert_eq!(
        store.get("power", "p1").await.unwrap(),
        Some(json!({"value": 1, "_version": 1}))
    );

    // Down: every kind of request fails with Unavailable within the timeout.
    server.kill();
    let t = Instant::now();
    let r = store.get("power", "p1").await;
    assert_unavailable("get", r, t.elapsed());
    let t = Instant::now();
    let r = store.insert("power", Some("p2"), json!({"value": 2})).await;
    assert_unavailable("insert", r, t.elapsed());
    let t = Instant::now();
    let r = store
        .patch(
            "power",
            "p1",
            &Patch::new(json!({"$inc": {"value": 1}})),
            None,
        )
        .await;
    assert_unavailable("patch", r, t.elapsed());
    let t = Instant::now();
    let r = store.list("power", &Query::all()).await;
    assert_unavailable("list", r, t.elapsed());
    let t = Instant::now();
    let r = store.delete("power", "p1", None).await;
    assert_unavailable("delete", r, t.elapsed());

    // Back, on the same port and file: the same store object serves again.
    let _server = Server::start(&exe, dir.path(), port);
    let back = Instant::now();
    let deadline = back + Duration::from_secs(20);
    loop {
        match store.get("power", "p1").await {
            Ok(doc) => {
                assert_eq!(
                    doc,
                    Some(json!({"value": 1, "_version": 1})),
                    "the data survived the restart"
                );
                break;
            }
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not recover: {e:?}"),
        }
    }
    eprintln!("recovered {:?} after the restart", back.elapsed());
    store
        .insert("power", Some("p2"), json!({"value": 2}))
        .await
        .unwrap();
    let doc = store
        .patch(
            "power",
            "p1",
            &Patch::new(json!({"$inc": {"value": 1}})),
            None,
        )
        .await
        .unwrap();
    assert_eq!(doc, json!({"value": 2, "_version": 2}));
    let ids: Vec<String> = store
        .list("power", &Query::all())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids, ["p1", "p2"]);
}

/// A server that is not there at all: connecting succeeds (the node can start), requests fail
/// with Unavailable within the timeout.
#[tokio::test]
async fn no_server_gives_unavailable_within_the_timeout() {
    let port = free_port();
    let uri = format!("mongodb://127.0.0.1:{port}/nothing");
    let store = MongoStore::connect_with_timeout(&uri, TIMEOUT)
        .await
        .unwrap();
    store
        .ensure_collection("power", &["description".to_owned()])
        .await
        .expect("a text index is postponed, not an error, while the server is down");
    let t = Instant::now();
    let r = store.get("power", "p1").await;
    assert_unavailable("get", r, t.elapsed());
    let t = Instant::now();
    let r = store.list("power", &Query::all().text("x")).await;
    assert_unavailable("list", r, t.elapsed());
}
