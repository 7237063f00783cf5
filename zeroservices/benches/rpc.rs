//! Remote request/response between two processes over loopback: the ZeroMQ medium against a raw
//! `zeromq` DEALER->ROUTER echo carrying the same payload, at 1 and 64 calls in flight.
//!
//! `cargo bench -p zeroservices --bench rpc`. The binary re-executes itself with
//! `ZS_BENCH_ROLE=server` to act as the server process.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use zeromq::{DealerSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zeroservices::config::NetworkConfig;
use zeroservices::medium::{Endpoints, Inbound, Medium, PROTOCOL_VERSION, Request, ZmqMedium};
use zeroservices::{Event, NodeInfo, NodeKind, Result};

const ROLE: &str = "ZS_BENCH_ROLE";
const MAX_CALLS: u64 = 300_000;
const MAX_TIME: Duration = Duration::from_secs(5);

struct Echo;

#[async_trait]
impl Inbound for Echo {
    async fn request(&self, _from: Option<String>, request: Request) -> Result<Value> {
        Ok(request.args)
    }

    fn event(&self, _event: Event) {}
}

fn config() -> NetworkConfig {
    NetworkConfig {
        interface: Ipv4Addr::LOCALHOST,
        ..NetworkConfig::default()
    }
}

fn args() -> Value {
    json!({"payload": "x".repeat(64)})
}

fn request() -> Request {
    Request::new("bench", "echo").id("1").args(args())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if std::env::var(ROLE).as_deref() == Ok("server") {
        runtime.block_on(server());
    } else {
        runtime.block_on(client());
    }
}

/// Serves the medium and a raw ROUTER echo; prints the endpoints; exits when stdin closes.
async fn server() {
    let medium = ZmqMedium::new(config());
    let mut endpoints = medium
        .start("bench-server", Arc::new(Echo))
        .await
        .expect("start");
    let mut raw = RouterSocket::new();
    let raw_at = raw.bind("tcp://127.0.0.1:0").await.expect("bind raw");
    endpoints.insert("raw".into(), raw_at.to_string());
    tokio::spawn(async move {
        loop {
            match raw.recv().await {
                Ok(message) => {
                    if let Err(e) = raw.send(message).await {
                        eprintln!("raw echo: {e}");
                    }
                }
                Err(e) => eprintln!("raw recv: {e}"),
            }
        }
    });
    println!("{}", serde_json::to_string(&endpoints).expect("json"));
    std::io::stdout().flush().expect("flush");
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    })
    .await
    .expect("stdin");
    medium.stop().await;
}

struct Row {
    name: &'static str,
    in_flight: usize,
    calls: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Row {
    fn rate(&self) -> f64 {
        self.calls as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e6
    }
}

async fn client() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .env(ROLE, "server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the server process");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("server endpoints");
    let endpoints: Endpoints = serde_json::from_str(line.trim()).expect("endpoints json");
    let raw_at = endpoints["raw"].clone();
    let server = NodeInfo {
        id: "bench-server".into(),
        name: "bench".into(),
        kind: NodeKind::Node,
        protocol: PROTOCOL_VERSION,
        endpoints,
        resources: Vec::new(),
        watches: Vec::new(),
        insecure: false,
        stores: Default::default(),
    };

    let medium = Arc::new(ZmqMedium::new(config()));
    medium
        .start("bench-client", Arc::new(Echo))
        .await
        .expect("start client");
    // Warm up the connection.
    for _ in 0..2000 {
        medium.call(&server, request()).await.expect("warm-up call");
    }

    let mut rows = Vec::new();
    for in_flight in [1, 64] {
        rows.push(bench_medium(&medium, &server, in_flight).await);
        rows.push(bench_raw(&raw_at, in_flight).await);
    }

    println!();
    println!(
        "{:<14} {:>9} {:>9} {:>12} {:>9} {:>9}",
        "", "in flight", "calls", "calls/s", "p50 µs", "p99 µs"
    );
    for row in &rows {
        println!(
            "{:<14} {:>9} {:>9} {:>12.0} {:>9.1} {:>9.1}",
            row.name,
            row.in_flight,
            row.calls,
            row.rate(),
            row.percentile(0.50),
            row.percentile(0.99)
        );
    }
    println!();
    for pair in rows.chunks(2) {
        let (ours, raw) = (&pair[0], &pair[1]);
        println!(
            "in flight {:>2}: zeroservices/raw throughput {:.2}, p50 latency {:.2}x",
            ours.in_flight,
            ours.rate() / raw.rate(),
            ours.percentile(0.5) / raw.percentile(0.5)
        );
    }
    println!("{:?}", medium.stats());

    medium.stop().await;
    drop(child.stdin.take());
    let _ = child.wait();
}

/// `in_flight` tasks calling in a loop, until MAX_CALLS or MAX_TIME.
async fn bench_medium(medium: &Arc<ZmqMedium>, server: &NodeInfo, in_flight: usize) -> Row {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + MAX_TIME;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (medium, server, issued) = (medium.clone(), server.clone(), issued.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < MAX_CALLS && Instant::now() < deadline {
                let t = Instant::now();
                let reply = medium.call(&server, request()).await.expect("call");
                latencies.push(t.elapsed());
                debug_assert_eq!(reply, args());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("bench task"));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Row {
        name: "zeroservices",
        in_flight,
        calls: latencies.len() as u64,
        elapsed,
        latencies,
    }
}

/// One DEALER, `in_flight` messages outstanding, each `[seq, body, mac]` with a body the size
/// of the medium's request envelope; the ROUTER echoes them.
async fn bench_raw(endpoint: &str, in_flight: usize) -> Row {
    let mut dealer = DealerSocket::new();
    dealer.connect(endpoint).await.expect("raw connect");
    let body = serde_json::to_vec(&json!({
        "v": PROTOCOL_VERSION, "kind": "request", "id": 123456u64, "from": "bench-client", "request": request()
    }))
    .expect("body");
    let message = |seq: u64| {
        let mut m = ZmqMessage::from(seq.to_be_bytes().to_vec());
        m.push_back(body.clone().into());
        m.push_back(Vec::new().into());
        m
    };
    // Warm up.
    for seq in 0..2000 {
        dealer.send(message(seq)).await.expect("raw send");
        dealer.recv().await.expect("raw recv");
    }
    let started = Instant::now();
    let deadline = started + MAX_TIME;
    let mut sent_at = Vec::with_capacity(MAX_CALLS as usize);
    let mut latencies = Vec::with_capacity(MAX_CALLS as usize);
    for seq in 0..in_flight as u64 {
        sent_at.push(Instant::now());
        dealer.send(message(seq)).await.expect("raw send");
    }
    let mut outstanding = in_flight;
    while outstanding > 0 {
        let reply = dealer.recv().await.expect("raw recv");
        let seq = u64::from_be_bytes(reply.get(0).expect("seq")[..8].try_into().expect("8 bytes"));
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
    Row {
        name: "raw zeromq",
        in_flight,
        calls: latencies.len() as u64,
        elapsed,
        latencies,
    }
}
