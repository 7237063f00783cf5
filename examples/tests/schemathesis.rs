//! An outside fuzzer checks that `/openapi.json` describes the server exactly: Schemathesis
//! (PyPI, pinned in `scripts/test.sh`, `ZS_TEST_SCHEMATHESIS` is its `st`) reads the live
//! document and sends the requests it derives from it, with every check on (`--checks all`:
//! no 5xx, every status and header documented, every body matching its schema, every request the
//! document allows accepted and every request it forbids refused, `Allow` matching the
//! operations, ...) in all four phases (examples, coverage, fuzzing, stateful: chains of
//! create, get, patch, actions, delete), with a bounded number of examples and a fixed seed.
//!
//! Three servers, each over real processes on loopback:
//! - `api_power` (owner and HTTP in one process) on the memory store;
//! - `api_power` on the embedded store (a directory of its own);
//! - `api` (a gateway serving HTTP with no resources) in front of `power` (the owner).
//!
//! Zero failures: the test fails with Schemathesis' whole report otherwise. The test reads the
//! live document, so new actions and resources are covered without changing it.
//!
//! `#[ignore]`d (it needs Schemathesis): `scripts/test.sh` installs it into `target/st-venv`
//! and runs it. By hand (after `cargo build --examples -p zeroservices-examples` and
//! `cargo build -p zeroservices --bin zeroservices`):
//! `ZS_TEST_SCHEMATHESIS=target/st-venv/bin/st cargo test -p zeroservices-examples --test
//! schemathesis -- --include-ignored`. Without it the test fails saying what to install.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

mod common;
use common::*;

/// Test cases per operation and phase (`--max-examples`).
const MAX_EXAMPLES: &str = "30";
/// The seed of every run (`--seed`): the same requests each time.
const SEED: &str = "20261202";
/// Every phase.
const PHASES: &str = "examples,coverage,fuzzing,stateful";
/// Schemathesis' configuration: a request the document forbids may also be refused with 413
/// (a resource id over `ZS_MAX_ID_BYTES`, as the limits answer), and one it allows may get a
/// 412 (an `If-Match` naming another version than the resource's: state, not shape). The
/// coverage phase is off for `PATCH`: Schemathesis 4.32.5 cannot build a body from a schema
/// with `not` (the patch schema's "never the same field in `$set` and `$unset`") and sends `0`
/// as a "valid" body; the fuzzing and stateful phases still send `PATCH` requests.
const CONFIG: &str = r#"[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]

[checks.positive_data_acceptance]
expected-statuses = ["2XX", "3XX", 401, 403, 404, 409, 412, 429]

[[operations]]
include-method = "PATCH"
phases.coverage.enabled = false
"#;

/// The `st` executable: `ZS_TEST_SCHEMATHESIS`, else `st` on the `PATH`; a missing one fails
/// the test saying how to get it.
fn schemathesis() -> PathBuf {
    let st = std::env::var("ZS_TEST_SCHEMATHESIS")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "st".to_owned());
    let version = Command::new(&st)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match version {
        Ok(out) if out.status.success() => {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
            PathBuf::from(st)
        }
        other => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            panic!(
                "Schemathesis is missing ({st} --version: {other:?}){}: run scripts/test.sh \
                 (it installs schemathesis==4.32.5 into target/st-venv) or \
                 `pip install schemathesis==4.32.5` and set ZS_TEST_SCHEMATHESIS to its `st`",
                if ci { " under CI" } else { "" }
            )
        }
    }
}

/// A directory of its own under the temporary dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path =
            std::env::temp_dir().join(format!("zs-st-{what}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `st run <base>/openapi.json` with every check and phase; fails with its output unless
/// it exits 0. The summary lines, for the log.
fn run_schemathesis(st: &PathBuf, base: &str, name: &str) -> String {
    let dir = TempDir::new(name);
    // 413 (an id or body over a limit) is a refusal too.
    let config = dir.0.join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let started = Instant::now();
    let output = Command::new(st)
        .current_dir(&dir.0)
        .arg("--config-file")
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        .args(["--checks", "all"])
        .args(["--phases", PHASES])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--seed", SEED])
        .args(["--workers", "1"])
        .args(["--generation-database", "none"])
        .args(["--request-timeout", "10"])
        .arg("--no-color")
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", st.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis found disagreements between {name}'s server and its /openapi.json \
         ({}): its report:\n{stdout}\n{stderr}",
        output.status
    );
    let summary: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("generated") || l.contains("passed") || l.contains("Seed"))
        .collect();
    format!(
        "{name}: {:.1} s; {}",
        started.elapsed().as_secs_f64(),
        summary.join(" | ")
    )
}

/// Starts the example `name` (serving HTTP) on a free port, waits until it lists `power`: its
/// base URL. A port taken meanwhile makes it exit; another is tried.
async fn serve(cluster: &Cluster, name: &str, env: &[(&str, String)]) -> (Proc, String) {
    for _ in 0..5 {
        let port = free_tcp_port();
        let mut env = env.to_vec();
        env.push(("ZS_HTTP_PORT", port.to_string()));
        let mut proc = cluster.spawn(name, &env, &[]);
        let base = format!("http://127.0.0.1:{port}");
        match wait_for_power(&base, &mut proc).await {
            Ok(()) => return (proc, base),
            Err(status) if proc.log().contains("Address already in use") => {
                eprintln!("{name} on port {port}: {status}, port taken; another port");
            }
            Err(status) => panic!("{name} exited early: {status}; its output:\n{}", proc.log()),
        }
    }
    panic!("{name} could not bind a free port in 5 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Schemathesis (ZS_TEST_SCHEMATHESIS; scripts/test.sh installs it)"]
async fn the_openapi_document_describes_the_server_exactly() {
    let st = schemathesis();
    let mut summaries = Vec::new();

    // api_power on the memory store.
    {
        let cluster = Cluster::new();
        let (_server, base) = serve(&cluster, "api_power", &[]).await;
        summaries.push(run_schemathesis(&st, &base, "api_power (memory)"));
    }

    // api_power on the embedded store.
    {
        let cluster = Cluster::new();
        let store = TempDir::new("embedded");
        let env = [("ZS_STORE", format!("embedded:{}", store.0.display()))];
        let (_server, base) = serve(&cluster, "api_power", &env).await;
        summaries.push(run_schemathesis(&st, &base, "api_power (embedded)"));
    }

    // A gateway (no resources) in front of the owner.
    {
        let cluster = Cluster::new();
        let _power = cluster.spawn("power", &[], &[]);
        let (_api, base) = cluster.api().await;
        summaries.push(run_schemathesis(&st, &base, "api in front of power"));
    }

    for summary in summaries {
        eprintln!("{summary}");
    }
}
