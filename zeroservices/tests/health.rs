//! `GET /healthz` and `GET /readyz`: on the HTTP port and the operations port
//! (`ZS_METRICS_PORT`), open without credentials unless `ZS_HEALTH_AUTH` is on, 503 with a reason
//! while a MongoDB store is down, and collections may not take their names.
//!
//! The MongoDB case runs its own nx-27017 server (found through `ZS_TEST_NX27017`, as
//! `store_mongodb_outage.rs` does) and is `#[ignore]`d (`scripts/test.sh` runs it).

mod http_common;

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_common::{Power, basic, client, json, owner, start};
use serde_json::json;
use zeroservices::http::{BasicAuth, HttpConfig, serve_ops};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{MongoStore, Store};

/// A collection that would hide the liveness probe.
#[resource(collection = "healthz")]
pub struct Probe {
    /// Anything.
    pub value: i64,
}

#[tokio::test]
async fn a_healthy_node_answers_200_on_both_probes() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let (status, body) = json(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, body) = json(client().get(format!("{base}/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {
            "node": "ok", "discovery": "ok", "medium": "ok", "store": "ok",
        }})
    );
    // A gateway that owns nothing has no store to wait for: ready too.
    let gateway = http_common::gateway(&cluster, Duration::from_secs(1)).await;
    let (gateway_server, gateway_base) = start(&gateway, HttpConfig::new(0)).await;
    let (status, body) = json(
        client()
            .get(format!("{gateway_base}/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body["status"]), (200, &json!("ready")), "{body}");
    gateway_server.shutdown().await;
    gateway.stop().await;
    server.shutdown().await;
    node.stop().await;
}

/// The probes are fixed routes: other methods are refused, paths below them are collection
/// routes (of an unknown collection), and a collection cannot take their names.
#[tokio::test]
async fn the_probes_do_not_collide_with_collections() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let response = client()
        .post(format!("{base}/readyz"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 405);
    let (status, body) = json(
        client()
            .get(format!("{base}/healthz/1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "Unknown service healthz", "{body}");
    // The node still serves.
    let (status, _) = json(client().get(format!("{base}/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 200);

    for reserved in [
        Node::builder("probe").memory(&cluster).resource::<Probe>(),
        Node::builder("probe")
            .memory(&cluster)
            .resource_in::<Probe>(zeroservices::store::open("memory").await.unwrap()),
    ] {
        let err = reserved.start().await.unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { .. })
                && err.to_string().contains("`healthz` is reserved"),
            "{err}"
        );
    }
    let err = node.register::<Probe>().await.unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(!node.collections().contains(&"healthz".to_owned()));
    server.shutdown().await;
    node.stop().await;
}

/// Authentication on: the probes stay open by default, every other route asks for a user; with
/// `health_auth` (`ZS_HEALTH_AUTH=on`) the probes ask too.
#[tokio::test]
async fn with_auth_the_probes_are_open_unless_health_auth_is_on() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let auth = || HttpConfig::new(0).basic_auth(BasicAuth::new("ann", "pw"));
    let (server, base) = start(&node, auth()).await;
    for probe in ["healthz", "readyz"] {
        let response = client()
            .get(format!("{base}/{probe}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{probe}");
    }
    let response = client().get(format!("{base}/power")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    server.shutdown().await;

    let (server, base) = start(&node, auth().health_auth(true)).await;
    for probe in ["healthz", "readyz"] {
        let (status, body) = json(
            client()
                .get(format!("{base}/{probe}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 401, "{probe}: {body}");
        let wrong = client()
            .get(format!("{base}/{probe}"))
            .header("authorization", basic("ann", "nope"))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401, "{probe}");
        let (status, body) = json(
            client()
                .get(format!("{base}/{probe}"))
                .header("authorization", basic("ann", "pw"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{probe}: {body}");
    }
    server.shutdown().await;
    node.stop().await;
}

/// `serve_ops`: the probes (and `/metrics`: `tests/metrics.rs`) on a port of their own; anything
/// else is a 404.
#[tokio::test]
async fn the_operations_port_serves_the_probes_only() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let ops = serve_ops(node.clone(), HttpConfig::new(0)).await.unwrap();
    let base = ops.url();
    for probe in ["healthz", "readyz"] {
        let (status, body) = json(
            client()
                .get(format!("{base}/{probe}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{probe}: {body}");
    }
    for other in ["power", "", "openapi.json"] {
        let (status, body) = json(
            client()
                .get(format!("{base}/{other}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 404, "/{other}: {body}");
    }
    ops.shutdown().await;
    node.stop().await;
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `#[service]`-style app without HTTP but with `ZS_METRICS_PORT`, over real ZeroMQ and UDP
/// discovery: its operations port answers, and stops with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_without_http_serves_the_probes_on_the_metrics_port() {
    let group = format!("237.252.249.227:{}", free_udp_port());
    let vars = [
        ("ZS_DISCOVERY_INTERFACE", "127.0.0.1".to_owned()),
        ("ZS_MULTICAST_GROUP", group),
        ("ZS_STORE", "memory".to_owned()),
        ("ZS_METRICS_PORT", "0".to_owned()),
        ("ZS_HEARTBEAT_MS", "200".to_owned()),
    ];
    let lookup = move |name: &str| {
        vars.iter()
            .find(|(var, _)| *var == name)
            .map(|(_, v)| v.clone())
    };
    let configured = App::new("ops_test")
        .resource::<Power>()
        .configure_with(["ops_test", "--no-http"], &lookup)
        .unwrap();
    assert!(configured.http.is_none());
    let running = configured.start().await.unwrap();
    assert!(running.http_addr().is_none());
    let addr = running.ops_addr().expect("the operations port is on");
    let (status, body) = json(
        client()
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"]["discovery"], "ok");
    running.shutdown().await;
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "the operations port closed with the app"
    );
}

/// A MongoDB-protocol server (nx-27017) of the test's own, on a free port.
struct Server {
    child: Child,
}

impl Server {
    fn start(exe: &str, dir: &Path, port: u16) -> Server {
        let child = Command::new(exe)
            .arg("--db")
            .arg(dir.join("health.db"))
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

/// Polls both probes until `/readyz` answers `want`, at most `within`; `/healthz` must answer
/// 200 at every poll. Returns the last `/readyz` body.
async fn until_ready_is(base: &str, want: u16, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = json(
            client()
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            status, 200,
            "/healthz while waiting for /readyz {want}: {body}"
        );
        let (status, body) =
            json(client().get(format!("{base}/readyz")).send().await.unwrap()).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {want} within {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nx-27017 (ZS_TEST_NX27017): run by scripts/test.sh"]
async fn readyz_is_503_while_the_mongodb_store_is_down_and_200_once_it_is_back() {
    let exe = std::env::var("ZS_TEST_NX27017")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the readiness outage test needs nx-27017: ZS_TEST_NX27017 (the nx-27017 \
                 executable) is not set (scripts/test.sh installs nx-27017 and sets it)"
            )
        });
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = Server::start(&exe, dir.path(), port);
    let uri = format!("mongodb://127.0.0.1:{port}/health");
    let store: Arc<dyn Store> = Arc::new(
        MongoStore::connect_with_timeout(&uri, Duration::from_secs(2))
            .await
            .unwrap(),
    );
    let cluster = MemoryCluster::new();
    let node = Node::builder("power_service")
        .memory(&cluster)
        .shared_store(store)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let ready_timeout = Duration::from_millis(800);
    let (http, base) = start(&node, HttpConfig::new(0).ready_timeout(ready_timeout)).await;
    let body = until_ready_is(&base, 200, Duration::from_secs(10)).await;
    assert_eq!(body["checks"]["store"], "ok");

    // Down: 503 with the store named as the reason, within the ready timeout; no host in it.
    server.kill();
    let t = Instant::now();
    let body = until_ready_is(&base, 503, Duration::from_secs(10)).await;
    eprintln!("not ready {:?} after the kill: {body}", t.elapsed());
    assert_eq!(body["status"], "not_ready", "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.starts_with("store: "), "{body}");
    assert_ne!(body["checks"]["store"], "ok", "{body}");
    assert_eq!(body["checks"]["node"], "ok", "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("127.0.0.1") && !text.contains(&port.to_string()),
        "the reason shows no host: {text}"
    );
    // A probe answers within the ready timeout (and some slack), not the store's own timeout.
    let t = Instant::now();
    let (status, _) = json(client().get(format!("{base}/readyz")).send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(
        t.elapsed() < ready_timeout + Duration::from_millis(700),
        "/readyz took {:?}",
        t.elapsed()
    );

    // Back on the same port: ready again.
    let _server = Server::start(&exe, dir.path(), port);
    let t = Instant::now();
    let body = until_ready_is(&base, 200, Duration::from_secs(20)).await;
    eprintln!("ready {:?} after the restart", t.elapsed());
    assert_eq!(body["checks"]["store"], "ok");
    http.shutdown().await;
    node.stop().await;
}
