//! `power_worker`: the worker of the original FOSDEM demo. For every power whose `status` is
//! `pending`, anywhere in the cluster, it sets `result = value * value` and `status = "done"`;
//! every few seconds it re-checks the pending ones, so powers created while it was down are
//! caught up.
//!
//! Run it beside `power` (or `api_power`), from the repository root:
//!
//! ```text
//! cargo run --release --example worker
//! ZS_WORKER_POLL_MS=2000 cargo run --release --example worker   # re-check every 2 s (default 10 s)
//! ZS_TRANSPORT=nats://127.0.0.1:4222 cargo run --release --example worker   # over NATS
//! ```
//!
//! Several `worker` processes are replicas of one worker group: they share the pending powers,
//! each computed by one of them (give each its own `ZS_WORKER_STATE_DIR`; the README's
//! "Workers").
//!
//! Expect `power_worker watching power` and then one line per computed power. Ctrl-C or SIGTERM
//! leave the cluster cleanly.

use zeroservices::prelude::*;
use zeroservices::worker::Worker;
use zeroservices_examples::power::{Power, Status};

/// Computes one pending power.
async fn build(ctx: Context, change: Change<Power>) -> Result<()> {
    let Some(power) = change.data else {
        return Ok(());
    };
    if power.status != Status::Pending {
        return Ok(());
    }
    let result = power
        .value
        .checked_mul(power.value)
        .ok_or_else(|| Error::failed(format!("{} squared overflows", power.value)))?;
    ctx.collection::<Power>()
        .patch(
            &change.resource_id,
            patch!({"$set": {"result": result, "status": "done"}}),
        )
        .await?;
    println!("{}: {}² = {result}", change.resource_id, power.value);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!(
            "power_worker: squares every pending power of the cluster.\n\
             Settings: the ZS_* variables of a node (ZS_DISCOVERY_INTERFACE, ZS_PEERS, ...),\n\
             ZS_WORKER_POLL_MS (re-check period, default 10000)."
        );
        return std::process::ExitCode::SUCCESS;
    }
    let run = async {
        let builder = Node::builder("power_worker").network_from_env()?;
        println!("power_worker watching power");
        Worker::new("power_worker")
            .on::<Power, _, _>(query!({"status": "pending"}), build)
            .run(builder)
            .await
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
