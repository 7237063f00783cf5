//! Group commit in the embedded store: writes waiting together share one durable commit, and
//! each still gets its own outcome, as if it had run alone in the order it was queued: a
//! refused write (duplicate id, version conflict, missing document, a patch that does not
//! apply) changes nothing and does not stop the others of its batch; the change log holds
//! every committed write of a node's service in commit order. A caller that gives up, or a
//! store dropped right after its last answer, leave the store consistent and reopenable.
//!
//! `kill -9` with 64 writers in flight is in `store_crash.rs`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use serde_json::{Value, json};
use zeroservices::changes::LogAfter;
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, Store};
use zeroservices::{Error, Query};

const C: &str = "things";

/// Every kind of write at once, in one queue: each gets what it would get alone, in order.
#[tokio::test(flavor = "current_thread")]
async fn each_write_of_a_batch_gets_its_own_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap().with_batch_max(64);
    assert_eq!(store.batch_max(), 64);
    for i in 0..6 {
        store
            .insert(C, Some(&format!("a{i}")), json!({"n": i, "s": "text"}))
            .await
            .unwrap();
    }
    let before = store.commit_counts();

    // `join_all` polls the writes in this order, so they queue in this order.
    let mut writes: Vec<futures::future::BoxFuture<'_, Result<Value, Error>>> = Vec::new();
    for i in 0..40 {
        let store = &store;
        writes.push(Box::pin(async move {
            store
                .insert(C, Some(&format!("c{i}")), json!({"n": i}))
                .await
                .map(Value::from)
        }));
    }
    let s = &store;
    // 40: a duplicate of a stored document.
    writes.push(Box::pin(async move {
        s.insert(C, Some("a0"), json!({"dup": true}))
            .await
            .map(Value::from)
    }));
    // 41: a duplicate of a create of the same batch.
    writes.push(Box::pin(async move {
        s.insert(C, Some("c3"), json!({"dup": true}))
            .await
            .map(Value::from)
    }));
    // 42, 43: two patches of a1 expecting version 1; the second conflicts with the first.
    for n in [100, 200] {
        writes.push(Box::pin(async move {
            s.patch(C, "a1", &Patch::new(json!({"$set": {"n": n}})), Some(1))
                .await
        }));
    }
    // 44: a replace of a2 at its version.
    writes.push(Box::pin(async move {
        s.replace(C, "a2", json!({"n": 22}), Some(1))
            .await
            .map(Value::from)
    }));
    // 45, 46: a3 deleted, then deleted again.
    for _ in 0..2 {
        writes.push(Box::pin(async move {
            s.delete(C, "a3", None).await.map(Value::from)
        }));
    }
    // 47: a patch that does not apply ($inc of a string): a4 unchanged.
    writes.push(Box::pin(async move {
        s.patch(C, "a4", &Patch::new(json!({"$inc": {"s": 1}})), None)
            .await
    }));
    // 48: a delete expecting the wrong version.
    writes.push(Box::pin(async move {
        s.delete(C, "a5", Some(7)).await.map(Value::from)
    }));
    // 49, 50: a create and a patch of it, in the same batch.
    writes.push(Box::pin(async move {
        s.insert(C, Some("fresh"), json!({"n": 1}))
            .await
            .map(Value::from)
    }));
    writes.push(Box::pin(async move {
        s.patch(C, "fresh", &Patch::new(json!({"$inc": {"n": 1}})), Some(1))
            .await
    }));
    // 51: a patch of something that is not there.
    writes.push(Box::pin(async move {
        s.patch(C, "nothing", &Patch::new(json!({"$set": {"n": 1}})), None)
            .await
    }));
    let results = join_all(writes).await;

    for (i, r) in results[..40].iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &json!(format!("c{i}")));
    }
    assert!(
        matches!(&results[40], Err(Error::DuplicateId { id, .. }) if id == "a0"),
        "{:?}",
        results[40]
    );
    assert!(
        matches!(&results[41], Err(Error::DuplicateId { id, .. }) if id == "c3"),
        "{:?}",
        results[41]
    );
    assert_eq!(results[42].as_ref().unwrap()["n"], 100);
    assert!(
        matches!(results[43], Err(Error::PreconditionFailed { .. })),
        "{:?}",
        results[43]
    );
    assert_eq!(results[44].as_ref().unwrap(), &json!(2));
    assert_eq!(results[45].as_ref().unwrap(), &json!(1));
    assert!(
        matches!(results[46], Err(Error::NotFound { .. })),
        "{:?}",
        results[46]
    );
    assert!(results[47].is_err(), "{:?}", results[47]);
    assert!(
        matches!(results[48], Err(Error::PreconditionFailed { .. })),
        "{:?}",
        results[48]
    );
    assert_eq!(results[49].as_ref().unwrap(), &json!("fresh"));
    assert_eq!(results[50].as_ref().unwrap()["n"], 2);
    assert!(
        matches!(results[51], Err(Error::NotFound { .. })),
        "{:?}",
        results[51]
    );

    // What is stored is what the answers said, and nothing of the refused writes.
    let get = |id: &'static str| {
        let store = store.clone();
        async move { store.get(C, id).await.unwrap() }
    };
    assert_eq!(get("a0").await.unwrap()["n"], 0);
    assert_eq!(get("c3").await.unwrap()["n"], 3);
    let a1 = get("a1").await.unwrap();
    assert_eq!(
        (a1["n"].clone(), a1["_version"].clone()),
        (json!(100), json!(2))
    );
    assert_eq!(get("a2").await.unwrap()["n"], 22);
    assert!(get("a3").await.is_none());
    let a4 = get("a4").await.unwrap();
    assert_eq!(
        (a4["s"].clone(), a4["_version"].clone()),
        (json!("text"), json!(1))
    );
    assert_eq!(get("a5").await.unwrap()["_version"], 1);
    assert_eq!(get("fresh").await.unwrap()["n"], 2);
    assert!(get("nothing").await.is_none());
    assert_eq!(
        store.list(C, &Query::all()).await.unwrap().len(),
        6 - 1 + 40 + 1
    );

    // They shared commits: 52 writes (45 committed) in fewer commits than writes.
    let (commits, written) = store.commit_counts();
    let (commits, written) = (commits - before.0, written - before.1);
    assert_eq!(written, 45);
    assert!(commits < written, "{commits} commits for {written} writes");
    eprintln!("{written} writes in {commits} commits");
}

/// With `ZS_STORE_BATCH_MAX=1`, every write commits alone (the way to measure the rate of one
/// commit per write), with the same outcomes; many writers wait for room in the bounded queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_one_commits_every_write_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap().with_batch_max(1);
    store.insert(C, Some("x"), json!({"n": 0})).await.unwrap();
    let before = store.commit_counts();
    // 64 writers (more than the queue holds): each patch expects the version it read, so
    // the answers tell whether each ran alone on what the previous ones committed.
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                if i % 2 == 0 {
                    store.insert(C, None, json!({"i": i})).await.map(drop)
                } else {
                    store
                        .patch(C, "x", &Patch::new(json!({"$inc": {"n": 1}})), None)
                        .await
                        .map(drop)
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let (commits, written) = store.commit_counts();
    assert_eq!((commits - before.0, written - before.1), (64, 64));
    let x = store.get(C, "x").await.unwrap().unwrap();
    assert_eq!(
        (x["n"].clone(), x["_version"].clone()),
        (json!(32), json!(33))
    );
}

/// Callers that give up while their writes are queued (their futures dropped): the writes
/// already queued are committed all the same or not at all, every other caller gets its
/// answer, and the store, dropped right after, opens again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_that_give_up_leave_the_store_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap().with_batch_max(8);
    let mut kept = Vec::new();
    for i in 0..64 {
        let store = store.clone();
        let write = async move {
            store
                .insert(C, Some(&format!("w{i:02}")), json!({"i": i}))
                .await
        };
        if i % 2 == 0 {
            kept.push(tokio::spawn(write));
        } else {
            // Given up almost at once: queued or not, committed or not.
            let _ = tokio::time::timeout(Duration::from_micros(50), write).await;
        }
    }
    for t in kept {
        t.await.unwrap().unwrap();
    }
    let stored = store.list(C, &Query::all()).await.unwrap();
    for (id, doc) in &stored {
        assert_eq!(format!("w{:02}", doc["i"].as_u64().unwrap()), *id, "intact");
    }
    for i in (0..64).step_by(2) {
        let id = format!("w{i:02}");
        assert!(
            stored.iter().any(|(s, _)| *s == id),
            "{id} acknowledged, not stored"
        );
    }
    drop(store);
    // Writes whose callers gave up may still be committing: the file is free once they are.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match EmbeddedStore::open(dir.path()) {
            Ok(store) => break store,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    assert!(again.list(C, &Query::all()).await.unwrap().len() >= 32);
}

/// A store dropped as soon as its last write is answered opens again at once: the committer
/// no longer holds the file when a caller has its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_write_leaves_the_file_free() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let store =
            EmbeddedStore::open(dir.path()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let writes: Vec<_> = (0..8)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .insert(C, Some(&format!("r{round}-{i}")), json!({}))
                        .await
                })
            })
            .collect();
        for w in writes {
            w.await.unwrap().unwrap();
        }
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    assert_eq!(store.list(C, &Query::all()).await.unwrap().len(), 160);
}

/// A numbered thing, owned by a node over the embedded store.
#[resource(collection = "thing")]
#[derive(Debug, Clone, PartialEq)]
pub struct Thing {
    /// Its number.
    pub n: i64,
}

/// Many writes through a node's service at once (creates, patches at a version, deletes, a
/// conflicting patch among them): each gets its own answer, and the change log holds every
/// committed one, nothing else, in commit order (each resource's versions one after the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_all_logged_in_commit_order() {
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedStore::open(dir.path()).unwrap();
    let store: Arc<dyn Store> = Arc::new(embedded.clone());
    let cluster = MemoryCluster::new();
    let node = Node::builder("thing_service")
        .memory(&cluster)
        .shared_store(store.clone())
        .resource::<Thing>()
        .start()
        .await
        .unwrap();
    let things = node.collection::<Thing>();
    let mut ids = Vec::new();
    for n in 0..16 {
        ids.push(things.create(Thing { n }).await.unwrap());
    }
    let before = embedded.commit_counts();

    // For each of the 16, at once: two patches at version 1 (at most one wins, the other is
    // refused), a plain patch, and two creates of new resources; every fourth of the 16 is
    // deleted after.
    let mut tasks = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        for step in 0..3 {
            let things = node.collection::<Thing>();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = match step {
                    0 => things
                        .patch_if(&id, 1, Patch::new(json!({"$set": {"n": 1000}})))
                        .await
                        .map(|_| ()),
                    1 => things
                        .patch_if(&id, 1, Patch::new(json!({"$set": {"n": 2000}})))
                        .await
                        .map(|_| ()),
                    _ => things
                        .patch(&id, Patch::new(json!({"$inc": {"n": 1}})))
                        .await
                        .map(|_| ()),
                };
                (k, step, outcome)
            }));
        }
        for n in 0..2 {
            let things = node.collection::<Thing>();
            tasks.push(tokio::spawn(async move {
                (
                    usize::MAX,
                    n,
                    things.create(Thing { n: -1 }).await.map(|_| ()),
                )
            }));
        }
    }
    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        let (k, step, outcome) = t.await.unwrap();
        match outcome {
            Ok(()) => ok += 1,
            Err(Error::PreconditionFailed { .. }) if step < 2 && k != usize::MAX => conflicts += 1,
            Err(e) => panic!("{k}/{step}: {e:?}"),
        }
    }
    // Of the two patches at version 1 of a resource, exactly one can win (the plain patch may
    // come first and make both conflict).
    assert!(conflicts >= 16, "{conflicts}");
    let mut deletes = 0;
    for id in ids.iter().step_by(4) {
        things.delete(id).await.unwrap();
        deletes += 1;
        ok += 1;
    }
    assert_eq!(ok + conflicts, 16 * 5 + deletes);

    // The log: 16 creates first, then exactly the committed writes, in commit order.
    let log = store.log_id().unwrap();
    let page = store
        .read_log("thing", &log, LogAfter::Seq(0), 10_000)
        .await
        .unwrap()
        .unwrap();
    let entries = page.entries;
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "no gap"
    );
    assert_eq!(
        entries.len(),
        16 + ok,
        "every committed write, nothing else"
    );
    let mut versions = std::collections::HashMap::new();
    for e in &entries {
        let id = e.data["resource_id"].as_str().unwrap().to_owned();
        let version = e.data["version"].as_u64().unwrap();
        let last = versions.insert(id.clone(), version).unwrap_or(0);
        assert_eq!(version, last + 1, "{id}: versions in commit order");
    }
    // The last entry of each resource is what is stored.
    for (id, version) in &versions {
        match store.get("thing", id).await.unwrap() {
            Some(doc) => assert_eq!(doc["_version"].as_u64(), Some(*version), "{id}"),
            None => assert!(ids.iter().step_by(4).any(|d| d == id), "{id} lost"),
        }
    }
    let (commits, written) = embedded.commit_counts();
    eprintln!(
        "{} writes in {} commits",
        written - before.1,
        commits - before.0
    );
    node.stop().await;
}
