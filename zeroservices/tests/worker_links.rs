//! Workers (rules, poll check, retries, concurrency) and links, on an in-process cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use zeroservices::medium::{MemoryCluster, Request};
use zeroservices::prelude::*;
use zeroservices::worker::Worker;

/// Pending or done.
#[model]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting.
    #[default]
    Pending,
    /// Computed.
    Done,
}

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Pending or done.
    #[serde(default)]
    pub status: Status,
    /// The square.
    pub result: Option<i64>,
}

/// Someone.
#[resource(collection = "user")]
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Their name.
    pub name: String,
}

fn pending(value: i64) -> Power {
    Power {
        value,
        status: Status::Pending,
        result: None,
    }
}

async fn build(ctx: Context, change: Change<Power>) -> Result<()> {
    let Some(power) = change.data else {
        return Ok(());
    };
    let result = power.value * power.value;
    ctx.collection::<Power>()
        .patch(
            &change.resource_id,
            patch!({"$set": {"result": result, "status": "done"}}),
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

async fn all_done(node: &Node, n: usize) -> bool {
    let docs = node.collection::<Power>().list(Query::all()).await.unwrap();
    docs.len() == n
        && docs.iter().all(|d| {
            d.resource_data.status == Status::Done
                && d.resource_data.result == Some(d.resource_data.value * d.resource_data.value)
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_computes_every_pending_power_and_catches_up() {
    let cluster = MemoryCluster::new();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let powers = owner.collection::<Power>();

    // Created before any worker exists: only the poll check can find these.
    for v in 0..5 {
        powers.create(pending(v)).await.unwrap();
    }
    let worker = Worker::new("power_worker")
        .without_state()
        .on::<Power, _, _>(query!({"status": "pending"}), build)
        .poll_interval(Duration::from_millis(200))
        .start(Node::builder("power_worker").memory(&cluster))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the late worker catches up", || {
        all_done(&owner, 5)
    })
    .await;

    // The owner knows who watches its collection.
    let watchers = owner.watchers("power");
    assert_eq!(watchers.len(), 1);
    assert_eq!(watchers[0].kind, NodeKind::Worker);

    // New ones, through events.
    for v in 5..20 {
        powers.create(pending(v)).await.unwrap();
    }
    eventually(Duration::from_secs(5), "20 powers done", || {
        all_done(&owner, 20)
    })
    .await;

    // Patched back to pending with a new value: recomputed.
    let id = powers.list(query!({"value": 3})).await.unwrap()[0]
        .resource_id
        .clone();
    powers
        .patch(&id, patch!({"$set": {"value": 30, "status": "pending"}}))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "recomputed", || {
        let powers = powers.clone();
        let id = id.clone();
        async move { powers.get(&id).await.unwrap().result == Some(900) }
    })
    .await;
    worker.stop().await;
    owner.stop().await;
}

/// The poll check reads every page of a collection longer than the owner's page limit, even
/// while its own handlers take resources out of the filter (a page shifted under it would skip
/// some): one poll, 3 per page, 10 pending powers, all done.
#[tokio::test(flavor = "multi_thread")]
async fn the_poll_check_reads_every_page() {
    let cluster = MemoryCluster::new();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .limits(zeroservices::Limits {
            max_page: 3,
            ..Default::default()
        })
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let powers = owner.collection::<Power>();
    for v in 0..10 {
        powers.create(pending(v)).await.unwrap();
    }
    // One poll (at start), none after: only paging can find all ten.
    let worker = Worker::new("power_worker")
        .without_state()
        .on::<Power, _, _>(query!({"status": "pending"}), build)
        .poll_interval(Duration::from_secs(3600))
        .start(Node::builder("power_worker").memory(&cluster))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "every page handled", || {
        all_done(&owner, 10)
    })
    .await;
    worker.stop().await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_handlers_are_retried_and_concurrency_is_bounded() {
    let cluster = MemoryCluster::new();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (a, r, p) = (attempts.clone(), running.clone(), peak.clone());
    let worker = Worker::new("flaky")
        .without_state()
        .on::<Power, _, _>(
            query!({"status": "pending"}),
            move |ctx: Context, change: Change<Power>| {
                let (a, r, p) = (a.clone(), r.clone(), p.clone());
                async move {
                    let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                    p.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    r.fetch_sub(1, Ordering::SeqCst);
                    // Every resource fails twice before it succeeds.
                    let power = change.data.unwrap();
                    if power.value == 1 && a.fetch_add(1, Ordering::SeqCst) < 2 {
                        return Err(Error::failed("not yet"));
                    }
                    build(
                        ctx,
                        Change {
                            data: Some(power),
                            ..change
                        },
                    )
                    .await
                }
            },
        )
        .concurrency(2)
        .retries(5, Duration::from_millis(10))
        .poll_interval(Duration::from_secs(3600))
        .start(Node::builder("flaky").memory(&cluster))
        .await
        .unwrap();
    for v in 1..=8 {
        owner
            .collection::<Power>()
            .create(pending(v))
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(5), "all done despite failures", || {
        all_done(&owner, 8)
    })
    .await;
    // Two failures, then a success; the poll check's first pass may race with the create
    // event and run it once more, which is harmless (the handler is idempotent).
    let tries = attempts.load(Ordering::SeqCst);
    assert!((3..=4).contains(&tries), "value 1 took {tries} attempts");
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "peak concurrency {}",
        peak.load(Ordering::SeqCst)
    );
    worker.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn links_can_be_added_followed_and_found_incoming() {
    let cluster = MemoryCluster::new();
    let owner = Node::builder("svc")
        .memory(&cluster)
        .resource::<Power>()
        .resource::<User>()
        .start()
        .await
        .unwrap();
    let client = Node::builder("client")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    let powers = client.collection::<Power>();
    let users = client.collection::<User>();
    let ann = users.create(User { name: "ann".into() }).await.unwrap();
    let bob = users.create(User { name: "bob".into() }).await.unwrap();
    let p1 = powers.create(pending(1)).await.unwrap();
    let p2 = powers.create(pending(2)).await.unwrap();
    let mut events = client.subscribe("power.add_link");

    powers
        .add_link(&p1, "owner", ("user", &ann), Some("Ann"))
        .await
        .unwrap();
    powers
        .add_link(&p1, "owner", ("user", &bob), None)
        .await
        .unwrap();
    powers
        .add_link(&p2, "owner", ("user", &ann), None)
        .await
        .unwrap();

    // The event, as the original's.
    let ev = tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut events),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ev.topic, format!("power.add_link.{p1}"));
    assert_eq!(ev.data["relation"], "owner");
    assert_eq!(ev.data["target_id"], json!(["user", ann]));
    assert_eq!(ev.data["title"], "Ann");

    // Stored as the original did.
    let raw = client
        .request(Request::new("power", "get").id(&p1))
        .await
        .unwrap();
    assert_eq!(
        raw["resource_data"]["_links"]["owner"][0],
        json!({"target_id": ["user", ann], "title": "Ann"})
    );
    assert_eq!(
        raw["resource_data"]["_links"]["latest"]["user"],
        json!(["user", bob])
    );

    // Follow.
    let owners = powers.follow_links::<User>(&p1, "owner").await.unwrap();
    let names: Vec<_> = owners
        .iter()
        .map(|d| d.resource_data.name.as_str())
        .collect();
    assert_eq!(names, ["ann", "bob"]);

    // Incoming.
    let mut linking: Vec<String> = powers
        .incoming_links("owner", ("user", &ann))
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.resource_id)
        .collect();
    linking.sort();
    let mut expected = vec![p1.clone(), p2.clone()];
    expected.sort();
    assert_eq!(linking, expected);
    assert_eq!(
        powers
            .incoming_links("owner", ("user", &bob))
            .await
            .unwrap()
            .len(),
        1
    );

    // Links survive a typed change, and bad relations are refused.
    powers
        .patch(&p1, patch!({"$set": {"value": 5}}))
        .await
        .unwrap();
    assert_eq!(
        powers
            .follow_links::<User>(&p1, "owner")
            .await
            .unwrap()
            .len(),
        2
    );
    let err = powers
        .add_link(&p1, "a.b", ("user", &ann), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { path, .. } if path == "relation"),
        "{err:?}"
    );

    // A deleted target is skipped when following.
    users.delete(&bob).await.unwrap();
    assert_eq!(
        powers
            .follow_links::<User>(&p1, "owner")
            .await
            .unwrap()
            .len(),
        1
    );
    client.stop().await;
    owner.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_during_a_running_handler_is_handled_after_it() {
    let cluster = MemoryCluster::new();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let worker = Worker::new("slow")
        .without_state()
        .on::<Power, _, _>(
            query!({"status": "pending"}),
            move |ctx: Context, change: Change<Power>| {
                let s = s.clone();
                async move {
                    s.notify_one();
                    // Slow: the value changes while this runs on the old copy.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    build(ctx, change).await
                }
            },
        )
        .poll_interval(Duration::from_secs(3600))
        .start(Node::builder("slow").memory(&cluster))
        .await
        .unwrap();
    let powers = owner.collection::<Power>();
    let id = powers.create(pending(2)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.notified())
        .await
        .unwrap();
    powers
        .patch(&id, patch!({"$set": {"value": 5, "status": "pending"}}))
        .await
        .unwrap();
    // The first run writes 4 (stale), the second, run right after, writes 25.
    eventually(
        Duration::from_secs(5),
        "the newer value is computed",
        || {
            let powers = powers.clone();
            let id = id.clone();
            async move {
                let p = powers.get(&id).await.unwrap();
                p.result == Some(25) && p.status == Status::Done
            }
        },
    )
    .await;
    worker.stop().await;
    owner.stop().await;
}
