//! A client generated from the live `/openapi.json` works: `openapi-python-client` (PyPI,
//! pinned in scripts/test.sh) generates a Python package from the document of a running
//! `api_power` (the example binary), and `generated_client/use_client.py` uses it for create,
//! get, patch (with `If-Match`), list (`sort`, `limit`; `where` through the client's httpx), the `square` and `reset`
//! actions, and the documented errors (a stale `If-Match`: 412, an unknown id: 404) parsed as
//! the document's `Error`. The generator must not skip or mis-read any part of the document
//! but `GET /metrics` (a text body, which it does not support).
//!
//! The generator is `ZS_TEST_OPENAPI_CLIENT` (scripts/test.sh installs it into
//! `target/client-venv`; the `python` beside it runs the client); without it the test fails
//! under CI (`CI=true`) and says it skipped otherwise.
//!
//! Run: `cargo test -p zeroservices-examples --test generated_client` (after
//! `cargo build --examples -p zeroservices-examples`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::*;

/// The generator, if there is one.
fn generator() -> Option<PathBuf> {
    let path = match std::env::var("ZS_TEST_OPENAPI_CLIENT") {
        Ok(p) if !p.trim().is_empty() => PathBuf::from(p),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/client-venv/bin/openapi-python-client"),
    };
    if path.exists() {
        return Some(path);
    }
    let why = format!(
        "no openapi-python-client at {} (scripts/test.sh installs it; or set \
         ZS_TEST_OPENAPI_CLIENT)",
        path.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: generated client ({why})");
    None
}

/// Runs a command to its end, at most 120 s.
async fn run(mut command: Command, what: &str) -> Output {
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let pid = child.id();
    match tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    {
        Ok(output) => output.unwrap().unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("{what} did not finish within 120 s");
        }
    }
}

/// Starts `api_power` on a free port and waits until it lists `power`.
async fn api_power(cluster: &Cluster) -> (Proc, String) {
    for _ in 0..5 {
        let port = free_tcp_port();
        let mut proc = cluster.spawn("api_power", &[("ZS_HTTP_PORT", port.to_string())], &[]);
        let base = format!("http://127.0.0.1:{port}");
        match wait_for_power(&base, &mut proc).await {
            Ok(()) => return (proc, base),
            Err(status) if proc.log().contains("Address already in use") => {
                eprintln!("api_power on port {port}: {status}, port taken; another port");
            }
            Err(status) => panic!(
                "api_power exited early: {status}; its output:\n{}",
                proc.log()
            ),
        }
    }
    panic!("api_power could not bind a free port in 5 attempts");
}

/// Generates the package `zs_client` under `dir` from `document`; the generator's output.
async fn generate(generator: &Path, document: &Value, dir: &Path) -> String {
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(document).unwrap()).unwrap();
    let config =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/generated_client/config.yaml");
    let mut command = Command::new(generator);
    command
        .arg("generate")
        .arg("--path")
        .arg(&path)
        .arg("--output-path")
        .arg(dir.join("zs_client"))
        .args(["--meta", "none", "--overwrite"])
        .arg("--config")
        .arg(&config);
    let output = run(command, "openapi-python-client").await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && dir.join("zs_client/client.py").exists(),
        "openapi-python-client failed:\n{text}"
    );
    text
}

/// The node's `/openapi.json` (200 asserted).
async fn live_document(base: &str) -> Value {
    let (status, document) = json(
        client()
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{document}");
    document
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_live_document_creates_gets_patches_lists_and_acts() {
    let Some(generator) = generator() else {
        return;
    };
    let cluster = Cluster::new();
    let (api, base) = api_power(&cluster).await;
    let document = live_document(&base).await;
    let dir = std::env::temp_dir().join(format!("zs-generated-client-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let output = generate(&generator, &document, &dir).await;
    // Every part of the document is understood but the metrics' text body.
    for line in output.lines().filter(|l| l.contains("WARNING")) {
        assert!(
            line.contains("GET /metrics"),
            "the generator skipped or mis-read a part of the document: {line}\n{output}"
        );
    }

    let python = generator.with_file_name("python");
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/generated_client/use_client.py");
    let mut command = Command::new(&python);
    command.arg(&script).arg(&base).env("PYTHONPATH", &dir);
    let output = run(command, "use_client.py").await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the generated client failed:\n{stdout}\n{}\napi_power's output:\n{}",
        String::from_utf8_lossy(&output.stderr),
        api.log()
    );
    let seen: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        seen["create"],
        json!({"status": 201, "resource_id": "g1", "version": 1})
    );
    let generated = seen["create_generated_id"].as_str().unwrap();
    assert!(!generated.is_empty());
    assert_eq!(
        seen["get"],
        json!({"resource_id": "g1", "value": 7, "status": "pending", "version": 1})
    );
    assert_eq!(
        seen["patch"],
        json!({"value": 8, "description": "seven", "version": 2})
    );
    assert_eq!(
        seen["square"],
        json!({"status": 200, "result": 64, "etag": "\"3\""})
    );
    assert_eq!(
        seen["list_done"],
        json!([{"resource_id": "g1", "value": 8, "result": 64, "status": "done"}])
    );
    let mut all = vec![generated.to_owned(), "g1".to_owned()];
    all.sort();
    assert_eq!(seen["list_all"], json!(all));
    // `-value`: g1 (8) before the generated id's (2).
    assert_eq!(seen["list_sorted"], json!(["g1", generated]));
    assert_eq!(seen["reset"], 1);
    assert_eq!(seen["stale"]["status"], 412);
    assert!(
        seen["stale"]["error"]
            .as_str()
            .unwrap()
            .contains("version 4"),
        "{seen}"
    );
    assert_eq!(seen["missing"]["status"], 404);

    // What the client did is what the server holds.
    let (status, body) = json(
        client()
            .get(format!("{base}/power/g1"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_data"]["status"], "pending");
    assert_eq!(body["resource_data"]["description"], "seven");
    assert_eq!(body["version"], 4);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The generator refuses what the document must never contain (a boolean schema): the
/// document the node serves is rewritten for generators (`true` -> `{}`), and this shows why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_refuses_a_boolean_schema_which_the_document_never_has() {
    let Some(generator) = generator() else {
        return;
    };
    let cluster = Cluster::new();
    let (_api, base) = api_power(&cluster).await;
    let document = live_document(&base).await;
    let schemas = &document["components"]["schemas"];
    assert_eq!(schemas["power_incoming_links_result"]["items"], json!({}));
    assert_eq!(schemas["Status"]["enum"], json!(["pending", "done"]));
    let mut broken = document.clone();
    broken["components"]["schemas"]["power_incoming_links_result"]["items"] = json!(true);
    let dir = std::env::temp_dir().join(format!("zs-generated-client-{}", fresh_prefix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openapi.json");
    std::fs::write(&path, serde_json::to_vec(&broken).unwrap()).unwrap();
    let mut command = Command::new(&generator);
    command
        .arg("generate")
        .arg("--path")
        .arg(&path)
        .arg("--output-path")
        .arg(dir.join("zs_client"))
        .args(["--meta", "none"]);
    let output = run(command, "openapi-python-client").await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("Failed to parse OpenAPI document")
            && !dir.join("zs_client/client.py").exists(),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
