//! `rest_api`: a gateway that owns nothing and serves the whole cluster over HTTP — REST for
//! every collection any node owns, `/openapi.json`, and the `/realtime` websocket.
//!
//! Run it from the repository root, beside `power` (two terminals):
//!
//! ```text
//! cargo run --release --example power
//! cargo run --release --example api                      # HTTP on 127.0.0.1:5001
//! ZS_HTTP_PORT=6001 cargo run --release --example api    # or on port 6001
//! ```
//!
//! Expect `rest_api: HTTP on http://127.0.0.1:5001/`. Once `power` is up:
//!
//! ```text
//! curl -s localhost:5001/                              # {"resources":["power"]}
//! curl -s -XPOST localhost:5001/power -H 'Content-Type: application/json' \
//!   -d '{"resource_id": "a", "resource_data": {"value": 7}}'
//! curl -s -XPOST localhost:5001/power/a/square         # 49
//! curl -s localhost:5001/power/a
//! ```
//!
//! Over NATS, start both with `ZS_TRANSPORT=nats://127.0.0.1:4222` (the README's "The whole
//! FOSDEM demo"). Requests are routed to `power`'s node; CORS allows any origin. Ctrl-C or
//! SIGTERM drain HTTP, say goodbye to the cluster and exit with code 0.

use zeroservices::prelude::*;

/// A REST and websocket gateway to every collection of the cluster.
#[service(name = "rest_api", http(port = 5001, allowed_origins = "*"))]
async fn main() {}
