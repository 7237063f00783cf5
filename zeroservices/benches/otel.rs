//! What tracing costs: the same traffic with trace export off and on, alternating in one run.
//!
//! Two service processes (this binary re-executed as [`App`]s, `ZS_OTEL_BENCH_ROLE`): an owner
//! of `item` (memory store, no HTTP) and a gateway (HTTP), on ZeroMQ with UDP discovery on
//! 127.0.0.1. Per configuration they are started fresh, with no `OTEL_EXPORTER_OTLP_ENDPOINT`
//! ("off": the spans are disabled callsites, nothing is built) or with one pointing at a
//! receiver inside this process ("on": an OTLP/HTTP endpoint that accepts every batch and
//! discards it, counting its bytes). Measured per configuration:
//!
//! 1. remote `get` from the gateway's node to the owner at 64 and at 1 call in flight
//!    (`zs.call` on the gateway, `zs.serve` and `zs.store` on the owner per call);
//! 2. `GET /item/<id>` on the gateway's HTTP with 64 requests in flight from a reqwest client
//!    in this process (`http.request` too).
//!
//! A third mode, "1 %", exports with `OTEL_TRACES_SAMPLER=parentbased_traceidratio` and
//! `OTEL_TRACES_SAMPLER_ARG=0.01` (a trace sampled upstream stays sampled): what a busy
//! service would run with.
//!
//! The configurations alternate off, on, 1 %, off, on, 1 %, ... (`ZS_BENCH_PAIRS` rounds,
//! default 2), each measure `ZS_BENCH_SECONDS` long (default 3); it prints every run, then per
//! measure the median of each mode and its ratio to off. With export on, the batch processor's queue is
//! raised (`OTEL_BSP_MAX_QUEUE_SIZE=65536`) so that spans are exported rather than dropped at
//! these rates: the cost of exporting everything.
//!
//! ```text
//! ZS_BENCH_SECONDS=2 cargo bench -p zeroservices --bench otel
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use zeroservices::app::App;
use zeroservices::http::HttpConfig;
use zeroservices::prelude::*;

/// An item.
#[resource(collection = "item")]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// A value.
    pub value: i64,
}

const ROLE: &str = "ZS_OTEL_BENCH_ROLE";

fn seconds() -> u64 {
    std::env::var("ZS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn pairs() -> usize {
    std::env::var("ZS_BENCH_PAIRS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2)
        .clamp(1, 10)
}

fn main() {
    match std::env::var(ROLE).as_deref() {
        Ok("owner") => {
            let exit = App::new("bench_owner")
                .resource::<Item>()
                .run_with_args(["bench_owner", "--no-http"], |_| async {});
            std::process::exit(exit.code().into());
        }
        Ok("gateway") => {
            let exit = App::new("bench_gateway")
                .http(HttpConfig::new(0))
                .run_with_args(["bench_gateway"], gateway);
            std::process::exit(exit.code().into());
        }
        _ => driver(),
    }
}

/// The gateway's body: waits for the owner, creates one item, prints `ready <id>`, then runs
/// the driver's `get <in flight> <ms>` commands from stdin, printing `done <calls> <p50 µs>`.
async fn gateway(node: Node) -> Result<()> {
    node.wait_for_collection("item", Duration::from_secs(30))
        .await?;
    let id = node.collection::<Item>().create(Item { value: 7 }).await?;
    println!("ready {id}");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin()
            .lock()
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [_, in_flight, ms] = words[..] else {
            continue;
        };
        let (Ok(in_flight), Ok(ms)) = (in_flight.parse::<usize>(), ms.parse::<u64>()) else {
            continue;
        };
        let until = Instant::now() + Duration::from_millis(ms);
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..in_flight {
            let node = node.clone();
            let id = id.clone();
            tasks.spawn(async move {
                let mut took = Vec::new();
                while Instant::now() < until {
                    let start = Instant::now();
                    if node.collection::<Item>().get(&id).await.is_ok() {
                        took.push(start.elapsed().as_micros() as u32);
                    }
                }
                took
            });
        }
        let mut all = Vec::new();
        while let Some(took) = tasks.join_next().await {
            all.extend(took.unwrap_or_default());
        }
        all.sort_unstable();
        let p50 = all.get(all.len() / 2).copied().unwrap_or(0);
        println!("done {} {p50}", all.len());
    }
    Ok(())
}

fn free_tcp() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A service process; killed when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(role: &str, env: &[(&str, String)]) -> Proc {
        let mut command = Command::new(std::env::current_exe().unwrap());
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") || var.starts_with("OTEL_") {
                command.env_remove(var);
            }
        }
        let mut child = command
            .env(ROLE, role)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stdin = child.stdin.take();
        Proc {
            child,
            stdin,
            lines,
        }
    }

    /// The next line starting with `prefix` (what follows it), within `timeout`.
    fn line(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!("no {prefix:?} line within {timeout:?}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The in-bench OTLP/HTTP receiver: accepts and discards, counting bytes and batches.
#[derive(Default)]
struct Received {
    bytes: AtomicU64,
    batches: AtomicU64,
}

async fn receiver() -> (String, Arc<Received>) {
    use axum::routing::post;
    let got = Arc::new(Received::default());
    let state = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let state = state.clone();
            async move {
                state.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                state.batches.fetch_add(1, Ordering::Relaxed);
                // An empty ExportTraceServiceResponse.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), got)
}

/// One configuration's figures: calls/s of get@64, get@1, REST@64, and their p50 (µs).
#[derive(Debug, Clone, Copy)]
struct Run {
    get64: (f64, u64),
    get1: (f64, u64),
    rest: (f64, u64),
    exported_kb: f64,
}

async fn rest_loop(url: &str, in_flight: usize, time: Duration) -> (f64, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(in_flight)
        .build()
        .unwrap();
    let until = Instant::now() + time;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let client = client.clone();
        let url = url.to_owned();
        tasks.spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < until {
                let start = Instant::now();
                if let Ok(reply) = client.get(&url).send().await
                    && reply.status() == 200
                    && reply.bytes().await.is_ok()
                {
                    took.push(start.elapsed().as_micros() as u64);
                }
            }
            took
        });
    }
    let mut all = Vec::new();
    while let Some(took) = tasks.join_next().await {
        all.extend(took.unwrap_or_default());
    }
    all.sort_unstable();
    let p50 = all.get(all.len() / 2).copied().unwrap_or(0);
    (all.len() as f64 / time.as_secs_f64(), p50)
}

fn ask(gateway: &mut Proc, in_flight: usize, time: Duration) -> (f64, u64) {
    let stdin = gateway.stdin.as_mut().unwrap();
    writeln!(stdin, "get {in_flight} {}", time.as_millis()).unwrap();
    stdin.flush().unwrap();
    let done = gateway.line("done ", time + Duration::from_secs(30));
    let mut words = done.split_whitespace();
    let calls: f64 = words.next().unwrap().parse().unwrap();
    let p50: u64 = words.next().unwrap().parse().unwrap();
    (calls / time.as_secs_f64(), p50)
}

/// What a configuration exports.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Off,
    On,
    Sampled,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::On => "on",
            Self::Sampled => "1 %",
        }
    }
}

async fn one(mode: Mode, endpoint: &str, got: &Received, time: Duration) -> Run {
    let group = format!("237.252.249.231:{}", free_udp());
    let http = free_tcp();
    let mut env = vec![
        ("ZS_DISCOVERY_INTERFACE", "127.0.0.1".to_owned()),
        ("ZS_MULTICAST_GROUP", group),
        ("ZS_HEARTBEAT_MS", "200".to_owned()),
        ("ZS_STORE", "memory".to_owned()),
        ("ZS_HTTP_HOST", "127.0.0.1".to_owned()),
        ("ZS_HTTP_PORT", http.to_string()),
        ("ZS_METRICS_AUTH", "off".to_owned()),
    ];
    if mode != Mode::Off {
        env.extend([
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "65536".to_owned()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048".to_owned()),
            ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
        ]);
    }
    if mode == Mode::Sampled {
        env.extend([
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", "0.01".to_owned()),
        ]);
    }
    let _owner = Proc::spawn("owner", &env);
    let mut gateway = Proc::spawn("gateway", &env);
    let id = gateway.line("ready ", Duration::from_secs(60));
    let before = got.bytes.load(Ordering::Relaxed);
    let get64 = ask(&mut gateway, 64, time);
    let get1 = ask(&mut gateway, 1, time);
    let rest = rest_loop(&format!("http://127.0.0.1:{http}/item/{id}"), 64, time).await;
    let exported_kb = (got.bytes.load(Ordering::Relaxed) - before) as f64 / 1024.0;
    Run {
        get64,
        get1,
        rest,
        exported_kb,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn driver() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let time = Duration::from_secs(seconds());
        let (endpoint, got) = receiver().await;
        println!(
            "otel cost: {} round(s) of off/on/1 %, {} s per measure, owner + gateway processes on \
             ZeroMQ over loopback, export to an in-bench OTLP/HTTP receiver (protobuf, discarded)",
            pairs(),
            time.as_secs()
        );
        let modes = [Mode::Off, Mode::On, Mode::Sampled];
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); modes.len()];
        for round in 0..pairs() {
            for (i, mode) in modes.into_iter().enumerate() {
                let run = one(mode, &endpoint, &got, time).await;
                println!(
                    "round {round} export {:3}: get@64 {:>9.0}/s p50 {:>5} µs | get@1 {:>7.0}/s p50 {:>5} µs | REST GET@64 {:>8.0}/s p50 {:>5} µs | exported {:.0} KiB",
                    mode.name(),
                    run.get64.0,
                    run.get64.1,
                    run.get1.0,
                    run.get1.1,
                    run.rest.0,
                    run.rest.1,
                    run.exported_kb,
                );
                runs[i].push(run);
            }
        }
        println!("median of {} run(s) per mode; ratio = mode / off (per round):", pairs());
        type Pick = fn(&Run) -> (f64, u64);
        let measures: [(&str, Pick); 3] = [
            ("remote get, 64 in flight", |r| r.get64),
            ("remote get, 1 in flight", |r| r.get1),
            ("REST GET, 64 in flight", |r| r.rest),
        ];
        for (name, pick) in measures {
            let rate = |runs: &[Run]| median(runs.iter().map(|r| pick(r).0).collect());
            let p50 = |runs: &[Run]| median(runs.iter().map(|r| pick(r).1 as f64).collect());
            let off = &runs[0];
            let mut line = format!(
                "  {name:26} off {:>8.0}/s (p50 {:.0} µs)",
                rate(off),
                p50(off)
            );
            for (mode, these) in modes.iter().zip(&runs).skip(1) {
                let per_round: Vec<String> = off
                    .iter()
                    .zip(these)
                    .map(|(a, b)| format!("{:.2}", pick(b).0 / pick(a).0.max(1.0)))
                    .collect();
                line.push_str(&format!(
                    " | {} {:>8.0}/s (p50 {:.0} µs) ratio {:.2} ({})",
                    mode.name(),
                    rate(these),
                    p50(these),
                    rate(these) / rate(off).max(1.0),
                    per_round.join(", ")
                ));
            }
            println!("{line}");
        }
        println!(
            "exported: {:.1} MiB in {} batches",
            got.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0),
            got.batches.load(Ordering::Relaxed)
        );
    });
}
