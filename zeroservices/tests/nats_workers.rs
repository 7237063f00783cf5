//! Worker groups over NATS JetStream (issue 16): the replicas of one worker share one durable
//! pull consumer of the change-log stream. Two replicas on separate nodes share 100 changes,
//! each handled once; a replica `kill -9`ed mid-handler (a real process) leaves its change to
//! the other after `ack_wait` (the lease) and not before; a worker restarted after changes
//! were made while it was down handles them with a poll interval of an hour, with no state
//! file; entries forged into the stream (garbage, unsealed, altered, moved, sealed under
//! another key) are dropped, counted and terminated while the worker keeps going; a server
//! without JetStream leaves the worker on the claims at the owners.
//!
//! These tests are `#[ignore]`d: they need a `nats-server` with JetStream (`ZS_TEST_NATS_URL`,
//! started by `scripts/test.sh` with `-js`), and the last one the executable
//! (`ZS_TEST_NATS_SERVER`) to run a server without JetStream. Each test uses a cluster prefix
//! of its own. The killed replicas are this test binary re-executed: `child_worker` does
//! nothing in a normal run, and runs a replica when `ZS_TEST_CHILD` is set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use zeroservices::config::NetworkConfig;
use zeroservices::prelude::*;
use zeroservices::store::MemoryStore;
use zeroservices::worker::{RunningWorker, STATE_FILE_NAME, Worker};

mod nats_common;
use nats_common::{OwnServer, fresh_cluster, nats_server_bin, nats_url};

/// The shared settings, with a longer peer timeout (replicas are child processes).
fn config(url: &str, cluster: &str, key: Option<&str>) -> NetworkConfig {
    NetworkConfig {
        peer_timeout: Duration::from_millis(1500),
        ..nats_common::config(url, cluster, key)
    }
}

/// A job to do once.
#[resource(collection = "job")]
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its number.
    pub n: i64,
    /// Done by some replica.
    #[serde(default)]
    pub done: bool,
    /// How many times a handler ran on it (each run adds one).
    #[serde(default)]
    pub runs: i64,
    /// The node id of the replica that did it.
    pub by: Option<String>,
}

fn job(n: i64) -> Job {
    Job {
        n,
        done: false,
        runs: 0,
        by: None,
    }
}

/// The handler: one more run, done, by this replica.
async fn do_job(ctx: &Context, id: &str) -> Result<()> {
    let by = ctx.node().id().to_owned();
    ctx.collection::<Job>()
        .patch(
            id,
            patch!({"$inc": {"runs": 1}, "$set": {"done": true, "by": by}}),
        )
        .await?;
    Ok(())
}

/// An owner of `job` over a memory store.
async fn owner(config: &NetworkConfig) -> Node {
    Node::builder("job_service")
        .network(config.clone())
        .shared_store(Arc::new(MemoryStore::new()))
        .resource::<Job>()
        .start()
        .await
        .unwrap()
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits `d` while the runtime runs (a bounded settle, not a condition).
async fn settle(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The jobs, by id.
async fn jobs(node: &Node) -> HashMap<String, Job> {
    node.collection::<Job>()
        .list(Query::all())
        .await
        .unwrap()
        .into_iter()
        .map(|d| (d.resource_id, d.resource_data))
        .collect()
}

async fn all_done(node: &Node, n: usize) -> bool {
    let jobs = jobs(node).await;
    jobs.len() == n && jobs.values().all(|j| j.done)
}

/// Handler runs, per job id, counted across replicas.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// A replica of `job_worker` on its own node, counting its runs in `runs`; a little slow, so
/// the other replica gets work while this one is busy.
async fn replica(config: &NetworkConfig, runs: &Runs, state: &std::path::Path) -> RunningWorker {
    let runs = runs.clone();
    let worker = Worker::new("job_worker")
        .on::<Job, _, _>(
            query!({"done": false}),
            move |ctx: Context, change: Change<Job>| {
                let runs = runs.clone();
                async move {
                    *runs
                        .lock()
                        .unwrap()
                        .entry(change.resource_id.clone())
                        .or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    do_job(&ctx, &change.resource_id).await
                }
            },
        )
        .concurrency(2)
        .lease(Duration::from_millis(1000))
        .poll_interval(Duration::from_secs(3600))
        .state_dir(state)
        .start(Node::builder("job_worker").network(config.clone()))
        .await
        .unwrap();
    assert!(
        worker.stream_stats().is_some(),
        "the worker consumes the JetStream change-log stream"
    );
    worker
}

/// Two replicas on separate nodes share 100 changes: each handled once in total, and both get
/// some.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn two_replicas_share_100_changes_each_handled_once() {
    let url = nats_url("two_replicas_share_100_changes_each_handled_once");
    let config = config(&url, &fresh_cluster(), None);
    let owner = owner(&config).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let runs = Runs::default();
    let a = replica(&config, &runs, dirs[0].path()).await;
    let b = replica(&config, &runs, dirs[1].path()).await;
    let jobs_client = owner.collection::<Job>();
    for n in 0..100 {
        jobs_client.create(job(n)).await.unwrap();
    }
    eventually(Duration::from_secs(30), "100 jobs done", || {
        all_done(&owner, 100)
    })
    .await;
    // Longer than the lease: nothing is redelivered and run again.
    settle(Duration::from_millis(2500)).await;
    let done = jobs(&owner).await;
    let counted = runs.lock().unwrap().clone();
    assert_eq!(counted.len(), 100);
    for (id, job) in &done {
        assert_eq!(job.runs, 1, "{id}: {job:?}");
        assert_eq!(counted.get(id), Some(&1), "{id}");
    }
    let by = |w: &RunningWorker| {
        done.values()
            .filter(|j| j.by.as_deref() == Some(w.node().id()))
            .count()
    };
    let (by_a, by_b) = (by(&a), by(&b));
    assert_eq!(by_a + by_b, 100);
    assert!(by_a > 0 && by_b > 0, "shared: {by_a} / {by_b}");
    let (sa, sb) = (a.stream_stats().unwrap(), b.stream_stats().unwrap());
    // One creation, one entry each; a patch's entry (done: true) no longer matches: acked.
    assert!(sa.delivered + sb.delivered >= 100, "{sa:?} {sb:?}");
    assert_eq!(sa.redelivered + sb.redelivered, 0, "{sa:?} {sb:?}");
    assert_eq!(sa.dropped + sb.dropped, 0);
    // No cursor file: the durable consumer is the position.
    for dir in &dirs {
        assert!(!dir.path().join(STATE_FILE_NAME).exists());
    }
    a.stop().await;
    b.stop().await;
    owner.stop().await;
}

/// What a child replica printed, and when the test read it.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A child process running a replica of `job_worker` over NATS; killed (SIGKILL) when dropped.
struct ChildWorker {
    child: Child,
    id: String,
    lines: Lines,
}

impl ChildWorker {
    fn spawn(url: &str, cluster: &str, hang: bool) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
            .env("ZS_TEST_CHILD", "worker")
            .env("ZS_TEST_HANG", if hang { "1" } else { "0" })
            .env("ZS_TRANSPORT", url)
            .env("ZS_CLUSTER", cluster)
            .env("ZS_HEARTBEAT_MS", "200")
            .env("ZS_PEER_TIMEOUT_MS", "1500")
            .env("ZS_REQUEST_TIMEOUT_MS", "1500")
            .env("ZS_WORKER_LEASE_MS", "1000")
            .env("ZS_WORKER_POLL_MS", "3600000")
            .env("ZS_WORKER_STATE_DIR", "off")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Lines::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let seen = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if let Some((_, rest)) = line.split_once("READY ") {
                    let _ = tx.send(rest.trim().to_owned());
                }
                seen.lock().unwrap().push((Instant::now(), line));
            }
        });
        let ready = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child worker did not start within 30 s");
        let (id, stream) = ready.split_once(' ').unwrap_or((&ready, ""));
        assert_eq!(
            stream, "jetstream",
            "the child consumes the stream: {ready}"
        );
        Self {
            child,
            id: id.to_owned(),
            lines,
        }
    }

    /// The ids this replica started a handler on, with when the test saw it.
    fn started(&self) -> Vec<(Instant, String)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, l)| {
                l.split_once("START ")
                    .map(|(_, id)| (*at, id.trim().to_owned()))
            })
            .collect()
    }

    /// `kill -9`: no ack, no nak, no goodbye.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Not a test: the body of the child replicas.
#[test]
fn child_worker() {
    let Ok(role) = std::env::var("ZS_TEST_CHILD") else {
        return;
    };
    assert_eq!(role, "worker");
    let hang = std::env::var("ZS_TEST_HANG").as_deref() == Ok("1");
    // Exit when the parent closes our stdin (or dies).
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let worker = Worker::new("job_worker")
            .on::<Job, _, _>(
                query!({"done": false}),
                move |ctx: Context, change: Change<Job>| async move {
                    println!("START {}", change.resource_id);
                    if hang {
                        // Dies here: the parent kills this process mid-handler.
                        std::future::pending::<()>().await;
                    }
                    do_job(&ctx, &change.resource_id).await?;
                    println!("DONE {}", change.resource_id);
                    Ok(())
                },
            )
            .start(Node::builder("job_worker").network_from_env().unwrap())
            .await
            .unwrap();
        worker
            .node()
            .wait_for_collection("job", Duration::from_secs(20))
            .await
            .unwrap();
        let stream = if worker.stream_stats().is_some() {
            "jetstream"
        } else {
            "claims"
        };
        // libtest's "test child_worker ... " has no newline yet.
        println!("\nREADY {} {stream}", worker.node().id());
        std::future::pending::<()>().await;
    });
}

/// A replica killed mid-handler: its entries are redelivered to the other after `ack_wait`
/// (the lease, 1 s) and not before: while it lived, its progress acks held them for more than
/// two leases. Every job ends done exactly once, by the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn a_replica_killed_mid_handler_is_redelivered_after_ack_wait() {
    let url = nats_url("a_replica_killed_mid_handler_is_redelivered_after_ack_wait");
    let cluster = fresh_cluster();
    let config = config(&url, &cluster, None);
    let owner = owner(&config).await;
    let mut doomed = ChildWorker::spawn(&url, &cluster, true);
    let survivor = ChildWorker::spawn(&url, &cluster, false);
    eventually(Duration::from_secs(10), "both replicas watch job", || {
        let watchers = owner.watchers("job").len();
        async move { watchers == 2 }
    })
    .await;
    let jobs_client = owner.collection::<Job>();
    for n in 0..10 {
        jobs_client.create(job(n)).await.unwrap();
    }
    eventually(
        Duration::from_secs(10),
        "every job taken by someone",
        || {
            let taken = doomed.started().len() + survivor.started().len() >= 10;
            async move { taken }
        },
    )
    .await;
    let taken_by_doomed: Vec<(Instant, String)> = doomed.started();
    assert!(!taken_by_doomed.is_empty(), "the doomed replica took none");
    // Held past two leases by progress acks: nobody else runs them meanwhile.
    settle(Duration::from_millis(2500)).await;
    let survivor_so_far: Vec<String> = survivor.started().into_iter().map(|(_, id)| id).collect();
    for (_, id) in &taken_by_doomed {
        assert!(
            !survivor_so_far.contains(id),
            "{id} ran on the survivor while the doomed replica held it"
        );
    }
    doomed.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(20),
        "10 jobs done by the survivor",
        || all_done(&owner, 10),
    )
    .await;
    let done = jobs(&owner).await;
    for (id, job) in &done {
        assert_eq!(job.runs, 1, "{id}: {job:?}");
        assert_eq!(job.by.as_deref(), Some(survivor.id.as_str()), "{id}");
    }
    let survivor_started = survivor.started();
    for (_, id) in &taken_by_doomed {
        let runs: Vec<Instant> = survivor_started
            .iter()
            .filter(|(_, s)| s == id)
            .map(|(at, _)| *at)
            .collect();
        assert_eq!(runs.len(), 1, "{id} run by the survivor: {runs:?}");
        // Redelivered once its ack_wait ran out after the last progress ack (at most a third
        // of a lease before the kill).
        let after = runs[0].duration_since(killed);
        assert!(
            after >= Duration::from_millis(500),
            "{id} redelivered {after:?} after the kill: before ack_wait"
        );
    }
    drop(survivor);
    owner.stop().await;
}

/// A worker restarted after changes were made while it was down handles them at once with a
/// poll interval of an hour: the durable consumer remembers where the group was; no state
/// file is written, and nothing handled before runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn a_restarted_worker_resumes_from_its_durable_consumer() {
    let url = nats_url("a_restarted_worker_resumes_from_its_durable_consumer");
    let config = config(&url, &fresh_cluster(), None);
    let owner = owner(&config).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::default();
    let jobs_client = owner.collection::<Job>();
    let worker = replica(&config, &runs, dir.path()).await;
    for n in 0..5 {
        jobs_client.create(job(n)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "the first 5 done", || {
        all_done(&owner, 5)
    })
    .await;
    worker.stop().await;
    for n in 5..25 {
        jobs_client.create(job(n)).await.unwrap();
    }
    let restarted = Instant::now();
    let worker = replica(&config, &runs, dir.path()).await;
    eventually(
        Duration::from_secs(15),
        "the 20 made while down, from the consumer",
        || all_done(&owner, 25),
    )
    .await;
    assert!(
        restarted.elapsed() < Duration::from_secs(60),
        "not the poll"
    );
    let counted = runs.lock().unwrap().clone();
    assert_eq!(counted.len(), 25);
    assert!(counted.values().all(|&n| n == 1), "{counted:?}");
    assert!(jobs(&owner).await.values().all(|j| j.runs == 1));
    assert!(!dir.path().join(STATE_FILE_NAME).exists(), "no state file");
    worker.stop().await;
    owner.stop().await;
}

/// Entries forged into the stream on the collection's subjects: garbage, an unsealed envelope
/// in a keyed cluster, a sealed entry altered, a sealed entry copied to another subject, an
/// entry sealed under another key. Each is dropped, counted and terminated (not redelivered),
/// and the worker keeps handling real changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn entries_forged_into_the_stream_are_dropped_and_not_redelivered() {
    let url = nats_url("entries_forged_into_the_stream_are_dropped_and_not_redelivered");
    let cluster = fresh_cluster();
    let config = config(&url, &cluster, Some("right-key"));
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let mut log = raw.subscribe(format!("{cluster}.log.>")).await.unwrap();
    raw.flush().await.unwrap();
    let owner = owner(&config).await;
    let runs = Runs::default();
    let dir = tempfile::tempdir().unwrap();
    let worker = replica(&config, &runs, dir.path()).await;
    owner.collection::<Job>().create(job(0)).await.unwrap();
    eventually(Duration::from_secs(10), "the first job done", || {
        all_done(&owner, 1)
    })
    .await;
    // Its entry as stored: subject `<p>.log.<collection>.<log>.<seq>`, sealed payload.
    let entry = tokio::time::timeout(Duration::from_secs(5), log.next())
        .await
        .expect("an entry on the stream's subjects")
        .unwrap();
    let subject = entry.subject.to_string();
    let parts: Vec<&str> = subject.split('.').collect();
    assert_eq!(parts.len(), 5, "{subject}");
    let (collection, log_token) = (parts[2], parts[3]);
    let sealed = entry.payload.to_vec();
    assert!(!sealed.starts_with(b"{"), "ciphertext on the stream");

    // The same entry from a cluster under another key (same prefix, its own subjects).
    let other = self::config(&url, &cluster, Some("wrong-key"));
    let stranger = Node::builder("job_service")
        .network(other)
        .shared_store(Arc::new(MemoryStore::new()))
        .resource::<Job>()
        .start()
        .await
        .unwrap();
    stranger.collection::<Job>().create(job(99)).await.unwrap();
    let foreign = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), log.next())
            .await
            .expect("the stranger's entry")
            .unwrap();
        if m.subject.split('.').nth(2) != Some(collection) {
            break m.payload.to_vec();
        }
    };
    let mut altered = sealed.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let envelope = br#"{"v":3,"kind":"event","from":"x","topic":"job.create.forged","data":{"resource_id":"forged","action":"create","resource_data":{"n":1,"done":false,"runs":0},"version":1}}"#.to_vec();
    let forged: Vec<(u64, Vec<u8>)> = vec![
        (9_001, b"\x00\x01garbage".to_vec()),
        (9_002, envelope),
        (9_003, altered),
        (9_004, sealed.clone()),
        (9_005, foreign),
    ];
    let js = async_nats::jetstream::new(raw.clone());
    for (seq, payload) in &forged {
        js.publish(
            format!("{cluster}.log.{collection}.{log_token}.{seq}"),
            payload.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), "5 forged entries dropped", || {
        let dropped = worker.stream_stats().unwrap().dropped;
        async move { dropped == 5 }
    })
    .await;
    // The worker keeps going.
    owner.collection::<Job>().create(job(1)).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "a real job after the forgeries",
        || all_done(&owner, 2),
    )
    .await;
    // Terminated, not redelivered: more than two leases later, still 5 and no redelivery.
    settle(Duration::from_millis(2500)).await;
    let stats = worker.stream_stats().unwrap();
    assert_eq!(stats.dropped, 5, "{stats:?}");
    assert_eq!(stats.redelivered, 0, "{stats:?}");
    assert!(!runs.lock().unwrap().contains_key("forged"));
    assert!(jobs(&owner).await.values().all(|j| j.runs == 1));
    worker.stop().await;
    stranger.stop().await;
    owner.stop().await;
}

/// A NATS server without JetStream: the worker warns and claims changes at the owners as over
/// ZeroMQ; its changes are still handled, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn without_jetstream_a_worker_claims_at_the_owners() {
    let server = OwnServer::start(
        &nats_server_bin("without_jetstream_a_worker_claims_at_the_owners"),
        false,
    );
    let url = server.url();
    let config = config(&url, &fresh_cluster(), None);
    let owner = owner(&config).await;
    let runs = Runs::default();
    let dir = tempfile::tempdir().unwrap();
    let runs2 = runs.clone();
    let worker = Worker::new("job_worker")
        .on::<Job, _, _>(
            query!({"done": false}),
            move |ctx: Context, change: Change<Job>| {
                let runs = runs2.clone();
                async move {
                    *runs
                        .lock()
                        .unwrap()
                        .entry(change.resource_id.clone())
                        .or_default() += 1;
                    do_job(&ctx, &change.resource_id).await
                }
            },
        )
        .poll_interval(Duration::from_secs(3600))
        .state_dir(dir.path())
        .start(Node::builder("job_worker").network(config.clone()))
        .await
        .unwrap();
    assert!(worker.stream_stats().is_none(), "no JetStream: no consumer");
    worker
        .node()
        .wait_for_collection("job", Duration::from_secs(10))
        .await
        .unwrap();
    worker.node().sync_subscriptions().await;
    for n in 0..5 {
        owner.collection::<Job>().create(job(n)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "5 jobs done by claims", || {
        all_done(&owner, 5)
    })
    .await;
    assert!(runs.lock().unwrap().values().all(|&n| n == 1));
    worker.stop().await;
    // The claims path keeps its cursor file.
    assert!(dir.path().join(STATE_FILE_NAME).exists());
    owner.stop().await;
}
