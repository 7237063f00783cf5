//! The REST routes with a real HTTP client: every row of the table on a node that owns the
//! collections and on a gateway that owns nothing, every error status, CORS, Basic auth and an
//! `Authorizer`.

mod http_common;

use std::time::{Duration, Instant};

use http_common::*;
use serde_json::{Value, json};
use zeroservices::http::{BasicAuth, HttpConfig, Operation, User};
use zeroservices::medium::MemoryCluster;

/// Every row of the REST table, against `base`.
async fn every_row(base: &str) {
    let http = client();

    // GET /
    let (status, body) = json(http.get(format!("{base}/")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"resources": ["chat", "power"]}));

    // POST /{collection}: generated id, then chosen ids (one with a space and a slash)
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 3}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["resource_id"].as_str().unwrap().to_owned();
    assert_eq!(body, json!({ "resource_id": id, "version": 1 }));
    for (chosen, value) in [("aéb/c", 5), ("two", 2), ("seven", 7)] {
        let (status, body) = json(
            http.post(format!("{base}/power"))
                .json(&json!({"resource_id": chosen, "resource_data": {"value": value}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, body),
            (201, json!({ "resource_id": chosen, "version": 1 }))
        );
    }

    // GET /{collection}/{id}, the id percent-decoded
    let (status, body) = json(http.get(format!("{base}/power/{id}")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["resource_id"], id.as_str());
    assert_eq!(body["resource_data"]["value"], 3);
    assert_eq!(body["resource_data"]["status"], "pending");
    let odd = format!("{base}/power/a%C3%A9b%2Fc");
    let (status, body) = json(http.get(&odd).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_id"], "aéb/c");
    assert_eq!(body["resource_data"]["value"], 5);

    // GET /{collection} with where, sort, limit, skip
    let (status, body) = json(http.get(format!("{base}/power")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 4);
    let values = |body: &Value| -> Vec<i64> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|d| d["resource_data"]["value"].as_i64().unwrap())
            .collect()
    };
    let (status, body) = json(
        http.get(format!("{base}/power"))
            .query(&[
                ("where", r#"{"value": {"$gte": 3}}"#),
                ("sort", "-value"),
                ("limit", "2"),
                ("skip", "1"),
            ])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(values(&body), [5, 3]);
    assert!(body[0]["resource_id"].is_string());
    let (_, body) = json(
        http.get(format!("{base}/power"))
            .query(&[("sort", r#"{"value": 1}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(values(&body), [2, 3, 5, 7]);

    // PATCH /{collection}/{id}: the updated document
    let (status, body) = json(
        http.patch(&odd)
            .json(&json!({"patch": {"$set": {"description": "odd one"}, "$inc": {"value": 1}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["resource_id"], "aéb/c");
    assert_eq!(body["resource_data"]["value"], 6);
    assert_eq!(body["resource_data"]["description"], "odd one");

    // POST /{collection}/{id}/{action}: resource actions, with and without arguments
    let (status, body) = json(http.post(format!("{odd}/square")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!(36)));
    let (status, body) = json(
        http.post(format!("{base}/power/{id}/add"))
            .json(&json!({"amount": 4}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(7)));
    let (status, body) = json(
        http.post(format!("{base}/power/{id}/double"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(14)));
    let (_, body) = json(http.get(&odd).send().await.unwrap()).await;
    assert_eq!(body["resource_data"]["result"], 36);
    assert_eq!(body["resource_data"]["status"], "done");

    // POST /{collection}/{action}: a collection action
    let (status, body) = json(
        http.post(format!("{base}/power/reset"))
            .json(&json!({"value": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(4)));
    let (_, body) = json(
        http.get(format!("{base}/power"))
            .query(&[("where", r#"{"value": 1}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(body.as_array().unwrap().len(), 4);

    // DELETE /{collection}/{id}: 204, empty
    let response = http.delete(&odd).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 204);
    assert_eq!(response.text().await.unwrap(), "");
    let (status, _) = json(http.get(&odd).send().await.unwrap()).await;
    assert_eq!(status, 404);
}

/// Every error status that bad input and unknown names give, against `base`.
async fn input_errors(base: &str) {
    let http = client();
    let post = |path: &str, body: &'static str| {
        http.post(format!("{base}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let (status, body) = json(
        post(
            "/power",
            r#"{"resource_id": "p1", "resource_data": {"value": 1}}"#,
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    let cases: Vec<(reqwest::Response, u16, &str)> = vec![
        // 400: malformed JSON, a body that is not an object, bad query strings
        (
            post("/power", r#"{"resource_data": "#).await.unwrap(),
            400,
            "malformed JSON",
        ),
        (post("/power", "[1, 2]").await.unwrap(), 400, "JSON object"),
        (post("/power", "").await.unwrap(), 400, "required"),
        (
            post("/power/reset", "{not json").await.unwrap(),
            400,
            "malformed JSON",
        ),
        (
            http.patch(format!("{base}/power/p1"))
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap(),
            400,
            "malformed JSON",
        ),
        (
            http.patch(format!("{base}/power/p1"))
                .json(&json!({"$set": {"value": 2}}))
                .send()
                .await
                .unwrap(),
            400,
            "patch",
        ),
        (
            http.patch(format!("{base}/power/p1"))
                .json(&json!({"patch": {"$frobnicate": {"value": 2}}}))
                .send()
                .await
                .unwrap(),
            400,
            "",
        ),
        (
            http.get(format!("{base}/power?where=%7Bnope"))
                .send()
                .await
                .unwrap(),
            400,
            "where",
        ),
        (
            http.get(format!("{base}/power?where=%5B1%5D"))
                .send()
                .await
                .unwrap(),
            400,
            "where",
        ),
        (
            http.get(format!(
                "{base}/power?where=%7B%22value%22%3A%7B%22%24bad%22%3A1%7D%7D"
            ))
            .send()
            .await
            .unwrap(),
            400,
            "",
        ),
        (
            http.get(format!("{base}/power?limit=-1"))
                .send()
                .await
                .unwrap(),
            400,
            "limit",
        ),
        (
            http.get(format!("{base}/power?skip=many"))
                .send()
                .await
                .unwrap(),
            400,
            "skip",
        ),
        (
            http.get(format!("{base}/power?sort=%7B%22value%22%3A3%7D"))
                .send()
                .await
                .unwrap(),
            400,
            "sort",
        ),
        // 400: the action refused (Error::Failed)
        (
            post("/power/p1/add", r#"{"amount": -1}"#).await.unwrap(),
            400,
            "amount must not be negative",
        ),
        // 422: schema violations name the field
        (
            post("/power", r#"{"resource_data": {"value": "three"}}"#)
                .await
                .unwrap(),
            422,
            "value",
        ),
        (
            post("/power", r#"{"resource_data": {}}"#).await.unwrap(),
            422,
            "value",
        ),
        (
            post("/power", r#"{"value": 3}"#).await.unwrap(),
            422,
            "resource_data",
        ),
        (
            post(
                "/power",
                r#"{"resource_id": 5, "resource_data": {"value": 3}}"#,
            )
            .await
            .unwrap(),
            422,
            "resource_id",
        ),
        (
            http.patch(format!("{base}/power/p1"))
                .json(&json!({"patch": {"$set": {"value": "x"}}}))
                .send()
                .await
                .unwrap(),
            422,
            "value",
        ),
        (
            post("/power/p1/add", r#"{"amount": "x"}"#).await.unwrap(),
            422,
            "amount",
        ),
        // 404: unknown collection, resource, action, route
        (
            http.get(format!("{base}/nope")).send().await.unwrap(),
            404,
            "Unknown service nope",
        ),
        (
            http.get(format!("{base}/nope/1")).send().await.unwrap(),
            404,
            "Unknown service nope",
        ),
        (
            http.get(format!("{base}/power/missing"))
                .send()
                .await
                .unwrap(),
            404,
            "missing",
        ),
        (
            http.delete(format!("{base}/power/missing"))
                .send()
                .await
                .unwrap(),
            404,
            "missing",
        ),
        (post("/power/p1/fly", "").await.unwrap(), 404, "fly"),
        (post("/power/fly", "").await.unwrap(), 404, "fly"),
        (post("/power/list", "").await.unwrap(), 404, "list"),
        (
            http.get(format!("{base}/power/p1/square/extra"))
                .send()
                .await
                .unwrap(),
            404,
            "",
        ),
        // 400: an id that is not UTF-8 once percent-decoded
        (
            http.get(format!("{base}/power/%FF")).send().await.unwrap(),
            400,
            "",
        ),
        // 405: a method the route does not have, still JSON
        (
            http.put(format!("{base}/power")).send().await.unwrap(),
            405,
            "",
        ),
        // 409: create with an existing id
        (
            post(
                "/power",
                r#"{"resource_id": "p1", "resource_data": {"value": 1}}"#,
            )
            .await
            .unwrap(),
            409,
            "p1",
        ),
    ];
    for (i, (response, expected, needle)) in cases.into_iter().enumerate() {
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let (status, body) = json(response).await;
        assert_eq!(status, expected, "case {i}: {body}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/json"),
            "case {i}"
        );
        let message = body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("case {i}: no error message in {body}"));
        assert!(
            message.contains(needle),
            "case {i}: {message:?} should mention {needle:?}"
        );
        if expected == 404 && needle == "Unknown service nope" {
            assert_eq!(message, "Unknown service nope");
        }
    }
}

#[tokio::test]
async fn every_rest_row_on_the_owner() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    every_row(&base).await;
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn every_rest_row_on_a_gateway_that_owns_nothing() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    assert!(api.local_collections().is_empty());
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    every_row(&base).await;
    // it really went to the owner's store
    assert!(api.store().get("power", "two").await.unwrap().is_none());
    assert_eq!(
        owner.store().get("power", "two").await.unwrap().unwrap()["value"],
        1
    );
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

/// Versions, `ETag`s and conditional requests, against `base`.
async fn conditional_requests(base: &str) {
    let http = client();
    let etag = |r: &reqwest::Response| {
        r.headers()
            .get("etag")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let error_of = |body: &Value| body["error"].as_str().unwrap_or_default().to_owned();

    // POST: 201, version 1, ETag "1".
    let r = http
        .post(format!("{base}/power"))
        .json(&json!({"resource_id": "v", "resource_data": {"value": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"1\""));
    let (status, body) = json(r).await;
    assert_eq!(
        (status, body),
        (201, json!({"resource_id": "v", "version": 1}))
    );
    let url = format!("{base}/power/v");

    // GET: the version beside resource_id, and as the ETag.
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"1\""));
    let (status, body) = json(r).await;
    assert_eq!(status, 200);
    assert_eq!(body["version"], 1);
    assert!(body["resource_data"].get("_version").is_none(), "{body}");
    // Listed documents have theirs.
    let (_, list) = json(
        http.get(format!("{base}/power"))
            .query(&[("where", r#"{"value": 2}"#)])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(list[0]["version"], 1, "{list}");
    assert!(list[0]["resource_data"].get("_version").is_none(), "{list}");

    // If-None-Match on GET: 304 with the ETag and no body when it matches (weak comparison,
    // lists, `*`), 200 otherwise.
    for tag in ["\"1\"", "W/\"1\"", "\"7\", \"1\"", "*"] {
        let r = http
            .get(&url)
            .header("If-None-Match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 304, "{tag}");
        assert_eq!(etag(&r).as_deref(), Some("\"1\""));
        assert_eq!(r.text().await.unwrap(), "");
    }
    let r = http
        .get(&url)
        .header("If-None-Match", "\"2\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // PATCH with the right If-Match: 200, version 2, ETag "2".
    let r = http
        .patch(&url)
        .header("If-Match", "\"1\"")
        .json(&json!({"patch": {"$inc": {"value": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"2\""));
    let (status, body) = json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["version"].clone(),
            body["resource_data"]["value"].clone()
        ),
        (json!(2), json!(3))
    );
    // A stale If-Match: 412 with the JSON error shape, and nothing changed.
    let r = http
        .patch(&url)
        .header("If-Match", "\"1\"")
        .json(&json!({"patch": {"$inc": {"value": 100}}}))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 412, "{body}");
    assert!(error_of(&body).contains("version 2"), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "only `error`: {body}");
    // PATCH without If-Match, and with `*`: unconditional.
    let r = http
        .patch(&url)
        .header("If-Match", "*")
        .json(&json!({"patch": {"$inc": {"value": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"3\""));
    // A patch may not touch the version: 422 like `_links`.
    for patch in [
        json!({"$set": {"_version": 9}}),
        json!({"$inc": {"_version": 1}}),
        json!({"$unset": {"_version": ""}}),
    ] {
        let (status, body) = json(
            http.patch(&url)
                .json(&json!({ "patch": patch }))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{patch}: {body}");
    }
    // Nor can a create set it.
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 1, "_version": 5}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // Resource actions: the ETag of the version after; If-Match checked.
    let r = http.post(format!("{url}/square")).send().await.unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"4\""));
    assert_eq!(json(r).await, (200, json!(16)));
    let r = http
        .post(format!("{url}/add"))
        .header("If-Match", "\"3\"")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    let (status, body) = json(r).await;
    assert_eq!(status, 412, "{body}");
    let r = http
        .post(format!("{url}/add"))
        .header("If-Match", "\"4\"")
        .json(&json!({"amount": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"5\""));
    assert_eq!(json(r).await, (200, json!(5)));
    // A `&self` action: the version it read.
    let r = http
        .post(format!("{url}/double"))
        .header("If-Match", "\"5\"")
        .send()
        .await
        .unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"5\""));
    assert_eq!(json(r).await, (200, json!(10)));
    let r = http
        .post(format!("{url}/double"))
        .header("If-Match", "\"4\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 412);
    // A collection action has no version to match: If-Match there is a bad request.
    let r = http
        .post(format!("{base}/power/reset"))
        .header("If-Match", "\"1\"")
        .json(&json!({"value": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // A bad If-Match (weak, not a version, several, not quoted): 400, nothing changed.
    for bad in ["W/\"5\"", "\"abc\"", "\"5\", \"6\"", "5", "\"\"", "\"-1\""] {
        let (status, body) = json(
            http.patch(&url)
                .header("If-Match", bad)
                .json(&json!({"patch": {"$inc": {"value": 1}}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(error_of(&body).contains("If-Match"), "{body}");
    }

    // DELETE: 412 when stale (still there), 204 when current.
    let r = http
        .delete(&url)
        .header("If-Match", "\"4\"")
        .send()
        .await
        .unwrap();
    assert_eq!(json(r).await.0, 412);
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(etag(&r).as_deref(), Some("\"5\""));
    let r = http
        .delete(&url)
        .header("If-Match", "\"5\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    // On a missing resource, the 404 comes first.
    let r = http
        .patch(&url)
        .header("If-Match", "\"5\"")
        .json(&json!({"patch": {"$inc": {"value": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn conditional_requests_on_the_owner() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    conditional_requests(&base).await;
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn conditional_requests_on_a_gateway() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    conditional_requests(&base).await;
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_on_the_owner() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    input_errors(&base).await;
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_on_a_gateway() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    input_errors(&base).await;
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_413() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).max_body_bytes(1024)).await;
    let http = client();
    let big = json!({"resource_data": {"value": 1, "description": "x".repeat(4096)}});
    for response in [
        http.post(format!("{base}/power"))
            .json(&big)
            .send()
            .await
            .unwrap(),
        http.patch(format!("{base}/power/p"))
            .json(&json!({"patch": {"$set": {"description": "x".repeat(4096)}}}))
            .send()
            .await
            .unwrap(),
        http.post(format!("{base}/power/reset"))
            .json(&big)
            .send()
            .await
            .unwrap(),
    ] {
        let (status, body) = json(response).await;
        assert_eq!(status, 413, "{body}");
        assert!(body["error"].as_str().unwrap().contains("too large"));
    }
    // under the limit still works
    let (status, _) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 1}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn an_owner_that_does_not_answer_in_time_is_504() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_millis(200)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let started = Instant::now();
    let (status, body) = json(
        client()
            .post(format!("{base}/power/nap"))
            .json(&json!({"ms": 5000}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 504, "{body}");
    assert!(body["error"].as_str().unwrap().contains("power"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // a quick nap is fine
    let (status, body) = json(
        client()
            .post(format!("{base}/power/nap"))
            .json(&json!({"ms": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body), (200, json!(1)));
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn a_collection_whose_owner_left_is_503() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let http = client();
    let (status, _) = json(http.get(format!("{base}/power")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    owner.stop().await;
    for request in [
        http.get(format!("{base}/power")),
        http.get(format!("{base}/power/1")),
        http.post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 1}})),
    ] {
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 503, "{body}");
        assert!(body["error"].as_str().unwrap().contains("power"));
    }
    server.shutdown().await;
    api.stop().await;
}

#[tokio::test]
async fn cors_headers_on_every_response_and_preflight() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let http = client();

    // "*": any origin, on successes and errors
    let (server, base) = start(&node, HttpConfig::new(0).allowed_origins("*")).await;
    for (path, status) in [
        ("/", 200),
        ("/power", 200),
        ("/nope", 404),
        ("/power/x", 404),
    ] {
        let response = http
            .get(format!("{base}{path}"))
            .header("origin", "http://somewhere.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "*",
            "{path}"
        );
    }
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/power/x"))
        .header("origin", "http://somewhere.example")
        .header("access-control-request-method", "PATCH")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(
        preflight.status().is_success(),
        "preflight: {}",
        preflight.status()
    );
    let headers = preflight.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PATCH") && methods.contains("DELETE"),
        "{methods}"
    );
    assert!(
        headers["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    server.shutdown().await;

    // a list of origins: only those
    let (server, base) = start(
        &node,
        HttpConfig::new(0).allowed_origins("http://a.example, http://b.example"),
    )
    .await;
    let allowed = http
        .get(format!("{base}/nope"))
        .header("origin", "http://b.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://b.example"
    );
    let other = http
        .get(format!("{base}/"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    server.shutdown().await;

    // no origins: no CORS at all
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let plain = http
        .get(format!("{base}/"))
        .header("origin", "http://a.example")
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn basic_auth_missing_malformed_wrong_and_right() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0)
        .allowed_origins("*")
        .basic_auth(BasicAuth::parse("admin:s3cret").unwrap());
    let (server, base) = start(&node, config).await;
    let http = client();
    for path in ["/", "/power", "/openapi.json", "/nope"] {
        let url = format!("{base}{path}");
        // missing
        let response = http.get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 401, "{path}");
        assert_eq!(
            response.headers()["www-authenticate"],
            "Basic realm=\"zeroservices\""
        );
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let (_, body) = json(response).await;
        assert!(body["error"].is_string());
        // malformed
        for bad in [
            "Basic !!!notbase64",
            "Bearer abc",
            "Basic",
            "Basic YWRtaW4=",
        ] {
            let response = http
                .get(&url)
                .header("authorization", bad)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status().as_u16(), 401, "{path} {bad}");
            assert!(response.headers().contains_key("www-authenticate"));
        }
        // wrong
        for (user, password) in [("admin", "wrong"), ("root", "s3cret"), ("admin", "")] {
            let (status, body) = json(
                http.get(&url)
                    .header("authorization", basic(user, password))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 401, "{path} {user}:{password}");
            assert!(body["error"].is_string());
        }
        // right
        let response = http
            .get(&url)
            .header("authorization", basic("admin", "s3cret"))
            .send()
            .await
            .unwrap();
        let expected = if path == "/nope" { 404 } else { 200 };
        assert_eq!(response.status().as_u16(), expected, "{path}");
    }
    // reqwest's own basic auth, on a write
    let (status, _) = json(
        http.post(format!("{base}/power"))
            .basic_auth("admin", Some("s3cret"))
            .json(&json!({"resource_data": {"value": 2}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    // CORS preflight stays unauthenticated
    let preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/power"))
        .header("origin", "http://a.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn an_authorizer_forbids_one_operation() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0)
        .basic_auth(BasicAuth::new("ann", "pw"))
        .authorizer(|user: Option<&User>, collection: &str, op: &Operation| {
            assert_eq!(user.map(|u| u.name.as_str()), Some("ann"));
            let forbidden = (collection == "power" && *op == Operation::Delete)
                || (collection == "chat" && *op == Operation::Action("shout".into()));
            !forbidden
        });
    let (server, base) = start(&node, config).await;
    let http = client();
    let auth = basic("ann", "pw");
    let (status, _) = json(
        http.post(format!("{base}/power"))
            .header("authorization", &auth)
            .json(&json!({"resource_id": "p", "resource_data": {"value": 2}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = json(
        http.delete(format!("{base}/power/p"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(body, json!({"error": "forbidden: delete on power"}));
    // forbidden before anything else: even an unknown action name
    let (status, _) = json(
        http.post(format!("{base}/chat/shout"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403);
    // the rest is allowed, and the resource is still there
    let (status, _) = json(
        http.post(format!("{base}/power/p/square"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = json(
        http.get(format!("{base}/power/p"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["resource_data"]["result"], 4);
    let (status, _) = json(
        http.post(format!("{base}/chat"))
            .header("authorization", &auth)
            .json(&json!({"resource_id": "m", "resource_data": {"text": "hi"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let response = http
        .delete(format!("{base}/chat/m"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn shutdown_lets_an_in_flight_request_finish() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let served_before = owner.stats().requests_served;
    let request = tokio::spawn(async move {
        client()
            .post(format!("{base}/power/nap"))
            .json(&json!({"ms": 300}))
            .send()
            .await
    });
    // wait (bounded) until the owner is serving it
    let deadline = Instant::now() + Duration::from_secs(5);
    while owner.stats().requests_served == served_before {
        assert!(
            Instant::now() < deadline,
            "the request never reached the owner"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = Instant::now();
    server.shutdown().await;
    let (status, body) = json(request.await.unwrap().unwrap()).await;
    assert_eq!((status, body), (200, json!(300)));
    assert!(started.elapsed() < Duration::from_secs(5));
    api.stop().await;
    owner.stop().await;
}

/// A body must say it is JSON: what a page of another site can make a browser post without
/// asking (a form, `text/plain`) gets a 415 and changes nothing; JSON, with parameters or as
/// `+json`, passes; a body-less action needs no type.
#[tokio::test]
async fn a_body_that_is_not_declared_json_is_refused() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let http = client();
    let create = r#"{"resource_id": "x", "resource_data": {"value": 3}}"#;
    for content_type in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=b"),
        None,
    ] {
        let mut request = http.post(format!("{base}/power")).body(create);
        if let Some(value) = content_type {
            request = request.header("content-type", value);
        }
        let (status, body) = json(request.send().await.unwrap()).await;
        assert_eq!(status, 415, "{content_type:?}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains("application/json"), "{error}");
        // Nothing was created.
        let (status, _) = json(http.get(format!("{base}/power/x")).send().await.unwrap()).await;
        assert_eq!(status, 404, "{content_type:?} created x");
    }
    // PATCH and actions with a body too.
    let (status, _) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": "p", "resource_data": {"value": 2}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let patched = http
        .patch(format!("{base}/power/p"))
        .header("content-type", "text/plain")
        .body(r#"{"patch": {"$set": {"value": 9}}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 415);
    let action = http
        .post(format!("{base}/power/p/square"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(action.status().as_u16(), 415);
    let (_, doc) = json(http.get(format!("{base}/power/p")).send().await.unwrap()).await;
    assert_eq!(doc["resource_data"]["value"], 2, "{doc}");
    // JSON passes: with a charset, as `+json`, and a body-less action with no type at all.
    for (id, content_type) in [
        ("j1", "application/json"),
        ("j2", "application/json; charset=utf-8"),
        ("j3", "application/merge-patch+json"),
    ] {
        let response = http
            .post(format!("{base}/power"))
            .header("content-type", content_type)
            .body(format!(
                r#"{{"resource_id": "{id}", "resource_data": {{"value": 1}}}}"#
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{content_type}");
    }
    let (status, result) = json(
        http.post(format!("{base}/power/p/square"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    server.shutdown().await;
    node.stop().await;
}

/// A write from a page of another site is refused whatever its body: a body-less POST to an
/// action is a "simple" request a hostile page can make a browser send without a preflight.
/// No `Origin` (not a browser), the node's own pages and the allowed origins pass.
#[tokio::test]
async fn a_write_from_another_sites_page_is_refused() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let allowed = HttpConfig::new(0).allowed_origins("https://app.example");
    let (server, base) = start(&node, allowed).await;
    let http = client();
    let (status, _) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": "p", "resource_data": {"value": 3}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let evil = "https://evil.example";
    let square = http
        .post(format!("{base}/power/p/square"))
        .header("origin", evil)
        .send()
        .await
        .unwrap();
    let (status, body) = json(square).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains(evil), "{body}");
    for write in [
        http.post(format!("{base}/power"))
            .json(&json!({"resource_id": "q", "resource_data": {"value": 1}})),
        http.patch(format!("{base}/power/p"))
            .json(&json!({"patch": {"$set": {"value": 9}}})),
        http.delete(format!("{base}/power/p")),
    ] {
        let response = write.header("origin", evil).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 403);
    }
    // Nothing happened; reads from another site are CORS's business, not refused here.
    let (status, doc) = json(
        http.get(format!("{base}/power/p"))
            .header("origin", evil)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(doc["resource_data"]["value"], 3, "{doc}");
    assert!(doc["resource_data"]["result"].is_null(), "{doc}");
    // The allowed origin and the node's own page may write.
    let own = base.replace("http://", "");
    for origin in ["https://app.example".to_owned(), format!("http://{own}")] {
        let response = http
            .post(format!("{base}/power/p/square"))
            .header("origin", &origin)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{origin}");
    }
    server.shutdown().await;
    node.stop().await;
}

/// A created document is stored (and read back, and published) exactly as the resource type
/// writes it, whatever form the body had: the type's field order, `null` for the `Option`s left
/// out, defaults filled in, integers as integers; the reply is the same text either way. (The
/// owner keeps a body already in that form instead of serialising the type again.)
#[tokio::test]
async fn a_created_document_reads_back_as_the_type_writes_it() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let mut events = node.subscribe("power");
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let http = client();
    let cases = [
        // every field, in the type's order
        r#"{"value":1,"status":"pending","result":null,"description":null}"#,
        // the trailing `Option`s left out
        r#"{"value":2,"status":"done"}"#,
        r#"{"value":3,"status":"pending","result":9}"#,
        // a defaulted field left out (before present ones' place), another order, a float
        r#"{"value":4}"#,
        r#"{"description":null,"result":null,"status":"pending","value":5}"#,
        r#"{"value":6.0,"status":"pending","result":null,"description":"x"}"#,
    ];
    let expected = [
        r#"{"value":1,"status":"pending","result":null,"description":null}"#,
        r#"{"value":2,"status":"done","result":null,"description":null}"#,
        r#"{"value":3,"status":"pending","result":9,"description":null}"#,
        r#"{"value":4,"status":"pending","result":null,"description":null}"#,
        r#"{"value":5,"status":"pending","result":null,"description":null}"#,
        r#"{"value":6,"status":"pending","result":null,"description":"x"}"#,
    ];
    for (body, want) in cases.iter().zip(expected) {
        let response = http
            .post(format!("{base}/power"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"resource_data":{body}}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "{body}");
        assert_eq!(response.headers()["etag"], "\"1\"");
        let text = response.text().await.unwrap();
        let id = serde_json::from_str::<Value>(&text).unwrap()["resource_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(text, format!(r#"{{"resource_id":"{id}","version":1}}"#));
        let got = http
            .get(format!("{base}/power/{id}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(
            got,
            format!(r#"{{"resource_id":"{id}","resource_data":{want},"version":1}}"#),
            "{body}"
        );
        let event = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut events),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(event.topic, format!("power.create.{id}"));
        assert_eq!(event.data["resource_data"].to_string(), want, "{body}");
    }

    // What the type does not declare, or a reserved field, is refused as before; nothing stored.
    for (body, path) in [
        (r#"{"value":1,"other":2}"#, "other"),
        (
            r#"{"value":1,"status":"pending","result":null,"description":null,"other":2}"#,
            "other",
        ),
        (r#"{"value":1,"_version":3}"#, "_version"),
        (r#"{"value":1,"_links":{}}"#, "_links"),
    ] {
        let (status, reply) = json(
            http.post(format!("{base}/power"))
                .header("content-type", "application/json")
                .body(format!(r#"{{"resource_data":{body}}}"#))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 422, "{body}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(&format!("validation failed at `{path}`: ")),
            "{body}: {reply}"
        );
    }
    let (_, list) = json(http.get(format!("{base}/power")).send().await.unwrap()).await;
    assert_eq!(list.as_array().unwrap().len(), cases.len());
    server.shutdown().await;
    node.stop().await;
}

/// A create body with keys besides `resource_data` (ignored, as always) carries the same
/// arguments to the owner as one without: an `Idempotency-Key` sent with both answers the
/// second with the first's reply; another document under the key is still refused.
#[tokio::test]
async fn extra_keys_of_a_create_body_do_not_change_its_idempotency_fingerprint() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let http = client();
    let post = |body: Value| {
        http.post(format!("{base}/power"))
            .header("Idempotency-Key", "extra-1")
            .json(&body)
            .send()
    };
    let (s1, b1) = json(
        post(json!({"resource_data": {"value": 8}, "note": "ignored", "more": [1]}))
            .await
            .unwrap(),
    )
    .await;
    let (s2, b2) = json(post(json!({"resource_data": {"value": 8}})).await.unwrap()).await;
    assert_eq!((s1, s2), (201, 201), "{b1} {b2}");
    assert_eq!(b1, b2);
    let (s3, b3) = json(
        post(json!({"resource_data": {"value": 9}, "note": "ignored"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s3, 422, "{b3}");
    let (_, list) = json(http.get(format!("{base}/power")).send().await.unwrap()).await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    server.shutdown().await;
    node.stop().await;
}
