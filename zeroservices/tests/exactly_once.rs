//! Exactly-once effects: a mutating request runs once per request id or `Idempotency-Key`, a
//! copy gets the first reply; a retried call whose reply was lost takes effect once; a
//! fail-over between two owners of one store runs it once; the same key with another request
//! is refused.

mod http_common;

use std::sync::Arc;
use std::time::Duration;

use http_common::{client, json, start};
use serde_json::{Value, json};
use zeroservices::http::{HttpConfig, Users, hash_password};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, MemoryStore};

/// A counter.
#[resource(collection = "counter")]
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    /// How many times it was bumped.
    pub n: i64,
}

/// Arguments of `bump`.
#[model]
pub struct BumpArgs {
    /// How long to take before bumping, in milliseconds.
    pub ms: u64,
}

#[actions]
impl Counter {
    /// Adds one, after `ms` milliseconds; returns the new count.
    #[action]
    async fn bump(&mut self, args: BumpArgs) -> Result<i64> {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        self.n += 1;
        Ok(self.n)
    }
}

async fn owner_on(cluster: &MemoryCluster, store: Arc<dyn zeroservices::store::Store>) -> Node {
    Node::builder("counter_service")
        .memory(cluster)
        .shared_store(store)
        .resource::<Counter>()
        .start()
        .await
        .unwrap()
}

async fn caller(cluster: &MemoryCluster, timeout: Duration) -> Node {
    let node = Node::builder("caller")
        .memory(cluster)
        .request_timeout(timeout)
        .start()
        .await
        .unwrap();
    node.wait_for_collection("counter", Duration::from_secs(5))
        .await
        .unwrap();
    node
}

/// The caller times out while the owner is still running the action (its reply is lost to that
/// attempt); the retries carry the same request id, wait while it runs (409), then get its
/// reply: the counter moved once.
#[tokio::test]
async fn a_retried_call_whose_reply_was_lost_takes_effect_once() {
    lost_reply_retried(Arc::new(MemoryStore::new())).await;
}

/// The same on the embedded (durable) store.
#[tokio::test]
async fn a_retried_call_whose_reply_was_lost_takes_effect_once_embedded() {
    let dir = tempfile::tempdir().unwrap();
    lost_reply_retried(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
}

async fn lost_reply_retried(store: Arc<dyn zeroservices::store::Store>) {
    let cluster = MemoryCluster::new();
    let owner = owner_on(&cluster, store).await;
    let node = caller(&cluster, Duration::from_millis(200)).await;
    let counters = node.collection::<Counter>();
    let id = counters.create(Counter { n: 0 }).await.unwrap();

    // Without retries the call times out (the owner goes on and bumps anyway).
    let lost = counters.call::<i64>(&id, "bump", json!({"ms": 400})).await;
    assert!(matches!(lost, Err(Error::Timeout { .. })), "{lost:?}");
    wait_for(|| async { counters.get(&id).await.unwrap().n == 1 }).await;

    // With retries: the first attempt times out, the copies are answered with its reply.
    let retrying = node.collection::<Counter>().with_retries(20);
    let reply = retrying
        .call::<i64>(&id, "bump", json!({"ms": 500}))
        .await
        .unwrap();
    assert_eq!(reply, 2, "the first attempt's reply");
    assert_eq!(counters.get(&id).await.unwrap().n, 2, "bumped once");
    assert!(
        owner.stats().requests_deduplicated >= 1,
        "{:?}",
        owner.stats()
    );

    // A retried create creates once.
    let created = retrying.create(Counter { n: 10 }).await.unwrap();
    let all = counters.list(Query::all()).await.unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().any(|d| d.resource_id == created));
}

/// Two owners of one store: the request fails over to the second with the same request id
/// while the first is still running it, and is not run twice.
#[tokio::test]
async fn a_copy_sent_to_another_owner_of_the_same_store_runs_once() {
    let cluster = MemoryCluster::new();
    let store: Arc<dyn zeroservices::store::Store> = Arc::new(MemoryStore::new());
    let first = owner_on(&cluster, store.clone()).await;
    let second = owner_on(&cluster, store.clone()).await;
    let id = first
        .collection::<Counter>()
        .create(Counter { n: 0 })
        .await
        .unwrap();
    // The same request (same id) to each owner directly, at once: one runs it, the other
    // answers "in progress", then the first reply.
    let request = |n: &Node| {
        let mut r = zeroservices::medium::Request::new("counter", "bump")
            .id(id.clone())
            .args(json!({"ms": 300}));
        r.request_id = Some(format!("test-{}", n.id()));
        r
    };
    let mut same = request(&first);
    same.request_id = Some("one-request".into());
    let (a, b) = tokio::join!(first.request(same.clone()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        second.request(same.clone()).await
    });
    assert_eq!(a.unwrap(), json!(1));
    assert!(matches!(b, Err(Error::RequestInProgress { .. })), "{b:?}");
    // Later copies get the first reply, from either owner.
    assert_eq!(second.request(same.clone()).await.unwrap(), json!(1));
    assert_eq!(first.request(same).await.unwrap(), json!(1));
    let n = first.collection::<Counter>().get(&id).await.unwrap().n;
    assert_eq!(n, 1);
    // Another request id is another request.
    assert_eq!(second.request(request(&second)).await.unwrap(), json!(2));
}

async fn wait_for<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `Idempotency-Key` over REST, on the owner and through a gateway.
#[tokio::test]
async fn idempotency_keys_over_rest() {
    let cluster = MemoryCluster::new();
    let store: Arc<dyn zeroservices::store::Store> = Arc::new(MemoryStore::new());
    let _owner = owner_on(&cluster, store).await;
    let gateway = caller(&cluster, Duration::from_secs(5)).await;
    let (_server, base) = start(&gateway, HttpConfig::default()).await;
    let http = client();
    let post = |key: &str, n: i64| {
        http.post(format!("{base}/counter"))
            .header("Idempotency-Key", key)
            .json(&json!({"resource_data": {"n": n}}))
            .send()
    };

    // The same key and body: the first response again, one resource.
    let (s1, b1) = json(post("k-1", 5).await.unwrap()).await;
    let (s2, b2) = json(post("k-1", 5).await.unwrap()).await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(b1, b2);
    let count = || async {
        let (_, list) = json(http.get(format!("{base}/counter")).send().await.unwrap()).await;
        list.as_array().unwrap().len()
    };
    assert_eq!(count().await, 1);
    // The same key, another body: 422, nothing created.
    let (s3, b3) = json(post("k-1", 6).await.unwrap()).await;
    assert_eq!(s3, 422, "{b3}");
    assert!(
        b3["error"].as_str().unwrap().contains("Idempotency-Key"),
        "{b3}"
    );
    assert_eq!(count().await, 1);

    // Concurrent duplicates: one resource; each answer is the first 201 or a 409.
    let answers = futures::future::join_all((0..8).map(|_| post("k-2", 7))).await;
    let mut created = Vec::new();
    for answer in answers {
        let (status, body) = json(answer.unwrap()).await;
        match status {
            201 => created.push(body["resource_id"].clone()),
            409 => assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("still being served")
            ),
            other => panic!("{other}: {body}"),
        }
    }
    assert!(!created.is_empty());
    assert!(created.iter().all(|id| *id == created[0]), "{created:?}");
    assert_eq!(count().await, 2);

    // A patch and an action with a key run once; a delete with a key answers 204 twice.
    let id = b1["resource_id"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let response = http
            .patch(format!("{base}/counter/{id}"))
            .header("Idempotency-Key", "p-1")
            .json(&json!({"patch": {"$inc": {"n": 1}}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    for _ in 0..3 {
        let (status, body) = json(
            http.post(format!("{base}/counter/{id}/bump"))
                .header("Idempotency-Key", "a-1")
                .json(&json!({"ms": 0}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((status, body), (200, json!(7)));
    }
    let (_, doc) = json(
        http.get(format!("{base}/counter/{id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        doc["resource_data"]["n"], 7,
        "5, +1 once, bumped once: {doc}"
    );
    for _ in 0..2 {
        let response = http
            .delete(format!("{base}/counter/{id}"))
            .header("Idempotency-Key", "d-1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
    // Without a key, a second delete finds nothing.
    let response = http
        .delete(format!("{base}/counter/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Malformed keys are refused.
    for key in ["", "\"\"", &"x".repeat(201), "a b"] {
        let (status, body) = json(post(key, 1).await.unwrap()).await;
        assert_eq!(status, 400, "{key:?}: {body}");
    }
}

/// Two users sending the same key do not see each other's replies.
#[tokio::test]
async fn idempotency_keys_belong_to_their_user() {
    let cluster = MemoryCluster::new();
    let store: Arc<dyn zeroservices::store::Store> = Arc::new(MemoryStore::new());
    let owner = owner_on(&cluster, store).await;
    let hash = hash_password("pw").unwrap();
    let users = Users::parse(&format!("ann:{hash}\nbob:{hash}\n"), "test users").unwrap();
    let config = HttpConfig::default().users(users);
    let (_server, base) = start(&owner, config).await;
    let http = client();
    let mut ids = Vec::new();
    for user in ["ann", "bob"] {
        let (status, body): (u16, Value) = json(
            http.post(format!("{base}/counter"))
                .basic_auth(user, Some("pw"))
                .header("Idempotency-Key", "shared")
                .json(&json!({"resource_data": {"n": 1}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{user}: {body}");
        ids.push(body["resource_id"].clone());
    }
    assert_ne!(ids[0], ids[1]);
}

/// Hostile keys and versions: a request id past the limit is refused before any claim or
/// change; an `If-Match` whose version overflows, or that is huge, is a 400 and changes nothing;
/// a forged copy of another node's request id with another body is answered with the first
/// reply (the id names one request), never run.
#[tokio::test]
async fn hostile_request_ids_and_versions() {
    let cluster = MemoryCluster::new();
    let store: Arc<dyn zeroservices::store::Store> = Arc::new(MemoryStore::new());
    let owner = owner_on(&cluster, store).await;
    let counters = owner.collection::<Counter>();
    let id = counters.create(Counter { n: 0 }).await.unwrap();

    let mut long = zeroservices::medium::Request::new("counter", "bump")
        .id(id.clone())
        .args(json!({"ms": 0}));
    long.request_id = Some("x".repeat(5000));
    let refused = owner.request(long).await;
    assert!(
        matches!(refused, Err(Error::BadRequest { .. })),
        "{refused:?}"
    );
    assert_eq!(counters.get(&id).await.unwrap().n, 0, "nothing ran");

    let mut first = zeroservices::medium::Request::new("counter", "bump")
        .id(id.clone())
        .args(json!({"ms": 0}));
    first.request_id = Some("node-a.1".into());
    assert_eq!(owner.request(first.clone()).await.unwrap(), json!(1));
    let mut forged = first.clone();
    forged.args = json!({"ms": 1});
    assert_eq!(
        owner.request(forged).await.unwrap(),
        json!(1),
        "the first reply"
    );
    assert_eq!(counters.get(&id).await.unwrap().n, 1, "run once");

    let (_server, base) = start(&owner, HttpConfig::default()).await;
    let http = client();
    for value in [
        "\"99999999999999999999999\"".to_owned(),
        format!("\"{}\"", "9".repeat(8000)),
        "\"-1\"".to_owned(),
    ] {
        let (status, body) = json(
            http.patch(format!("{base}/counter/{id}"))
                .header("If-Match", value)
                .json(&json!({"patch": {"$inc": {"n": 1}}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{body}");
    }
    assert_eq!(counters.get(&id).await.unwrap().n, 1, "no patch ran");
}
