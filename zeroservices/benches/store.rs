//! Store throughput, per backend: create (one at a time, and 16 concurrent callers), get by id,
//! and list (a filter matching 10% of 1,000 documents, sorted, limited to 20).
//!
//! `cargo bench -p zeroservices --bench store`. MongoDB is measured when `ZS_TEST_MONGODB_URI`
//! is set (as `scripts/test.sh` sets it); `ZS_BENCH_SECONDS` sets the time per measure
//! (default 2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use zeroservices::store::{EmbeddedStore, MemoryStore, MongoStore, Store, new_id};
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
}
