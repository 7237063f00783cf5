//! A subscriber *process* pushed past its bus catches up from the owner's change log, with
//! nothing lost and nothing twice: the owner runs in this process, the subscriber in a child
//! process (the test binary re-executed, `ZS_SUB_CHILD` set), both on the network medium
//! (ZeroMQ and UDP discovery on 127.0.0.1, a multicast group port of the test's own). The child
//! opens a resumable stream (`subscribe_since`) and does not read it while the owner makes
//! 12,000 changes, far more than its bus (4096) and its stream's queue (1024) hold; then it
//! reads, and reports what it saw.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zeroservices::Node;
use zeroservices::config::NetworkConfig;
use zeroservices::prelude::*;

/// A numbered thing.
#[resource(collection = "item")]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its number.
    pub n: i64,
}

const CHILD: &str = "ZS_SUB_CHILD";
const GROUP_PORT: &str = "ZS_SUB_GROUP_PORT";
const TOTAL: i64 = 12_000;

fn network(group_port: u16) -> NetworkConfig {
    NetworkConfig {
        interface: "127.0.0.1".parse().unwrap(),
        multicast_group: format!("237.252.249.227:{group_port}").parse().unwrap(),
        request_timeout: Duration::from_secs(20),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_secs(5),
        ..NetworkConfig::default()
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The child subscriber; killed when dropped, so a failed test leaves nothing behind.
struct Subscriber {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Subscriber {
    fn spawn(group_port: u16) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_subscriber",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "subscriber")
            .env(GROUP_PORT, group_port.to_string())
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
        Self {
            child,
            stdin,
            lines,
        }
    }

    /// What follows `tag` on the next line of the child's that has it, within `timeout`.
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

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_process_pushed_past_its_bus_catches_up_from_the_log() {
    let group_port = free_udp_port();
    let owner = Node::builder("item_service")
        .network(network(group_port))
        .resource::<Item>()
        .start()
        .await
        .unwrap();
    let mut child = Subscriber::spawn(group_port);
    let ready = tokio::task::block_in_place(|| child.line("READY", Duration::from_secs(30)));
    assert!(ready.is_some(), "the child subscriber started within 30 s");
    let items = owner.collection::<Item>();
    futures::stream::iter(0..TOTAL)
        .for_each_concurrent(64, |n| {
            let items = items.clone();
            async move {
                items.create(Item { n }).await.unwrap();
            }
        })
        .await;
    child.say(&format!("go {TOTAL}"));
    let seen = tokio::task::block_in_place(|| child.line("SEEN ", Duration::from_secs(60)))
        .expect("the child reports within 60 s");
    let fields: Vec<u64> = seen.split(' ').map(|f| f.parse().unwrap()).collect();
    let [distinct, twice, lagged] = fields[..] else {
        panic!("SEEN {seen}")
    };
    assert_eq!(distinct, TOTAL as u64, "every change, once ({seen})");
    assert_eq!(twice, 0, "none twice ({seen})");
    assert!(
        lagged > 0,
        "the child's bus did overflow (else this test shows nothing): {seen}"
    );
    drop(child);
    owner.stop().await;
}

/// Not a test: the child of the test above (does nothing without `ZS_SUB_CHILD`). Follows
/// `item` resumably, prints `READY`, reads nothing until `go <n>` on stdin, then reads until it
/// saw `n` distinct changes (at most 50 s) and prints `SEEN <distinct> <twice> <lagged>`.
#[test]
fn child_subscriber() {
    if std::env::var(CHILD).is_err() {
        return;
    }
    let group_port: u16 = std::env::var(GROUP_PORT).unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let node = Node::builder("subscriber")
            .network(network(group_port))
            .start()
            .await
            .unwrap();
        node.wait_for_collection("item", Duration::from_secs(20))
            .await
            .unwrap();
        let mut events = node.subscribe_since("item", None).await.unwrap();
        println!("READY");
        std::io::stdout().flush().unwrap();
        let go = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            line
        })
        .await
        .unwrap();
        let total: usize = go.trim().trim_start_matches("go ").parse().unwrap();
        let mut seen = HashSet::new();
        let mut twice = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
        while seen.len() < total {
            let Ok(Some(Ok(event))) = tokio::time::timeout_at(deadline, events.next()).await else {
                break;
            };
            let n = event.data["resource_data"]["n"].as_i64().unwrap_or(-1);
            if !seen.insert(n) {
                twice += 1;
            }
        }
        println!("SEEN {} {twice} {}", seen.len(), node.stats().events_lagged);
        std::io::stdout().flush().unwrap();
        node.stop().await;
    });
}
