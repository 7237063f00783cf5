//! Worker groups and resuming workers (issue 15): two replicas of one worker handle each change
//! once while both live; a replica killed (`kill -9`, a real process over real ZeroMQ sockets
//! and UDP multicast on 127.0.0.1) mid-handler leaves its change to the other after the lease;
//! a restarted worker resumes from its saved cursor without waiting for the poll check; a
//! corrupt state file, an expired cursor and forged claim requests are survived.
//!
//! The killed replicas are this test binary re-executed: `child_worker` below does nothing in
//! a normal run, and runs a worker replica when `ZS_TEST_CHILD` is set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroservices::Limits;
use zeroservices::changes::Retention;
use zeroservices::config::NetworkConfig;
use zeroservices::medium::{Medium, MemoryCluster, Request};
use zeroservices::prelude::*;
use zeroservices::store::MemoryStore;
use zeroservices::worker::{STATE_FILE_NAME, Worker};

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

/// An owner of `job` on `cluster`, over a memory store.
async fn owner(cluster: &MemoryCluster, limits: Limits) -> Node {
    Node::builder("job_service")
        .memory(cluster)
        .shared_store(Arc::new(MemoryStore::new()))
        .limits(limits)
        .resource::<Job>()
        .start()
        .await
        .unwrap()
}

/// Handler runs, per job id, counted across replicas.
type Runs = Arc<Mutex<HashMap<String, u32>>>;

/// A replica of `job_worker` on `cluster` that counts its runs in `runs`, a little slow (so
/// the other replica gets work while this one is busy).
async fn replica(
    cluster: &MemoryCluster,
    dir: &std::path::Path,
    runs: &Runs,
) -> zeroservices::worker::RunningWorker {
    let runs = runs.clone();
    Worker::new("job_worker")
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
        .lease(Duration::from_millis(500))
        .poll_interval(Duration::from_secs(3600))
        .state_dir(dir)
        .start(Node::builder("job_worker").memory(cluster))
        .await
        .unwrap()
}

/// (a) Two live replicas: every change handled exactly once, and both take a share.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_handle_each_change_once() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Limits::default()).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let runs = Runs::default();
    let a = replica(&cluster, dirs[0].path(), &runs).await;
    let b = replica(&cluster, dirs[1].path(), &runs).await;
    let jobs_client = owner.collection::<Job>();
    for n in 0..100 {
        jobs_client.create(job(n)).await.unwrap();
    }
    eventually(Duration::from_secs(30), "100 jobs done", || {
        all_done(&owner, 100)
    })
    .await;
    // The replicas that lost a claim look again after the lease: still nothing runs twice.
    let settle = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = jobs(&owner).await;
    let counted = runs.lock().unwrap().clone();
    assert_eq!(counted.len(), 100);
    for (id, job) in &done {
        assert_eq!(job.runs, 1, "{id}: {job:?}");
        assert_eq!(counted.get(id), Some(&1), "{id}");
    }
    let by_a = done
        .values()
        .filter(|j| j.by.as_deref() == Some(a.node().id()))
        .count();
    let by_b = done
        .values()
        .filter(|j| j.by.as_deref() == Some(b.node().id()))
        .count();
    assert_eq!(by_a + by_b, 100);
    assert!(by_a > 0 && by_b > 0, "shared: {by_a} / {by_b}");
    a.stop().await;
    b.stop().await;
    owner.stop().await;
}

/// (c) A worker that was stopped resumes from its saved cursor: what changed while it was
/// down is handled at once, with a poll interval of an hour; what it handled before is not
/// run again.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_resumes_from_its_cursor() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Limits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::default();
    let jobs_client = owner.collection::<Job>();

    let worker = replica(&cluster, dir.path(), &runs).await;
    for n in 0..5 {
        jobs_client.create(job(n)).await.unwrap();
    }
    eventually(Duration::from_secs(10), "the first 5 done", || {
        all_done(&owner, 5)
    })
    .await;
    worker.stop().await;
    assert!(dir.path().join(STATE_FILE_NAME).exists());

    // While it is down.
    for n in 5..25 {
        jobs_client.create(job(n)).await.unwrap();
    }
    let restarted = Instant::now();
    let worker = replica(&cluster, dir.path(), &runs).await;
    eventually(
        Duration::from_secs(10),
        "the 20 made while down, from the cursor",
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
    worker.stop().await;
    owner.stop().await;
}

/// (d) A corrupt state file: the worker warns, follows from now, and writes a good file.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_state_file_starts_from_now() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Limits::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(STATE_FILE_NAME);
    for garbage in [
        &b"{\"worker\": \"job_worker\", \"cursors\": {\"job\": 3"[..],
        b"\x00\xff\xfe",
        b"[]",
    ] {
        std::fs::write(&file, garbage).unwrap();
        let runs = Runs::default();
        let worker = replica(&cluster, dir.path(), &runs).await;
        let before = jobs(&owner).await.len();
        owner.collection::<Job>().create(job(1)).await.unwrap();
        eventually(Duration::from_secs(10), "a new job handled", || {
            all_done(&owner, before + 1)
        })
        .await;
        worker.stop().await;
        let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(saved["worker"], "job_worker");
        assert!(saved["cursors"]["job"].is_string(), "{saved}");
    }
    // A state dir that cannot be written (a file where the dir should be): the worker runs.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a dir").unwrap();
    let runs = Runs::default();
    let worker = replica(&cluster, &blocked, &runs).await;
    let before = jobs(&owner).await.len();
    owner.collection::<Job>().create(job(2)).await.unwrap();
    eventually(
        Duration::from_secs(10),
        "handled without a state dir",
        || all_done(&owner, before + 1),
    )
    .await;
    worker.stop().await;
    owner.stop().await;
}

/// (d) A cursor older than the change log keeps: the worker warns, follows from now, and the
/// poll check catches up what it missed.
#[tokio::test(flavor = "multi_thread")]
async fn an_expired_cursor_falls_back_to_the_poll_check() {
    let cluster = MemoryCluster::new();
    let limits = Limits {
        change_log: Retention {
            max_entries: 3,
            ..Retention::default()
        },
        ..Limits::default()
    };
    let owner = owner(&cluster, limits).await;
    let dir = tempfile::tempdir().unwrap();
    let runs = Runs::default();
    let jobs_client = owner.collection::<Job>();
    let worker = replica(&cluster, dir.path(), &runs).await;
    jobs_client.create(job(0)).await.unwrap();
    eventually(Duration::from_secs(10), "the first done", || {
        all_done(&owner, 1)
    })
    .await;
    worker.stop().await;
    // Ten changes while down: the log keeps the last 3.
    for n in 1..11 {
        jobs_client.create(job(n)).await.unwrap();
    }
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
        .poll_interval(Duration::from_millis(300))
        .state_dir(dir.path())
        .start(Node::builder("job_worker").memory(&cluster))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "caught up by the poll check",
        || all_done(&owner, 11),
    )
    .await;
    // And it follows live changes from now.
    jobs_client.create(job(11)).await.unwrap();
    eventually(Duration::from_secs(10), "a live one", || {
        all_done(&owner, 12)
    })
    .await;
    assert!(jobs(&owner).await.values().all(|j| j.runs == 1));
    worker.stop().await;
    owner.stop().await;
}

/// A raw `zeroservices.claim` request to `owner`, as a peer would send it.
async fn claim(cluster: &MemoryCluster, owner: &Node, action: &str, args: Value) -> Result<Value> {
    let medium = cluster.medium();
    medium
        .call(
            &owner.info(),
            Request::new("zeroservices.claim", action).args(args),
        )
        .await
}

fn claim_args(holder: &str, lease_ms: u64) -> Value {
    json!({"collection": "job", "worker": "w", "resource_id": "r1", "version": 1,
           "holder": holder, "lease_ms": lease_ms})
}

/// The claims at the owner: one holder at a time, renewed by its holder, released only by it,
/// taken over when its lease runs out, done once completed.
#[tokio::test(flavor = "multi_thread")]
async fn claims_hold_one_replica_at_a_time() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Limits::default()).await;
    let state = |v: Value| v["state"].as_str().unwrap().to_owned();
    let won = claim(&cluster, &owner, "claim", claim_args("a", 60_000)).await;
    assert_eq!(state(won.unwrap()), "won");
    let held = claim(&cluster, &owner, "claim", claim_args("b", 60_000))
        .await
        .unwrap();
    assert_eq!(held, json!({"state": "held", "by": "a"}));
    // Renewed by its holder; another's release leaves it alone.
    let renewed = claim(&cluster, &owner, "claim", claim_args("a", 60_000)).await;
    assert_eq!(state(renewed.unwrap()), "won");
    claim(&cluster, &owner, "release", claim_args("b", 0))
        .await
        .unwrap();
    let held = claim(&cluster, &owner, "claim", claim_args("b", 60_000)).await;
    assert_eq!(state(held.unwrap()), "held");
    // Released by its holder: free.
    claim(&cluster, &owner, "release", claim_args("a", 0))
        .await
        .unwrap();
    let won = claim(&cluster, &owner, "claim", claim_args("b", 100)).await;
    assert_eq!(state(won.unwrap()), "won");
    // A lease not renewed runs out: another takes the change over.
    let later = Instant::now() + Duration::from_millis(200);
    while Instant::now() < later {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken = claim(&cluster, &owner, "claim", claim_args("a", 60_000)).await;
    assert_eq!(state(taken.unwrap()), "won");
    claim(&cluster, &owner, "complete", claim_args("a", 0))
        .await
        .unwrap();
    let done = claim(&cluster, &owner, "claim", claim_args("b", 60_000)).await;
    assert_eq!(state(done.unwrap()), "done");
    owner.stop().await;
}

/// (d) Forged claim requests: unknown actions and fields, huge or empty parts, a collection
/// the node does not own, a request key smuggled in: all refused with a 4xx, and the owner
/// keeps serving; a lease of a year is cut to the maximum.
#[tokio::test(flavor = "multi_thread")]
async fn forged_claims_are_refused() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Limits::default()).await;
    let huge = "x".repeat(100_000);
    let mut cases = vec![
        ("steal", claim_args("a", 1)),
        ("claim", json!({"collection": "job"})),
        ("claim", json!([1, 2, 3])),
        ("claim", Value::Null),
    ];
    for (field, value) in [
        ("worker", json!(huge)),
        ("holder", json!(huge)),
        ("resource_id", json!(huge)),
        ("worker", json!("")),
        ("holder", json!("")),
        ("collection", json!("other")),
        ("key", json!("req:1")),
        ("version", json!(-1)),
        ("lease_ms", json!("soon")),
    ] {
        let mut args = claim_args("a", 1000);
        args[field] = value;
        cases.push(("claim", args));
    }
    for (action, args) in cases {
        let e = claim(&cluster, &owner, action, args.clone())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                "bad_request" | "unknown_collection" | "validation"
            ),
            "{action} {:.80}: {e:?}",
            args.to_string()
        );
    }
    let year = claim(
        &cluster,
        &owner,
        "claim",
        claim_args("a", 365 * 24 * 3_600_000),
    )
    .await
    .unwrap();
    assert_eq!(year["state"], "won");
    // The owner still serves.
    let id = owner.collection::<Job>().create(job(1)).await.unwrap();
    assert_eq!(owner.collection::<Job>().get(&id).await.unwrap().n, 1);
    owner.stop().await;
}

/// One test's cluster over the network: its own multicast group port on loopback.
struct Net {
    port: u16,
}

impl Net {
    fn new() -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self { port }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("ZS_DISCOVERY_INTERFACE".into(), "127.0.0.1".into()),
            (
                "ZS_MULTICAST_GROUP".into(),
                format!("237.252.249.227:{}", self.port),
            ),
            ("ZS_HEARTBEAT_MS".into(), "200".into()),
            ("ZS_PEER_TIMEOUT_MS".into(), "1500".into()),
            ("ZS_REQUEST_TIMEOUT_MS".into(), "1000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    fn config(&self) -> NetworkConfig {
        NetworkConfig {
            interface: "127.0.0.1".parse().unwrap(),
            multicast_group: format!("237.252.249.227:{}", self.port).parse().unwrap(),
            request_timeout: Duration::from_millis(1000),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_millis(1500),
            ..NetworkConfig::default()
        }
    }
}

/// What a child replica printed, and when the test read it.
type Lines = Arc<Mutex<Vec<(Instant, String)>>>;

/// A child process running a replica of `job_worker`; killed (SIGKILL) when dropped.
struct ChildWorker {
    child: Child,
    id: String,
    lines: Lines,
}

impl ChildWorker {
    fn spawn(net: &Net, state_dir: &std::path::Path, hang: bool) -> Self {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "child_worker", "--nocapture", "--test-threads=1"])
            .env("ZS_TEST_CHILD", "worker")
            .env("ZS_TEST_HANG", if hang { "1" } else { "0" })
            .env("ZS_WORKER_LEASE_MS", "1000")
            .env("ZS_WORKER_POLL_MS", "3600000")
            .env("ZS_WORKER_STATE_DIR", state_dir)
            .envs(net.env())
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
                if let Some((_, id)) = line.split_once("READY ") {
                    let _ = tx.send(id.trim().to_owned());
                }
                seen.lock().unwrap().push((Instant::now(), line));
            }
        });
        let id = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child worker did not start within 30 s");
        Self { child, id, lines }
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

    /// `kill -9`: no goodbye, no release, no saved cursor.
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
        worker.node().sync_subscriptions().await;
        // libtest's "test child_worker ... " has no newline yet.
        println!("\nREADY {}", worker.node().id());
        std::future::pending::<()>().await;
    });
}

/// (b) A replica killed mid-handler leaves its change to the other, which handles it once the
/// lease ran out (and not before): every job ends done exactly once, by the survivor.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_killed_mid_handler_leaves_its_change_to_the_other() {
    let net = Net::new();
    let owner = Node::builder("job_service")
        .network(net.config())
        .shared_store(Arc::new(MemoryStore::new()))
        .resource::<Job>()
        .start()
        .await
        .unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut doomed = ChildWorker::spawn(&net, dirs[0].path(), true);
    let survivor = ChildWorker::spawn(&net, dirs[1].path(), false);
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
        "the doomed replica starts a job",
        || {
            let started = !doomed.started().is_empty();
            async move { started }
        },
    )
    .await;
    // Let the doomed replica take what it can (its handlers hang), then kill it.
    eventually(
        Duration::from_secs(10),
        "every job taken by someone",
        || {
            let taken = doomed.started().len() + survivor.started().len() >= 10;
            async move { taken }
        },
    )
    .await;
    let taken_by_doomed: Vec<String> = doomed.started().into_iter().map(|(_, id)| id).collect();
    doomed.kill();
    let killed = Instant::now();
    // Polled by hand so that a failure shows where every job stands.
    let deadline = killed + Duration::from_secs(30);
    while !all_done(&owner, 10).await {
        assert!(
            Instant::now() < deadline,
            "10 jobs done by the survivor: not within 30 s of the kill; doomed took \
             {taken_by_doomed:?}; the survivor started {:?}; the jobs: {:?}",
            survivor.started(),
            jobs(&owner).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = jobs(&owner).await;
    for (id, job) in &done {
        assert_eq!(job.runs, 1, "{id}: {job:?}");
        assert_eq!(job.by.as_deref(), Some(survivor.id.as_str()), "{id}");
    }
    // The survivor ran the doomed replica's jobs only after the kill (while it held them, it
    // waited), and each once.
    let survivor_started = survivor.started();
    for id in &taken_by_doomed {
        let runs: Vec<&Instant> = survivor_started
            .iter()
            .filter(|(_, s)| s == id)
            .map(|(at, _)| at)
            .collect();
        assert_eq!(runs.len(), 1, "{id} run by the survivor: {runs:?}");
        assert!(
            *runs[0] > killed,
            "{id} run while the other replica held it"
        );
    }
    assert!(!taken_by_doomed.is_empty());
    drop(survivor);
    owner.stop().await;
}
