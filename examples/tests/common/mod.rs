//! Shared by the process tests: spawning the example binaries in a private cluster, killing
//! them on drop, and small HTTP helpers with deadlines.

#![allow(dead_code, unreachable_pub)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub const HEARTBEAT_MS: u64 = 200;
pub const PEER_TIMEOUT_MS: u64 = 1500;
pub const REQUEST_TIMEOUT_MS: u64 = 1000;

/// One test's cluster: a multicast group of its own on loopback.
pub struct Cluster {
    pub group_port: u16,
}

impl Cluster {
    pub fn new() -> Self {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        Self {
            group_port: socket.local_addr().unwrap().port(),
        }
    }

    /// Starts the example `name` as a member of this cluster.
    pub fn spawn(&self, name: &str, env: &[(&str, String)], args: &[&str]) -> Proc {
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
            // A worker's cursor: this cluster's own, never the working dir's.
            .env(
                "ZS_WORKER_STATE_DIR",
                std::env::temp_dir().join(format!("zs-worker-state-{}", self.group_port)),
            )
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
    pub async fn api(&self) -> (Proc, String) {
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
pub fn example_binary(name: &str) -> PathBuf {
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
pub fn newer_than(dir: &Path, time: SystemTime) -> Option<PathBuf> {
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

pub fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
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
        poll.again(|| {
            format!(
                "{base}/ did not list power within 20 s (last: {last}); api's output:\n{}",
                api.log()
            )
        })
        .await;
    }
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
