//! No lost updates: two owners of `power` over one database, behind a gateway that spreads the
//! requests over both (round robin), with clients racing `$inc` patches against `&mut self`
//! actions on one resource. Each owner's per-resource lock only covers its own requests; only
//! the store's compare-and-set on the version keeps the other owner's changes.
//!
//! `square` sets `result` and `status` from `value` and leaves `value` alone, so before versions
//! it wrote back a stale `value` over patches made meanwhile (4 × 50 `$inc` ended at 166, not
//! 200); `add` changes `value` itself, so it must not lose its own increments either.
//!
//! The owners are nodes in this process (each with its own store object over the shared
//! database, as two processes would have): over one embedded store file always, over one
//! MongoDB database when `ZS_TEST_MONGODB_URI` is set (`scripts/test.sh` starts nx-27017).

mod http_common;

use std::time::{Duration, Instant};

use http_common::*;
use serde_json::json;
use zeroservices::http::HttpConfig;
use zeroservices::medium::MemoryCluster;
use zeroservices::store::{EmbeddedStore, MongoStore, Store};
use zeroservices::{Error, Node};

const PATCHERS: usize = 4;
const PATCHES: usize = 50;
const SQUARERS: usize = 2;
const SQUARES: usize = 50;
const ADDERS: usize = 2;
const ADDS: usize = 25;

async fn owner_over(cluster: &MemoryCluster, store: impl Store) -> Node {
    Node::builder("power_service")
        .memory(cluster)
        .store(store)
        .resource::<Power>()
        .start()
        .await
        .unwrap()
}

/// Two owners over `stores` (one database), a gateway that knows both, and the race through
/// the gateway's REST API.
async fn race(first: impl Store, second: impl Store) {
    let cluster = MemoryCluster::new();
    let owners = [
        owner_over(&cluster, first).await,
        owner_over(&cluster, second).await,
    ];
    let api = gateway(&cluster, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.peers().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not learn both owners"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let http = client();
    let id = format!("race-{}", &zeroservices::store::new_id()[..8]);
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": id, "resource_data": {"value": 0}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let url = format!("{base}/power/{id}");
    let served_before: Vec<u64> = owners.iter().map(|o| o.stats().requests_served).collect();

    let mut tasks = Vec::new();
    for _ in 0..PATCHERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..PATCHES {
                let (status, body) = json(
                    http.patch(&url)
                        .json(&json!({"patch": {"$inc": {"value": 1}}}))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(status, 200, "patch: {body}");
            }
        }));
    }
    for _ in 0..SQUARERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..SQUARES {
                let (status, body) =
                    json(http.post(format!("{url}/square")).send().await.unwrap()).await;
                assert_eq!(status, 200, "square: {body}");
            }
        }));
    }
    for _ in 0..ADDERS {
        let (http, url) = (http.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..ADDS {
                let (status, body) = json(
                    http.post(format!("{url}/add"))
                        .json(&json!({"amount": 1}))
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
                assert_eq!(status, 200, "add: {body}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let (status, body) = json(http.get(&url).send().await.unwrap()).await;
    assert_eq!(status, 200);
    let expected = (PATCHERS * PATCHES + ADDERS * ADDS) as i64;
    assert_eq!(
        body["resource_data"]["value"], expected,
        "every $inc and every add is there: {body}"
    );
    // Each patch and add is one version; a square that changed nothing is none.
    let version = body["version"].as_u64().unwrap();
    let changes = (PATCHERS * PATCHES + ADDERS * ADDS) as u64;
    assert!(
        (1 + changes..=1 + changes + (SQUARERS * SQUARES) as u64).contains(&version),
        "version {version}"
    );
    // Both owners served the race.
    for (owner, before) in owners.iter().zip(served_before) {
        assert!(
            owner.stats().requests_served > before + 10,
            "an owner served {} requests only",
            owner.stats().requests_served - before
        );
    }
    server.shutdown().await;
    api.stop().await;
    for owner in owners {
        owner.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_owners_over_one_embedded_store_lose_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    race(store.clone(), store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs ZS_TEST_MONGODB_URI (scripts/test.sh starts nx-27017)"]
async fn two_owners_over_one_mongodb_database_lose_no_update() {
    let uri = std::env::var("ZS_TEST_MONGODB_URI")
        .ok()
        .filter(|u| !u.is_empty())
        .expect("ZS_TEST_MONGODB_URI: the MongoDB server to race on (scripts/test.sh sets it)");
    // Two connections, as two processes would have.
    let timeout = Duration::from_secs(10);
    let first = MongoStore::connect_with_timeout(&uri, timeout)
        .await
        .unwrap();
    let second = MongoStore::connect_with_timeout(&uri, timeout)
        .await
        .unwrap();
    race(first, second).await;
}

/// A `&mut self` action that keeps losing its compare-and-set gives up with 409 after the
/// retries, having changed nothing; with the version given, the first loss is a 412.
#[tokio::test]
async fn an_action_that_always_loses_gives_up_with_409() {
    /// A store whose compare-and-set always finds another version (as if another owner
    /// changed the document between every read and write).
    struct AlwaysChanged(zeroservices::store::MemoryStore);

    #[async_trait::async_trait]
    impl Store for AlwaysChanged {
        async fn insert(
            &self,
            c: &str,
            id: Option<&str>,
            doc: serde_json::Value,
        ) -> zeroservices::Result<String> {
            self.0.insert(c, id, doc).await
        }
        async fn get(&self, c: &str, id: &str) -> zeroservices::Result<Option<serde_json::Value>> {
            self.0.get(c, id).await
        }
        async fn replace(
            &self,
            c: &str,
            id: &str,
            _: serde_json::Value,
            expect: Option<u64>,
        ) -> zeroservices::Result<u64> {
            Err(Error::PreconditionFailed {
                collection: c.into(),
                id: id.into(),
                expected: expect.unwrap_or(0),
                actual: expect.unwrap_or(0) + 1,
            })
        }
        async fn patch(
            &self,
            c: &str,
            id: &str,
            p: &zeroservices::Patch,
            e: Option<u64>,
        ) -> zeroservices::Result<serde_json::Value> {
            self.0.patch(c, id, p, e).await
        }
        async fn delete(&self, c: &str, id: &str, e: Option<u64>) -> zeroservices::Result<u64> {
            self.0.delete(c, id, e).await
        }
        async fn list(
            &self,
            c: &str,
            q: &zeroservices::Query,
        ) -> zeroservices::Result<Vec<(String, serde_json::Value)>> {
            self.0.list(c, q).await
        }
        fn describe(&self) -> String {
            "always-changed".into()
        }
        async fn claim_request(
            &self,
            c: &str,
            r: &str,
            f: &str,
            lease: std::time::Duration,
        ) -> zeroservices::Result<zeroservices::store::Claim> {
            self.0.claim_request(c, r, f, lease).await
        }
        async fn complete_request(
            &self,
            c: &str,
            r: &str,
            reply: &serde_json::Value,
            keep: std::time::Duration,
        ) -> zeroservices::Result<()> {
            self.0.complete_request(c, r, reply, keep).await
        }
        async fn release_request(&self, c: &str, r: &str) -> zeroservices::Result<()> {
            self.0.release_request(c, r).await
        }
    }

    let cluster = MemoryCluster::new();
    let node = owner_over(&cluster, AlwaysChanged(Default::default())).await;
    let powers = node.collection::<Power>();
    powers
        .create_with_id(
            "p",
            Power {
                value: 3,
                status: Status::Pending,
                result: None,
                description: None,
            },
        )
        .await
        .unwrap();
    let err = powers.call::<i64>("p", "square", ()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Conflict { message } if message.contains("16 attempts")),
        "{err:?}"
    );
    let err = node
        .request(
            zeroservices::medium::Request::new("power", "square")
                .id("p")
                .if_version(Some(1)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PreconditionFailed { .. }), "{err:?}");
    let (power, version) = powers.get_versioned("p").await.unwrap();
    assert_eq!((power.result, version), (None, 1), "nothing changed");
    node.stop().await;
}

/// The typed client's versioned reads and conditional changes.
#[tokio::test]
async fn the_typed_client_reads_versions_and_changes_conditionally() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let powers = node.collection::<Power>();
    let power = Power {
        value: 2,
        status: Status::Pending,
        result: None,
        description: None,
    };
    powers.create_with_id("p", power).await.unwrap();
    let (read, version) = powers.get_versioned("p").await.unwrap();
    assert_eq!((read.value, version), (2, 1));
    let (patched, version) = powers
        .patch_if("p", 1, zeroservices::patch!({"$inc": {"value": 1}}))
        .await
        .unwrap();
    assert_eq!((patched.value, version), (3, 2));
    let err = powers
        .patch_if("p", 1, zeroservices::patch!({"$inc": {"value": 1}}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PreconditionFailed {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let err = powers.delete_if("p", 1).await.unwrap_err();
    assert!(matches!(err, Error::PreconditionFailed { .. }), "{err:?}");
    // Listed documents carry their versions.
    let listed = powers.list(zeroservices::Query::all()).await.unwrap();
    assert_eq!(listed[0].version, 2);
    // Events carry the version after the change.
    let mut events = node.subscribe("power");
    powers.call::<i64>("p", "square", ()).await.unwrap();
    powers.delete_if("p", 3).await.unwrap();
    use futures::StreamExt;
    let square = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (square.topic.as_str(), &square.data["version"]),
        ("power.square.p", &json!(3))
    );
    let delete = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (delete.topic.as_str(), &delete.data["version"]),
        ("power.delete.p", &json!(4))
    );
    node.stop().await;
}
