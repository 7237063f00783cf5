//! CPU (and, under `perf stat`, allocations) per create (issue 19): a node owning `power` in
//! the memory store with a subscriber reading every event, and creates made two ways: through
//! the collection API (16 tasks) and as REST POSTs (16 raw keep-alive HTTP/1.1 connections to
//! the node's own HTTP server on 127.0.0.1).
//!
//! ```sh
//! cargo bench -p zeroservices --bench allocs
//! ```
//!
//! Prints the process's CPU (utime + stime) per operation and the rate. `ZS_ALLOC_N` sets the
//! operations (default 50,000 after as many for warm-up). Allocations per operation are
//! counted outside (the workspace forbids `unsafe`, so no counting allocator): with `perf probe
//! -x <libc> malloc` (and `realloc`, `calloc`), run `perf stat -e 'probe_libc:*'` on
//! `ZS_ALLOC_MODE=create-warm` (the warm-up only) and `ZS_ALLOC_MODE=create` (the warm-up and
//! `ZS_ALLOC_N` more), and divide the difference by `ZS_ALLOC_N`; `post-warm` / `post` for
//! REST POSTs (`scripts/alloc-count.sh` does this).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zeroservices::http::{HttpConfig, serve};
use zeroservices::medium::MemoryCluster;
use zeroservices::{Node, resource};

/// A number to square (the suite's `power`).
#[resource(collection = "power")]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Its square.
    pub result: Option<i64>,
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based); after the `)` they are 12 and 13.
    (ticks(11) + ticks(12)) / 100.0
}

struct Measure {
    cpu: f64,
    at: Instant,
}

impl Measure {
    fn start() -> Self {
        Self {
            cpu: cpu_seconds(),
            at: Instant::now(),
        }
    }
    fn print(&self, what: &str, n: u64) {
        let cpu = cpu_seconds() - self.cpu;
        let secs = self.at.elapsed().as_secs_f64();
        println!(
            "{what:<24} {n:>8} ops  {:>6.2} µs CPU/op  {:>9.0} ops/s",
            cpu * 1e6 / n as f64,
            n as f64 / secs,
        );
    }
}

const TASKS: u64 = 16;

async fn creates(node: &Node, n: u64) {
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let powers = node.collection::<Power>();
        tasks.push(tokio::spawn(async move {
            for i in 0..n / TASKS {
                let value = (t * n + i) as i64;
                powers
                    .create(Power {
                        value,
                        result: None,
                    })
                    .await
                    .expect("create");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
}

/// One keep-alive connection: `n` POSTs, each reply read whole (201 expected).
async fn posts_on(addr: std::net::SocketAddr, n: u64) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let body = br#"{"resource_data":{"value":12}}"#;
    let request = format!(
        "POST /power HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{}",
        body.len(),
        std::str::from_utf8(body).expect("utf8")
    );
    let mut buf = vec![0u8; 8192];
    for _ in 0..n {
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut have = 0;
        loop {
            let read = stream.read(&mut buf[have..]).await.expect("read");
            assert!(read > 0, "the server closed the connection");
            have += read;
            let text = &buf[..have];
            let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = std::str::from_utf8(&text[..end]).expect("head");
            assert!(head.starts_with("HTTP/1.1 201"), "not created: {head}");
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .expect("content-length");
            if have >= end + 4 + length {
                break;
            }
        }
    }
}

async fn posts(addr: std::net::SocketAddr, n: u64) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| tokio::spawn(posts_on(addr, n / TASKS)))
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let n: u64 = std::env::var("ZS_ALLOC_N")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(50_000);
        let cluster = MemoryCluster::new();
        let node = Node::builder("allocs")
            .memory(&cluster)
            .resource::<Power>()
            .start()
            .await
            .expect("node");
        let seen = std::sync::Arc::new(AtomicU64::new(0));
        let mut events = node.subscribe("power");
        let counter = seen.clone();
        tokio::spawn(async move {
            while events.next().await.is_some() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let http = serve(node.clone(), HttpConfig::new(0)).await.expect("http");
        let addr = http.local_addr();
        let mode = std::env::var("ZS_ALLOC_MODE").unwrap_or_default();
        let (warm, measured) = match mode.as_str() {
            "" => (n, n),
            // For `perf stat` differences: only the warm-up, or the warm-up and `n` more.
            "warm" => (n, 0),
            _ => (n, n),
        };
        // Warm-up: the maps, the change log and the connection pools at their working size.
        if mode != "post" && mode != "post-warm" {
            creates(&node, warm).await;
        }
        if mode != "create" && mode != "create-warm" {
            posts(addr, warm).await;
        }
        if mode == "create" {
            let m = Measure::start();
            creates(&node, measured).await;
            m.print("create (collection)", measured);
        }
        if mode == "post" {
            let m = Measure::start();
            posts(addr, measured).await;
            m.print("REST POST", measured);
        }
        if !mode.is_empty() {
            println!("events seen: {}", seen.load(Ordering::Relaxed));
            return;
        }
        for round in 0..2 {
            let m = Measure::start();
            creates(&node, n).await;
            m.print(&format!("create (collection) #{round}"), n);
            let m = Measure::start();
            posts(addr, n).await;
            m.print(&format!("REST POST #{round}"), n);
        }
        println!("events seen: {}", seen.load(Ordering::Relaxed));
    });
}
