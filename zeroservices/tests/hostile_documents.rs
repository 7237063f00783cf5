//! Hostile documents, patches, filters, ids and lists against a node serving HTTP, on the
//! embedded store and on MongoDB (`#[ignore]`d: they need `ZS_TEST_MONGODB_URI`, which
//! `scripts/test.sh` sets). Every vector gets a 4xx naming the limit, changes nothing, and the
//! node answers the next request.

mod http_common;
mod mongo_common;

use mongo_common::mongodb_uri;
use std::sync::Arc;

use http_common::*;
use serde_json::{Map, Value, json};
use zeroservices::http::{HttpConfig, HttpServer};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, MongoStore, Store};
use zeroservices::{Limits, Node};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Mongo,
}

struct Fixture {
    node: Node,
    store: Arc<dyn Store>,
    _server: HttpServer,
    base: String,
    http: reqwest::Client,
    /// The embedded store's directory (must never show in a reply).
    dir: Option<tempfile::TempDir>,
    embedded: Option<EmbeddedStore>,
    _serial: Option<tokio::sync::MutexGuard<'static, ()>>,
}

static MONGO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A node owning `power` in a fresh store of `kind`, serving HTTP.
async fn fixture(kind: Kind, test: &str, limits: Limits) -> Fixture {
    let mut serial = None;
    let (store, dir, embedded): (Arc<dyn Store>, _, _) = match kind {
        Kind::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            let store = EmbeddedStore::open(dir.path()).unwrap();
            (Arc::new(store.clone()), Some(dir), Some(store))
        }
        Kind::Mongo => {
            let uri = mongodb_uri(test);
            // One case at a time owns the `power` collection (nx-27017 keeps every database
            // in one file), emptied first.
            serial = Some(MONGO.lock().await);
            let store = MongoStore::connect(&uri).await.unwrap();
            store
                .database()
                .collection::<::mongodb::bson::Document>("power")
                .drop()
                .await
                .unwrap();
            (Arc::new(store), None, None)
        }
    };
    let cluster = MemoryCluster::new();
    let node = Node::builder("api_power")
        .memory(&cluster)
        .shared_store(store.clone())
        .limits(limits)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    Fixture {
        node,
        store,
        _server: server,
        base,
        http: client(),
        dir,
        embedded,
        _serial: serial,
    }
}

impl Fixture {
    async fn create(&self, id: &str, value: i64) {
        let (status, body) = json(
            self.http
                .post(format!("{}/power", self.base))
                .json(&json!({"resource_id": id, "resource_data": {"value": value}}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 201, "{body}");
    }

    async fn patch(&self, id: &str, patch: Value) -> (u16, Value) {
        json(
            self.http
                .patch(format!("{}/power/{id}", self.base))
                .json(&json!({ "patch": patch }))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post(&self, body: Value) -> (u16, Value) {
        json(
            self.http
                .post(format!("{}/power", self.base))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        json(
            self.http
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// The node still answers: the resource `id` reads back as `value`, and the list works.
    async fn alive(&self, id: &str, value: i64) {
        let (status, body) = self.get(&format!("/power/{id}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["resource_data"]["value"], value, "{body}");
        let (status, body) = self.get("/power").await;
        assert_eq!(status, 200, "{body}");
        assert!(body.as_array().is_some(), "{body}");
    }
}

/// Asserts a refusal with `status` whose message names `needle`.
fn refused(reply: (u16, Value), status: u16, needle: &str) {
    let (got, body) = reply;
    assert_eq!(got, status, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{needle:?} not in {body}");
}

fn nested(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!({ "a": v });
    }
    v
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod embedded { $( #[tokio::test] async fn $case() { super::$case(super::Kind::Embedded).await } )* }
        mod mongodb { $( #[tokio::test] #[ignore = "needs MongoDB (ZS_TEST_MONGODB_URI): run by scripts/test.sh"] async fn $case() { super::$case(super::Kind::Mongo).await } )* }
    };
}

on_every_backend!(
    deep_patch_paths,
    deep_documents,
    undeclared_fields_and_links,
    ids,
    pages_and_next_links,
    filters,
    patch_paths_per_patch,
    document_size,
    undecodable_documents,
);

async fn deep_patch_paths(kind: Kind) {
    let f = fixture(kind, "deep_paths", Limits::default()).await;
    f.create("x", 1).await;
    // 20,000 segments (about 40 KB): once a stack overflow of the whole process.
    let long = vec!["a"; 20_000].join(".");
    refused(
        f.patch("x", json!({"$set": {long: 1}})).await,
        413,
        "ZS_MAX_PATH_SEGMENTS=32",
    );
    f.alive("x", 1).await;
    // 129 segments: once stored, then every read of the collection failed.
    let poison = vec!["a"; 129].join(".");
    refused(
        f.patch("x", json!({"$set": {poison: 1}})).await,
        413,
        "ZS_MAX_PATH_SEGMENTS",
    );
    let just_over = vec!["a"; 33].join(".");
    refused(
        f.patch("x", json!({"$set": {just_over: 1}})).await,
        413,
        "ZS_MAX_PATH_SEGMENTS",
    );
    f.alive("x", 1).await;
    let (status, body) = f.get("/power/x").await;
    assert_eq!(status, 200);
    assert!(body["resource_data"].get("a").is_none(), "{body}");
}

async fn deep_documents(kind: Kind) {
    let f = fixture(kind, "deep_docs", Limits::default()).await;
    f.create("x", 1).await;
    // The depth is checked before the schema: a deep value in any field is refused as deep.
    refused(
        f.post(json!({"resource_data": {"value": 1, "description": nested(40)}}))
            .await,
        413,
        "ZS_MAX_DEPTH=32",
    );
    refused(
        f.patch("x", json!({"$set": {"description": nested(40)}}))
            .await,
        413,
        "ZS_MAX_DEPTH=32",
    );
    // Deeper than JSON parsers go: a clean 400 from the body parser, not a crash.
    let mut text = String::new();
    for _ in 0..5000 {
        text.push_str("{\"a\":");
    }
    text.push('1');
    for _ in 0..5000 {
        text.push('}');
    }
    let reply = f
        .http
        .patch(format!("{}/power/x", f.base))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"patch\": {{\"$set\": {{\"description\": {text}}}}}}}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 400);
    f.alive("x", 1).await;
}

async fn undeclared_fields_and_links(kind: Kind) {
    let f = fixture(kind, "undeclared", Limits::default()).await;
    f.create("x", 1).await;
    let (status, body) = f
        .post(json!({"resource_id": "y", "resource_data": {"value": 1, "not_a_field": 3}}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("not_a_field"),
        "{body}"
    );
    assert_eq!(f.get("/power/y").await.0, 404, "nothing was stored");
    refused(
        f.post(json!({"resource_data": {"value": 1, "_links": {"x": []}}}))
            .await,
        422,
        "_links",
    );
    refused(
        f.patch("x", json!({"$set": {"not_a_field": 3}})).await,
        422,
        "not_a_field",
    );
    refused(
        f.patch(
            "x",
            json!({"$set": {"_links.owner": [{"target_id": ["user", "1"]}]}}),
        )
        .await,
        422,
        "_links",
    );
    refused(
        f.patch("x", json!({"$unset": {"_links": ""}})).await,
        422,
        "_links",
    );
    // A nested undeclared field is named by its path. (`status` is an enum: a string.)
    let (status, body) = f
        .post(json!({"resource_data": {"value": 1, "description": null, "extra": {"deep": 1}}}))
        .await;
    assert_eq!(status, 422, "{body}");
    // Declared fields and nulls of optional fields still pass.
    let (status, body) = f
        .patch("x", json!({"$set": {"description": "ok", "result": null}}))
        .await;
    assert_eq!(status, 200, "{body}");
    // Links change through the link action, and patches keep them.
    let (status, body) = json(
        f.http
            .post(format!("{}/power/x/add_link", f.base))
            .json(&json!({"relation": "owner", "target_id": ["power", "x"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = f.patch("x", json!({"$inc": {"value": 1}})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["resource_data"]["_links"]["owner"].is_array(),
        "{body}"
    );
    // A link target id is an id like any other.
    let (status, body) = json(
        f.http
            .post(format!("{}/power/x/add_link", f.base))
            .json(&json!({"relation": "owner", "target_id": ["power", "a.b"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    f.alive("x", 2).await;
    let stored = f.store.get("power", "x").await.unwrap().unwrap();
    assert!(stored.get("not_a_field").is_none(), "{stored}");
}

async fn ids(kind: Kind) {
    let f = fixture(kind, "ids", Limits::default()).await;
    f.create("x", 1).await;
    for bad in ["", "a.b", "a*", "a>", "a b", "tab\tid", "nul\u{0}"] {
        let reply = f
            .post(json!({"resource_id": bad, "resource_data": {"value": 1}}))
            .await;
        assert_eq!(reply.0, 400, "{bad:?}: {}", reply.1);
    }
    refused(
        f.post(json!({"resource_id": "x".repeat(5000), "resource_data": {"value": 1}}))
            .await,
        413,
        "ZS_MAX_ID_BYTES=256",
    );
    assert_eq!(f.get("/power/a.b").await.0, 400);
    assert_eq!(f.get("/power/a%20b").await.0, 400);
    assert_eq!(f.get(&format!("/power/{}", "y".repeat(300))).await.0, 413);
    // The largest id allowed, and unicode, work.
    f.create(&"z".repeat(256), 2).await;
    f.create("ünï-côdé_1:2", 3).await;
    f.alive("x", 1).await;
    let (_, body) = f.get("/power").await;
    assert_eq!(body.as_array().unwrap().len(), 3, "{body}");
}

async fn pages_and_next_links(kind: Kind) {
    let limits = Limits {
        max_page: 10,
        ..Limits::default()
    };
    let f = fixture(kind, "pages", limits).await;
    for i in 0..25 {
        f.create(&format!("p{i:02}"), i).await;
    }
    // No limit: the first page, and where the next one is.
    let mut seen = Vec::new();
    let mut next = Some(format!("{}/power", f.base));
    let mut pages = 0;
    while let Some(url) = next.take() {
        pages += 1;
        assert!(pages <= 5, "the Link chain does not end");
        let reply = f.http.get(&url).send().await.unwrap();
        let link = reply
            .headers()
            .get("link")
            .map(|l| l.to_str().unwrap().to_owned());
        let (status, body) = json(reply).await;
        assert_eq!(status, 200, "{body}");
        let items = body.as_array().unwrap();
        assert!(items.len() <= 10);
        seen.extend(
            items
                .iter()
                .map(|d| d["resource_id"].as_str().unwrap().to_owned()),
        );
        if let Some(link) = link {
            // `</power?skip=10>; rel="next"`
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(target, _)| target.to_owned())
                .unwrap_or_else(|| panic!("not an RFC 8288 next link: {link}"));
            next = Some(format!("{}{target}", f.base));
        }
    }
    assert_eq!(pages, 3);
    let mut expected: Vec<String> = (0..25).map(|i| format!("p{i:02}")).collect();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "every document once");

    // A larger limit is clamped; the filter and sort ride along in the next link.
    let reply = f
        .http
        .get(format!("{}/power", f.base))
        .query(&[
            ("limit", "5000"),
            ("sort", "-value"),
            ("where", r#"{"value": {"$gte": 3}}"#),
        ])
        .send()
        .await
        .unwrap();
    let link = reply
        .headers()
        .get("link")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let (_, body) = json(reply).await;
    assert_eq!(body.as_array().unwrap().len(), 10);
    assert_eq!(body[0]["resource_data"]["value"], 24);
    assert!(
        link.contains("skip=10") && link.contains("sort=-value"),
        "{link}"
    );
    // A page that ends the list says nothing more.
    let reply = f
        .http
        .get(format!("{}/power?skip=20", f.base))
        .send()
        .await
        .unwrap();
    assert!(reply.headers().get("link").is_none());
    let (_, body) = json(reply).await;
    assert_eq!(body.as_array().unwrap().len(), 5);

    // Hostile paging parameters: a skip past everything is an empty last page, `limit=0` means
    // no limit asked (the page limit), malformed numbers are 400.
    let reply = f
        .http
        .get(format!("{}/power?skip={}", f.base, u64::MAX))
        .send()
        .await
        .unwrap();
    assert!(reply.headers().get("link").is_none());
    let (status, body) = json(reply).await;
    assert_eq!((status, body), (200, json!([])));
    let reply = f
        .http
        .get(format!("{}/power?limit=0&skip={}", f.base, u64::MAX - 3))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status().as_u16(), 200);
    let reply = f
        .http
        .get(format!("{}/power?limit=0", f.base))
        .send()
        .await
        .unwrap();
    assert!(
        reply
            .headers()
            .get("link")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("skip=10")
    );
    let (_, body) = json(reply).await;
    assert_eq!(body.as_array().unwrap().len(), 10);
    for bad in ["limit=-1", "skip=x", "limit=99999999999999999999999"] {
        let (status, body) = f.get(&format!("/power?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // The typed client reads page after page.
    let all = f
        .node
        .collection::<Power>()
        .list(Query::all())
        .await
        .unwrap();
    assert_eq!(all.len(), 25);
    let some = f
        .node
        .collection::<Power>()
        .list(Query::all().limit(13).skip(4))
        .await
        .unwrap();
    assert_eq!(some.len(), 13);
}

async fn filters(kind: Kind) {
    let f = fixture(kind, "filters", Limits::default()).await;
    f.create("x", 1).await;
    let list = |filter: Value| {
        let url = format!("{}/power", f.base);
        let http = f.http.clone();
        async move {
            json(
                http.get(url)
                    .query(&[("where", filter.to_string())])
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    let mut deep = json!({"value": 1});
    for _ in 0..20 {
        deep = json!({ "$and": [deep] });
    }
    refused(list(deep).await, 413, "ZS_MAX_FILTER_DEPTH=16");
    let wide: Map<String, Value> = (0..300).map(|i| (format!("f{i}"), json!(i))).collect();
    refused(
        list(Value::Object(wide)).await,
        413,
        "ZS_MAX_FILTER_CLAUSES=256",
    );
    let (status, body) = list(json!({"$or": [{"value": 1}, {"value": 2}]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 1);
    f.alive("x", 1).await;
}

async fn patch_paths_per_patch(kind: Kind) {
    let f = fixture(kind, "paths", Limits::default()).await;
    f.create("x", 1).await;
    let many: Map<String, Value> = (0..300).map(|i| (format!("f{i}"), json!(i))).collect();
    refused(
        f.patch("x", json!({"$set": many})).await,
        413,
        "ZS_MAX_PATCH_PATHS=256",
    );
    f.alive("x", 1).await;
}

async fn document_size(kind: Kind) {
    let limits = Limits {
        max_document_bytes: 4096,
        ..Limits::default()
    };
    let f = fixture(kind, "size", limits).await;
    f.create("x", 1).await;
    refused(
        f.patch("x", json!({"$set": {"description": "d".repeat(5000)}}))
            .await,
        413,
        "ZS_MAX_DOCUMENT_BYTES=4096",
    );
    refused(
        f.post(json!({"resource_data": {"value": 1, "description": "d".repeat(5000)}}))
            .await,
        413,
        "ZS_MAX_DOCUMENT_BYTES",
    );
    // Links grow a document too.
    let mut refused_link = false;
    for i in 0..100 {
        let reply = f
            .http
            .post(format!("{}/power/x/add_link", f.base))
            .json(&json!({"relation": "r", "target_id": ["power", format!("t{i}")], "title": "t".repeat(100)}))
            .send()
            .await
            .unwrap();
        if reply.status().as_u16() == 413 {
            refused_link = true;
            break;
        }
        assert_eq!(reply.status().as_u16(), 200);
    }
    assert!(refused_link, "links grew past the document limit");
    f.alive("x", 1).await;
}

async fn undecodable_documents(kind: Kind) {
    let f = fixture(kind, "undecodable", Limits::default()).await;
    f.create("good", 1).await;
    // Written behind the node's back: a document of another shape (an older version).
    f.store
        .insert("power", Some("old"), json!({"value": "not a number"}))
        .await
        .unwrap();
    let powers = f.node.collection::<Power>();
    let listed = powers.list(Query::all()).await.unwrap();
    assert_eq!(listed.len(), 1, "the old document is skipped, not the list");
    assert_eq!(f.node.stats().documents_skipped, 1);
    let e = powers.get("old").await.unwrap_err();
    assert!(e.to_string().contains("old"), "{e}");
    assert_eq!(powers.get("good").await.unwrap().value, 1);

    if let (Some(embedded), Some(dir)) = (&f.embedded, &f.dir) {
        // Deeper than JSON readers go (written by a version without limits): the list skips
        // it, a get names it, and no reply shows where the data lives.
        let mut poison = json!(1);
        for _ in 0..129 {
            poison = json!({ "a": poison });
        }
        embedded
            .insert("power", Some("poison"), json!({ "value": 1, "a": poison }))
            .await
            .unwrap();
        let (status, body) = f.get("/power").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body.as_array().unwrap().len(), 2, "{body}");
        assert_eq!(embedded.skipped_documents(), 1);
        let (status, body) = f.get("/power/poison").await;
        assert_eq!(status, 500, "{body}");
        let shown = dir.path().display().to_string();
        assert!(!body.to_string().contains(&shown), "{body} shows {shown}");
        let e = embedded.get("power", "poison").await.unwrap_err();
        assert!(e.to_string().contains("poison"), "{e}");
        assert!(!e.to_string().contains(&shown), "{e}");
    }
    f.alive("good", 1).await;
}
