//! Stopping a node drains what is in flight: requests from peers, HTTP requests and worker
//! handlers finish and their effects land; work that never ends does not hold the node past
//! its shutdown timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore};
use zeroservices::http::{HttpConfig, serve};
use zeroservices::medium::{MemoryCluster, Request};
use zeroservices::prelude::*;
use zeroservices::worker::Worker;

/// Where a slow handler says it started, and waits to be let go.
struct Gate {
    started: Notify,
    release: Semaphore,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            started: Notify::new(),
            release: Semaphore::new(0),
        }
    }
}

/// One gate per job value: the tests of this file run at the same time.
static GATES: LazyLock<Mutex<HashMap<i64, Arc<Gate>>>> = LazyLock::new(Default::default);
static NEXT: AtomicI64 = AtomicI64::new(1);

fn gate(value: i64) -> Arc<Gate> {
    GATES
        .lock()
        .unwrap()
        .entry(value)
        .or_insert_with(|| Arc::new(Gate::default()))
        .clone()
}

/// A fresh job with its own gate.
fn job() -> (Job, Arc<Gate>) {
    let value = NEXT.fetch_add(1, Ordering::Relaxed);
    (Job { value, done: false }, gate(value))
}

impl Gate {
    /// Says it started, then waits until released (forever when it never is).
    async fn pass(&self) {
        self.started.notify_one();
        self.release.acquire().await.unwrap().forget();
    }

    async fn wait_started(&self) {
        tokio::time::timeout(Duration::from_secs(10), self.started.notified())
            .await
            .expect("the slow handler started");
    }
}

/// A job some slow handler works on.
#[resource(collection = "job")]
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its gate's key.
    pub value: i64,
    /// Set by the slow handler when it ends.
    #[serde(default)]
    pub done: bool,
}

#[actions]
impl Job {
    /// Waits at the gate, then marks the job done.
    #[action]
    async fn slow(&mut self) -> Result<i64> {
        gate(self.value).pass().await;
        self.done = true;
        Ok(self.value)
    }
}

async fn owner(cluster: &MemoryCluster, shutdown: Duration) -> Node {
    Node::builder("job_service")
        .memory(cluster)
        .resource::<Job>()
        .shutdown_timeout(shutdown)
        .start()
        .await
        .unwrap()
}

async fn client(cluster: &MemoryCluster) -> Node {
    let node = Node::builder("client")
        .memory(cluster)
        .request_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    node.wait_for_collection("job", Duration::from_secs(5))
        .await
        .unwrap();
    node
}

async fn stored(node: &Node, id: &str) -> Job {
    let doc = node.store().get("job", id).await.unwrap().expect("stored");
    serde_json::from_value(doc).unwrap()
}

#[tokio::test]
async fn a_request_from_a_peer_in_flight_finishes_and_its_effect_lands() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Duration::from_secs(10)).await;
    let client = client(&cluster).await;
    let (job, gate) = job();
    let value = job.value;
    let id = owner.collection::<Job>().create(job).await.unwrap();
    let call = {
        let (client, id) = (client.clone(), id.clone());
        tokio::spawn(async move {
            client
                .collection::<Job>()
                .call::<i64>(&id, "slow", ())
                .await
        })
    };
    gate.wait_started().await;
    let stop = tokio::spawn({
        let owner = owner.clone();
        async move { owner.stop().await }
    });
    // The node is stopping: new requests from peers are refused.
    tokio::time::timeout(Duration::from_secs(10), owner.stopping())
        .await
        .unwrap();
    let mut stop = stop;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stop)
            .await
            .is_err(),
        "stop waits for the request in flight"
    );
    gate.release.add_permits(1);
    assert_eq!(call.await.unwrap().unwrap(), value, "the reply arrives");
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stop ends once the request is answered")
        .unwrap();
    assert!(stored(&owner, &id).await.done, "the effect is stored");
    client.stop().await;
}

#[tokio::test]
async fn a_request_that_never_ends_does_not_hold_stop_past_the_timeout() {
    let cluster = MemoryCluster::new();
    let timeout = Duration::from_millis(300);
    let owner = owner(&cluster, timeout).await;
    let client = client(&cluster).await;
    let (job, gate) = job();
    let id = owner.collection::<Job>().create(job).await.unwrap();
    let _call = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .collection::<Job>()
                .call::<i64>(&id, "slow", ())
                .await
        }
    });
    gate.wait_started().await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), owner.stop())
        .await
        .expect("stop is bounded by the shutdown timeout");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    client.stop().await;
}

#[tokio::test]
async fn an_http_request_in_flight_finishes_and_new_connections_are_refused() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Duration::from_secs(10)).await;
    let server = serve(owner.clone(), HttpConfig::new(0)).await.unwrap();
    let addr = server.local_addr();
    let (job, gate) = job();
    let value = job.value;
    let id = owner.collection::<Job>().create(job).await.unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let call = tokio::spawn({
        let url = format!("http://{addr}/job/{id}/slow");
        let http = http.clone();
        async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    });
    gate.wait_started().await;
    let stop = tokio::spawn({
        let owner = owner.clone();
        async move { owner.stop().await }
    });
    // HTTP stops accepting while the request in flight runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "HTTP still accepts connections");
        tokio::task::yield_now().await;
    }
    let mut stop = stop;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stop)
            .await
            .is_err(),
        "stop waits for the HTTP request in flight"
    );
    gate.release.add_permits(1);
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body), (200, value.to_string()));
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stop ends once the response is sent")
        .unwrap();
    assert!(stored(&owner, &id).await.done);
    server.shutdown().await;
}

/// Waits at the job's gate, then marks it done through the owner.
async fn finish(ctx: Context, change: Change<Job>) -> Result<()> {
    let Some(job) = change.data else {
        return Ok(());
    };
    gate(job.value).pass().await;
    ctx.collection::<Job>()
        .patch(&change.resource_id, patch!({"$set": {"done": true}}))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_worker_handler_in_flight_finishes() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Duration::from_secs(10)).await;
    let worker = Worker::new("job_worker")
        .without_state()
        .on::<Job, _, _>(query!({"done": false}), finish)
        .poll_interval(Duration::from_secs(3600))
        .start(
            Node::builder("job_worker")
                .memory(&cluster)
                .shutdown_timeout(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    worker
        .node()
        .wait_for_collection("job", Duration::from_secs(5))
        .await
        .unwrap();
    let (job, gate) = job();
    let id = owner.collection::<Job>().create(job).await.unwrap();
    gate.wait_started().await;
    let stopping = worker.node().stopping();
    let stop = tokio::spawn(worker.stop());
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap();
    let mut stop = stop;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut stop)
            .await
            .is_err(),
        "stop waits for the running handler"
    );
    gate.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .expect("stop ends once the handler is done")
        .unwrap();
    assert!(stored(&owner, &id).await.done, "the handler's patch landed");
    owner.stop().await;
}

#[tokio::test]
async fn a_worker_handler_that_never_ends_does_not_hold_stop() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Duration::from_secs(10)).await;
    let timeout = Duration::from_millis(300);
    let worker = Worker::new("job_worker")
        .without_state()
        .on::<Job, _, _>(query!({"done": false}), finish)
        .poll_interval(Duration::from_secs(3600))
        .start(
            Node::builder("job_worker")
                .memory(&cluster)
                .shutdown_timeout(timeout),
        )
        .await
        .unwrap();
    worker
        .node()
        .wait_for_collection("job", Duration::from_secs(5))
        .await
        .unwrap();
    let (job, gate) = job();
    owner.collection::<Job>().create(job).await.unwrap();
    gate.wait_started().await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), worker.stop())
        .await
        .expect("stop is bounded by the shutdown timeout");
    assert!(started.elapsed() >= timeout, "{:?}", started.elapsed());
    owner.stop().await;
}

#[tokio::test]
async fn a_stopping_node_refuses_new_requests_from_peers() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Duration::from_secs(10)).await;
    let client = client(&cluster).await;
    let (job, gate) = job();
    let id = owner.collection::<Job>().create(job).await.unwrap();
    let _call = tokio::spawn({
        let (client, id) = (client.clone(), id.clone());
        async move {
            client
                .collection::<Job>()
                .call::<i64>(&id, "slow", ())
                .await
        }
    });
    gate.wait_started().await;
    let stop = tokio::spawn({
        let owner = owner.clone();
        async move { owner.stop().await }
    });
    tokio::time::timeout(Duration::from_secs(10), owner.stopping())
        .await
        .unwrap();
    let err = client
        .request(Request::new("job", "get").id(&id))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable { .. } | Error::OwnerGone { .. } | Error::UnknownCollection { .. }
        ),
        "{err:?}"
    );
    gate.release.add_permits(1);
    tokio::time::timeout(Duration::from_secs(10), stop)
        .await
        .unwrap()
        .unwrap();
    client.stop().await;
}

/// A discovery whose `stop` never returns (a socket or a peer that hangs it).
struct StuckDiscovery(zeroservices::medium::MemoryDiscovery);

#[async_trait::async_trait]
impl zeroservices::discovery::Discovery for StuckDiscovery {
    async fn start(
        &self,
        me: zeroservices::NodeInfo,
        sink: Arc<dyn zeroservices::discovery::PeerSink>,
    ) -> Result<()> {
        self.0.start(me, sink).await
    }
    async fn announce(&self, me: zeroservices::NodeInfo) -> Result<()> {
        self.0.announce(me).await
    }
    async fn stop(&self) {
        std::future::pending::<()>().await;
    }
}

#[tokio::test]
async fn a_discovery_that_never_stops_does_not_hold_stop() {
    let cluster = MemoryCluster::new();
    let node = Node::builder("stuck")
        .medium(cluster.medium())
        .discovery(StuckDiscovery(cluster.discovery()))
        .resource::<Job>()
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), node.stop())
        .await
        .expect("stop is bounded when the discovery hangs");
    // The medium stopped after the discovery was left behind: the node is gone from the cluster.
    assert!(cluster.node_ids().is_empty(), "{:?}", cluster.node_ids());
    println!("stopped in {:?}", started.elapsed());
}
