//! The FOSDEM demo as real processes: the `power`, `api` and `worker` example binaries, and
//! the `randomizer`, in a cluster of their own (multicast on 127.0.0.1 with a private group
//! port, the memory store, short heartbeats, the worker re-checking every 500 ms).
//!
//! - 20 pending powers created through `api`'s REST all become `done` with `result ==
//!   value * value`; one patched back to pending with a new value is computed again.
//! - The worker is killed; 5 powers created meanwhile stay pending; a new worker process,
//!   started after them (so it never saw their events), catches them up by its periodic
//!   re-check.
//! - The `randomizer` run against `api` (`--rounds 5 --interval-ms 50 --count 5`) exits 0,
//!   and the worker computes every power it created and patched.
//!
//! The binaries are those `cargo test -p zeroservices-examples` builds beside the tests
//! (`target/<profile>/examples/`). `cargo test --test demo` alone does not rebuild them: a
//! missing binary, or one older than the sources, fails the test with the command to run
//! (`cargo build --examples -p zeroservices-examples`). Every child is killed (SIGKILL) when
//! its handle drops, and its output is printed if the test failed.
//!
//! Run: `cargo test -p zeroservices-examples --test demo`.

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::*;

fn worker(cluster: &Cluster) -> Proc {
    cluster.spawn("worker", &[("ZS_WORKER_POLL_MS", "500".into())], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_computes_every_pending_power_and_catches_up_after_a_restart() {
    let cluster = Cluster::new();
    let _power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let mut first_worker = worker(&cluster);
    let http = client();

    // 20 pending powers, through REST: all computed.
    let mut powers = Vec::new();
    for n in 0..20 {
        let value = n * 7 - 40;
        powers.push((create_pending(&http, &base, value).await, value));
    }
    let took = wait_computed(&http, &base, &powers, Duration::from_secs(20)).await;
    println!("20 powers computed {took:?} after the last create");

    // One patched back to pending with a new value: computed again.
    let (id, _) = powers[3].clone();
    let (status, body) = json(
        http.patch(format!("{base}/power/{id}"))
            .json(&json!({"patch": {"$set": {"value": 99, "status": "pending"}, "$unset": {"result": ""}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["status"], "pending", "{body}");
    powers[3].1 = 99;
    let took = wait_computed(&http, &base, &powers[3..4], Duration::from_secs(20)).await;
    println!("the patched power recomputed in {took:?}");

    // The worker dies (no goodbye); 5 powers are created while no worker runs.
    first_worker.child.kill().unwrap();
    first_worker.wait(Duration::from_secs(5)).await;
    let mut late = Vec::new();
    for value in [11, -12, 13, 0, 1_000_000] {
        late.push((create_pending(&http, &base, value).await, value));
    }
    let stored = all_powers(&http, &base).await;
    for (id, _) in &late {
        assert_eq!(stored[id]["status"], "pending", "{id}: {}", stored[id]);
    }

    // A new worker process, started after their events, catches them up.
    let started = Instant::now();
    let _second_worker = worker(&cluster);
    wait_computed(&http, &base, &late, Duration::from_secs(20)).await;
    println!(
        "a new worker caught up 5 missed powers {:?} after it started",
        started.elapsed()
    );
    // Nothing else changed: the first 20 are still computed.
    wait_computed(&http, &base, &powers, Duration::ZERO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomizer_against_api_and_the_worker_computes_its_powers() {
    let cluster = Cluster::new();
    let _power = cluster.spawn("power", &[], &[]);
    let (_api, base) = cluster.api().await;
    let _worker = worker(&cluster);
    let http = client();

    let mut randomizer = cluster.spawn(
        "randomizer",
        &[],
        &[
            "--url",
            &base,
            "--rounds",
            "5",
            "--interval-ms",
            "50",
            "--count",
            "5",
        ],
    );
    let status = randomizer.wait(Duration::from_secs(30)).await;
    let output = randomizer.log();
    assert!(
        status.success(),
        "randomizer: {status}; its output:\n{output}"
    );
    assert!(output.contains("created 5 powers"), "{output}");
    let patched = output.lines().filter(|l| l.ends_with(", pending")).count();
    assert_eq!(patched, 5, "randomizer's output:\n{output}");

    // Every power it created (and patched back to pending) ends computed.
    let started = Instant::now();
    let poll = Poll::new(Duration::from_secs(20), Duration::from_millis(100));
    loop {
        let powers = all_powers(&http, &base).await;
        let wrong: Vec<String> = powers
            .iter()
            .filter(|(_, d)| !computed(d, None))
            .map(|(id, d)| format!("{id}: {d}"))
            .collect();
        if powers.len() == 5 && wrong.is_empty() {
            break;
        }
        poll.again(|| {
            format!(
                "{} powers, not computed within 20 s:\n{}",
                powers.len(),
                wrong.join("\n")
            )
        })
        .await;
    }
    println!(
        "the randomizer's powers computed {:?} after it exited",
        started.elapsed()
    );
}
