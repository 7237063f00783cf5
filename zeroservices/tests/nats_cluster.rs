//! A three-server NATS cluster (routes on loopback, JetStream on each) losing the server the
//! gateway node is connected to, under a load of writes: calls in flight fail with
//! `Unavailable` (or `Timeout`) within the request timeout and none hangs, the gateway serves
//! again within seconds through another server without a restart, every acknowledged write is
//! readable afterwards, and discovery still sees the owner.
//!
//! `#[ignore]`d like the other NATS tests: it runs three `nats-server`s of its own
//! (`ZS_TEST_NATS_SERVER`, the executable; `scripts/test.sh` installs it and sets it), on free
//! loopback ports, and kills them all when done (a guard kills on drop, a failed test too).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zeroservices::config::{NatsServer, NetworkConfig, Transport};
use zeroservices::discovery::NatsDiscovery;
use zeroservices::medium::{NatsLink, NatsMedium};
use zeroservices::prelude::*;

mod nats_common;
use nats_common::nats_server_bin;

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
}

/// `n` free loopback ports, all held while they are picked so that they differ.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// One server of the cluster.
struct Server {
    name: String,
    port: u16,
    monitor: u16,
    child: Option<Child>,
}

impl Server {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Three `nats-server`s routed to each other on loopback, each with JetStream and a store
/// directory of its own; every one still running is killed (SIGKILL) when dropped.
struct NatsCluster {
    servers: Vec<Server>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    fn start(bin: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ports = free_ports(9);
        let cluster_name = format!("zs{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let route = |i: usize| format!("nats://127.0.0.1:{}", ports[3 * i + 1]);
        let mut cluster = Self {
            servers: Vec::new(),
            _dir: dir,
        };
        for i in 0..3 {
            let (port, cluster_port, monitor) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let name = format!("{cluster_name}-s{i}");
            let store = cluster._dir.path().join(&name);
            let routes: Vec<String> = (0..3).filter(|&j| j != i).map(route).collect();
            let child = Command::new(bin)
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &monitor.to_string(), "-n", &name])
                .args(["-js", "-sd", &store.to_string_lossy()])
                .args(["--cluster_name", &cluster_name])
                .args(["-cluster", &format!("nats://127.0.0.1:{cluster_port}")])
                .args(["-routes", &routes.join(",")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .stdin(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
            cluster.servers.push(Server {
                name,
                port,
                monitor,
                child: Some(child),
            });
        }
        cluster
    }

    fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }

    /// Waits until every server running has a route to each other one running (its `/routez`
    /// names them), at most `within`.
    async fn wait_routed(&self, within: Duration) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + within;
        let running: Vec<&Server> = self.servers.iter().filter(|s| s.child.is_some()).collect();
        loop {
            let mut routed = 0;
            for server in &running {
                let url = format!("http://127.0.0.1:{}/routez", server.monitor);
                let Ok(reply) = http.get(&url).timeout(Duration::from_secs(1)).send().await else {
                    continue;
                };
                let Ok(routez) = reply.json::<serde_json::Value>().await else {
                    continue;
                };
                let remotes: BTreeSet<&str> = routez["routes"]
                    .as_array()
                    .map(|routes| {
                        routes
                            .iter()
                            .filter_map(|r| r["remote_name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                if running
                    .iter()
                    .filter(|other| other.name != server.name)
                    .all(|other| remotes.contains(other.name.as_str()))
                {
                    routed += 1;
                }
            }
            if routed == running.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster's routes were not up within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills (SIGKILL) the server whose client port is `port`; its name.
    fn kill_port(&mut self, port: u16) -> String {
        let server = self
            .servers
            .iter_mut()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("no server of the cluster on port {port}"));
        let mut child = server.child.take().expect("that server runs");
        let _ = child.kill();
        let _ = child.wait();
        server.name.clone()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            if let Some(mut child) = server.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn config(urls: &[String], cluster: &str) -> NetworkConfig {
    NetworkConfig {
        transport: Transport::Nats(urls.iter().map(|u| NatsServer::parse(u).unwrap()).collect()),
        cluster: cluster.to_owned(),
        request_timeout: Duration::from_millis(2000),
        heartbeat: Duration::from_millis(200),
        // Longer than a fail-over: the owner is not dropped from the directory meanwhile.
        peer_timeout: Duration::from_millis(4000),
        discovery_warmup: Some(Duration::from_millis(300)),
        nats_connect: Duration::from_secs(10),
        ..NetworkConfig::default()
    }
}

/// The client port of the server a link uses now (`NatsLink::server` is `host:port (name)`).
fn port_of(link: &NatsLink) -> Option<u16> {
    let server = link.server()?;
    let (address, _) = server.split_once(' ')?;
    address.rsplit_once(':')?.1.parse().ok()
}

/// What one write did: its id and value, when it started, how long it took, how it ended.
struct Write {
    id: String,
    value: i64,
    started: Instant,
    took: Duration,
    result: Result<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn a_nats_cluster_losing_the_gateways_server_is_survived() {
    let bin = nats_server_bin("a_nats_cluster_losing_the_gateways_server_is_survived");
    let mut nats = NatsCluster::start(&bin);
    nats.wait_routed(Duration::from_secs(30)).await;
    let urls = nats.urls();
    let prefix = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let config = config(&urls, &prefix);

    let owner_medium = NatsMedium::new(NatsLink::new(&config), config.clone());
    let owner_link = owner_medium.link().clone();
    let owner = Node::builder("power")
        .medium(owner_medium)
        .discovery(NatsDiscovery::new(owner_link.clone(), config.clone()))
        .request_timeout(config.request_timeout)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    // The gateway (a node that owns nothing, the caller), on a link the test can ask which
    // server it uses.
    let medium = NatsMedium::new(NatsLink::new(&config), config.clone());
    let link = medium.link().clone();
    let gateway = Node::builder("api")
        .medium(medium)
        .discovery(NatsDiscovery::new(link.clone(), config.clone()))
        .request_timeout(config.request_timeout)
        .start()
        .await
        .unwrap();
    gateway
        .wait_for_collection("power", Duration::from_secs(10))
        .await
        .unwrap();
    let before = port_of(&link).expect("the gateway is connected to a server");
    assert!(
        nats.servers.iter().any(|s| s.port == before),
        "{:?}",
        link.server()
    );

    // A load of writes: 8 writers, each creating ids of its own, every write timed.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let powers = gateway.collection::<Power>();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut writes = Vec::new();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                n += 1;
                let id = format!("w{w}-{n}");
                let value = 1000 * i64::from(w) + n;
                let started = Instant::now();
                let result = powers.create_with_id(&id, Power { value }).await;
                writes.push(Write {
                    id,
                    value,
                    started,
                    took: started.elapsed(),
                    result,
                });
                if writes.last().is_some_and(|w| w.result.is_err()) {
                    // Not a busy loop while NATS is away.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            writes
        }));
    }
    // Writes go through, then the gateway's server dies.
    let started = Instant::now();
    let acknowledged = || async {
        gateway
            .collection::<Power>()
            .list(query!({}))
            .await
            .map(|l| l.len())
            .unwrap_or(0)
    };
    let deadline = started + Duration::from_secs(10);
    while acknowledged().await < 50 {
        assert!(Instant::now() < deadline, "no writes went through");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let killed_at = Instant::now();
    let killed = nats.kill_port(before);
    eprintln!(
        "killed {killed} (port {before}), the gateway's server (the owner's too: {})",
        port_of(&owner_link).is_none_or(|p| p == before)
    );

    // The gateway serves again through another server, without a restart.
    let deadline = killed_at + Duration::from_secs(10);
    let back = loop {
        if let Ok(page) = gateway.collection::<Power>().list(query!({})).await
            && !page.is_empty()
        {
            break killed_at.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the gateway does not serve again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let after = port_of(&link).expect("the gateway is connected again");
    assert_ne!(after, before, "the gateway moved to another server");
    eprintln!("serving again {back:?} after the kill, through port {after}");
    // Writes go on a while after that, then stop.
    let go_on = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < go_on {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut writes = Vec::new();
    for writer in writers {
        writes.extend(
            tokio::time::timeout(Duration::from_secs(10), writer)
                .await
                .expect("a writer hangs")
                .unwrap(),
        );
    }

    // No call hung: each ended within the request timeout (and a little scheduling); those
    // that failed failed with Unavailable or Timeout, and some did (the kill was noticed).
    let limit = config.request_timeout + Duration::from_millis(700);
    let (mut unavailable, mut timeout) = (0, 0);
    for write in &writes {
        assert!(write.took <= limit, "{} took {:?}", write.id, write.took);
        match &write.result {
            Ok(_) => {}
            Err(Error::Unavailable { .. }) => unavailable += 1,
            Err(Error::Timeout { .. }) => timeout += 1,
            Err(error) => panic!("{}: {error:?}", write.id),
        }
    }
    let failed = unavailable + timeout;
    let slowest = writes.iter().map(|w| w.took).max().unwrap_or_default();
    let ok: Vec<&Write> = writes.iter().filter(|w| w.result.is_ok()).collect();
    let in_flight: Vec<&Write> = writes
        .iter()
        .filter(|w| w.started <= killed_at && w.started + w.took >= killed_at)
        .collect();
    let in_flight_failed = in_flight.iter().filter(|w| w.result.is_err()).count();
    let in_flight = in_flight.len();
    eprintln!(
        "{} writes: {} acknowledged, {unavailable} Unavailable, {timeout} Timeout \
         ({in_flight} in flight at the kill, {in_flight_failed} of them failed; the slowest took {slowest:?})",
        writes.len(),
        ok.len()
    );
    assert!(failed > 0, "no write failed: was the server killed?");
    assert!(
        ok.iter().any(|w| w.started > killed_at),
        "writes are acknowledged again after the kill"
    );

    // No acknowledged write is lost: each reads back with its value.
    let powers = gateway.collection::<Power>();
    for write in &ok {
        let read = powers
            .get(&write.id)
            .await
            .unwrap_or_else(|e| panic!("acknowledged write {} is not readable: {e}", write.id));
        assert_eq!(read.value, write.value, "{}", write.id);
    }

    // Discovery still sees the owner, and the owner the gateway.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !gateway.peers().iter().any(|p| p.info.id == owner.id())
        || !owner.peers().iter().any(|p| p.info.id == gateway.id())
    {
        assert!(
            Instant::now() < deadline,
            "discovery lost the owner: {:?}",
            gateway.peers()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.stop().await;
    owner.stop().await;
    drop(nats);
}
