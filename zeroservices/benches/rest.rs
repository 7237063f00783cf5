//! REST throughput of a node serving its own `power` collection over HTTP (what `api_power`
//! runs), beside a plain axum handler doing the same store operation, in the same process and
//! the same run; the load comes from `wrk` (Debian package `wrk`) in another process.
//!
//! ```text
//! cargo bench -p zeroservices --bench rest            # 5 s per measure, 64 connections
//! ZS_BENCH_SECONDS=10 cargo bench -p zeroservices --bench rest
//! ```

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde_json::{Value, json};
use zeroservices::http::{HttpConfig, serve};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::Store;

/// A number to square.
#[resource(collection = "power")]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Its square.
    pub result: Option<i64>,
}

type Shared = Arc<dyn Store>;

async fn plain_get(
    State(store): State<Shared>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    match store.get("power", &id).await {
        Ok(Some(doc)) => (
            StatusCode::OK,
            Json(json!({"resource_id": id, "resource_data": doc})),
        ),
        Ok(None) => (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

async fn plain_create(
    State(store): State<Shared>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let data = body.get("resource_data").cloned().unwrap_or(Value::Null);
    match store.insert("power", None, data).await {
        Ok(id) => (StatusCode::CREATED, Json(json!({"resource_id": id}))),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        ),
    }
}

/// Runs wrk and returns requests/s and the non-2xx count.
fn wrk(url: &str, seconds: u64, post: bool) -> (f64, u64) {
    let dir = std::env::temp_dir().join(format!("zs-rest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let script = dir.join("post.lua");
    std::fs::write(
        &script,
        r#"wrk.method = "POST"
wrk.body = '{"resource_data": {"value": 12, "result": null}}'
wrk.headers["Content-Type"] = "application/json"
"#,
    )
    .expect("lua script");
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t",
        "2",
        "-c",
        "64",
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if post {
        cmd.arg("-s").arg(&script);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk: install it with `apt-get install wrk`");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find(|l| l.starts_with("Requests/sec:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rps, errors)
}

fn main() {
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("wrk is missing: apt-get install wrk");
        std::process::exit(1);
    }
    let seconds: u64 = std::env::var("ZS_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (ours, plain, id) = rt.block_on(async {
        let cluster = MemoryCluster::new();
        let node = Node::builder("api_power")
            .memory(&cluster)
            .resource::<Power>()
            .start()
            .await
            .unwrap();
        let id = node
            .collection::<Power>()
            .create(Power {
                value: 3,
                result: None,
            })
            .await
            .unwrap();
        let server = serve(node.clone(), HttpConfig::new(0)).await.unwrap();
        let ours = server.local_addr();
        std::mem::forget(server); // serves until the process ends
        let store: Shared = node.store();
        let app = axum::Router::new()
            .route("/power", axum::routing::post(plain_create))
            .route("/power/{id}", get(plain_get))
            .with_state(store);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let plain: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (ours, plain, id)
    });
    let _guard = rt.enter();
    println!(
        "REST on one node (memory store), wrk -t2 -c64 -d{seconds}s, same process as the server"
    );
    println!(
        "{:<12} {:>14} {:>14} {:>8} {:>10}",
        "operation", "zeroservices", "plain axum", "ratio", "errors"
    );
    for (name, post) in [("GET by id", false), ("POST create", true)] {
        let path = if post {
            "/power".to_owned()
        } else {
            format!("/power/{id}")
        };
        let (base, base_err) = wrk(&format!("http://{plain}{path}"), seconds, post);
        let (zs, zs_err) = wrk(&format!("http://{ours}{path}"), seconds, post);
        println!(
            "{:<12} {:>12.0}/s {:>12.0}/s {:>8.2} {:>10}",
            name,
            zs,
            base,
            if base > 0.0 { zs / base } else { 0.0 },
            zs_err + base_err
        );
    }
}
