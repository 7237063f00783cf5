//! The benchmark suite of issues 7 and 19: one table, each figure beside a baseline measured in
//! the same run, the ratio, the issue's target and a verdict; then the time of each group.
//!
//! ```text
//! scripts/bench.sh                                   # installs wrk, Node, the Moleculer packages
//! cargo bench -p zeroservices --bench suite          # ZS_BENCH_SECONDS=5 per measure (default)
//! ZS_BENCH_SECONDS=2 cargo bench -p zeroservices --bench suite   # quicker, noisier
//! ZS_SUITE_ONLY=rpc,peer cargo bench -p zeroservices --bench suite  # some groups
//! ZS_CLUSTER_KEY=secret cargo bench -p zeroservices --bench suite  # the production shape's key
//! ZS_SUITE_ONLY=nats ZS_BENCH_NATS_URL=nats://127.0.0.1:4222 cargo bench -p zeroservices --bench suite
//! ```
//!
//! The ZeroMQ groups (1-5) run twice: in the production shape (a cluster key on every node, the
//! embedded store beside the memory store for the REST writes, a websocket subscriber reading
//! during the REST runs, the gateway path beside the owner serving HTTP), then in the `[plain]`
//! shape (no key, memory store, no subscriber), each shape on a multicast group of its own.
//!
//! The binary re-executes itself (`ZS_SUITE_ROLE=owner|gateway|subscriber|resumable|idle|
//! nats_owner|nats_subscriber`) for the child node processes, and starts the Moleculer brokers
//! of `bench/moleculer` with `node`. Everything runs on 127.0.0.1: the nodes' sockets bind to
//! loopback and UDP discovery uses a private multicast group port with
//! `ZS_DISCOVERY_INTERFACE=127.0.0.1`, so no datagram leaves the machine; the Moleculer brokers
//! use static loopback addresses and no UDP discovery. Every loop is bounded in time and in
//! count; a child exits when its stdin closes and is killed when the suite drops it. Every
//! process of ours runs on jemalloc (`ALLOC` below), the allocator the README recommends.
//!
//! Groups:
//! 1. remote `get` (memory store, small document) from this process to an owner process over the
//!    ZeroMQ medium through a real `Node`, at 1 and 64 in flight, beside a raw `zeromq`
//!    DEALER -> ROUTER echo of the same payload size between the same two processes (three
//!    alternating pairs, the median pair reported); a remote patch beside it;
//! 2. REST (`wrk -t2 -c64`) on an `api_power`-like process: GET by id and POST create (memory
//!    store; production also POST on an embedded-store owner), beside a plain axum handler doing
//!    the same store operation on the same store in that process (three alternating pairs, the
//!    median pair reported); and through a gateway process in front of the owner, against the
//!    owner serving HTTP (three alternating pairs of the two, the median pair reported);
//! 3. events: created resources per second seen by a subscriber node in another process (sent
//!    vs received; production: resumable `subscribe_since`, `[plain]`: plain `subscribe`), with
//!    the CPU per event of this process (the producer) and of the subscriber; then events made
//!    like a create's but published with `Node::publish` (no store) to the same subscriber, the
//!    event path's own capacity; and delivery to 100 websocket clients in this process (rate
//!    and losses; production only);
//! 4. discovery: a new node seeing an existing one, ten, and an existing one right after ten
//!    peers were killed (`kill -9`, still listed as peers);
//! 5. footprint: VmRSS of an idle node process and of the owner under the GET load;
//! 6. NATS (issue 16; `ZS_BENCH_NATS_URL`, else `ZS_TEST_NATS_URL`, a server on loopback;
//!    skipped with a line saying so without one): remote `get` over NATS at 1 and 64 in flight,
//!    without and with a cluster key, beside a raw `async-nats` request/reply echo through the
//!    same server; then created ticks per second seen by a subscriber process over NATS beside
//!    one raw `async-nats` publisher -> one subscription. `ZS_SUITE_ONLY=nats` runs it alone;
//! 7. the peer, Moleculer 0.14 (`bench/moleculer`, skipped with a line saying so without `node`
//!    or its packages): remote get at 64 in flight, REST GET/POST through moleculer-web with the
//!    same wrk command, created ticks seen by a subscriber broker; ours / peer from this run;
//! 8. store: durable creates into the embedded store from 64 tasks beside one task.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zeroservices::config::{NatsServer, NetworkConfig, Transport};
use zeroservices::http::{HttpConfig, serve};
use zeroservices::medium::Request;
use zeroservices::prelude::*;
use zeroservices::security::ClusterKey;
use zeroservices::store::Store;

/// Every process of the suite (this one and the children it starts: owner, gateway,
/// subscribers) allocates with jemalloc, as the README recommends for a node ("Memory
/// allocator"): under many tasks on several threads glibc's malloc contends on its arena locks
/// (a futex per create in the events producer). The baselines measured in the same processes
/// (plain axum, the raw ZeroMQ echo, the raw NATS echo) run on it too.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ROLE: &str = "ZS_SUITE_ROLE";
/// Upper bound of calls per measure, whatever the duration.
const MAX_CALLS: u64 = 2_000_000;
/// Upper bound of resources created per events measure.
const MAX_EVENTS: u64 = 2_000_000;
/// Websocket clients.
const WS_CLIENTS: usize = 100;
/// Child nodes for the discovery of ten.
const TEN: usize = 10;

/// A number to square (the `power` collection of the examples, small document).
#[resource(collection = "power")]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Its square.
    pub result: Option<i64>,
}

/// A small resource created in bulk for the events measures.
#[resource(collection = "tick")]
pub struct Tick {
    /// A sequence number.
    pub n: u64,
}

fn seconds() -> u64 {
    std::env::var("ZS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s| *s > 0 && *s <= 60)
        .unwrap_or(5)
}

/// Remote-get measures run as this many alternating (ours, raw) pairs; the median is reported.
const RPC_PAIRS: usize = 3;
/// REST measures run as this many alternating (plain, ours) pairs; the median pair is reported.
const REST_PAIRS: usize = 3;

/// `ZS_SUITE_ONLY=rpc,rest,discovery,events`: run only these sections (for profiling).
fn want(section: &str) -> bool {
    match std::env::var("ZS_SUITE_ONLY") {
        Ok(only) if !only.trim().is_empty() => only.split(',').any(|s| s.trim() == section),
        _ => true,
    }
}

fn main() {
    let role = std::env::var(ROLE).ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match role.as_deref() {
        Some(role) => runtime.block_on(child(role)),
        None => {
            if want("rest") && Command::new("wrk").arg("--version").output().is_err() {
                eprintln!("wrk is missing: run scripts/bench.sh, or apt-get install wrk");
                std::process::exit(1);
            }
            runtime.block_on(suite());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Network settings: loopback only, a private group port.

#[derive(Clone)]
struct Net {
    group: String,
    /// The cluster key of every node of this run (`None`: the `[plain]` configuration).
    key: Option<String>,
}

/// The key of the production shape: `ZS_CLUSTER_KEY`, else a fixed bench key.
fn production_key() -> String {
    std::env::var("ZS_CLUSTER_KEY")
        .ok()
        .filter(|k| !k.trim().is_empty())
        .unwrap_or_else(|| "zs-suite-bench-cluster-key".to_owned())
}

impl Net {
    fn new(key: Option<String>) -> Self {
        // A free UDP port on loopback, for a multicast group of this run's own.
        let port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free udp port")
            .port();
        Self {
            group: format!("237.252.249.227:{port}"),
            key,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ZS_DISCOVERY_INTERFACE", "127.0.0.1".into()),
            ("ZS_MULTICAST_GROUP", self.group.clone()),
            ("RUST_LOG", "error".into()),
        ]
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            interface: Ipv4Addr::LOCALHOST,
            multicast_group: self.group.parse().expect("group"),
            cluster_key: self
                .key
                .as_deref()
                .map(|k| ClusterKey::parse(k).expect("a cluster key")),
            ..NetworkConfig::default()
        }
    }
}

/// The child's configuration, refusing anything but loopback.
fn child_config() -> NetworkConfig {
    let config = NetworkConfig::from_env().expect("ZS_* settings");
    assert!(
        config.interface.is_loopback(),
        "the suite only runs on 127.0.0.1"
    );
    config
}

// ---------------------------------------------------------------------------------------------
// Child processes.

type Shared = Arc<dyn Store>;

async fn plain_get(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    match store.get("power", &id).await {
        Ok(Some(doc)) => (
            StatusCode::OK,
            Json(json!({"resource_id": id, "resource_data": doc})),
        ),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

async fn plain_create(
    State(store): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let data = body.get("resource_data").cloned().unwrap_or(Value::Null);
    match store.insert("power", None, data).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({"resource_id": id}))),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// Counters of the subscriber child.
#[derive(Default)]
struct Seen {
    count: AtomicU64,
    first: Mutex<Option<Instant>>,
    last: Mutex<Option<Instant>>,
}

impl Seen {
    /// One more received now.
    fn tick(&self) {
        let now = Instant::now();
        if self.count.fetch_add(1, Ordering::Relaxed) == 0 {
            *self.first.lock().expect("lock") = Some(now);
        }
        *self.last.lock().expect("lock") = Some(now);
    }
}

/// The body of a child process: prints `READY <fields>` and serves until stdin closes. Commands
/// on stdin (subscriber): `report` prints `COUNT <n> <first-to-last seconds> <lagged>`, `reset`
/// zeroes the counters.
async fn child(role: &str) {
    let config = child_config();
    let mut fields: Vec<String> = Vec::new();
    let mut keep: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let seen = Arc::new(Seen::default());
    let node = match role {
        "owner" => {
            // `api_power`: owns `power` in memory and serves HTTP; plus a plain axum app on the
            // same store and a raw ROUTER echo, the baselines measured against this process.
            // `ZS_SUITE_STORE=embedded:<dir>`: the embedded (durable) store instead of memory.
            let mut builder = Node::builder("power_service")
                .network(config)
                .resource::<Power>();
            if let Ok(spec) = std::env::var("ZS_SUITE_STORE") {
                let store = zeroservices::store::open(&spec)
                    .await
                    .expect("ZS_SUITE_STORE opens");
                builder = builder.shared_store(store);
            }
            let node = builder.start().await.expect("start owner");
            let http = serve(node.clone(), HttpConfig::new(0)).await.expect("http");
            fields.push(http.local_addr().to_string());
            keep.push(Box::new(http));
            let app = axum::Router::new()
                .route("/power", post(plain_create))
                .route("/power/{id}", get(plain_get))
                .with_state(node.store());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind plain");
            fields.push(listener.local_addr().expect("addr").to_string());
            tokio::spawn(async move { axum::serve(listener, app).await });
            let mut raw = RouterSocket::new();
            let raw_at = raw.bind("tcp://127.0.0.1:0").await.expect("bind raw");
            fields.push(raw_at.to_string());
            tokio::spawn(async move {
                while let Ok(message) = raw.recv().await {
                    if raw.send(message).await.is_err() {
                        break;
                    }
                }
            });
            node
        }
        "gateway" => {
            let node = Node::builder("rest_api")
                .network(config)
                .start()
                .await
                .expect("start gateway");
            node.wait_for_collection("power", Duration::from_secs(20))
                .await
                .expect("the gateway sees the owner");
            let http = serve(node.clone(), HttpConfig::new(0)).await.expect("http");
            fields.push(http.local_addr().to_string());
            keep.push(Box::new(http));
            node
        }
        "nats_owner" => {
            // The owner of `power` over NATS (`ZS_TRANSPORT`, `ZS_CLUSTER`), and the raw
            // baseline in the same process: an async-nats responder echoing each request's
            // payload on `ZS_SUITE_ECHO`, on a connection of its own to the same server.
            let node = Node::builder("power_service")
                .network(config)
                .resource::<Power>()
                .start()
                .await
                .expect("start owner over nats");
            let raw = raw_nats().await;
            let subject = std::env::var("ZS_SUITE_ECHO").expect("ZS_SUITE_ECHO");
            let mut requests = raw.subscribe(subject).await.expect("raw subscribe");
            raw.flush().await.expect("raw flush");
            tokio::spawn(async move {
                while let Some(message) = requests.next().await {
                    if let Some(reply) = message.reply
                        && raw.publish(reply, message.payload).await.is_err()
                    {
                        break;
                    }
                }
            });
            node
        }
        "subscriber" | "resumable" | "nats_subscriber" => {
            let node = Node::builder("subscriber")
                .network(config)
                .start()
                .await
                .expect("start subscriber");
            // A plain subscription, or a resumable one (reads what its bus lost back from the
            // producer's change log).
            let mut events = if role == "resumable" {
                let stream = node
                    .subscribe_since("tick.create", None)
                    .await
                    .expect("subscribe_since");
                stream.filter_map(|e| async move { e.ok() }).boxed()
            } else {
                node.subscribe("tick.create").boxed()
            };
            if role == "nats_subscriber" {
                // The raw baseline: an async-nats subscriber on `ZS_SUITE_RAW_SUB`, counted
                // like the node's events (the two runs do not overlap).
                let raw = raw_nats().await;
                let subject = std::env::var("ZS_SUITE_RAW_SUB").expect("ZS_SUITE_RAW_SUB");
                let mut messages = raw.subscribe(subject).await.expect("raw subscribe");
                raw.flush().await.expect("raw flush");
                let seen = seen.clone();
                tokio::spawn(async move {
                    let _raw = raw;
                    while messages.next().await.is_some() {
                        seen.tick();
                    }
                });
            }
            let seen = seen.clone();
            tokio::spawn(async move {
                while events.next().await.is_some() {
                    seen.tick();
                }
            });
            node
        }
        _ => Node::builder("idle")
            .network(config)
            .start()
            .await
            .expect("start idle"),
    };
    println!("READY {} {}", node.id(), fields.join(" "));
    let stats = node.clone();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while std::io::stdin()
            .read_line(&mut line)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            match line.trim() {
                "report" => {
                    let first = *seen.first.lock().expect("lock");
                    let last = *seen.last.lock().expect("lock");
                    let span = match (first, last) {
                        (Some(f), Some(l)) => (l - f).as_secs_f64(),
                        _ => 0.0,
                    };
                    println!(
                        "COUNT {} {} {}",
                        seen.count.load(Ordering::Relaxed),
                        span,
                        stats.stats().events_lagged
                    );
                    let _ = std::io::stdout().flush();
                }
                "reset" => {
                    seen.count.store(0, Ordering::Relaxed);
                    *seen.first.lock().expect("lock") = None;
                    *seen.last.lock().expect("lock") = None;
                    println!("COUNT 0 0 0");
                    let _ = std::io::stdout().flush();
                }
                _ => {}
            }
            line.clear();
        }
    })
    .await
    .expect("stdin");
    drop(keep);
    node.stop().await;
}

/// A child node process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    fields: Vec<String>,
}

impl Proc {
    fn spawn(role: &str, net: &Net) -> Self {
        Self::spawn_with(role, net, &[])
    }

    /// A child with these variables more (`None`: removed, e.g. an inherited cluster key).
    fn spawn_with(role: &str, net: &Net, extra: &[(&str, Option<String>)]) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("current_exe"));
        command.env(ROLE, role).envs(net.env());
        match &net.key {
            Some(key) => command.env("ZS_CLUSTER_KEY", key),
            None => command.env_remove("ZS_CLUSTER_KEY"),
        };
        for (name, value) in extra {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        Self::start(command, role)
            .unwrap_or_else(|| panic!("child {role} did not start within 60 s"))
    }

    /// Starts `command` (stdin and stdout piped) and waits for its `READY` line (60 s at most;
    /// `None`, the child killed, without one).
    fn start(mut command: Command, role: &str) -> Option<Self> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        let mut proc = Self {
            child,
            stdin,
            lines,
            fields: Vec::new(),
        };
        let Some(ready) = proc.line("READY", Duration::from_secs(60)) else {
            eprintln!("child {role} did not start within 60 s");
            return None;
        };
        proc.fields = ready.split_whitespace().skip(1).map(String::from).collect();
        Some(proc)
    }

    fn id(&self) -> &str {
        &self.fields[0]
    }

    fn line(&self, prefix: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a command and returns the reply line starting with `prefix`, if one comes in time.
    fn command(&mut self, command: &str, prefix: &str, timeout: Duration) -> Option<String> {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{command}").ok()?;
        stdin.flush().ok()?;
        self.line(prefix, timeout)
    }

    /// Sends a command and returns the `COUNT` reply: (count, first-to-last seconds, lagged).
    fn ask(&mut self, command: &str) -> (u64, f64, u64) {
        let line = self
            .command(command, "COUNT", Duration::from_secs(10))
            .expect("child answers");
        let parts: Vec<&str> = line.split_whitespace().collect();
        (
            parts[1].parse().unwrap_or(0),
            parts[2].parse().unwrap_or(0.0),
            parts[3].parse().unwrap_or(0),
        )
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// VmRSS of a process, in MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Samples a process's RSS every 100 ms until stopped; returns the maximum.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<f64>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max: f64 = 0.0;
            while !flag.load(Ordering::Relaxed) {
                max = max.max(rss_mb(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            max.max(rss_mb(pid))
        });
        Self { stop, thread }
    }

    fn finish(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(f64::NAN)
    }
}

/// CPU time (user + system) a process has used so far, in seconds (`/proc/<pid>/stat`, at the
/// kernel's 100 ticks per second); NaN when it cannot be read.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The fields after the command (in parentheses, which may hold spaces): utime and stime
    // are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// CPU time of this process and of a child over a run: `(self µs, child µs)` per operation.
struct CpuSpan {
    child: u32,
    start: (f64, f64),
}

impl CpuSpan {
    fn start(child: u32) -> Self {
        Self {
            child,
            start: (cpu_seconds(std::process::id()), cpu_seconds(child)),
        }
    }

    /// Microseconds of CPU per operation: this process's over `ours` operations, the child's
    /// over `theirs`.
    fn per_op(&self, ours: u64, theirs: u64) -> (f64, f64) {
        let now = (cpu_seconds(std::process::id()), cpu_seconds(self.child));
        (
            (now.0 - self.start.0) * 1e6 / ours.max(1) as f64,
            (now.1 - self.start.1) * 1e6 / theirs.max(1) as f64,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The table.

struct Line {
    section: &'static str,
    what: String,
    value: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: String,
}

#[derive(Default)]
struct Table {
    lines: Vec<Line>,
}

impl Table {
    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
        baseline: impl Into<String>,
        ratio: impl Into<String>,
        target: impl Into<String>,
        verdict: impl Into<String>,
    ) {
        let line = Line {
            section,
            what: what.into(),
            value: value.into(),
            baseline: baseline.into(),
            ratio: ratio.into(),
            target: target.into(),
            verdict: verdict.into(),
        };
        eprintln!(
            "  {} | {} | {} | {} | {} | {} | {}",
            line.section,
            line.what,
            line.value,
            line.baseline,
            line.ratio,
            line.target,
            line.verdict
        );
        self.lines.push(line);
    }

    fn print(&self) {
        println!();
        println!(
            "| section | measure | zeroservices | baseline (same run) | ratio | target | verdict |"
        );
        println!("|---|---|---|---|---|---|---|");
        for l in &self.lines {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                l.section, l.what, l.value, l.baseline, l.ratio, l.target, l.verdict
            );
        }
    }
}

/// `met`, or by how much a figure misses a lower bound.
fn at_least(value: f64, bound: f64) -> String {
    if value.is_nan() {
        "not measured".into()
    } else if value >= bound {
        format!("met ({:.2}x the bound)", value / bound)
    } else {
        format!("MISSED by {:.0}%", (1.0 - value / bound) * 100.0)
    }
}

/// `met`, or by how much a figure misses an upper bound.
fn at_most(value: f64, bound: f64) -> String {
    if value.is_nan() {
        "not measured".into()
    } else if value <= bound {
        "met".into()
    } else {
        format!("MISSED by {:.0}%", (value / bound - 1.0) * 100.0)
    }
}

fn per_s(v: f64) -> String {
    format!("{v:.0}/s")
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// 1. Remote get vs raw zeromq echo.

struct Calls {
    calls: u64,
    errors: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Calls {
    /// The latencies of every task (sorted), the errors counted, the time since `started`.
    async fn gather(
        tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
        errors: &AtomicU64,
        started: Instant,
    ) -> Calls {
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.expect("bench task"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        Calls {
            calls: latencies.len() as u64,
            errors: errors.load(Ordering::Relaxed),
            elapsed,
            latencies,
        }
    }

    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    /// A percentile in µs.
    fn pct(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e6
    }

    fn summary(&self) -> String {
        format!(
            "{:.0}/s, p50 {:.0} µs, p99 {:.0} µs",
            self.rate(),
            self.pct(0.5),
            self.pct(0.99)
        )
    }
}

/// What [`bench_calls`] calls.
#[derive(Clone, Copy)]
enum Op {
    Get,
    Patch,
}

/// utime + stime of process `pid` (its threads together), in clock ticks (`USER_HZ`, 1/100 s
/// on Linux); 0 when it cannot be read. For the CPU per call of the rpc measures.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

async fn bench_get(node: &Node, id: &str, in_flight: usize, time: Duration) -> Calls {
    bench_calls(node, id, in_flight, time, Op::Get).await
}

async fn bench_calls(node: &Node, id: &str, in_flight: usize, time: Duration, op: Op) -> Calls {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let powers = node.collection::<Power>();
        let (issued, errors, id) = (issued.clone(), errors.clone(), id.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            while issued.fetch_add(1, Ordering::Relaxed) < MAX_CALLS && Instant::now() < deadline {
                let t = Instant::now();
                let done = match op {
                    Op::Get => powers.get(&id).await.map(drop),
                    Op::Patch => powers
                        .patch(&id, Patch::new(json!({"$inc": {"value": 1}})))
                        .await
                        .map(drop),
                };
                match done {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    Calls::gather(tasks, &errors, started).await
}

/// One DEALER, `in_flight` messages outstanding, each `[seq, body, mac]` with `body` the size
/// of the medium's envelope of the same `get`; the owner's ROUTER echoes them.
async fn bench_raw(endpoint: &str, body: &[u8], in_flight: usize, time: Duration) -> Calls {
    let mut dealer = DealerSocket::new();
    dealer.connect(endpoint).await.expect("raw connect");
    let message = |seq: u64| {
        let mut m = ZmqMessage::from(seq.to_be_bytes().to_vec());
        m.push_back(body.to_vec().into());
        m.push_back(Vec::new().into());
        m
    };
    for seq in 0..2000 {
        dealer.send(message(seq)).await.expect("raw send");
        dealer.recv().await.expect("raw recv");
    }
    let started = Instant::now();
    let deadline = started + time;
    let mut sent_at = Vec::with_capacity(1 << 20);
    let mut latencies = Vec::with_capacity(1 << 20);
    for seq in 0..in_flight as u64 {
        sent_at.push(Instant::now());
        dealer.send(message(seq)).await.expect("raw send");
    }
    let mut outstanding = in_flight;
    while outstanding > 0 {
        let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), dealer.recv()).await
        else {
            break;
        };
        let seq = u64::from_be_bytes(reply.get(0).expect("seq")[..8].try_into().expect("8"));
        latencies.push(sent_at[seq as usize].elapsed());
        outstanding -= 1;
        let next = sent_at.len() as u64;
        if next < MAX_CALLS && Instant::now() < deadline {
            sent_at.push(Instant::now());
            dealer.send(message(next)).await.expect("raw send");
            outstanding += 1;
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Calls {
        calls: latencies.len() as u64,
        errors: outstanding as u64,
        elapsed,
        latencies,
    }
}

// ---------------------------------------------------------------------------------------------
// 2. REST with wrk.

struct Wrk {
    rps: f64,
    errors: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The median of REST pairs `(ours, baseline, note)` by ratio, and the pairs' ratios in order
/// (`"0.71, 0.76, 0.85"`).
fn median_pair<T>(mut pairs: Vec<(Wrk, Wrk, T)>) -> ((Wrk, Wrk, T), String) {
    pairs.sort_by(|a, b| (a.0.rps / a.1.rps).total_cmp(&(b.0.rps / b.1.rps)));
    let ratios: Vec<String> = pairs
        .iter()
        .map(|(o, p, _)| format!("{:.2}", o.rps / p.rps))
        .collect();
    let middle = pairs.len() / 2;
    (pairs.swap_remove(middle), ratios.join(", "))
}

fn wrk(url: &str, seconds: u64, post: bool) -> Wrk {
    let dir = std::env::temp_dir().join(format!("zs-suite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.body = '{"resource_data": {"value": 12, "result": null}}'
wrk.headers["Content-Type"] = "application/json"
"#,
    )
    .expect("lua script");
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        "64",
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if post {
        cmd.arg("-s").arg(&script);
    }
    let out = cmd.arg(url).output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_owned)
    };
    let millis = |v: Option<String>| {
        let v = v.unwrap_or_default();
        let (n, unit) = v.split_at(v.find(|c: char| c.is_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => n / 1e3,
            "ms" => n,
            "s" => n * 1e3,
            "m" => n * 60e3,
            _ => f64::NAN,
        }
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let mut errors: u64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if let Some(line) = text.lines().find(|l| l.contains("Socket errors:")) {
        errors += line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    Wrk {
        rps,
        errors,
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

impl Wrk {
    fn summary(&self) -> String {
        let mut s = format!(
            "{:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
            self.rps, self.p50_ms, self.p99_ms
        );
        if self.errors > 0 {
            s.push_str(&format!(", {} errors", self.errors));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Events.

/// Creates ticks on `node` for `time` (at most `max`), unpaced (16 tasks) or at `rate`/s.
async fn create_ticks(node: &Node, time: Duration, max: u64, rate: Option<f64>) -> (u64, Duration) {
    let started = Instant::now();
    let deadline = started + time;
    let sent = Arc::new(AtomicU64::new(0));
    match rate {
        None => {
            let issued = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for _ in 0..16 {
                let (ticks, issued, sent) =
                    (node.collection::<Tick>(), issued.clone(), sent.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = issued.fetch_add(1, Ordering::Relaxed);
                        if n >= max || Instant::now() >= deadline {
                            break;
                        }
                        if ticks.create(Tick { n }).await.is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        }
        Some(rate) => {
            let ticks = node.collection::<Tick>();
            let mut n = 0u64;
            while Instant::now() < deadline && n < max {
                let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(max);
                if n >= due {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                let batch = (due - n).min(32);
                let results =
                    futures::future::join_all((0..batch).map(|i| ticks.create(Tick { n: n + i })))
                        .await;
                n += batch;
                sent.fetch_add(
                    results.iter().filter(|r| r.is_ok()).count() as u64,
                    Ordering::Relaxed,
                );
            }
        }
    }
    (sent.load(Ordering::Relaxed), started.elapsed())
}

struct SubRun {
    sent: u64,
    send_time: Duration,
    received: u64,
    span: f64,
    lagged: u64,
    /// Microseconds of CPU per operation: of this process (the producer) per event sent, of
    /// the subscriber process per event seen (measured by [`subscriber_run`] and
    /// [`publish_run`]).
    cpu: Option<(f64, f64)>,
}

impl SubRun {
    fn rate(&self) -> f64 {
        if self.span > 0.0 {
            self.received as f64 / self.span
        } else {
            f64::NAN
        }
    }
}

/// Until the subscriber child is connected: a tick every 20 ms, at most 20 s.
async fn warm_up(producer: &Node, sub: &mut Proc) {
    let warm_deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = producer.collection::<Tick>().create(Tick { n: 0 }).await;
        if sub.ask("report").0 > 0 || Instant::now() > warm_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn subscriber_run(node: &Node, sub: &mut Proc, time: Duration, rate: Option<f64>) -> SubRun {
    sub.ask("reset");
    let cpu = CpuSpan::start(sub.pid());
    let (sent, send_time) = create_ticks(node, time, MAX_EVENTS, rate).await;
    let mut run = collect(sub, sent, send_time).await;
    run.cpu = Some(cpu.per_op(run.sent, run.received));
    run
}

/// Events like a tick's `create` published with [`Node::publish`] from 16 unpaced tasks for
/// `time` (no store, no change log): the event path's own capacity, beside the creates.
async fn publish_run(node: &Node, sub: &mut Proc, time: Duration) -> SubRun {
    // The subscriber's lag count is its node's, since it started: this run's is the growth.
    let lagged_before = sub.ask("report").2;
    sub.ask("reset");
    let cpu = CpuSpan::start(sub.pid());
    let started = Instant::now();
    let deadline = started + time;
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (node, issued) = (node.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_EVENTS || Instant::now() >= deadline {
                    break sent;
                }
                let mut data = serde_json::Map::new();
                data.insert("resource_data".into(), json!({ "n": n }));
                data.insert("version".into(), json!(1));
                let id = format!("p{n}");
                node.publish(Event::resource("tick", "create", &id, data))
                    .await;
                sent += 1;
            }
        }));
    }
    let mut sent = 0;
    for task in tasks {
        sent += task.await.unwrap_or(0);
    }
    let mut run = collect(sub, sent, started.elapsed()).await;
    run.cpu = Some(cpu.per_op(run.sent, run.received));
    run.lagged = run.lagged.saturating_sub(lagged_before);
    run
}

/// The CPU figures of a run, for a table line.
/// What a subscriber process saw of a run: rate, seen of sent, losses, CPU per event.
fn seen_note(run: &SubRun, loss: u64, what: &str) -> String {
    format!(
        "{}: {} of {} seen, lost {loss} (bus lagged {}){}",
        per_s(run.rate()),
        run.received,
        run.sent,
        run.lagged,
        cpu_note(run, what)
    )
}

fn cpu_note(run: &SubRun, what: &str) -> String {
    match run.cpu {
        Some((ours, theirs)) => {
            format!("; CPU per event: {what} {ours:.1} µs, subscriber {theirs:.1} µs")
        }
        None => String::new(),
    }
}

/// What the subscriber child saw of `sent` messages.
async fn collect(sub: &mut Proc, sent: u64, send_time: Duration) -> SubRun {
    // Wait until the subscriber has everything, or stops progressing for 1 s (at most 15 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = (u64::MAX, Instant::now());
    let (received, span, lagged) = loop {
        let (count, span, lagged) = sub.ask("report");
        if count >= sent || Instant::now() > deadline {
            break (count, span, lagged);
        }
        if count != last.0 {
            last = (count, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break (count, span, lagged);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    SubRun {
        sent,
        send_time,
        received,
        span,
        lagged,
        cpu: None,
    }
}

#[derive(Default)]
struct WsClientStat {
    events: AtomicU64,
    last_nanos: AtomicU64,
    told_slow: AtomicBool,
    closed: AtomicBool,
}

struct WsRun {
    rate: f64,
    sent: u64,
    delivered: u64,
    span: f64,
    told_slow: usize,
    closed_silently: usize,
    /// The wait for the clients ended at its deadline while some were still receiving (late
    /// delivery, not a stall).
    still_receiving: bool,
    /// Events delivered after the producer stopped, and the seconds from its stop to the last
    /// delivery: the catch-up.
    late: u64,
    late_secs: f64,
    /// CPU of this process (server, producer and the clients) over the step, seconds.
    cpu: f64,
}

impl WsRun {
    fn lost(&self) -> u64 {
        (self.sent * WS_CLIENTS as u64).saturating_sub(self.delivered)
    }

    fn delivery_rate(&self) -> f64 {
        self.delivered as f64 / self.span
    }
}

async fn ws_run(node: &Node, addr: SocketAddr, time: Duration, rate: f64) -> WsRun {
    let base = Instant::now();
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WS_CLIENTS {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/realtime"))
            .await
            .expect("websocket connect");
        socket
            .send(WsMessage::Text(
                r#"{"type":"subscribe","topics":["tick"]}"#.into(),
            ))
            .await
            .expect("subscribe");
        // The acknowledgement.
        let ack = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()
            .flatten();
        assert!(
            matches!(&ack, Some(Ok(WsMessage::Text(t))) if t.contains("subscribed")),
            "websocket subscribe acknowledgement: {ack:?}"
        );
        let stat = Arc::new(WsClientStat::default());
        stats.push(stat.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(WsMessage::Text(text)) => {
                        if text.starts_with(r#"{"type":"event""#) {
                            stat.events.fetch_add(1, Ordering::Relaxed);
                            stat.last_nanos
                                .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        } else if text.contains("too slow") {
                            stat.told_slow.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(WsMessage::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            stat.closed.store(true, Ordering::Relaxed);
        }));
    }
    let start = base.elapsed();
    let cpu_start = cpu_seconds(std::process::id());
    let (sent, _) = create_ticks(node, time, MAX_EVENTS, Some(rate)).await;
    let stopped = base.elapsed();
    let at_stop: u64 = stats.iter().map(|s| s.events.load(Ordering::Relaxed)).sum();
    // Clients still receiving are waited for up to a minute (a client behind reads the rest
    // from the change log: late, not lost); one second without progress ends the wait.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (u64::MAX, Instant::now());
    let mut still_receiving = false;
    loop {
        let delivered: u64 = stats.iter().map(|s| s.events.load(Ordering::Relaxed)).sum();
        let open_behind = stats
            .iter()
            .any(|s| !s.closed.load(Ordering::Relaxed) && s.events.load(Ordering::Relaxed) < sent);
        if !open_behind {
            break;
        }
        if Instant::now() > deadline {
            still_receiving = last.1.elapsed() <= Duration::from_secs(1);
            break;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = stats.iter().map(|s| s.events.load(Ordering::Relaxed)).sum();
    let end = stats
        .iter()
        .map(|s| s.last_nanos.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let told_slow = stats
        .iter()
        .filter(|s| s.told_slow.load(Ordering::Relaxed))
        .count();
    let closed_silently = stats
        .iter()
        .filter(|s| s.closed.load(Ordering::Relaxed) && !s.told_slow.load(Ordering::Relaxed))
        .count();
    for task in tasks {
        task.abort();
    }
    let cpu = cpu_seconds(std::process::id()) - cpu_start;
    WsRun {
        rate,
        sent,
        delivered,
        span: (Duration::from_nanos(end).saturating_sub(start)).as_secs_f64(),
        told_slow,
        closed_silently,
        still_receiving,
        late: delivered.saturating_sub(at_stop),
        late_secs: (Duration::from_nanos(end).saturating_sub(stopped)).as_secs_f64(),
        cpu,
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Discovery.

/// Starts a new node and returns the time until it sees every node of `want`, and (with
/// `get`) until its first successful remote `get` of that id.
async fn discover(net: &Net, want: &[String], get: Option<&str>) -> (Duration, Option<Duration>) {
    let started = Instant::now();
    let node = Node::builder("newcomer")
        .network(net.config())
        .start()
        .await
        .expect("start newcomer");
    let deadline = started + Duration::from_secs(30);
    let seen = loop {
        let peers = node.peers();
        if want.iter().all(|w| peers.iter().any(|p| &p.info.id == w)) {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            break Duration::MAX;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let mut first_get = None;
    if let Some(id) = get {
        let powers = node.collection::<Power>();
        while Instant::now() < deadline {
            if powers.get(id).await.is_ok() {
                first_get = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    node.stop().await;
    (seen, first_get)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------------------
// 6. NATS (issue 16).

/// The NATS server of the `nats` group: `ZS_BENCH_NATS_URL`, else `ZS_TEST_NATS_URL`.
fn nats_url() -> Option<String> {
    ["ZS_BENCH_NATS_URL", "ZS_TEST_NATS_URL"]
        .iter()
        .filter_map(|name| std::env::var(name).ok())
        .map(|url| url.trim().to_owned())
        .find(|url| !url.is_empty())
}

/// A raw async-nats connection (the baselines), its own, to `url`.
async fn raw_connect(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .name("zs-suite-raw")
        .connect(url)
        .await
        .expect("raw nats connect")
}

/// A child's raw connection, to `ZS_SUITE_NATS_URL`.
async fn raw_nats() -> async_nats::Client {
    raw_connect(&std::env::var("ZS_SUITE_NATS_URL").expect("ZS_SUITE_NATS_URL")).await
}

/// A node's settings over NATS: this server, this cluster prefix, this key or none.
fn nats_config(net: &Net, url: &str, cluster: &str, key: Option<&ClusterKey>) -> NetworkConfig {
    NetworkConfig {
        transport: Transport::Nats(vec![NatsServer::parse(url).expect("a NATS URL")]),
        cluster: cluster.to_owned(),
        cluster_key: key.cloned(),
        ..net.config()
    }
}

/// The variables of a child node over NATS (`key`: the cluster key's text, or none).
fn nats_env(
    url: &str,
    cluster: &str,
    key: Option<&str>,
    more: &[(&'static str, String)],
) -> Vec<(&'static str, Option<String>)> {
    let mut env = vec![
        ("ZS_TRANSPORT", Some(url.to_owned())),
        ("ZS_CLUSTER", Some(cluster.to_owned())),
        ("ZS_CLUSTER_KEY", key.map(str::to_owned)),
        ("ZS_SUITE_NATS_URL", Some(url.to_owned())),
    ];
    env.extend(more.iter().map(|(k, v)| (*k, Some(v.clone()))));
    env
}

/// `in_flight` tasks on one async-nats connection, each sending `body` as a request on
/// `subject` and waiting for the echo, for `time`.
async fn bench_nats_raw(
    raw: &async_nats::Client,
    subject: &str,
    body: &[u8],
    in_flight: usize,
    time: Duration,
) -> Calls {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (raw, subject, body) = (raw.clone(), subject.to_owned(), body.to_vec());
        let (issued, errors) = (issued.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            while issued.fetch_add(1, Ordering::Relaxed) < MAX_CALLS && Instant::now() < deadline {
                let t = Instant::now();
                match raw.request(subject.clone(), body.clone().into()).await {
                    Ok(reply) if reply.payload.len() == body.len() => latencies.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    Calls::gather(tasks, &errors, started).await
}

/// One async-nats publisher sending `body` on `subject` unpaced for `time`, to the
/// subscriber child's raw subscription.
async fn raw_publish_run(
    raw: &async_nats::Client,
    subject: &str,
    body: &[u8],
    sub: &mut Proc,
    time: Duration,
) -> SubRun {
    sub.ask("reset");
    let started = Instant::now();
    let deadline = started + time;
    let mut sent = 0u64;
    while sent < MAX_EVENTS && Instant::now() < deadline {
        if raw
            .publish(subject.to_owned(), body.to_vec().into())
            .await
            .is_ok()
        {
            sent += 1;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.flush()).await;
    collect(sub, sent, started.elapsed()).await
}

/// The `nats` group: remote get over NATS beside a raw async-nats echo through the same server
/// (1 and 64 in flight, without and with a cluster key), and events to a subscriber process
/// beside raw publish -> subscribe. Skipped, with a line saying so, when no server is given.
async fn nats_group(table: &mut Table, net: &Net, time: Duration) {
    let skip = |table: &mut Table, why: String| {
        eprintln!("nats: skipped: {why}");
        table.add(
            "6 nats",
            format!("skipped: {why}"),
            "-",
            "-",
            "-",
            "-",
            "skipped",
        );
    };
    let Some(url) = nats_url() else {
        return skip(
            table,
            "no NATS server given (set ZS_BENCH_NATS_URL or ZS_TEST_NATS_URL)".into(),
        );
    };
    match NatsServer::parse(&url) {
        Ok(server) if server.is_loopback() => {}
        _ => return skip(table, format!("{url} is not a nats:// URL on loopback")),
    }
    eprintln!("nats ({url}) ...");
    let raw = raw_connect(&url).await;
    let run = format!("zsb{}", std::process::id());
    // `ZS_CLUSTER_KEY=...` picks the key of the keyed runs; any key measures the same.
    let key_text =
        std::env::var("ZS_CLUSTER_KEY").unwrap_or_else(|_| "zs-suite-nats-bench-key".to_owned());
    let key = ClusterKey::parse(&key_text).expect("a cluster key");
    for keyed in [false, true] {
        let cluster = format!("{run}{}", if keyed { "k" } else { "p" });
        let echo = format!("{cluster}.raw.echo");
        let env = nats_env(
            &url,
            &cluster,
            keyed.then_some(key_text.as_str()),
            &[("ZS_SUITE_ECHO", echo.clone())],
        );
        let owner = Proc::spawn_with("nats_owner", net, &env);
        let gateway = Node::builder("rest_api")
            .network(nats_config(net, &url, &cluster, keyed.then_some(&key)))
            .start()
            .await
            .expect("start gateway over nats");
        gateway
            .wait_for_collection("power", Duration::from_secs(20))
            .await
            .expect("the gateway sees the owner over nats");
        let powers = gateway.collection::<Power>();
        let id = powers
            .create(Power {
                value: 3,
                result: None,
            })
            .await
            .expect("remote create over nats");
        // The raw payload both ways: the medium's (unsealed) reply envelope to this get.
        let reply = serde_json::to_vec(&json!({
            "v": zeroservices::medium::PROTOCOL_VERSION, "kind": "response", "id": 123456u64,
            "ok": {"resource_id": id, "resource_data": {"value": 3, "result": null}, "version": 1},
        }))
        .expect("envelope");
        for _ in 0..2000 {
            powers.get(&id).await.expect("warm-up get");
            raw.request(echo.clone(), reply.clone().into())
                .await
                .expect("warm-up raw request");
        }
        let with = if keyed { "cluster key" } else { "no key" };
        for in_flight in [1usize, 64] {
            let mut pairs = Vec::new();
            for _ in 0..RPC_PAIRS {
                let ours = bench_get(&gateway, &id, in_flight, time).await;
                let base = bench_nats_raw(&raw, &echo, &reply, in_flight, time).await;
                pairs.push((ours, base));
            }
            pairs.sort_by(|a, b| (a.0.rate() / a.1.rate()).total_cmp(&(b.0.rate() / b.1.rate())));
            let ratios: Vec<String> = pairs
                .iter()
                .map(|(o, r)| format!("{:.2}", o.rate() / r.rate()))
                .collect();
            let (ours, base) = pairs.swap_remove(RPC_PAIRS / 2);
            let errors = if ours.errors + base.errors > 0 {
                format!(" ({} errors, raw {})", ours.errors, base.errors)
            } else {
                String::new()
            };
            let r = ours.rate() / base.rate();
            let p50 = ours.pct(0.5) / base.pct(0.5);
            table.add(
                "6 nats",
                format!(
                    "remote get over NATS, {with}, {in_flight} in flight, gateway -> owner process (median of {RPC_PAIRS} pairs){}",
                    if keyed { "" } else { " [plain]" }
                ),
                format!("{}{errors}", ours.summary()),
                format!(
                    "raw async-nats echo ({} B) {}",
                    reply.len(),
                    base.summary()
                ),
                format!(
                    "{r:.2}, p50 {p50:.2}x (pairs: {})",
                    ratios.join(", ")
                ),
                if in_flight == 64 {
                    ">= 0.5 of raw"
                } else {
                    "reported"
                },
                if in_flight == 64 {
                    at_least(r, 0.5)
                } else {
                    "reported".to_owned()
                },
            );
        }
        gateway.stop().await;
        drop(owner);
    }

    // Events: a producer node here creating ticks (16 tasks, unpaced), a subscriber node in
    // another process over NATS; beside one async-nats publisher -> one subscription.
    eprintln!("nats events ...");
    let cluster = format!("{run}e");
    let raw_subject = format!("{cluster}.raw.evt");
    let producer = Node::builder("producer")
        .network(nats_config(net, &url, &cluster, None))
        .resource::<Tick>()
        .start()
        .await
        .expect("start producer over nats");
    let env = nats_env(
        &url,
        &cluster,
        None,
        &[("ZS_SUITE_RAW_SUB", raw_subject.clone())],
    );
    let mut sub = Proc::spawn_with("nats_subscriber", net, &env);
    warm_up(&producer, &mut sub).await;
    // The raw payload: about the event envelope of a tick's create.
    let event = serde_json::to_vec(&json!({
        "v": zeroservices::medium::PROTOCOL_VERSION, "kind": "event", "from": producer.id(),
        "topic": format!("tick.create.{}", uuid_like()),
        "data": {"action": "create", "resource_name": "tick", "resource_id": uuid_like(),
                 "resource_data": {"n": 123456}, "version": 1},
    }))
    .expect("event envelope");
    let mut pairs = Vec::new();
    for _ in 0..RPC_PAIRS {
        let ours = subscriber_run(&producer, &mut sub, time, None).await;
        let base = raw_publish_run(&raw, &raw_subject, &event, &mut sub, time).await;
        pairs.push((ours, base));
    }
    pairs.sort_by(|a, b| (a.0.rate() / a.1.rate()).total_cmp(&(b.0.rate() / b.1.rate())));
    let ratios: Vec<String> = pairs
        .iter()
        .map(|(o, r)| format!("{:.2}", o.rate() / r.rate()))
        .collect();
    let (ours, base) = pairs.swap_remove(RPC_PAIRS / 2);
    table.add(
        "6 nats",
        format!(
            "events over NATS: creates (16 tasks, unpaced) -> subscriber process (median of {RPC_PAIRS} pairs)"
        ),
        format!(
            "{}: {} of {} seen, lost {} (bus lagged {}), created {}",
            per_s(ours.rate()),
            ours.received,
            ours.sent,
            ours.sent.saturating_sub(ours.received),
            ours.lagged,
            per_s(ours.sent as f64 / ours.send_time.as_secs_f64())
        ),
        format!(
            "raw async-nats publish -> subscribe ({} B) {}: {} of {} seen",
            event.len(),
            per_s(base.rate()),
            base.received,
            base.sent
        ),
        format!("{:.2} (pairs: {})", ours.rate() / base.rate(), ratios.join(", ")),
        "reported",
        "reported",
    );
    drop(sub);
    producer.stop().await;
}

/// A random uuid's text (for payload sizes).
fn uuid_like() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------------------------------------
// The suite.

/// What the production shape measured, for the lines against the peer (group 7).
#[derive(Default)]
struct Ours {
    get64: Option<f64>,
    /// REST GET and POST, the owner serving HTTP.
    rest_owner: [Option<f64>; 2],
    /// REST GET and POST through a gateway process.
    rest_gateway: [Option<f64>; 2],
    events: Option<f64>,
    idle_rss: Option<f64>,
}

/// The suite's timings: one line per group.
#[derive(Default)]
struct Timings {
    groups: Vec<(String, f64)>,
}

impl Timings {
    fn note(&mut self, group: impl Into<String>, since: Instant) {
        let group = group.into();
        let secs = since.elapsed().as_secs_f64();
        eprintln!("-- {group}: {secs:.0} s");
        self.groups.push((group, secs));
    }
}

/// A websocket client of `/realtime` at `addr`, subscribed to `topic`, reading and counting
/// every event (the subscriber present during the production shape's REST runs).
struct WsSub {
    stat: Arc<WsClientStat>,
    task: tokio::task::JoinHandle<()>,
}

impl WsSub {
    /// The production shape's subscriber of `power` on `addr`; none in the `[plain]` shape.
    async fn unless(plain: bool, addr: &str) -> Option<Self> {
        if plain {
            None
        } else {
            Some(Self::connect(addr, "power").await)
        }
    }

    async fn connect(addr: &str, topic: &str) -> Self {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/realtime"))
            .await
            .expect("websocket connect");
        socket
            .send(WsMessage::Text(
                format!(r#"{{"type":"subscribe","topics":["{topic}"]}}"#).into(),
            ))
            .await
            .expect("subscribe");
        let ack = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .ok()
            .flatten();
        assert!(
            matches!(&ack, Some(Ok(WsMessage::Text(t))) if t.contains("subscribed")),
            "websocket subscribe acknowledgement: {ack:?}"
        );
        let stat = Arc::new(WsClientStat::default());
        let seen = stat.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = socket.next().await {
                match message {
                    Ok(WsMessage::Text(text)) => {
                        if text.starts_with(r#"{"type":"event""#) {
                            seen.events.fetch_add(1, Ordering::Relaxed);
                        } else if text.contains("too slow") {
                            seen.told_slow.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok(WsMessage::Close(_)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            seen.closed.store(true, Ordering::Relaxed);
        });
        Self { stat, task }
    }

    /// Events read, and how the client ended (told too slow, closed).
    fn finish(self) -> String {
        // Let the last events of the run arrive (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut last = self.stat.events.load(Ordering::Relaxed);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.stat.events.load(Ordering::Relaxed);
            if now == last {
                break;
            }
            last = now;
        }
        self.task.abort();
        let slow = self.stat.told_slow.load(Ordering::Relaxed);
        let closed = self.stat.closed.load(Ordering::Relaxed);
        format!(
            "ws subscriber read {} events{}",
            self.stat.events.load(Ordering::Relaxed),
            if slow {
                ", told 'too slow' and closed"
            } else if closed {
                ", closed"
            } else {
                ", still connected"
            }
        )
    }
}

async fn suite() {
    let secs = seconds();
    let time = Duration::from_secs(secs);
    let started = Instant::now();
    let mut table = Table::default();
    let mut timings = Timings::default();
    let mut ours = Ours::default();
    eprintln!(
        "zeroservices benchmark suite: {secs} s per measure on 127.0.0.1, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 6. NATS first: its processes are gone before the ZeroMQ sections start.
    if want("nats") {
        let t = Instant::now();
        nats_group(&mut table, &Net::new(None), time).await;
        timings.note("6 nats", t);
    }
    if ["rpc", "rest", "discovery", "events"].into_iter().any(want) {
        // The production shape (cluster key on every node, a websocket subscriber during the
        // REST runs, the embedded store beside the memory store), then today's [plain] one.
        zmq_groups(&mut table, &mut timings, &mut ours, false, time).await;
        zmq_groups(&mut table, &mut timings, &mut ours, true, time).await;
    }
    if want("store") {
        let t = Instant::now();
        store_group(&mut table, time).await;
        timings.note("8 store", t);
    }
    if want("peer") {
        let t = Instant::now();
        peer_group(&mut table, &ours, time).await;
        timings.note("7 peer", t);
    }

    table.print();
    println!();
    println!("| group | seconds |");
    println!("|---|---|");
    for (group, secs) in &timings.groups {
        println!("| {group} | {secs:.0} |");
    }
    println!(
        "\n{secs} s per measure; whole suite {:.0} s. Targets from issue 19; lines marked [plain] are the configuration before it (no cluster key, memory store, no subscriber during the REST runs).",
        started.elapsed().as_secs_f64()
    );
    // The children are gone; do not wait for the runtime's stray tasks.
    std::process::exit(0);
}

/// Groups 1-5 over ZeroMQ in one shape: production (`plain` false) or `[plain]`.
async fn zmq_groups(
    table: &mut Table,
    timings: &mut Timings,
    ours_out: &mut Ours,
    plain: bool,
    time: Duration,
) {
    let secs = time.as_secs();
    let tag = if plain { " [plain]" } else { "" };
    let key = (!plain).then(production_key);
    let net = Net::new(key.clone());
    eprintln!(
        "shape{}: cluster key {}, group {}",
        if plain { " [plain]" } else { " production" },
        if plain { "off" } else { "on" },
        net.group
    );
    // The owner: an api_power-like process.
    let mut owner = Proc::spawn("owner", &net);
    let owner_id = owner.id().to_owned();
    let (owner_http, owner_plain, owner_raw) = (
        owner.fields[1].clone(),
        owner.fields[2].clone(),
        owner.fields[3].clone(),
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let owner_idle_rss = rss_mb(owner.pid());
    let mut rest_rss: f64 = 0.0;

    // 4a. Discovery of an existing node (three fresh newcomers; median).
    eprintln!("discovery of an existing node ...");
    let client = Node::builder("bench_client")
        .network(net.config())
        .start()
        .await
        .expect("start client");
    client
        .wait_for_collection("power", Duration::from_secs(20))
        .await
        .expect("the client sees the owner");
    let powers = client.collection::<Power>();
    let id = powers
        .create(Power {
            value: 3,
            result: None,
        })
        .await
        .expect("remote create");
    let mut seen = Vec::new();
    let mut first_get = Vec::new();
    // Discovery and footprint: in the production shape only (key on).
    let discovery = !plain && want("discovery");
    for _ in 0..if discovery { 3 } else { 1 } {
        let (s, g) = discover(&net, std::slice::from_ref(&owner_id), Some(&id)).await;
        seen.push(s);
        first_get.push(g.unwrap_or(Duration::MAX));
    }
    let discovery_one = median(seen);
    let discovery_one_get = median(first_get);

    // 1. Remote get vs raw echo.
    let t = Instant::now();
    eprintln!("remote get{tag} ...");
    for _ in 0..2000 {
        powers.get(&id).await.expect("warm-up get");
    }
    let envelope = serde_json::to_vec(&json!({
        "v": zeroservices::medium::PROTOCOL_VERSION, "kind": "request", "id": 123456u64, "from": client.id(),
        "request": Request::new("power", "get").id(id.clone()),
    }))
    .expect("envelope");
    for in_flight in [1usize, 64].into_iter().filter(|_| want("rpc")) {
        // Alternating pairs (ours, then raw), the median pair by rate ratio.
        let mut pairs = Vec::new();
        for _ in 0..RPC_PAIRS {
            let c0 = (cpu_ticks(std::process::id()), cpu_ticks(owner.pid()));
            let ours = bench_get(&client, &id, in_flight, time).await;
            let c1 = (cpu_ticks(std::process::id()), cpu_ticks(owner.pid()));
            let raw = bench_raw(&owner_raw, &envelope, in_flight, time).await;
            let c2 = (cpu_ticks(std::process::id()), cpu_ticks(owner.pid()));
            // CPU per call of the calling process and of the owner (µs; noise hardly moves it,
            // unlike the rates on a shared machine): printed to stderr beside the table.
            let per = |a: (u64, u64), b: (u64, u64), n: u64| {
                let us = |t: u64| t as f64 * 10_000.0 / n.max(1) as f64;
                (us(b.0.saturating_sub(a.0)), us(b.1.saturating_sub(a.1)))
            };
            let (oc, oo) = per(c0, c1, ours.calls);
            let (rc, ro) = per(c1, c2, raw.calls);
            eprintln!(
                "cpu per call{tag}, {in_flight} in flight: ours {:.0}/s caller {oc:.2} owner {oo:.2} total {:.2} µs/call; raw {:.0}/s client {rc:.2} owner {ro:.2} total {:.2} µs/call",
                ours.rate(),
                oc + oo,
                raw.rate(),
                rc + ro
            );
            pairs.push((ours, raw));
        }
        pairs.sort_by(|a, b| (a.0.rate() / a.1.rate()).total_cmp(&(b.0.rate() / b.1.rate())));
        let ratios: Vec<String> = pairs
            .iter()
            .map(|(o, r)| format!("{:.2}", o.rate() / r.rate()))
            .collect();
        let (ours, raw) = pairs.swap_remove(RPC_PAIRS / 2);
        let with = if plain { "no key" } else { "cluster key" };
        let what =
            format!("remote get, {with}, {in_flight} in flight (median of {RPC_PAIRS} pairs){tag}");
        let errors = if ours.errors > 0 {
            format!(" ({} errors)", ours.errors)
        } else {
            String::new()
        };
        if in_flight == 1 {
            let p50 = ours.pct(0.5) / raw.pct(0.5);
            table.add(
                "1 rpc",
                what,
                format!("{}{errors}", ours.summary()),
                format!("raw zmq echo {}", raw.summary()),
                format!("rate {}, p50 {p50:.2}x", ratio(ours.rate(), raw.rate())),
                "p50 <= 1.3x raw",
                at_most(p50, 1.3),
            );
        } else {
            let r = ours.rate() / raw.rate();
            table.add(
                "1 rpc",
                what.clone(),
                format!("{}{errors}", ours.summary()),
                format!("raw zmq echo {}", raw.summary()),
                format!("{r:.2} (pairs: {})", ratios.join(", ")),
                ">= 0.6 of raw",
                at_least(r, 0.6),
            );
            if !plain {
                ours_out.get64 = Some(ours.rate());
            }
        }
    }

    // 1b. A remote write beside the remote read: what versions and deduplication cost a write
    // is read by comparing this row across builds (BENCHMARKS.md).
    if want("rpc") && !plain {
        let mut runs = Vec::new();
        for _ in 0..RPC_PAIRS {
            let patches = bench_calls(&client, &id, 64, time, Op::Patch).await;
            let gets = bench_calls(&client, &id, 64, time, Op::Get).await;
            runs.push((patches, gets));
        }
        runs.sort_by(|a, b| (a.0.rate() / a.1.rate()).total_cmp(&(b.0.rate() / b.1.rate())));
        let ratios: Vec<String> = runs
            .iter()
            .map(|(p, g)| format!("{:.2}", p.rate() / g.rate()))
            .collect();
        let (patches, gets) = runs.swap_remove(RPC_PAIRS / 2);
        let errors = if patches.errors > 0 {
            format!(" ({} errors)", patches.errors)
        } else {
            String::new()
        };
        table.add(
            "1 rpc",
            format!("remote patch ($inc), cluster key, 64 in flight (median of {RPC_PAIRS} pairs)"),
            format!("{}{errors}", patches.summary()),
            format!("remote get {}", gets.summary()),
            format!(
                "{:.2} (pairs: {})",
                patches.rate() / gets.rate(),
                ratios.join(", ")
            ),
            "reported",
            "reported".to_owned(),
        );
    }

    if want("rpc") {
        timings.note(format!("1 rpc{tag}"), t);
    }

    // 2. REST.
    if want("rest") {
        let t = Instant::now();
        eprintln!("REST{tag} ...");
        // (name, post, owner, owner's HTTP, plain axum on its store, store)
        let mut runs = vec![
            (
                "GET by id",
                false,
                owner_http.clone(),
                owner_plain.clone(),
                "memory",
            ),
            (
                "POST create",
                true,
                owner_http.clone(),
                owner_plain.clone(),
                "memory",
            ),
        ];
        // The production shape also writes to the embedded (durable) store: a second owner
        // process on a multicast group of its own (two owners of `power` must not meet).
        let store_dir = std::env::temp_dir().join(format!("zs-suite-store-{}", std::process::id()));
        let embedded = (!plain).then(|| {
            let _ = std::fs::remove_dir_all(&store_dir);
            Proc::spawn_with(
                "owner",
                &Net::new(key.clone()),
                &[(
                    "ZS_SUITE_STORE",
                    Some(format!("embedded:{}", store_dir.display())),
                )],
            )
        });
        if let Some(e) = &embedded {
            runs.push((
                "POST create",
                true,
                e.fields[1].clone(),
                e.fields[2].clone(),
                "embedded",
            ));
        }
        let mut owner_rows = Vec::new();
        for (name, post, http, plain_at, store) in runs {
            let path = if post {
                "/power".to_owned()
            } else {
                format!("/power/{id}")
            };
            // Alternating pairs (plain, then ours), the median pair by ratio: one pair alone
            // swings by +-20 % on a shared 2-core machine. In the production shape a websocket
            // client is subscribed to `power` on the owner for the pair, reading every event.
            let mut pairs = Vec::new();
            for _ in 0..REST_PAIRS {
                let ws = WsSub::unless(plain, &http).await;
                let plain_run = wrk(&format!("http://{plain_at}{path}"), secs, post);
                let sampler = RssSampler::start(owner.pid());
                let ours = wrk(&format!("http://{http}{path}"), secs, post);
                let max = sampler.finish();
                // Under the GET load only: the POST runs fill the memory store (over a million
                // documents by the end), which measures the data, not the node.
                if !post && !plain {
                    rest_rss = rest_rss.max(max);
                }
                let ws = ws.map(WsSub::finish);
                pairs.push((ours, plain_run, ws));
            }
            let ((ours, plain_run, ws), ratios) = median_pair(pairs);
            let r = ours.rps / plain_run.rps;
            let bound = if post { 0.85 } else { 0.8 };
            let sub = if plain {
                "no subscriber"
            } else {
                "ws subscriber connected"
            };
            table.add(
                "2 rest",
                format!(
                    "{name}, {store} store, owner serves HTTP, {sub}, wrk -c64 (median of {REST_PAIRS} pairs){tag}"
                ),
                match ws {
                    Some(ws) => format!("{} ({ws})", ours.summary()),
                    None => ours.summary(),
                },
                format!("plain axum on the same store {}", plain_run.summary()),
                format!("{r:.2} (pairs: {ratios})"),
                format!(">= {bound} of plain"),
                at_least(r, bound),
            );
            if store == "memory" {
                if !plain {
                    ours_out.rest_owner[usize::from(post)] = Some(ours.rps);
                }
                owner_rows.push((name, post));
            }
        }
        drop(embedded);
        let _ = std::fs::remove_dir_all(&store_dir);
        let mut gateway = Proc::spawn("gateway", &net);
        let gateway_http = gateway.fields[1].clone();
        for (name, post) in owner_rows {
            let path = if post {
                "/power".to_owned()
            } else {
                format!("/power/{id}")
            };
            // Alternating pairs (the owner serving HTTP, then the gateway in front of it), the
            // median pair by ratio: both runs of a pair meet the owner in the same state (its
            // store grows with every POST run, which slows its GETs too), where a gateway run
            // measured after all the owner's runs would meet a fuller store than its baseline.
            let mut pairs = Vec::new();
            for _ in 0..REST_PAIRS {
                let ws = WsSub::unless(plain, &owner_http).await;
                let owner_run = wrk(&format!("http://{owner_http}{path}"), secs, post);
                let ours = wrk(&format!("http://{gateway_http}{path}"), secs, post);
                let ws = ws.map(WsSub::finish);
                pairs.push((ours, owner_run, ws));
            }
            let ((ours, owner_run, ws), ratios) = median_pair(pairs);
            let r = ours.rps / owner_run.rps;
            if !plain {
                ours_out.rest_gateway[usize::from(post)] = Some(ours.rps);
            }
            table.add(
                "2 rest",
                format!(
                    "{name}, gateway process -> owner process (median of {REST_PAIRS} pairs){tag}"
                ),
                match ws {
                    Some(ws) => format!("{} ({ws})", ours.summary()),
                    None => ours.summary(),
                },
                format!("owner serves HTTP {}", owner_run.summary()),
                format!("{r:.2} (pairs: {ratios})"),
                ">= 0.6 of the owner serving HTTP",
                at_least(r, 0.6),
            );
        }
        gateway.kill();
        timings.note(format!("2 rest{tag}"), t);
    }

    if discovery {
        let t = Instant::now();
        // 4b. Discovery of ten, then of an existing node after ten were killed.
        eprintln!("discovery of ten ...");
        let mut ten: Vec<Proc> = (0..TEN).map(|_| Proc::spawn("idle", &net)).collect();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut idle_rss: Vec<f64> = ten.iter().map(|p| rss_mb(p.pid())).collect();
        idle_rss.sort_by(f64::total_cmp);
        let idle_rss = idle_rss[idle_rss.len() / 2];
        let ids: Vec<String> = ten.iter().map(|p| p.id().to_owned()).collect();
        let (discovery_ten, _) = discover(&net, &ids, None).await;
        for p in &mut ten {
            p.kill();
        }
        let (discovery_dead, discovery_dead_get) =
            discover(&net, std::slice::from_ref(&owner_id), Some(&id)).await;
        let still_listed = client
            .peers()
            .iter()
            .filter(|p| ids.contains(&p.info.id))
            .count();
        drop(ten);

        table.add(
            "4 discovery",
            "new node sees an existing one (median of 3)",
            format!(
                "{}, first remote get {}",
                ms(discovery_one),
                ms(discovery_one_get)
            ),
            "Moleculer ~2.2 s to first call (issue 7)",
            ratio(2.2, discovery_one_get.as_secs_f64()),
            "< 200 ms",
            at_most(discovery_one.as_secs_f64() * 1e3, 200.0),
        );
        table.add(
            "4 discovery",
            format!("new node sees {TEN} nodes (10 processes)"),
            ms(discovery_ten),
            format!("one node: {}", ms(discovery_one)),
            ratio(discovery_ten.as_secs_f64(), discovery_one.as_secs_f64()),
            "-",
            "-",
        );
        table.add(
        "4 discovery",
        format!("new node sees an existing one, {TEN} dead peers listed ({still_listed} still listed by the client)"),
        format!(
            "{}, first remote get {}",
            ms(discovery_dead),
            discovery_dead_get.map_or("none".into(), ms)
        ),
        format!("no dead peers: {}", ms(discovery_one)),
        ratio(discovery_dead.as_secs_f64(), discovery_one.as_secs_f64()),
        "< 200 ms, no slower (Moleculer up to 14 s)",
        at_most(discovery_dead.as_secs_f64() * 1e3, 200.0),
    );

        // 5. Footprint.
        table.add(
            "5 footprint",
            "RSS of an idle node process (median of 10)",
            format!("{idle_rss:.1} MB"),
            "Moleculer ~73 MB (issue 7; measured in group 7)",
            ratio(idle_rss, 73.0),
            "< 20 MB",
            at_most(idle_rss, 20.0),
        );
        table.add(
            "5 footprint",
            "RSS of the owner process idle (at its start) / max under the REST GET load (after the rpc group's gets and patches: request records, replay memory)",
            format!("{owner_idle_rss:.1} MB / {rest_rss:.1} MB"),
            "Moleculer 73 / 80-170 MB (issue 7)",
            ratio(rest_rss, 80.0),
            "-",
            "-",
        );
        ours_out.idle_rss = Some(idle_rss);
        timings.note("4 discovery, 5 footprint", t);
    }
    client.stop().await;
    owner.kill();

    // 3. Events. Production: key on, change log on, a resumable subscriber process, and the
    // websocket steps; [plain]: key off, a plain subscriber process.
    if want("events") {
        let t = Instant::now();
        eprintln!("events{tag} ...");
        let producer = Node::builder("producer")
            .network(net.config())
            .resource::<Tick>()
            .start()
            .await
            .expect("start producer");
        let http = serve(producer.clone(), HttpConfig::new(0))
            .await
            .expect("producer http");
        let role = if plain { "subscriber" } else { "resumable" };
        let mut sub = Proc::spawn(role, &net);
        warm_up(&producer, &mut sub).await;
        let burst = subscriber_run(&producer, &mut sub, time, None).await;
        let loss = burst.sent.saturating_sub(burst.received);
        let created_rate = burst.sent as f64 / burst.send_time.as_secs_f64();
        if !plain {
            ours_out.events = Some(burst.rate());
        }
        table.add(
            "3 events",
            format!(
                "created ticks seen by a {} subscriber process, producer unpaced (16 tasks){tag}",
                if plain {
                    "plain"
                } else {
                    "resumable (subscribe_since)"
                }
            ),
            seen_note(&burst, loss, "producer"),
            format!("created {}", per_s(created_rate)),
            ratio(burst.rate(), created_rate),
            ">= 200,000/s, 0 lost",
            if loss > 0 {
                format!("MISSED: {loss} lost")
            } else {
                at_least(burst.rate(), 200_000.0)
            },
        );
        if loss > 0 || burst.received == 0 {
            let pace = (burst.rate() * 0.5).max(1000.0);
            let paced = subscriber_run(&producer, &mut sub, time, Some(pace)).await;
            let loss = paced.sent.saturating_sub(paced.received);
            table.add(
                "3 events",
                format!("subscriber process, producer paced at {pace:.0}/s{tag}"),
                format!(
                    "{}: {} of {} seen, lost {loss}",
                    per_s(paced.rate()),
                    paced.received,
                    paced.sent
                ),
                format!(
                    "created {}",
                    per_s(paced.sent as f64 / paced.send_time.as_secs_f64())
                ),
                ratio(paced.received as f64, paced.sent as f64),
                "0 lost when it keeps up",
                if loss == 0 {
                    "met".into()
                } else {
                    format!("MISSED: {loss} lost")
                },
            );
        }
        // The event path alone: the same subscriber, events published with `Node::publish`
        // (no store, no change log), so its capacity shows beside the create-bound figure.
        let published = publish_run(&producer, &mut sub, time).await;
        let loss = published.sent.saturating_sub(published.received);
        let published_rate = published.sent as f64 / published.send_time.as_secs_f64();
        table.add(
            "3 events",
            format!(
                "events published with Node::publish (no store) seen by a {} subscriber process, 16 tasks unpaced{tag}",
                if plain { "plain" } else { "resumable" }
            ),
            seen_note(&published, loss, "publisher"),
            format!("published {}", per_s(published_rate)),
            ratio(published.rate(), published_rate),
            "reported (the event path without the create)",
            "reported",
        );
        drop(sub);
        if plain {
            http.shutdown().await;
            producer.stop().await;
            timings.note(format!("3 events{tag}"), t);
            return;
        }

        eprintln!("websocket ...");
        let step = Duration::from_millis((secs * 1000 / 2).clamp(1000, 5000));
        let mut best: Option<WsRun> = None;
        let mut first_lossy: Option<WsRun> = None;
        let mut rate = 250.0;
        while rate <= 64_000.0 && t.elapsed() < Duration::from_secs(3 * 60) {
            let run = ws_run(&producer, http.local_addr(), step, rate).await;
            eprintln!(
                "  ws {rate:.0} creates/s: {} of {} delivered, {} told too slow, {} closed; \
                 after the producer stopped {} in {:.1} s ({}); CPU {:.2} µs per delivered \
                 event{}",
                run.delivered,
                run.sent * WS_CLIENTS as u64,
                run.told_slow,
                run.closed_silently,
                run.late,
                run.late_secs,
                per_s(run.late as f64 / run.late_secs.max(1e-9)),
                run.cpu * 1e6 / run.delivered.max(1) as f64,
                if run.still_receiving {
                    ", still receiving at the 60 s deadline"
                } else {
                    ""
                }
            );
            if run.lost() > 0 || run.closed_silently > 0 || run.told_slow > 0 {
                first_lossy = Some(run);
                break;
            }
            best = Some(run);
            rate *= 2.0;
        }
        match &best {
            Some(b) => table.add(
                "3 events",
                format!(
                    "delivery to {WS_CLIENTS} websocket clients, highest paced step with no loss"
                ),
                format!(
                    "{} ({:.0} creates/s x {WS_CLIENTS}), lost {}",
                    per_s(b.delivery_rate()),
                    b.rate,
                    b.lost()
                ),
                format!("offered {}", per_s(b.rate * WS_CLIENTS as f64)),
                ratio(b.delivery_rate(), b.rate * WS_CLIENTS as f64),
                "0 lost when clients keep up",
                "met",
            ),
            None => table.add(
                "3 events",
                format!("delivery to {WS_CLIENTS} websocket clients"),
                "no loss-free step",
                "-",
                "-",
                "0 lost when clients keep up",
                "MISSED",
            ),
        }
        if let Some(l) = &first_lossy {
            table.add(
            "3 events",
            format!("{WS_CLIENTS} websocket clients, next step ({:.0} creates/s)", l.rate),
            format!(
                "{}: {} {} of {}, {} clients told 'too slow' and closed, {} closed without a message",
                per_s(l.delivery_rate()),
                if l.still_receiving { "not delivered within 60 s (clients still receiving)" } else { "lost" },
                l.lost(),
                l.sent * WS_CLIENTS as u64,
                l.told_slow,
                l.closed_silently
            ),
            format!("offered {}", per_s(l.rate * WS_CLIENTS as f64)),
            ratio(l.delivery_rate(), l.rate * WS_CLIENTS as f64),
            "a slow client is disconnected with a message",
            if l.closed_silently == 0 && (l.lost() == 0 || l.told_slow > 0) {
                "met".to_owned()
            } else if l.closed_silently == 0 && l.still_receiving {
                "late, none closed: reported".to_owned()
            } else {
                format!("MISSED: {} closed silently / lost without notice", l.closed_silently)
            },
        );
        }
        http.shutdown().await;
        producer.stop().await;
        timings.note(format!("3 events{tag}"), t);
    }
}

// ---------------------------------------------------------------------------------------------
// 8. The embedded store: durable creates, 1 and 64 in flight.

/// `in_flight` tasks inserting `{"value": 12, "result": null}` into `store` for `time`.
async fn store_creates(store: &Arc<dyn Store>, in_flight: usize, time: Duration) -> Calls {
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + time;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (store, issued, errors) = (store.clone(), issued.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 12);
            while issued.fetch_add(1, Ordering::Relaxed) < MAX_CALLS && Instant::now() < deadline {
                let t = Instant::now();
                match store
                    .insert("power", None, json!({"value": 12, "result": null}))
                    .await
                {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    Calls::gather(tasks, &errors, started).await
}

/// Creates straight into the embedded store (each durable: the reply after its commit) from 64
/// tasks, beside one task (one commit per write) in the same run; the memory store's 64 as
/// `[plain]`.
async fn store_group(table: &mut Table, time: Duration) {
    eprintln!("store ...");
    let dir = std::env::temp_dir().join(format!("zs-suite-embedded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let embedded = zeroservices::store::open(&format!("embedded:{}", dir.display()))
        .await
        .expect("open the embedded store");
    let one = store_creates(&embedded, 1, time).await;
    let many = store_creates(&embedded, 64, time).await;
    drop(embedded);
    let _ = std::fs::remove_dir_all(&dir);
    let errors = |c: &Calls| {
        if c.errors > 0 {
            format!(" ({} errors)", c.errors)
        } else {
            String::new()
        }
    };
    table.add(
        "8 store",
        "embedded store, durable creates, 64 in flight",
        format!("{}{}", many.summary(), errors(&many)),
        format!(
            "1 in flight (one commit per write) {}{}; issue 19's baseline 1,300/s",
            one.summary(),
            errors(&one)
        ),
        format!(
            "{} of 1 in flight, {} of 1,300/s",
            ratio(many.rate(), one.rate()),
            ratio(many.rate(), 1_300.0)
        ),
        ">= 10x 1,300/s (13,000/s)",
        at_least(many.rate(), 13_000.0),
    );
    let memory = zeroservices::store::open("memory")
        .await
        .expect("open the memory store");
    let mem = store_creates(&memory, 64, time).await;
    table.add(
        "8 store",
        "memory store, creates, 64 in flight [plain]",
        format!("{}{}", mem.summary(), errors(&mem)),
        format!("embedded, 64 in flight {}", per_s(many.rate())),
        ratio(mem.rate(), many.rate()),
        "reported",
        "reported",
    );
}

// ---------------------------------------------------------------------------------------------
// 7. The peer: Moleculer 0.14 (bench/moleculer), measured in the same run.

/// `bench/moleculer` of the repository.
fn moleculer_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/moleculer")
}

/// A free TCP port on loopback.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free tcp port")
        .port()
}

/// Moleculer's brokers as child processes (`node bench/moleculer/<role>.js`), the same
/// operations measured the same way as ours: remote get at 64 in flight (a driver broker calling
/// `power.get` on the owner broker from 64 loops, bounded by time), REST GET/POST through
/// moleculer-web (an API broker in front of the owner broker) with the same wrk command, and
/// created ticks seen by a subscriber broker (the owner creating from 16 loops, unpaced).
/// Skipped, with a line saying why, without `node` or the installed packages.
async fn peer_group(table: &mut Table, ours: &Ours, time: Duration) {
    let secs = time.as_secs();
    let skip = |table: &mut Table, why: String| {
        eprintln!("peer: skipped: {why}");
        table.add(
            "7 peer",
            format!("Moleculer: skipped: {why}"),
            "-",
            "-",
            "-",
            "-",
            "skipped",
        );
    };
    let dir = moleculer_dir();
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => {
            return skip(
                table,
                "node is not installed (scripts/bench.sh installs it)".into(),
            );
        }
    }
    if !dir.join("node_modules/moleculer-web").is_dir() {
        return skip(
            table,
            format!(
                "{}/node_modules is missing (scripts/bench.sh runs npm ci there)",
                dir.display()
            ),
        );
    }
    eprintln!("peer (Moleculer) ...");
    let nodes = json!({
        "owner": free_port(), "api": free_port(), "sub": free_port(), "driver": free_port(),
    })
    .to_string();
    let http_port = free_port().to_string();
    let namespace = format!("zsb{}", std::process::id());
    let spawn = |script: &str| {
        let mut command = Command::new("node");
        command
            .arg(dir.join(format!("{script}.js")))
            .current_dir(&dir)
            .env("ZS_SUITE_MOL_NODES", &nodes)
            .env("ZS_SUITE_MOL_HTTP_PORT", &http_port)
            .env("ZS_SUITE_MOL_NAMESPACE", &namespace);
        Proc::start(command, script)
    };
    let (Some(mut owner), Some(mut sub), Some(api), Some(mut driver)) = (
        spawn("owner"),
        spawn("subscriber"),
        spawn("api"),
        spawn("driver"),
    ) else {
        return skip(table, "a Moleculer broker did not start within 60 s".into());
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_mb(owner.pid());
    let api_at = api.fields[1].clone();
    let id = driver.fields[1].clone();

    // Remote get, 64 in flight.
    let peer_get = driver
        .command(
            &format!("get 64 {secs}"),
            "CALLS",
            time + Duration::from_secs(60),
        )
        .and_then(|line| {
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect();
            (f.len() == 5).then(|| (f[0] / f[1], f[2], f[3], f[4]))
        });
    match (peer_get, ours.get64) {
        (Some((rate, p50, p99, errors)), ours_rate) => {
            let ours_rate = ours_rate.unwrap_or(f64::NAN);
            table.add(
                "7 peer",
                "remote get, 64 in flight: ours (cluster key) vs Moleculer (TCP transporter, driver broker -> owner broker)",
                per_s(ours_rate),
                format!(
                    "Moleculer {}, p50 {p50:.0} µs, p99 {p99:.0} µs{}",
                    per_s(rate),
                    if errors > 0.0 {
                        format!(", {errors} errors")
                    } else {
                        String::new()
                    }
                ),
                ratio(ours_rate, rate),
                ">= 3x Moleculer",
                at_least(ours_rate / rate, 3.0),
            );
        }
        (None, _) => skip(
            table,
            "the Moleculer driver did not report its calls".into(),
        ),
    }

    // REST through moleculer-web.
    for (i, (name, post)) in [("GET by id", false), ("POST create", true)]
        .into_iter()
        .enumerate()
    {
        let path = if post {
            "/power".to_owned()
        } else {
            format!("/power/{id}")
        };
        let peer = wrk(&format!("http://{api_at}{path}"), secs, post);
        let gateway = ours.rest_gateway[i].unwrap_or(f64::NAN);
        let owner_serves = ours.rest_owner[i].unwrap_or(f64::NAN);
        table.add(
            "7 peer",
            format!(
                "REST {name}, wrk -c64: ours gateway process -> owner process vs moleculer-web API broker -> owner broker"
            ),
            format!(
                "{} (owner serving HTTP: {})",
                per_s(gateway),
                per_s(owner_serves)
            ),
            format!("moleculer-web {}", peer.summary()),
            format!(
                "{} (owner serving: {})",
                ratio(gateway, peer.rps),
                ratio(owner_serves, peer.rps)
            ),
            ">= 4x moleculer-web",
            at_least(gateway / peer.rps, 4.0),
        );
    }

    // Events: ticks created at the owner broker (16 loops, unpaced), seen by the subscriber.
    sub.ask("reset");
    let produced = owner
        .command(
            &format!("produce 16 {secs}"),
            "SENT",
            time + Duration::from_secs(60),
        )
        .and_then(|line| {
            let f: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect();
            (f.len() == 3).then(|| (f[0] as u64, Duration::from_secs_f64(f[1].max(0.0))))
        });
    match produced {
        Some((sent, elapsed)) => {
            let run = collect(&mut sub, sent, elapsed).await;
            let ours_rate = ours.events.unwrap_or(f64::NAN);
            table.add(
                "7 peer",
                "events: created ticks seen by a subscriber process, ours (cluster key, resumable) vs Moleculer subscriber broker",
                per_s(ours_rate),
                format!(
                    "Moleculer {}: {} of {} seen, created {}",
                    per_s(run.rate()),
                    run.received,
                    run.sent,
                    per_s(run.sent as f64 / run.send_time.as_secs_f64())
                ),
                ratio(ours_rate, run.rate()),
                ">= 5x Moleculer",
                at_least(ours_rate / run.rate(), 5.0),
            );
        }
        None => skip(
            table,
            "the Moleculer owner did not report its creates".into(),
        ),
    }
    let ours_rss = ours.idle_rss.unwrap_or(f64::NAN);
    table.add(
        "7 peer",
        "RSS idle: our idle node process vs the Moleculer owner broker (before its load)",
        format!("{ours_rss:.1} MB"),
        format!("Moleculer {idle_rss:.1} MB"),
        ratio(ours_rss, idle_rss),
        "reported",
        "reported",
    );
    drop((owner, sub, api, driver));
}
