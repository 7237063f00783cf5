//! `power` and `api` in one process: a node that owns the `power` collection and serves the
//! cluster over HTTP on 127.0.0.1:5001 (REST, `/openapi.json`, the `/realtime` websocket).
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run --release --example api_power
//! ZS_HTTP_PORT=6001 cargo run --release --example api_power   # another port
//! cargo run --release --example api_power -- --help           # every setting
//! ```
//!
//! Expect `power_service: HTTP on http://127.0.0.1:5001/`, then try:
//!
//! ```text
//! curl -s -XPOST localhost:5001/power -H 'Content-Type: application/json' \
//!   -d '{"resource_id": "a", "resource_data": {"value": 7}}'
//! curl -s -XPOST localhost:5001/power/a/square         # 49
//! curl -s localhost:5001/power/a                       # status "done", result 49
//! curl -s -XPOST localhost:5001/power/reset            # 1: back to pending
//! ```
//!
//! Documents live in `./data/power_service` unless `ZS_STORE` says otherwise (`memory`,
//! `embedded:<dir>`, `mongodb://...`). Ctrl-C or SIGTERM drain HTTP, say goodbye to the
//! cluster and exit with code 0.

use zeroservices::prelude::*;
use zeroservices_examples::power::Power;

/// Owns the `power` collection and serves the cluster over HTTP.
#[service(
    name = "power_service",
    resources(Power),
    http(port = 5001, allowed_origins = "*")
)]
async fn main(node: Node) -> Result<()> {
    // Set-up would go here; the node then serves until Ctrl-C or SIGTERM.
    println!("{} owns {:?}", node.name(), node.local_collections());
    Ok(())
}
