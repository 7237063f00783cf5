//! `GET /openapi.json`: a valid OpenAPI 3.1 document (checked by the real validator,
//! `openapi-spec-validator`, when a Python with it is found) of every collection and action
//! known in the cluster, that follows nodes joining and leaving.
//!
//! The validator is looked up as `$ZS_TEST_PYTHON -m openapi_spec_validator` (set by
//! `scripts/test.sh`), else `python3` if it can import `openapi_spec_validator`; without one
//! the validation step says it was skipped.

mod http_common;

use std::process::Command;
use std::time::{Duration, Instant};

use http_common::*;
use serde_json::{Value, json};
use zeroservices::Node;
use zeroservices::http::{BasicAuth, HttpConfig, openapi_document};
use zeroservices::medium::MemoryCluster;

/// A python that can run `-m openapi_spec_validator`, if any.
fn validator_python() -> Option<String> {
    if let Ok(python) = std::env::var("ZS_TEST_PYTHON")
        && !python.trim().is_empty()
    {
        // Configured explicitly: it must work.
        let ok = Command::new(&python)
            .args(["-c", "import openapi_spec_validator"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "ZS_TEST_PYTHON={python} cannot import openapi_spec_validator"
        );
        return Some(python);
    }
    let ok = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| "python3".to_owned())
}

/// Runs the validator on `doc`; skipped (with a message) when there is none.
fn validate(doc: &Value) {
    let Some(python) = validator_python() else {
        eprintln!(
            "SKIPPED: OpenAPI validation (no python with openapi-spec-validator; \
             set ZS_TEST_PYTHON or `pip install openapi-spec-validator`)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let output = Command::new(&python)
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected the document:\n{}\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        serde_json::to_string_pretty(doc).unwrap()
    );
    eprintln!(
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
}

async fn fetch(base: &str) -> Value {
    let (status, doc) = json(
        client()
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    doc
}

#[tokio::test]
async fn the_document_describes_every_resource_and_action_and_validates() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let doc = fetch(&base).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/",
        "/healthz",
        "/readyz",
        "/power",
        "/power/{resource_id}",
        "/power/{resource_id}/square",
        "/power/{resource_id}/add",
        "/power/{resource_id}/double",
        "/power/reset",
        "/power/nap",
        "/chat",
        "/chat/{resource_id}",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    assert!(paths["/power"].get("get").is_some() && paths["/power"].get("post").is_some());
    let item = &paths["/power/{resource_id}"];
    for method in ["get", "patch", "delete"] {
        assert!(item.get(method).is_some(), "{method}");
    }
    // actions: arguments as the request body, results as the response
    let add = &paths["/power/{resource_id}/add"]["post"];
    let args_ref = add["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .unwrap();
    let args = &doc["components"]["schemas"][args_ref.rsplit('/').next().unwrap()];
    assert!(args["properties"].get("amount").is_some(), "{args}");
    assert!(
        paths["/power/{resource_id}/square"]["post"]
            .get("requestBody")
            .is_none()
    );
    // the resource schema, its $defs hoisted and every $ref resolvable
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let power = &schemas["power"];
    assert!(power.get("$defs").is_none());
    assert_eq!(
        power["properties"]["status"]["$ref"],
        "#/components/schemas/Status"
    );
    assert!(schemas.contains_key("Status") && schemas.contains_key("Error"));
    check_refs(&doc, &doc);
    // errors use the error schema
    assert_eq!(
        doc["components"]["responses"]["NotFound"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Error"
    );
    assert_eq!(
        paths["/power/{resource_id}"]["get"]["responses"]["404"]["$ref"],
        "#/components/responses/NotFound"
    );
    validate(&doc);
    server.shutdown().await;
    node.stop().await;
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

/// Polls `base`'s document until `check` holds, at most 5 s.
async fn wait_for_doc(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let doc = fetch(base).await;
        if check(&doc) {
            return doc;
        }
        assert!(Instant::now() < deadline, "document never {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_document_follows_nodes_joining_and_leaving() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let has_job = |doc: &Value| doc["paths"].get("/job").is_some();
    let before = fetch(&base).await;
    assert!(before["paths"].get("/power").is_some());
    assert!(!has_job(&before));

    let jobs = Node::builder("job_service")
        .memory(&cluster)
        .resource::<Job>()
        .start()
        .await
        .unwrap();
    let during = wait_for_doc(&base, "gained /job", has_job).await;
    assert!(during["paths"].get("/job/{resource_id}").is_some());
    assert!(during["paths"].get("/power").is_some());
    // Job's Status is the same type as Power's: one shared component
    assert_eq!(
        during["components"]["schemas"]["job"]["properties"]["status"]["$ref"],
        "#/components/schemas/Status"
    );
    check_refs(&during, &during);
    validate(&during);
    // and the REST routes follow too
    let (status, body) = json(
        client()
            .post(format!("{base}/job"))
            .json(&json!({"resource_data": {"name": "build"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    jobs.stop().await;
    let after = wait_for_doc(&base, "lost /job", |doc| !has_job(doc)).await;
    assert_eq!(after, before);
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn with_basic_auth_the_document_declares_it() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0).basic_auth(BasicAuth::new("ann", "pw"));
    let (server, base) = start(&node, config).await;
    let (status, doc) = json(
        client()
            .get(format!("{base}/openapi.json"))
            .header("authorization", basic("ann", "pw"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        doc["components"]["securitySchemes"]["basicAuth"],
        json!({"type": "http", "scheme": "basic"})
    );
    assert_eq!(doc["security"], json!([{"basicAuth": []}]));
    // The probes stay open by default (ZS_HEALTH_AUTH off): no security on them.
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(doc["paths"][probe]["get"]["security"], json!([]), "{probe}");
    }
    validate(&doc);
    server.shutdown().await;
    node.stop().await;
}

/// With `ZS_HEALTH_AUTH` on, the probes need a user like the rest: the document says so.
#[tokio::test]
async fn with_health_auth_the_probes_declare_the_global_security() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0)
        .basic_auth(BasicAuth::new("ann", "pw"))
        .health_auth(true);
    let (server, base) = start(&node, config).await;
    let (status, doc) = json(
        client()
            .get(format!("{base}/openapi.json"))
            .header("authorization", basic("ann", "pw"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    for probe in ["/healthz", "/readyz"] {
        let op = &doc["paths"][probe]["get"];
        assert!(op.get("security").is_none(), "{probe}: {op}");
        assert!(op["responses"].get("401").is_some(), "{probe}: {op}");
    }
    validate(&doc);
    server.shutdown().await;
    node.stop().await;
}

#[test]
fn an_empty_cluster_is_a_valid_document_too() {
    let doc = openapi_document(&[], false);
    // `/`, the probes and the metrics.
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["/", "/healthz", "/metrics", "/readyz"]);
    assert_eq!(
        doc["paths"]["/readyz"]["get"]["responses"]["503"]["content"]["application/json"]["schema"]
            ["required"],
        json!(["status", "checks"])
    );
    validate(&doc);
}
