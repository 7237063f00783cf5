//! `power_service`: owns the `power` collection (a number to square, with a `square` action
//! and a collection action `reset`) and serves it to the cluster over ZeroMQ. No HTTP: run
//! `api` beside it for REST and the websocket, or use `api_power` for both in one process.
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run --release --example power
//! cargo run --release --example power -- --help      # every setting, with its ZS_* variable
//! ZS_STORE=memory cargo run --release --example power  # nothing written to ./data
//! ```
//!
//! Expect a log line `node started` with the node's id and `resources=["power"]`, then
//! `power_service serving`; it finds the other nodes by UDP multicast, on loopback (without a
//! cluster key a node stays on this machine: see the README's "Closed by default"). Ctrl-C or SIGTERM make
//! it say goodbye to the cluster and exit with code 0. Documents live in
//! `./data/power_service` (the embedded store) unless `ZS_STORE` says otherwise.
//!
//! Over NATS instead (no multicast, no ZeroMQ socket: the README's "NATS transport"), give it
//! and the other nodes the same server: `ZS_TRANSPORT=nats://127.0.0.1:4222 cargo run
//! --release --example power`.

use zeroservices::prelude::*;
use zeroservices_examples::power::Power;

/// Owns the `power` collection: numbers to square.
#[service(name = "power_service", resources(Power))]
async fn main() {}
