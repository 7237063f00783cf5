//! The FOSDEM demo as real processes: the `power`, `api` and `worker` example binaries, and
//! the `randomizer`, in a cluster of their own (multicast on 127.0.0.1 with a private group
//! port, the memory store, short heartbeats, the worker re-checking every 500 ms).
//!
//! - 20 pending powers created through `api`'s REST all become `done` with `result ==
//!   value * value`; one patched back to pending with a new value is computed again.
//! - The worker is killed; 5 powers created meanwhile stay pending; a new worker process,
//!   started after them (so it never saw their events), catches them up by its periodic
//!   re-check.
//! - The `randomizer` run against `api` (`--rounds 5 --interval-ms 50 --count 5`) exits 0,
//!   and the worker computes every power it created and patched.
//!
//! The binaries are those `cargo test -p zeroservices-examples` builds beside the tests
//! (`target/<profile>/examples/`). `cargo test --test demo` alone does not rebuild them: a
//! missing binary, or one older than the sources, fails the test with the command to run
//! (`cargo build --examples -p zeroservices-examples`). Every child is killed (SIGKILL) when
//! its handle drops, and its output is printed if the test failed.
//!
//! Run: `cargo test -p zeroservices-examples --test demo`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

const HEARTBEAT_MS: u64 = 200;
const PEER_TIMEOUT_MS: u64 = 1500;
const REQUEST_TIMEOUT_MS: u64 = 1000;

/// One test's cluster: a multicast group of its own on loopback.
struct Cluster {
    group_port: u16,
}

impl Cluster {
    fn new() -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        Self {
            group_port: socket.local_addr().unwrap().port(),
        }
    }

    /// Starts the example `name` as a member of this cluster.
    fn spawn(&self, name: &str, env: &[(&str, String)], args: &[&str]) -> Proc {
        let mut command = Command::new(example_binary(name));
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") || var == "RUST_LOG" {
                command.env_remove(var);
            }
        }
        command
            .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
            .env(
                "ZS_MULTICAST_GROUP",
                format!("237.252.249.227:{}", self.group_port),
            )
            .env("ZS_STORE", "memory")
            .env("ZS_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
            .env("ZS_PEER_TIMEOUT_MS", PEER_TIMEOUT_MS.to_string())
            .env("ZS_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            .env("RUST_LOG", "warn")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (var, value) in env {
            command.env(var, value);
        }
        Proc::spawn(name, command)
    }

    /// Starts `api` on a free port and waits until it lists `power`: its base URL. The port
    /// was free when probed but may be taken before `api` binds it: then `api` exits, and
    /// another port is tried.
    async fn api(&self) -> (Proc, String) {
        for _ in 0..5 {
            let port = free_tcp_port();
            let mut api = self.spawn("api", &[("ZS_HTTP_PORT", port.to_string())], &[]);
            let base = format!("http://127.0.0.1:{port}");
            match wait_for_power(&base, &mut api).await {
                Ok(()) => return (api, base),
                Err(status) if api.log().contains("Address already in use") => {
                    eprintln!("api on port {port}: {status}, port taken; another port");
                }
                Err(status) => panic!("api exited early: {status}; its output:\n{}", api.log()),
            }
        }
        panic!("api could not bind a free port in 5 attempts");
    }
}

/// `target/<profile>/examples/<name>`, beside this test's `target/<profile>/deps/`.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps/");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "the example binary {} is missing: run `cargo build --examples -p zeroservices-examples` \
         (or `cargo test -p zeroservices-examples`, which builds the examples) first",
        path.display()
    );
    // `cargo test --test NAME` does not rebuild the examples: refuse to test an old binary.
    let built = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = examples.parent().unwrap();
    let sources = [
        examples.clone(),
        examples.join("shared"),
        root.join("zeroservices/src"),
        root.join("zeroservices-macros/src"),
    ];
    if let Some(newer) = sources.iter().find_map(|dir| newer_than(dir, built)) {
        panic!(
            "the example binary {} is older than {}: run `cargo build --examples -p \
             zeroservices-examples` (or `cargo test -p zeroservices-examples`, which builds the \
             examples) first",
            path.display(),
            newer.display()
        );
    }
    path
}

/// A source file under `dir` modified after `time` (`examples/` itself: its files only, not
/// its `tests/`).
fn newer_than(dir: &Path, time: SystemTime) -> Option<PathBuf> {
    let recursive = !dir.ends_with("examples");
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            if recursive && let Some(found) = newer_than(&path, time) {
                return Some(found);
            }
        } else if meta.modified().is_ok_and(|m| m > time) {
            return Some(path);
        }
    }
    None
}

fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// A child process: its output is collected, it is SIGKILLed when dropped, and its output is
/// printed when the test is failing.
struct Proc {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn spawn(name: &str, mut command: Command) -> Self {
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let readers = vec![collect(stdout, log.clone()), collect(stderr, log.clone())];
        Self {
            name: name.to_owned(),
            child,
            log,
            readers,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The exit status if it has exited (its output then read to the end).
    fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(status)
    }

    /// Waits for the exit, at most `within`.
    async fn wait(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}; its output:\n{}",
                self.name,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- output of {} ----\n{}", self.name, self.log());
        }
    }
}

/// Reads `from` line by line into `log`, on a thread of its own.
fn collect(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(|l| l.ok()) {
            log.lock().unwrap().push(line);
        }
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response's status and JSON body (`Null` when empty).
async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    };
    (status, body)
}

/// Polls `GET /` until the gateway lists `power` (it has discovered the owner); `Err` with
/// its exit status if `api` exits meanwhile.
async fn wait_for_power(base: &str, api: &mut Proc) -> Result<(), ExitStatus> {
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = http
            .get(format!("{base}/"))
            .header("accept", "application/json")
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        let last = match answer {
            Ok(response) => {
                let (status, body) = json(response).await;
                if status == 200
                    && body["resources"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|c| c == "power"))
                {
                    return Ok(());
                }
                format!("{status} {body}")
            }
            Err(e) => e.to_string(),
        };
        if let Some(status) = api.exited() {
            return Err(status);
        }
        assert!(
            Instant::now() < deadline,
            "{base}/ did not list power within 20 s (last: {last}); api's output:\n{}",
            api.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn create(http: &reqwest::Client, base: &str, body: Value) -> String {
    let (status, reply) = json(
        http.post(format!("{base}/power"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "create {body}: {reply}");
    reply["resource_id"].as_str().unwrap().to_owned()
}

/// Every power of the store, by id.
async fn all_powers(http: &reqwest::Client, base: &str) -> HashMap<String, Value> {
    let (status, body) = json(
        http.get(format!("{base}/power"))
            .query(&[("limit", "1000")])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["resource_id"].as_str().unwrap().to_owned(),
                d["resource_data"].clone(),
            )
        })
        .collect()
}

/// Whether a power is done with the right result (and, if given, the expected value).
fn computed(data: &Value, value: Option<i64>) -> bool {
    let Some(v) = data["value"].as_i64() else {
        return false;
    };
    data["status"] == "done"
        && data["result"].as_i64() == Some(v * v)
        && value.is_none_or(|e| e == v)
}

/// Waits until every power of `expected` (id, value) is computed; how long it took.
async fn wait_computed(
    http: &reqwest::Client,
    base: &str,
    expected: &[(String, i64)],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let powers = all_powers(http, base).await;
        let missing: Vec<String> = expected
            .iter()
            .filter(|(id, value)| !powers.get(id).is_some_and(|d| computed(d, Some(*value))))
            .map(|(id, value)| format!("{id} (value {value}): {:?}", powers.get(id)))
            .collect();
        if missing.is_empty() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "not computed within {within:?}:\n{}",
            missing.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a pending power of `value` through REST; its id.
async fn create_pending(http: &reqwest::Client, base: &str, value: i64) -> String {
    create(
        http,
        base,
        json!({"resource_data": {"value": value, "status": "pending"}}),
    )
    .await
}

fn worker(cluster: &Cluster) -> Proc {
    cluster.spawn("worker", &[("ZS_WORKER_POLL_MS", "500".into())], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_computes_every_pending_power_and_catches_up_after_a_restart() {
    let cluster = Cluster::new();
    let _power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let mut first_worker = worker(&cluster);
    let http = client();

    // 20 pending powers, through REST: all computed.
    let mut powers = Vec::new();
    for n in 0..20 {
        let value = n * 7 - 40;
        powers.push((create_pending(&http, &base, value).await, value));
    }
    let took = wait_computed(&http, &base, &powers, Duration::from_secs(20)).await;
    println!("20 powers computed {took:?} after the last create");

    // One patched back to pending with a new value: computed again.
    let (id, _) = powers[3].clone();
    let (status, body) = json(
        http.patch(format!("{base}/power/{id}"))
            .json(&json!({"patch": {"$set": {"value": 99, "status": "pending"}, "$unset": {"result": ""}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["status"], "pending", "{body}");
    powers[3].1 = 99;
    let took = wait_computed(&http, &base, &powers[3..4], Duration::from_secs(20)).await;
    println!("the patched power recomputed in {took:?}");

    // The worker dies (no goodbye); 5 powers are created while no worker runs.
    first_worker.child.kill().unwrap();
    first_worker.wait(Duration::from_secs(5)).await;
    let mut late = Vec::new();
    for value in [11, -12, 13, 0, 1_000_000] {
        late.push((create_pending(&http, &base, value).await, value));
    }
    let stored = all_powers(&http, &base).await;
    for (id, _) in &late {
        assert_eq!(stored[id]["status"], "pending", "{id}: {}", stored[id]);
    }

    // A new worker process, started after their events, catches them up.
    let started = Instant::now();
    let _second_worker = worker(&cluster);
    wait_computed(&http, &base, &late, Duration::from_secs(20)).await;
    println!(
        "a new worker caught up 5 missed powers {:?} after it started",
        started.elapsed()
    );
    // Nothing else changed: the first 20 are still computed.
    wait_computed(&http, &base, &powers, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomizer_against_api_and_the_worker_computes_its_powers() {
    let cluster = Cluster::new();
    let _power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let _worker = worker(&cluster);
    let http = client();

    let mut randomizer = cluster.spawn(
        "randomizer",
        &[],
        &[
            "--url",
            &base,
            "--rounds",
            "5",
            "--interval-ms",
            "50",
            "--count",
            "5",
        ],
    );
    let status = randomizer.wait(Duration::from_secs(30)).await;
    let output = randomizer.log();
    assert!(
        status.success(),
        "randomizer: {status}; its output:\n{output}"
    );
    assert!(output.contains("created 5 powers"), "{output}");
    let patched = output.lines().filter(|l| l.ends_with(", pending")).count();
    assert_eq!(patched, 5, "randomizer's output:\n{output}");

    // Every power it created (and patched back to pending) ends computed.
    let started = Instant::now();
    loop {
        let powers = all_powers(&http, &base).await;
        let wrong: Vec<String> = powers
            .iter()
            .filter(|(_, d)| !computed(d, None))
            .map(|(id, d)| format!("{id}: {d}"))
            .collect();
        if powers.len() == 5 && wrong.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} powers, not computed within 20 s:\n{}",
            powers.len(),
            wrong.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "the randomizer's powers computed {:?} after it exited",
        started.elapsed()
    );
}
