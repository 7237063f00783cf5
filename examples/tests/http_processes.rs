//! `power` and `api` as two real processes (the example binaries), in a cluster of their own:
//! multicast on 127.0.0.1 with a private group port, the memory store, short heartbeats.
//!
//! - REST through `api` (a gateway with no resources) reaches `power`'s store: create, read,
//!   the `square` action, patch, list, delete; and a websocket client on `api`'s `/realtime`
//!   receives the create, action, patch and delete events with their topics and payloads.
//! - SIGTERM to `power`: it says goodbye, and a request through `api` gets 503 within the peer
//!   timeout plus the request timeout.
//!
//! The binaries are those `cargo test -p zeroservices-examples` builds beside the tests
//! (`target/<profile>/examples/`). `cargo test --test http_processes` alone does not rebuild
//! them: a missing binary, or one older than the sources, fails the test with the command to
//! run (`cargo build --examples -p zeroservices-examples`). Every child is killed (SIGKILL)
//! when its handle drops, and its output is printed if the test failed.
//!
//! Run: `cargo test -p zeroservices-examples --test http_processes`.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

mod common;
use common::*;

async fn get(http: &reqwest::Client, base: &str, id: &str) -> (u16, Value) {
    json(http.get(format!("{base}/power/{id}")).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_and_realtime_through_api_reach_power() {
    let cluster = Cluster::new();
    let _power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let http = client();

    let mut ws = ws_connect(&base).await;
    ws_subscribe(&mut ws, &["power"]).await;
    wait_for_event_flow(&http, &base, &mut ws).await;

    // Create: with an id, and without one (the owner makes one up).
    let id = create(
        &http,
        &base,
        json!({"resource_id": "p1", "resource_data": {"value": 7, "description": "seven"}}),
    )
    .await;
    assert_eq!(id, "p1");
    let other = create(&http, &base, json!({"resource_data": {"value": 3}})).await;
    assert!(!other.is_empty());
    let (status, body) = get(&http, &base, &other).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["value"], 3);

    // Read: the defaults were filled in by power's schema.
    let (status, body) = get(&http, &base, "p1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_id"], "p1");
    assert_eq!(body["resource_data"]["value"], 7);
    assert_eq!(body["resource_data"]["status"], "pending");
    assert_eq!(body["resource_data"]["description"], "seven");
    assert!(body["resource_data"]["result"].is_null(), "{body}");

    // A resource action runs on power's node and is stored there.
    let (status, body) = json(
        http.post(format!("{base}/power/p1/square"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(49)));
    let (_, body) = get(&http, &base, "p1").await;
    assert_eq!(body["resource_data"]["result"], 49);
    assert_eq!(body["resource_data"]["status"], "done");

    // Patch, then read it back, and square the new value.
    let patch = json!({"$set": {"value": 12, "status": "pending"}, "$unset": {"result": ""}});
    let (status, body) = json(
        http.patch(format!("{base}/power/p1"))
            .json(&json!({ "patch": patch }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["value"], 12, "{body}");
    let (status, body) = get(&http, &base, "p1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["value"], 12);
    assert_eq!(body["resource_data"]["status"], "pending");
    assert!(body["resource_data"]["result"].is_null(), "{body}");
    let (status, body) = json(
        http.post(format!("{base}/power/p1/square"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(144)));

    // List with a filter, through the gateway.
    let (status, body) = json(
        http.get(format!("{base}/power"))
            .query(&[("where", r#"{"value": {"$gte": 12}}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["resource_id"].as_str())
        .collect();
    assert_eq!(ids, ["p1"], "{body}");

    // Delete: 204, then 404 for the id, and 404 for a collection nobody owns.
    let response = http
        .delete(format!("{base}/power/p1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    let (status, body) = get(&http, &base, "p1").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = json(http.get(format!("{base}/nope")).send().await.unwrap()).await;
    assert_eq!(
        (status, body),
        (404, json!({"error": "Unknown service nope"}))
    );

    // The websocket saw every change of p1, in order, with the original payloads.
    let e = next_event_for(&mut ws, "p1").await;
    assert_eq!(e["topic"], "power.create.p1", "{e}");
    assert_eq!(e["data"]["action"], "create");
    assert_eq!(e["data"]["resource_name"], "power");
    assert_eq!(e["data"]["resource_data"]["value"], 7);
    assert_eq!(e["data"]["resource_data"]["description"], "seven");
    let e = next_event_for(&mut ws, "p1").await;
    assert_eq!(e["topic"], "power.square.p1", "{e}");
    assert_eq!(e["data"]["action"], "square");
    assert_eq!(e["data"]["resource_data"]["result"], 49);
    assert_eq!(e["data"]["resource_data"]["status"], "done");
    let e = next_event_for(&mut ws, "p1").await;
    assert_eq!(e["topic"], "power.patch.p1", "{e}");
    assert_eq!(e["data"]["action"], "patch");
    assert_eq!(e["data"]["patch"], patch);
    assert_eq!(e["data"]["resource_data"]["value"], 12);
    assert_eq!(e["data"]["resource_data"]["status"], "pending");
    let e = next_event_for(&mut ws, "p1").await;
    assert_eq!(e["topic"], "power.square.p1", "{e}");
    assert_eq!(e["data"]["resource_data"]["result"], 144);
    let e = next_event_for(&mut ws, "p1").await;
    assert_eq!(e["topic"], "power.delete.p1", "{e}");
    assert_eq!(e["data"]["action"], "delete");
    assert_eq!(e["data"]["resource_id"], "p1");
    assert!(e["data"].get("resource_data").is_none(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_power_gives_503_through_api() {
    let cluster = Cluster::new();
    let mut power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let http = client();
    create(
        &http,
        &base,
        json!({"resource_id": "p1", "resource_data": {"value": 2}}),
    )
    .await;
    assert_eq!(get(&http, &base, "p1").await.0, 200);

    power.sigterm();
    let signalled = Instant::now();
    let bound = Duration::from_millis(PEER_TIMEOUT_MS + REQUEST_TIMEOUT_MS);
    let mut seen = Vec::new();
    let poll = Poll::new(bound, Duration::from_millis(20));
    let (status, body) = loop {
        let (status, body) = get(&http, &base, "p1").await;
        if status == 503 {
            break (status, body);
        }
        seen.push(status);
        poll.again(|| {
            format!("no 503 within {bound:?} of SIGTERM (answers: {seen:?}, last: {body})")
        })
        .await;
    };
    let took = signalled.elapsed();
    assert_eq!(status, 503);
    assert!(body["error"].is_string(), "{body}");
    println!("503 {body} {took:?} after SIGTERM (answers before: {seen:?})");
    assert!(
        power.wait(Duration::from_secs(10)).await.success(),
        "power did not exit 0 on SIGTERM; its output:\n{}",
        power.log()
    );
}

/// Two `power` processes over two private embedded stores: the second is refused at start-up
/// with exit code 2 and a message naming the collection, both stores and what to do; the first
/// keeps serving alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_power_over_another_store_exits_2() {
    let cluster = Cluster::new();
    let base_dir = std::env::temp_dir().join(format!(
        "zs-one-store-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    let (first_dir, second_dir) = (base_dir.join("first"), base_dir.join("second"));
    let store = |dir: &std::path::Path| ("ZS_STORE", format!("embedded:{}", dir.display()));
    let _first = cluster.spawn("power", &[store(&first_dir)], &[]);
    // Once the api lists power, the first owner is announced.
    let (_api, base) = cluster.api().await;

    let mut second = cluster.spawn("power", &[store(&second_dir)], &[]);
    let status = second.wait(Duration::from_secs(15)).await;
    let log = second.log();
    assert_eq!(status.code(), Some(2), "its output:\n{log}");
    for part in [
        "`power`",
        "power_service-",
        &first_dir.display().to_string(),
        &second_dir.display().to_string(),
        "ZS_STORE",
        "one owner",
    ] {
        assert!(log.contains(part), "{part} missing from:\n{log}");
    }
    // The first owner serves on.
    let http = client();
    create(
        &http,
        &base,
        json!({"resource_id": "p1", "resource_data": {"value": 2}}),
    )
    .await;
    assert_eq!(get(&http, &base, "p1").await.0, 200);
    let _ = std::fs::remove_dir_all(&base_dir);
}
