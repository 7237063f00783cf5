//! Store throughput, per backend: create (one at a time, and 16 concurrent callers), get by id,
//! and list (a filter matching 10% of 1,000 documents, sorted, limited to 20). Then the embedded
//! store's durable creates at 1 and 64 in flight, one commit per write (`ZS_STORE_BATCH_MAX=1`,
//! the way it was before group commit) beside group commit (the default batch maximum), with
//! the ratio, in the same run.
//!
//! `cargo bench -p zeroservices --bench store`. MongoDB is measured when `ZS_TEST_MONGODB_URI`
//! is set (as `scripts/test.sh` sets it); `ZS_BENCH_SECONDS` sets the time per measure
//! (default 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use zeroservices::store::{
    DEFAULT_BATCH_MAX, EmbeddedStore, MemoryStore, MongoStore, Store, new_id,
};
use zeroservices::{Order, Query};

const DOCS: usize = 1_000;
const CONCURRENCY: usize = 16;

fn doc(i: usize) -> serde_json::Value {
    json!({
        "n": i,
        "group": format!("g{}", i % 10),
        "status": if i.is_multiple_of(2) { "on" } else { "off" },
        "description": format!("resource number {i} of the benchmark"),
        "tags": ["bench", format!("t{}", i % 7)],
    })
}

/// Runs `op` repeatedly for `budget`, returning operations per second.
async fn rate<F, Fut>(budget: Duration, mut op: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < budget {
        op(n).await;
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

async fn concurrent_creates(store: &Arc<dyn Store>, collection: &str, budget: Duration) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let store = store.clone();
        let collection = collection.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut n = 0_usize;
            while start.elapsed() < budget {
                store
                    .insert(&collection, None, doc(n))
                    .await
                    .expect("insert");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// Creates per second with `in_flight` callers creating at once, and the writes per commit.
async fn creates_in_flight(
    store: &EmbeddedStore,
    in_flight: usize,
    budget: Duration,
) -> (f64, f64) {
    let (commits_before, written_before) = store.commit_counts();
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut n = 0_usize;
                while start.elapsed() < budget {
                    store.insert("durable", None, doc(n)).await.expect("insert");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let (commits, written) = store.commit_counts();
    let per_commit = (written - written_before) as f64 / (commits - commits_before).max(1) as f64;
    (rate, per_commit)
}

/// The embedded store's durable creates, one commit per write beside group commit.
async fn group_commit(budget: Duration) {
    println!();
    println!("embedded store, durable creates per second (writes per commit in brackets)");
    println!("{:<44} {:>18} {:>18}", "", "1 in flight", "64 in flight");
    let mut rows = Vec::new();
    for (label, batch_max) in [
        ("one commit per write (ZS_STORE_BATCH_MAX=1)".to_owned(), 1),
        (
            format!("group commit (ZS_STORE_BATCH_MAX={DEFAULT_BATCH_MAX})"),
            DEFAULT_BATCH_MAX,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path())
            .unwrap()
            .with_batch_max(batch_max);
        let one = creates_in_flight(&store, 1, budget).await;
        let many = creates_in_flight(&store, 64, budget).await;
        println!(
            "{label:<44} {:>10.0} ({:>5.1}) {:>10.0} ({:>5.1})",
            one.0, one.1, many.0, many.1
        );
        rows.push((one.0, many.0));
    }
    println!(
        "{:<44} {:>17.2}x {:>17.2}x",
        "ratio (group commit / one commit per write)",
        rows[1].0 / rows[0].0,
        rows[1].1 / rows[0].1
    );
}

async fn bench(name: &str, store: Arc<dyn Store>, budget: Duration) {
    let prefix = format!("bench_{}", &new_id()[..8]);
    let created = format!("{prefix}_created");
    let data = format!("{prefix}_data");
    store
        .ensure_collection(&data, &["description".to_owned()])
        .await
        .unwrap();

    let create = rate(budget, |_| {
        let store = store.clone();
        let created = created.clone();
        async move {
            store.insert(&created, None, doc(1)).await.expect("insert");
        }
    })
    .await;
    let create_concurrent = concurrent_creates(&store, &created, budget).await;

    let mut ids = Vec::with_capacity(DOCS);
    for i in 0..DOCS {
        let id = format!("id{i:06}");
        store.insert(&data, Some(&id), doc(i)).await.unwrap();
        ids.push(id);
    }
    let get = rate(budget, |n| {
        let store = store.clone();
        let id = ids[(n * 7919) % DOCS].clone();
        let data = data.clone();
        async move {
            assert!(store.get(&data, &id).await.unwrap().is_some());
        }
    })
    .await;
    let query = Query::new(json!({"group": "g3", "n": {"$gte": 0}}))
        .sort("n", Order::Desc)
        .limit(20);
    let list = rate(budget, |_| {
        let store = store.clone();
        let query = query.clone();
        let data = data.clone();
        async move {
            assert_eq!(store.list(&data, &query).await.unwrap().len(), 20);
        }
    })
    .await;
    println!(
        "{name:<10} {create:>12.0} {create_concurrent:>14.0} {get:>12.0} {list:>12.0}   ({})",
        store.describe()
    );
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let secs: f64 = std::env::var("ZS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let budget = Duration::from_secs_f64(secs);
    println!(
        "operations per second, {secs} s per measure; list = filter (10% of {DOCS} docs) + sort + limit 20"
    );
    println!(
        "{:<10} {:>12} {:>14} {:>12} {:>12}",
        "backend",
        "create",
        format!("create x{CONCURRENCY}"),
        "get",
        "list"
    );
    bench("memory", Arc::new(MemoryStore::new()), budget).await;
    let dir = tempfile::tempdir().unwrap();
    bench(
        "embedded",
        Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
        budget,
    )
    .await;
    match std::env::var("ZS_TEST_MONGODB_URI") {
        Ok(uri) if !uri.is_empty() => {
            let store = MongoStore::connect(&uri).await.unwrap();
            let db = store.database().clone();
            bench("mongodb", Arc::new(store), budget).await;
            // Leave nothing behind.
            if let Ok(names) = db.list_collection_names().await {
                for name in names.iter().filter(|n| n.starts_with("bench_")) {
                    let _ = db.collection::<mongodb::bson::Document>(name).drop().await;
                }
            }
        }
        _ => println!("mongodb    skipped: ZS_TEST_MONGODB_URI is not set"),
    }
    group_commit(budget).await;
}
