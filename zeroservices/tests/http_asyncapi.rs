//! `GET /asyncapi.json`: an AsyncAPI 3.0 document of the `/realtime` websocket, checked by the
//! official parser (npm `@asyncapi/parser`, pinned in `tests/asyncapi/package-lock.json`): zero
//! diagnostics of error severity, and the messages a live node really sends validate against
//! the document's message schemas.
//!
//! The parser is installed by `scripts/test.sh` (`npm ci`) into `target/asyncapi-parser`, passed
//! as `ZS_TEST_ASYNCAPI_PARSER` (the directory holding `node_modules`), run with
//! `ZS_TEST_NODE` (default `node`). Without it the tests fail under CI (`CI=true`) and say they
//! skipped the validation otherwise.

mod http_common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use http_common::*;
use serde_json::{Value, json};
use zeroservices::http::{BasicAuth, HttpConfig, Operation, User, asyncapi_document};
use zeroservices::medium::MemoryCluster;
use zeroservices::{ActionInfo, ActionKind, Node, ResourceInfo};

/// The parser's directory and the node executable, if there are.
fn parser() -> Option<(PathBuf, String)> {
    let node = std::env::var("ZS_TEST_NODE")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "node".to_owned());
    let dir = match std::env::var("ZS_TEST_ASYNCAPI_PARSER") {
        Ok(dir) if !dir.trim().is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/asyncapi-parser"),
    };
    let installed = dir
        .join("node_modules/@asyncapi/parser/package.json")
        .exists();
    let runs = Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if installed && runs {
        return Some((dir, node));
    }
    let why = format!(
        "no AsyncAPI parser: {} has no node_modules/@asyncapi/parser (scripts/test.sh installs \
         it: npm ci in zeroservices/tests/asyncapi) or `{node}` does not run (ZS_TEST_NODE)",
        dir.display()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    eprintln!("SKIPPED: AsyncAPI validation ({why})");
    None
}

/// Validates `doc` with the parser (and `samples`, `[{"message", "payload"}]`, against its
/// messages); skipped with a message without a parser.
fn validate(doc: &Value, samples: &[Value]) {
    let Some((dir, node)) = parser() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("asyncapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/asyncapi/validate.js");
    let mut command = Command::new(&node);
    command.arg(&script).arg(&dir).arg(&path);
    if !samples.is_empty() {
        let samples_path = tmp.path().join("samples.json");
        std::fs::write(&samples_path, serde_json::to_vec(samples).unwrap()).unwrap();
        command.arg(&samples_path);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "@asyncapi/parser rejected the document:\n{stdout}\n{stderr}\n{}",
        serde_json::to_string_pretty(doc).unwrap()
    );
    // No diagnostic of error severity (0), whatever the exit code says.
    for line in stdout.lines() {
        let d: Value = serde_json::from_str(line).unwrap();
        assert_ne!(d["severity"], 0, "error diagnostic: {d}");
    }
    eprintln!("@asyncapi/parser: {}", stderr.trim());
}

async fn fetch(base: &str, authorization: Option<&str>) -> (u16, Value) {
    let mut request = client().get(format!("{base}/asyncapi.json"));
    if let Some(auth) = authorization {
        request = request.header("authorization", auth);
    }
    json(request.send().await.unwrap()).await
}

fn message_keys(doc: &Value) -> Vec<String> {
    doc["components"]["messages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

/// Every local `$ref` in `value` points at something in `doc`.
fn check_refs(doc: &Value, value: &Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    let target = v.as_str().unwrap();
                    let pointer = target.strip_prefix('#').unwrap();
                    assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
                } else {
                    check_refs(doc, v);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| check_refs(doc, v)),
        _ => {}
    }
}

/// The next message of type `event` (skipping answers).
async fn next_event(ws: &mut Ws) -> Value {
    for _ in 0..16 {
        let message = ws_next(ws).await;
        if message["type"] == "event" {
            return message;
        }
    }
    panic!("no event in 16 messages");
}

/// Two collections with custom actions (power: square, add, double, reset, nap; job on a second
/// node): the document parses without an error, has one message per collection and change
/// event, and the events the websocket really sends (create, patch, a `&mut self` action,
/// add_link, delete) validate against their messages.
#[tokio::test]
async fn the_document_of_a_live_cluster_parses_and_the_real_messages_match_it() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let jobs = Node::builder("job_service")
        .memory(&cluster)
        .resource::<Job>()
        .start()
        .await
        .unwrap();
    node.wait_for_collection("job", Duration::from_secs(5))
        .await
        .unwrap();
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let (status, doc) = fetch(&base, None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["channels"]["realtime"]["address"], "/realtime");
    assert_eq!(doc["servers"]["node"]["protocol"], "ws");
    assert_eq!(
        doc["servers"]["node"]["host"],
        base.trim_start_matches("http://")
    );
    let keys = message_keys(&doc);
    for key in [
        "subscribe",
        "unsubscribe",
        "subscribed",
        "unsubscribed",
        "error",
        "event",
        "power.create",
        "power.patch",
        "power.delete",
        "power.square",
        "power.add",
        "power.add_link",
        "chat.create",
        "job.create",
        "job.delete",
    ] {
        assert!(
            keys.contains(&key.to_owned()),
            "missing message {key}: {keys:?}"
        );
    }
    // Read and collection actions change nothing: no event, no message.
    for key in ["power.double", "power.reset", "power.follow_links"] {
        assert!(!keys.contains(&key.to_owned()), "{key}");
    }
    // The resource's schema is the payload's resource_data; the action's result its result.
    let square = &doc["components"]["messages"]["power.square"]["payload"]["properties"]["data"];
    assert_eq!(
        square["properties"]["resource_data"]["$ref"],
        "#/components/schemas/power"
    );
    assert!(
        doc["components"]["schemas"]["power"]["properties"]
            .get("value")
            .is_some()
    );
    assert_eq!(
        doc["components"]["schemas"]["power"]["properties"]["status"]["$ref"],
        "#/components/schemas/Status"
    );
    check_refs(&doc, &doc);

    // What the websocket really sends, checked against the document.
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_send(&mut ws, json!({"type": "subscribe", "topics": ["power"]})).await;
    let subscribed = ws_next(&mut ws).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let mut samples = vec![
        json!({"message": "subscribed", "payload": subscribed}),
        json!({"message": "subscribe", "payload": {"type": "subscribe", "topics": ["power"], "since": null}}),
        json!({"message": "unsubscribe", "payload": {"type": "unsubscribe", "topics": ["x"]}}),
    ];
    let http = client();
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": "p1", "resource_data": {"value": 3}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    samples.push(json!({"message": "power.create", "payload": next_event(&mut ws).await}));
    let (status, body) = json(
        http.patch(format!("{base}/power/p1"))
            .json(&json!({"patch": {"$set": {"description": "three"}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    samples.push(json!({"message": "power.patch", "payload": next_event(&mut ws).await}));
    let (status, body) = json(
        http.post(format!("{base}/power/p1/square"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body), (200, &json!(9)));
    samples.push(json!({"message": "power.square", "payload": next_event(&mut ws).await}));
    let (status, body) = json(
        http.post(format!("{base}/power/p1/add_link"))
            .json(&json!({"relation": "source", "target_id": ["chat", "c1"], "title": "from chat"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    samples.push(json!({"message": "power.add_link", "payload": next_event(&mut ws).await}));
    let status = http
        .delete(format!("{base}/power/p1"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 204);
    samples.push(json!({"message": "power.delete", "payload": next_event(&mut ws).await}));
    ws_send_text(&mut ws, "{not json").await;
    let error = ws_next(&mut ws).await;
    assert_eq!(error["code"], "bad_message", "{error}");
    samples.push(json!({"message": "error", "payload": error}));
    ws_send(&mut ws, json!({"type": "unsubscribe", "topics": ["power"]})).await;
    samples.push(json!({"message": "unsubscribed", "payload": ws_next(&mut ws).await}));
    for sample in &samples {
        samples_have_a_cursor_when_logged(sample);
    }
    validate(&doc, &samples);

    // A message the server never sends fails the sample check: the check has teeth.
    if parser().is_some() {
        let wrong = [
            json!({"message": "power.create", "payload": {"type": "event", "topic": "power.create.1", "data": {"action": "create", "resource_name": "power", "resource_id": "1", "version": 1, "resource_data": {"value": "three"}}}}),
        ];
        let result = std::panic::catch_unwind(|| validate(&doc, &wrong));
        assert!(result.is_err(), "a wrong resource_data passed");
    }
    drop(ws);
    server.shutdown().await;
    jobs.stop().await;
    node.stop().await;
}

fn samples_have_a_cursor_when_logged(sample: &Value) {
    let message = sample["message"].as_str().unwrap();
    if message.starts_with("power.") {
        assert!(sample["payload"]["data"]["cursor"].is_string(), "{sample}");
    }
}

/// Like `/openapi.json`: behind the node's authentication, only the collections the
/// Authorizer lets the user list, and the server declares the scheme.
#[tokio::test]
async fn the_document_needs_a_user_and_shows_only_what_the_user_may_list() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0)
        .basic_auth(BasicAuth::new("ann", "pw"))
        .authorizer(|_user: Option<&User>, collection: &str, op: &Operation| {
            !(collection == "chat" && *op == Operation::List)
        });
    let (server, base) = start(&node, config).await;
    let (status, body) = fetch(&base, None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = fetch(&base, Some(&basic("ann", "wrong"))).await;
    assert!(status == 401 || status == 403, "{status} {body}");
    let (status, doc) = fetch(&base, Some(&basic("ann", "pw"))).await;
    assert_eq!(status, 200, "{doc}");
    let keys = message_keys(&doc);
    assert!(keys.contains(&"power.create".to_owned()), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("chat")), "{keys:?}");
    assert_eq!(
        doc["components"]["securitySchemes"]["basicAuth"],
        json!({"type": "http", "scheme": "basic"})
    );
    assert_eq!(
        doc["servers"]["node"]["security"],
        json!([{"$ref": "#/components/securitySchemes/basicAuth"}])
    );
    validate(&doc, &[]);
    server.shutdown().await;
    node.stop().await;
}

/// A node that knows no collection serves a valid document: the protocol's messages only.
#[tokio::test]
async fn a_node_with_no_collections_serves_a_valid_document() {
    let cluster = MemoryCluster::new();
    let lonely = Node::builder("lonely")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    let (server, base) = start(&lonely, HttpConfig::new(0)).await;
    let (status, doc) = fetch(&base, None).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        message_keys(&doc),
        [
            "subscribe",
            "unsubscribe",
            "subscribed",
            "unsubscribed",
            "error",
            "event"
        ]
    );
    assert_eq!(doc["components"]["schemas"], json!({}));
    validate(&doc, &[]);
    server.shutdown().await;
    lonely.stop().await;
}

/// Names a peer may announce (any string: discovery carries them) cannot break the document:
/// keys are sanitized and made unique, names appear only as JSON strings and an escaped regex.
#[test]
fn hostile_collection_and_action_names_make_a_valid_document() {
    let schema = json!({
        "type": "object",
        "properties": {"v": {"$ref": "#/$defs/V"}},
        "$defs": {"V": {"type": "integer"}},
    });
    let action = |name: &str| ActionInfo {
        name: name.to_owned(),
        kind: ActionKind::Mutate,
        doc: Some("a \"quoted\" doc with {braces} and\nnewline".to_owned()),
        args_schema: None,
        result_schema: json!({"type": "null"}),
    };
    let info = |name: &str, actions: Vec<ActionInfo>| ResourceInfo {
        name: name.to_owned(),
        schema: schema.clone(),
        actions,
        text_index: Vec::new(),
    };
    let infos = [
        info(
            "we\"ird name/{x}#~(1)[a]*+?^$|\\",
            vec![action("do it/{now}#"), action("")],
        ),
        info("a.b", vec![action("create")]),
        info("a_b", Vec::new()),
        info("", Vec::new()),
        info("ünïcode✓", vec![action("ünï")]),
    ];
    let doc = asyncapi_document(&infos);
    let keys = message_keys(&doc);
    for key in &keys {
        assert!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "{key}"
        );
    }
    // `a.b.create` would be two messages (the action `create` and the built-in): both kept.
    assert!(keys.contains(&"a.b.create".to_owned()) && keys.contains(&"a.b.create_2".to_owned()));
    // "a.b" and "a_b" share no key.
    assert!(keys.contains(&"a_b.create".to_owned()), "{keys:?}");
    let weird = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .values()
        .find(|m| m["title"] == "we\"ird name/{x}#~(1)[a]*+?^$|\\.create")
        .expect("the weird collection's create");
    assert_eq!(
        weird["payload"]["properties"]["data"]["properties"]["resource_name"]["const"],
        "we\"ird name/{x}#~(1)[a]*+?^$|\\"
    );
    check_refs(&doc, &doc);
    let topic = "we\"ird name/{x}#~(1)[a]*+?^$|\\.create.7";
    let samples = [json!({
        "message": weird["name"],
        "payload": {"type": "event", "topic": topic, "data": {
            "action": "create", "resource_name": "we\"ird name/{x}#~(1)[a]*+?^$|\\",
            "resource_id": "7", "version": 1, "resource_data": {"v": 1},
        }},
    })];
    validate(&doc, &samples);
    validate(&asyncapi_document(&[]), &[]);
}
