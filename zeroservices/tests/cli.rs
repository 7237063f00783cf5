//! `zeroservices call|get|list|watch` as a process against a cluster over real ZeroMQ sockets and
//! UDP multicast on 127.0.0.1: the owner runs in the test, the command is the real binary. Every
//! run of the command is bounded (killed after a deadline).

mod http_common;

use std::net::UdpSocket;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use http_common::{ChatMessage, Power};
use serde_json::{Value, json};
use zeroservices::config::NetworkConfig;
use zeroservices::prelude::*;
use zeroservices::security::ClusterKey;

fn power(value: i64) -> Power {
    Power {
        value,
        status: Default::default(),
        result: None,
        description: None,
    }
}

/// One test's cluster: its own multicast group on loopback, short timers, maybe a key.
struct Net {
    port: u16,
    key: Option<&'static str>,
}

impl Net {
    fn new(key: Option<&'static str>) -> Self {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self { port, key }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ZS_DISCOVERY_INTERFACE", "127.0.0.1".into()),
            (
                "ZS_MULTICAST_GROUP",
                format!("237.252.249.227:{}", self.port),
            ),
            ("ZS_HEARTBEAT_MS", "200".into()),
            ("ZS_PEER_TIMEOUT_MS", "1500".into()),
            ("ZS_REQUEST_TIMEOUT_MS", "1000".into()),
            ("RUST_LOG", "warn".into()),
        ]
    }

    async fn owner(&self) -> Node {
        let config = NetworkConfig {
            interface: "127.0.0.1".parse().unwrap(),
            multicast_group: format!("237.252.249.227:{}", self.port).parse().unwrap(),
            cluster_key: self.key.map(|k| ClusterKey::parse(k).unwrap()),
            request_timeout: Duration::from_millis(1000),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_millis(1500),
            ..NetworkConfig::default()
        };
        Node::builder("power_service")
            .network(config)
            .resource::<Power>()
            .resource::<ChatMessage>()
            .start()
            .await
            .unwrap()
    }

    /// Runs `zeroservices <args>` with this cluster's settings (`extra` on top), at most 20 s.
    async fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroservices"));
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") {
                command.env_remove(var);
            }
        }
        command
            .args(args)
            .envs(self.env())
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = command.spawn().unwrap();
        let pid = child.id();
        let waited = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || child.wait_with_output()),
        )
        .await;
        match waited {
            Ok(output) => output.unwrap().unwrap(),
            Err(_) => {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                panic!("zeroservices {args:?} did not exit within 20 s");
            }
        }
    }
}

/// The exit code, stdout as JSON lines, and stderr.
fn parts(out: &Output) -> (i32, Vec<Value>, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_calls_gets_lists_and_watches_a_running_cluster() {
    let net = Net::new(None);
    let owner = net.owner().await;
    // The position before anything happened, for `watch --since`.
    let start = owner.subscribe_since("power", None).await.unwrap();
    let cursor = start.cursor().to_owned();
    drop(start);

    let out = net
        .run(
            &[
                "call",
                "power",
                "create",
                "--id",
                "p1",
                "--args",
                r#"{"resource_data": {"value": 3}}"#,
            ],
            &[],
        )
        .await;
    let (code, lines, err) = parts(&out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines, [json!({"resource_id": "p1", "version": 1})]);

    let (code, lines, err) = parts(
        &net.run(&["call", "power", "square", "--id", "p1"], &[])
            .await,
    );
    assert_eq!((code, lines), (0, vec![json!(9)]), "{err}");
    let (code, lines, err) = parts(
        &net.run(
            &[
                "call",
                "power",
                "add",
                "--id",
                "p1",
                "--args",
                r#"{"amount": 2}"#,
            ],
            &[],
        )
        .await,
    );
    assert_eq!((code, lines), (0, vec![json!(5)]), "{err}");

    let (code, lines, err) = parts(&net.run(&["get", "power", "p1"], &[]).await);
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["resource_id"], "p1");
    assert_eq!(lines[0]["resource_data"]["value"], 5);
    assert_eq!(lines[0]["resource_data"]["result"], 9);

    owner
        .collection::<Power>()
        .create_with_id("p2", power(1))
        .await
        .unwrap();
    let (code, lines, err) = parts(
        &net.run(
            &[
                "list",
                "power",
                "--where",
                r#"{"value": {"$gte": 1}}"#,
                "--sort",
                "-value",
            ],
            &[],
        )
        .await,
    );
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&Value> = lines[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["resource_id"])
        .collect();
    assert_eq!(ids, [&json!("p1"), &json!("p2")]);
    let (code, lines, err) = parts(
        &net.run(
            &[
                "list",
                "power",
                "--where",
                r#"{"value": 1}"#,
                "--limit",
                "5",
            ],
            &[],
        )
        .await,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0].as_array().unwrap().len(), 1);

    // From the cursor: the logged changes after it, one JSON line each, in order.
    let (code, lines, err) = parts(
        &net.run(&["watch", "power", "--since", &cursor, "--count", "3"], &[])
            .await,
    );
    assert_eq!(code, 0, "{err}");
    let topics: Vec<&str> = lines.iter().map(|l| l["topic"].as_str().unwrap()).collect();
    assert_eq!(topics[0], "power.create.p1", "{lines:?}");
    assert_eq!(topics.len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l["data"]["cursor"].is_string()),
        "{lines:?}"
    );

    // Live: a watch of deletes sees one, whenever it has started.
    let watcher = {
        let mut command = Command::new(env!("CARGO_BIN_EXE_zeroservices"));
        for (var, _) in std::env::vars() {
            if var.starts_with("ZS_") {
                command.env_remove(var);
            }
        }
        command
            .args(["watch", "power.delete", "--count", "1"])
            .envs(net.env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut watcher = ChildGuard(Some(watcher));
    let powers = owner.collection::<Power>();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    let status = loop {
        if let Some(status) = watcher.0.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the live watch saw no delete in 20 s"
        );
        n += 1;
        let id = format!("live{n}");
        powers.create_with_id(&id, power(n)).await.unwrap();
        powers.delete(&id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let output = watcher.0.take().unwrap().wait_with_output().unwrap();
    assert!(
        status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (_, lines, _) = parts(&output);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0]["topic"]
            .as_str()
            .unwrap()
            .starts_with("power.delete.live"),
        "{lines:?}"
    );
    owner.stop().await;
}

/// Kills a child left running by a failed assertion.
struct ChildGuard(Option<std::process::Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What goes wrong gets a clear message and its exit code: 2 usage, 3 not found, 4 unavailable,
/// 1 a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_clear_messages_and_exit_codes() {
    let net = Net::new(None);
    // Nobody owns `nothing`: not found within the wait.
    let t = Instant::now();
    let (code, _, err) = parts(
        &net.run(&["get", "nothing", "1", "--wait-ms", "300"], &[])
            .await,
    );
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("Unknown service nothing") && err.contains("--wait-ms"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    // Bad JSON: a usage error, before the cluster is joined.
    for args in [
        &["call", "power", "add", "--id", "p1", "--args", "{bad"][..],
        &["list", "power", "--where", "[1]"][..],
        &["list", "power", "--where", "nope"][..],
        &["list", "power", "--sort", "{"][..],
        &["call", "power"][..],
    ] {
        let (code, _, err) = parts(&net.run(args, &[]).await);
        assert_eq!(code, 2, "{args:?}: {err}");
    }

    let owner = net.owner().await;
    owner
        .collection::<Power>()
        .create_with_id("p1", power(2))
        .await
        .unwrap();
    let cases: [(&[&str], i32, &str); 6] = [
        (&["get", "power", "missing"], 3, "missing"),
        (&["call", "power", "nope"], 3, "nope"),
        // An action that refuses its arguments.
        (
            &[
                "call",
                "power",
                "add",
                "--id",
                "p1",
                "--args",
                r#"{"amount": -1}"#,
            ],
            1,
            "amount must not be negative",
        ),
        // Arguments that break the schema.
        (
            &[
                "call",
                "power",
                "add",
                "--id",
                "p1",
                "--args",
                r#"{"amount": "x"}"#,
            ],
            1,
            "amount",
        ),
        // A filter the owner refuses.
        (
            &["list", "power", "--where", r#"{"value": {"$nope": 1}}"#],
            2,
            "$nope",
        ),
        // The owner does not answer within the request timeout (1 s): unavailable.
        (
            &["call", "power", "nap", "--args", r#"{"ms": 3000}"#],
            4,
            "1000",
        ),
    ];
    for (args, want, says) in cases {
        let (code, lines, err) = parts(&net.run(args, &[]).await);
        assert_eq!(code, want, "{args:?}: {err}");
        assert!(lines.is_empty(), "{args:?}: {lines:?}");
        assert!(
            err.starts_with("error: ") && err.contains(says),
            "{args:?}: {err}"
        );
    }
    // A malformed cursor is a usage error.
    let (code, _, err) = parts(
        &net.run(
            &["watch", "power", "--since", "not-a-cursor", "--count", "1"],
            &[],
        )
        .await,
    );
    assert_eq!(code, 2, "{err}");
    owner.stop().await;
}

/// A cluster with a key: without the key the command sees nobody (not found); with it, it calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_cluster_key_the_command_needs_the_key() {
    let key = "cli-test-cluster-key-0123456789";
    let net = Net::new(Some(key));
    let owner = net.owner().await;
    owner
        .collection::<Power>()
        .create_with_id("p1", power(4))
        .await
        .unwrap();
    let (code, _, err) = parts(
        &net.run(&["get", "power", "p1", "--wait-ms", "800"], &[])
            .await,
    );
    assert_eq!(code, 3, "{err}");
    let (code, lines, err) = parts(
        &net.run(&["get", "power", "p1"], &[("ZS_CLUSTER_KEY", key)])
            .await,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(lines[0]["resource_data"]["value"], 4);
    owner.stop().await;
}

/// The exit code, stdout as one JSON document, and stderr.
fn document(out: &Output) -> (i32, Value, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout:?}"))
    };
    (
        out.status.code().unwrap_or(-1),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `openapi` and `asyncapi` print, as pretty JSON, exactly the documents built from what the
/// cluster announces (the owner's and a second node's collections), with the key when the
/// cluster has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_asyncapi_print_the_documents_of_the_running_cluster() {
    let key = "cli-test-cluster-key-docs-0123456789";
    let net = Net::new(Some(key));
    let owner = net.owner().await;
    let with_key = [("ZS_CLUSTER_KEY", key)];
    let out = net.run(&["openapi"], &with_key).await;
    let (code, doc, err) = document(&out);
    assert_eq!(code, 0, "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\n  \"openapi\": \"3.1.0\""),
        "not pretty JSON"
    );
    let infos = owner.resource_infos();
    assert_eq!(
        doc,
        zeroservices::http::openapi_document(&infos, false),
        "{err}"
    );
    assert!(doc["paths"].get("/power/{resource_id}/square").is_some());
    assert!(doc["paths"].get("/chat").is_some());

    let (code, doc, err) = document(
        &net.run(
            &["asyncapi", "--collection", "power", "--collection", "chat"],
            &with_key,
        )
        .await,
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc, zeroservices::http::asyncapi_document(&infos));
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert!(doc["components"]["messages"].get("power.square").is_some());
    assert!(doc["components"]["messages"].get("chat.create").is_some());
    owner.stop().await;
}

/// No node within `--wait-ms`, a collection nobody announces, a cluster with a key the command
/// lacks: exit 3, a message saying what was waited for, nothing on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_and_asyncapi_without_a_cluster_fail_clearly() {
    let net = Net::new(None);
    for command in ["openapi", "asyncapi"] {
        let (code, doc, err) = document(&net.run(&[command, "--wait-ms", "300"], &[]).await);
        assert_eq!(code, 3, "{command}: {err}");
        assert_eq!(doc, Value::Null);
        assert!(
            err.contains("error: no node of the cluster was found within 300 ms (--wait-ms)"),
            "{command}: {err}"
        );
    }
    let owner = net.owner().await;
    let (code, doc, err) = document(
        &net.run(
            &[
                "openapi",
                "--collection",
                "power",
                "--collection",
                "nope",
                "--wait-ms",
                "500",
            ],
            &[],
        )
        .await,
    );
    assert_eq!(code, 3, "{err}");
    assert_eq!(doc, Value::Null);
    assert!(
        err.contains("no node of the cluster announced the collection \"nope\" within 500 ms"),
        "{err}"
    );
    owner.stop().await;

    let key = "cli-test-cluster-key-docs-abcdefghij";
    let keyed = Net::new(Some(key));
    let owner = keyed.owner().await;
    let (code, _, err) = document(&keyed.run(&["asyncapi", "--wait-ms", "500"], &[]).await);
    assert_eq!(code, 3, "without the key: {err}");
    owner.stop().await;
}
