//! The change logs on a NATS JetStream stream (`ZS_<PREFIX>_CHANGES`, subjects `<p>.log.>`):
//! a log whose owner is gone is read back from the stream, in order, nothing lost or twice; with
//! a cluster key the stream holds ciphertext only; entries survive a nats-server restart (file
//! storage) and a restarted owner re-syncs without duplicates; garbage and forged entries are
//! dropped and counted; an entry dropped by age is `cursor_expired`; without JetStream the
//! follower reads from the owner as before. Plus a timing of creates with and without the
//! publisher (printed, not asserted).
//!
//! `#[ignore]`d like `tests/nats.rs`: they need `ZS_TEST_NATS_URL` (a nats-server with
//! JetStream) and `ZS_TEST_NATS_SERVER` (the executable, for the tests that run their own);
//! `scripts/test.sh` provides both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use zeroservices::Limits;
use zeroservices::changes::Retention;
use zeroservices::config::NetworkConfig;
use zeroservices::discovery::NatsDiscovery;
use zeroservices::medium::{NatsLink, NatsMedium, NatsStats};
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, MemoryStore, Store};

mod nats_common;
use nats_common::{OwnServer, config, fresh_cluster, nats_server_bin, nats_url};

/// A counter.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// Its value.
    pub value: i64,
    /// A note.
    pub note: Option<String>,
}

fn stream_name(cluster: &str) -> String {
    format!("ZS_{}_CHANGES", cluster.to_uppercase())
}

/// An owner of `power` whose medium the test keeps (for its counters).
struct Owner {
    node: Node,
    medium: NatsMedium,
}

impl Owner {
    async fn start(config: &NetworkConfig, store: Arc<dyn Store>, retention: Retention) -> Self {
        let medium = NatsMedium::new(NatsLink::new(config), config.clone());
        let node = Node::builder("power")
            .medium(medium.clone())
            .discovery(NatsDiscovery::new(medium.link().clone(), config.clone()))
            .request_timeout(config.request_timeout)
            .limits(Limits {
                change_log: retention,
                ..Limits::default()
            })
            .shared_store(store)
            .resource::<Power>()
            .start()
            .await
            .unwrap();
        Self { node, medium }
    }

    fn stats(&self) -> NatsStats {
        self.medium.stats()
    }

    fn log(&self) -> String {
        self.node.info().stores["power"].log.clone().unwrap()
    }

    /// Waits until the stream holds `n` entries of this owner (acknowledged).
    async fn published(&self, n: u64) {
        eventually("entries published", Duration::from_secs(15), || {
            self.stats().log_published >= n
        })
        .await;
    }
}

async fn reader(config: &NetworkConfig) -> (Node, NatsMedium) {
    let medium = NatsMedium::new(NatsLink::new(config), config.clone());
    let node = Node::builder("api")
        .medium(medium.clone())
        .discovery(NatsDiscovery::new(medium.link().clone(), config.clone()))
        .request_timeout(config.request_timeout)
        .start()
        .await
        .unwrap();
    (node, medium)
}

async fn eventually(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn power(value: i64) -> Power {
    Power { value, note: None }
}

/// The first cursor of a stream that saw the first create; then the creates `1..n`.
async fn write(owner: &Owner, reader: &Node, n: i64) -> String {
    reader
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let powers = reader.collection::<Power>();
    let mut events = reader.subscribe_since("power", None).await.unwrap();
    powers.create(power(0)).await.unwrap();
    let first = next(&mut events).await.unwrap();
    assert_eq!(first.data["resource_data"]["value"], 0);
    let cursor = events.cursor().to_owned();
    drop(events);
    for value in 1..n {
        powers.create(power(value)).await.unwrap();
    }
    owner.published(n as u64).await;
    cursor
}

async fn next(events: &mut zeroservices::changes::ResumableStream) -> Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
}

/// Reads `1..n` back from `cursor`: every value once, in order, and nothing after.
async fn read_back(reader: &Node, cursor: &str, n: i64) {
    let mut events = reader.subscribe_since("power", Some(cursor)).await.unwrap();
    for value in 1..n {
        let event = next(&mut events).await.unwrap();
        assert_eq!(
            event.data["resource_data"]["value"], value,
            "in order, nothing lost or twice"
        );
    }
    let extra = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(extra.is_err(), "nothing twice: {extra:?}");
}

/// (a) An owner on NATS writes N changes and is stopped; a subscriber resumes from an early
/// cursor and gets every entry from the stream, in order, none twice (more than one page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn a_log_whose_owner_is_gone_is_read_back_from_jetstream() {
    let url = nats_url("a_log_whose_owner_is_gone_is_read_back_from_jetstream");
    for key in [None, Some("jet-key")] {
        let config = config(&url, &fresh_cluster(), key);
        let owner = Owner::start(&config, Arc::new(MemoryStore::new()), Retention::default()).await;
        let (reader, medium) = reader(&config).await;
        let n = 700;
        let cursor = write(&owner, &reader, n).await;
        assert_eq!(owner.stats().log_dropped, 0);
        owner.node.stop().await;
        drop(owner);
        eventually("the owner is gone", Duration::from_secs(5), || {
            !reader.collections().contains(&"power".to_owned())
        })
        .await;
        read_back(&reader, &cursor, n).await;
        let stats = medium.stats();
        assert!(stats.log_read >= (n - 1) as u64, "{stats:?}");
        assert_eq!(stats.log_rejected, 0, "{stats:?}");
        reader.stop().await;
    }
}

/// (b) With a cluster key, a plain NATS client reading the stream sees neither document text
/// nor collection names: subjects are tags, payloads ciphertext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn with_a_cluster_key_the_stream_holds_ciphertext_only() {
    let url = nats_url("with_a_cluster_key_the_stream_holds_ciphertext_only");
    let cluster = fresh_cluster();
    let config = config(&url, &cluster, Some("stream-key"));
    let owner = Owner::start(&config, Arc::new(MemoryStore::new()), Retention::default()).await;
    let (reader, _) = reader(&config).await;
    reader
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let secret = "stream-plaintext-marker-77";
    let powers = reader.collection::<Power>();
    for value in 0..5 {
        powers
            .create(Power {
                value,
                note: Some(secret.into()),
            })
            .await
            .unwrap();
    }
    owner.published(5).await;
    let raw = async_nats::connect(url.as_str()).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    let stream = js.get_stream(stream_name(&cluster)).await.unwrap();
    let mut seen = 0;
    for seq in 1..=5 {
        let message = stream.get_raw_message(seq).await.unwrap();
        let subject = message.subject.to_string();
        assert!(subject.starts_with(&format!("{cluster}.log.")), "{subject}");
        for word in [secret, "power", "resource_data", "create", "memory"] {
            assert!(!subject.contains(word), "{word} in {subject}");
            assert!(
                !message
                    .payload
                    .windows(word.len())
                    .any(|w| w == word.as_bytes()),
                "{word} in the payload of {subject}"
            );
        }
        assert!(!message.payload.starts_with(b"{"));
        seen += 1;
    }
    assert_eq!(seen, 5);
    owner.node.stop().await;
    reader.stop().await;
}

/// The messages of a stream, by a plain client.
async fn stream_messages(url: &str, cluster: &str) -> u64 {
    let raw = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    let mut stream = js.get_stream(stream_name(cluster)).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// (c) Entries survive a nats-server restart (file storage), the owner re-syncs after the
/// reconnect and after its own restart without duplicates: the stream holds exactly the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn entries_survive_a_server_restart_and_an_owner_restart_resyncs_without_duplicates() {
    let mut server = OwnServer::start(&nats_server_bin("entries_survive_a_server_restart"), true);
    let cluster = fresh_cluster();
    let config = config(&server.url(), &cluster, None);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let owner = Owner::start(&config, store.clone(), Retention::default()).await;
    let (reader, _) = reader(&config).await;
    let cursor = write(&owner, &reader, 50).await;
    assert_eq!(stream_messages(&server.url(), &cluster).await, 50);

    // The server dies and comes back: the stream is still there, the owner writes on.
    server.kill();
    server.restart();
    let powers = reader.collection::<Power>();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut value = 50;
    while value < 80 {
        match powers.create(power(value)).await {
            Ok(_) => value += 1,
            Err(e) => {
                assert!(Instant::now() < deadline, "not writing again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let held = stream_messages_opt(&server.url(), &cluster).await;
        if held == Some(80) {
            break;
        }
        assert!(Instant::now() < deadline, "the stream holds {held:?} of 80");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = owner.stats();
    assert!(
        before.log_resynced > 0 || before.log_published >= 80,
        "{before:?}"
    );

    // The owner restarts over the same store: it re-syncs, and stores nothing twice.
    owner.node.stop().await;
    drop(owner);
    drop(store);
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let owner = Owner::start(&config, store, Retention::default()).await;
    reader
        .wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    powers.create(power(80)).await.unwrap();
    owner.published(1).await;
    assert_eq!(stream_messages(&server.url(), &cluster).await, 81);
    owner.node.stop().await;
    read_back(&reader, &cursor, 81).await;
    reader.stop().await;
}

async fn stream_messages_opt(url: &str, cluster: &str) -> Option<u64> {
    let raw = async_nats::connect(url).await.ok()?;
    let js = async_nats::jetstream::new(raw);
    let mut stream = js.get_stream(stream_name(cluster)).await.ok()?;
    Some(stream.info().await.ok()?.state.messages)
}

/// (d) Garbage and forged messages published into `<p>.log.>` (not JSON, a real entry copied
/// onto another entry's subject, an entry sealed under another key, one of another
/// collection) are dropped and counted, never handed out, and do not stop the follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn garbage_and_forged_entries_in_the_stream_are_dropped_and_counted() {
    let url = nats_url("garbage_and_forged_entries_in_the_stream_are_dropped_and_counted");
    for key in [None, Some("the-key")] {
        let cluster = fresh_cluster();
        let settings = config(&url, &cluster, key);
        let owner = Owner::start(
            &settings,
            Arc::new(MemoryStore::new()),
            Retention::default(),
        )
        .await;
        let (reader, medium) = reader(&settings).await;
        let n = 20;
        let cursor = write(&owner, &reader, n).await;
        let log = owner.log();
        owner.node.stop().await;

        let raw = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(raw);
        let stream = js.get_stream(stream_name(&cluster)).await.unwrap();
        // Every entry's subject, as published (with a key: tags).
        let mut subjects = Vec::new();
        for seq in 1..=n as u64 {
            subjects.push(stream.get_raw_message(seq).await.unwrap());
        }
        let base = subjects[0].subject.to_string();
        let frame = base.rsplit_once('.').unwrap().0.to_owned();
        if key.is_none() {
            assert_eq!(
                frame,
                format!("{cluster}.log.power.{}", hex_of(&log)),
                "the contract's subject"
            );
        }
        // An entry sealed under another key (an owner of the same cluster prefix with another
        // key writes one: the stream holds it under its own subject).
        let foreign = match key {
            Some(_) => {
                let other = config(&url, &cluster, Some("another-key"));
                let forger =
                    Owner::start(&other, Arc::new(MemoryStore::new()), Retention::default()).await;
                forger
                    .node
                    .collection::<Power>()
                    .create(power(99))
                    .await
                    .unwrap();
                forger.published(1).await;
                forger.node.stop().await;
                let mut info = js.get_stream(stream_name(&cluster)).await.unwrap();
                let last = info.info().await.unwrap().state.last_sequence;
                Some(stream.get_raw_message(last).await.unwrap().payload)
            }
            None => None,
        };
        // Forgeries ahead of the real entries 3..: garbage, a copy of entry 9 onto 3's subject,
        // an entry of another collection, one under another key.
        for seq in 3..8u64 {
            if let Some(foreign) = &foreign {
                js.publish(format!("{frame}.{seq}"), foreign.clone())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
            let subject = format!("{frame}.{seq}");
            js.publish(subject.clone(), "garbage \u{0} not json".into())
                .await
                .unwrap()
                .await
                .unwrap();
            js.publish(subject.clone(), subjects[8].payload.clone())
                .await
                .unwrap()
                .await
                .unwrap();
            js.publish(
                subject,
                serde_json::to_vec(&serde_json::json!({"v": 3, "kind": "event", "from": "x",
                    "topic": "other.create.1", "data": {"cursor": "c1.1.x.1"}}))
                .unwrap()
                .into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
        read_back(&reader, &cursor, n).await;
        let stats = medium.stats();
        assert!(stats.log_rejected >= 5, "{stats:?}");
        // And the follower reads the stream again afterwards.
        read_back(&reader, &cursor, n).await;
        reader.stop().await;
    }
}

fn hex_of(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// An entry the stream dropped by age, whose owner is gone, is `cursor_expired` (not a gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn an_entry_dropped_by_age_with_its_owner_gone_is_cursor_expired() {
    let url = nats_url("an_entry_dropped_by_age_with_its_owner_gone_is_cursor_expired");
    let config = config(&url, &fresh_cluster(), None);
    let retention = Retention {
        max_entries: 1000,
        max_age: Duration::from_millis(1500),
    };
    let owner = Owner::start(&config, Arc::new(MemoryStore::new()), retention).await;
    let (reader, _) = reader(&config).await;
    let cursor = write(&owner, &reader, 3).await;
    // Past the age, newer entries; the old ones leave the stream.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let powers = reader.collection::<Power>();
    for value in 3..6 {
        powers.create(power(value)).await.unwrap();
    }
    owner.published(6).await;
    owner.node.stop().await;
    eventually("the owner is gone", Duration::from_secs(5), || {
        !reader.collections().contains(&"power".to_owned())
    })
    .await;
    let mut events = reader
        .subscribe_since("power", Some(&cursor))
        .await
        .unwrap();
    let first = next(&mut events).await;
    assert!(
        matches!(first, Err(Error::CursorExpired { .. })),
        "{first:?}"
    );
    reader.stop().await;
}

/// Without JetStream on the server (or with the stream deleted) the follower reads from the
/// owner as before; the owner's writes never wait for the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the nats-server executable: ZS_TEST_NATS_SERVER (scripts/test.sh installs it)"]
async fn without_jetstream_or_its_stream_followers_read_from_the_owner() {
    let bin = nats_server_bin("without_jetstream_or_its_stream_followers_read_from_the_owner");
    let server = OwnServer::start(&bin, false);
    let settings = config(&server.url(), &fresh_cluster(), None);
    let owner = Owner::start(
        &settings,
        Arc::new(MemoryStore::new()),
        Retention::default(),
    )
    .await;
    let (node, medium) = reader(&settings).await;
    node.wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    let powers = node.collection::<Power>();
    let mut events = node.subscribe_since("power", None).await.unwrap();
    powers.create(power(0)).await.unwrap();
    next(&mut events).await.unwrap();
    let cursor = events.cursor().to_owned();
    drop(events);
    for value in 1..30 {
        powers.create(power(value)).await.unwrap();
    }
    read_back(&node, &cursor, 30).await;
    assert_eq!(owner.stats().log_published, 0);
    assert_eq!(medium.stats().log_read, 0);
    owner.node.stop().await;
    node.stop().await;
    drop(server);

    // JetStream on, the stream deleted under the nodes: the owner answers.
    let server = OwnServer::start(&bin, true);
    let cluster = fresh_cluster();
    let config = config(&server.url(), &cluster, None);
    let owner = Owner::start(&config, Arc::new(MemoryStore::new()), Retention::default()).await;
    let (reader, _) = reader(&config).await;
    let cursor = write(&owner, &reader, 10).await;
    let raw = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(raw);
    js.delete_stream(stream_name(&cluster)).await.unwrap();
    read_back(&reader, &cursor, 10).await;
    owner.node.stop().await;
    reader.stop().await;
}

/// The publisher's cost on writes: the same creates on a NATS owner with and without it
/// (`ZS_NATS_JETSTREAM`); printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a NATS server with JetStream: ZS_TEST_NATS_URL (scripts/test.sh starts one)"]
async fn creates_with_and_without_the_publisher_timed() {
    let url = nats_url("creates_with_and_without_the_publisher_timed");
    let n: i64 = std::env::var("ZS_TEST_CREATES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    for jetstream in [false, true, false, true] {
        let config = NetworkConfig {
            nats_jetstream: jetstream,
            ..config(&url, &fresh_cluster(), None)
        };
        let owner = Owner::start(&config, Arc::new(MemoryStore::new()), Retention::default()).await;
        let (reader, _) = reader(&config).await;
        reader
            .wait_for_collection("power", Duration::from_secs(5))
            .await
            .unwrap();
        let powers = reader.collection::<Power>();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let powers = powers.clone();
            tasks.push(tokio::spawn(async move {
                let mut v = t;
                while v < n {
                    powers.create(power(v)).await.unwrap();
                    v += 16;
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let took = started.elapsed();
        if jetstream {
            owner.published(n as u64).await;
        }
        let all = started.elapsed();
        eprintln!(
            "jetstream={jetstream}: {n} creates (16 in flight) in {took:?}: {:.0}/s; all in the \
             stream after {all:?}; {:?}",
            n as f64 / took.as_secs_f64(),
            owner.stats()
        );
        owner.node.stop().await;
        reader.stop().await;
    }
}
