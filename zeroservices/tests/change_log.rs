//! The change log and resumable streams on one process: a subscriber that stops and resumes
//! from its cursor sees every change once, in order; a restarted owner continues its log; a
//! cursor past retention expires; a subscriber pushed past its bus catches up from the log;
//! hostile cursors are refused.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use zeroservices::Limits;
use zeroservices::changes::Retention;
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, MemoryStore, Store};

/// A numbered thing.
#[resource(collection = "item")]
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Its number.
    pub n: i64,
}

async fn owner(cluster: &MemoryCluster, store: Arc<dyn Store>, limits: Limits) -> Node {
    Node::builder("item_service")
        .memory(cluster)
        .shared_store(store)
        .limits(limits)
        .resource::<Item>()
        .start()
        .await
        .unwrap()
}

async fn client(cluster: &MemoryCluster) -> Node {
    let node = Node::builder("client")
        .memory(cluster)
        .start()
        .await
        .unwrap();
    node.wait_for_collection("item", Duration::from_secs(5))
        .await
        .unwrap();
    node
}

/// The next event within 10 s.
async fn next(stream: &mut zeroservices::changes::ResumableStream) -> Event {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream goes on")
        .expect("no error")
}

fn n_of(event: &Event) -> i64 {
    event.data["resource_data"]["n"].as_i64().unwrap_or(-1)
}

#[tokio::test]
async fn a_subscriber_resumes_from_its_cursor_with_nothing_lost_or_twice() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Arc::new(MemoryStore::new()), Limits::default()).await;
    let client = client(&cluster).await;
    let items = client.collection::<Item>();
    let mut events = client.subscribe_since("item", None).await.unwrap();
    for n in 0..10 {
        items.create(Item { n }).await.unwrap();
    }
    for n in 0..5 {
        let event = next(&mut events).await;
        assert_eq!(n_of(&event), n);
        assert_eq!(event.data["version"], 1);
        assert!(event.data["cursor"].is_string(), "{event:?}");
    }
    let cursor = events.cursor().to_owned();
    drop(events);
    // Changes continue while nobody listens.
    for n in 10..20 {
        items.create(Item { n }).await.unwrap();
    }
    let mut events = client.subscribe_since("item", Some(&cursor)).await.unwrap();
    // Live ones go on while the log is read back.
    let more = tokio::spawn({
        let items = items.clone();
        async move {
            for n in 20..30 {
                items.create(Item { n }).await.unwrap();
            }
        }
    });
    for n in 5..30 {
        let event = next(&mut events).await;
        assert_eq!(n_of(&event), n, "in order, none lost, none twice");
    }
    more.await.unwrap();
    // And nothing more.
    let extra = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
    assert!(extra.is_err(), "no duplicate: {extra:?}");
    client.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn patches_and_deletes_are_logged_with_their_versions() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Arc::new(MemoryStore::new()), Limits::default()).await;
    let items = owner.collection::<Item>();
    let start = owner.subscribe_since("item", None).await.unwrap();
    let cursor = start.cursor().to_owned();
    drop(start);
    let id = items.create(Item { n: 1 }).await.unwrap();
    items
        .patch(&id, Patch::new(serde_json::json!({"$set": {"n": 2}})))
        .await
        .unwrap();
    items.delete(&id).await.unwrap();
    let mut events = owner.subscribe_since("item", Some(&cursor)).await.unwrap();
    let topics: Vec<(String, Value)> = [
        next(&mut events).await,
        next(&mut events).await,
        next(&mut events).await,
    ]
    .into_iter()
    .map(|e| (e.topic, e.data["version"].clone()))
    .collect();
    assert_eq!(
        topics,
        [
            (format!("item.create.{id}"), 1.into()),
            (format!("item.patch.{id}"), 2.into()),
            (format!("item.delete.{id}"), 3.into()),
        ]
    );
    owner.stop().await;
}

#[tokio::test]
async fn a_restarted_owner_continues_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MemoryCluster::new();
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let first = owner(&cluster, store, Limits::default()).await;
    let client = client(&cluster).await;
    let items = client.collection::<Item>();
    let mut events = client.subscribe_since("item", None).await.unwrap();
    items.create(Item { n: 0 }).await.unwrap();
    next(&mut events).await;
    let cursor = events.cursor().to_owned();
    drop(events);
    items.create(Item { n: 1 }).await.unwrap();
    first.stop().await;
    drop(first);
    // The same data dir, another process start: the same log.
    let store: Arc<dyn Store> = Arc::new(open_again(dir.path()).await);
    let second = owner(&cluster, store, Limits::default()).await;
    client
        .wait_for_collection("item", Duration::from_secs(5))
        .await
        .unwrap();
    items.create(Item { n: 2 }).await.unwrap();
    let mut events = client.subscribe_since("item", Some(&cursor)).await.unwrap();
    assert_eq!(n_of(&next(&mut events).await), 1);
    assert_eq!(n_of(&next(&mut events).await), 2);
    client.stop().await;
    second.stop().await;
}

/// Opens an embedded store whose previous holder may still be closing.
async fn open_again(dir: &std::path::Path) -> EmbeddedStore {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match EmbeddedStore::open(dir) {
            Ok(store) => return store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn a_cursor_older_than_the_log_expires() {
    let cluster = MemoryCluster::new();
    let limits = Limits {
        change_log: Retention {
            max_entries: 5,
            max_age: Duration::from_secs(3600),
        },
        ..Limits::default()
    };
    for store in [
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::new(EmbeddedStore::open(tempfile::tempdir().unwrap().keep()).unwrap()),
    ] {
        let owner = owner(&cluster, store, limits).await;
        let items = owner.collection::<Item>();
        let mut events = owner.subscribe_since("item", None).await.unwrap();
        items.create(Item { n: 0 }).await.unwrap();
        next(&mut events).await;
        let cursor = events.cursor().to_owned();
        drop(events);
        for n in 1..20 {
            items.create(Item { n }).await.unwrap();
        }
        let mut events = owner.subscribe_since("item", Some(&cursor)).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .unwrap()
            .unwrap();
        let e = first.unwrap_err();
        assert_eq!(e.kind(), "cursor_expired", "{e}");
        assert!(events.next().await.is_none(), "the stream ends");
        // A cursor within retention still works.
        owner.stop().await;
    }
}

#[tokio::test]
async fn a_subscriber_pushed_past_its_bus_catches_up_from_the_log() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Arc::new(MemoryStore::new()), Limits::default()).await;
    let client = client(&cluster).await;
    let mut events = client.subscribe_since("item", None).await.unwrap();
    let plain_before = client.stats().events_lagged;
    // Far more than the bus (4096) and the stream's queue (1024) hold, none read meanwhile.
    let total = 12_000;
    let items = client.collection::<Item>();
    futures::stream::iter(0..total)
        .for_each_concurrent(64, |n| {
            let items = items.clone();
            async move {
                items.create(Item { n }).await.unwrap();
            }
        })
        .await;
    let mut seen = std::collections::HashSet::new();
    let mut last_seq_ok = true;
    let mut previous: Option<String> = None;
    while seen.len() < total as usize {
        let event = next(&mut events).await;
        assert!(seen.insert(n_of(&event)), "twice: {event:?}");
        if let Some(p) = &previous {
            last_seq_ok &= p != event.data["cursor"].as_str().unwrap();
        }
        previous = event.data["cursor"].as_str().map(str::to_owned);
    }
    assert!(last_seq_ok);
    assert!(
        client.stats().events_lagged > plain_before,
        "the bus did overflow (else this test shows nothing)"
    );
    client.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn hostile_cursors_are_refused() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster, Arc::new(MemoryStore::new()), Limits::default()).await;
    for bad in ["", "not a cursor", "eyJ0IjoxfQ==", &"A".repeat(20_000)] {
        let e = owner
            .subscribe_since("item", Some(bad))
            .await
            .err()
            .unwrap();
        assert!(
            matches!(e.kind(), "bad_request" | "limit"),
            "{bad:.20}: {e}"
        );
    }
    // A well-formed cursor naming logs nobody holds: read from nothing, then live.
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"t":0,"p":{"item@memory:nobody":99999999}}"#);
    let mut events = owner.subscribe_since("item", Some(&forged)).await.unwrap();
    owner
        .collection::<Item>()
        .create(Item { n: 7 })
        .await
        .unwrap();
    assert_eq!(n_of(&next(&mut events).await), 7);
    owner.stop().await;
}

#[tokio::test]
async fn the_log_can_be_turned_off() {
    let cluster = MemoryCluster::new();
    let limits = Limits {
        change_log: Retention {
            max_entries: 0,
            ..Retention::default()
        },
        ..Limits::default()
    };
    let owner = owner(&cluster, Arc::new(MemoryStore::new()), limits).await;
    let mut plain = owner.subscribe("item");
    owner
        .collection::<Item>()
        .create(Item { n: 1 })
        .await
        .unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), plain.next())
        .await
        .unwrap()
        .unwrap();
    assert!(event.data.get("cursor").is_none(), "{event:?}");
    assert_eq!(event.data["version"], 1);
    owner.stop().await;
}
