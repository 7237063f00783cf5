//! Schema constraints written on the Rust type (`#[schemars(length(...))]`, `range`, `regex`)
//! are in `/openapi.json` and enforced by the owner on every write: create, patch, a `&mut self`
//! action's result, an action's argument; 422 naming the field and the rule, 2xx at the
//! boundaries, the same over the memory and the embedded store. Hostile: a pattern the server
//! cannot compile stops the node from starting (and a collection from registering), a huge
//! array against `maxItems` is refused without walking it. Real HTTP on 127.0.0.1.

mod http_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http_common::{client, json, start};
use serde_json::{Value, json};
use zeroservices::http::{HttpConfig, HttpServer};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;
use zeroservices::store::{EmbeddedStore, MemoryStore, Store};

/// A gadget: every kind of constraint schemars writes.
#[resource(collection = "gadget")]
#[derive(Debug, Clone, PartialEq)]
pub struct Gadget {
    /// 1 to 8 characters.
    #[schemars(length(min = 1, max = 8))]
    pub name: String,
    /// 0 to 100.
    #[schemars(range(min = 0, max = 100))]
    pub level: i64,
    /// `abc-12`: lowercase letters, a dash, digits.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[a-z]+-[0-9]+$"))]
    pub code: Option<String>,
    /// At most 3 tags, each 2 characters or more.
    #[serde(default)]
    #[schemars(length(max = 3), inner(length(min = 2)))]
    pub tags: Vec<String>,
}

/// Arguments of `bump`.
#[model]
pub struct BumpArgs {
    /// 1 to 10.
    #[schemars(range(min = 1, max = 10))]
    pub by: i64,
}

#[actions]
impl Gadget {
    /// Raises the level (a result above 100 breaks the schema).
    #[action]
    async fn bump(&mut self, args: BumpArgs) -> Result<i64> {
        self.level += args.by;
        Ok(self.level)
    }
}

/// A resource whose pattern uses look-ahead, which the regex crate does not compile.
#[resource(collection = "lookahead")]
#[derive(Debug, Clone, PartialEq)]
pub struct Lookahead {
    /// Anything followed by a digit.
    #[schemars(regex(pattern = r"^a(?=[0-9])"))]
    pub code: String,
}

enum Kind {
    Memory,
    Embedded,
}

struct Fixture {
    _node: Node,
    _server: HttpServer,
    _dir: Option<tempfile::TempDir>,
    base: String,
    http: reqwest::Client,
}

async fn fixture(kind: Kind) -> Fixture {
    let (store, dir): (Arc<dyn Store>, _) = match kind {
        Kind::Memory => (Arc::new(MemoryStore::new()), None),
        Kind::Embedded => {
            let dir = tempfile::tempdir().unwrap();
            (
                Arc::new(EmbeddedStore::open(dir.path()).unwrap()),
                Some(dir),
            )
        }
    };
    let cluster = MemoryCluster::new();
    let node = Node::builder("gadgets")
        .memory(&cluster)
        .shared_store(store)
        .resource::<Gadget>()
        .start()
        .await
        .unwrap();
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    Fixture {
        _node: node,
        _server: server,
        _dir: dir,
        base,
        http: client(),
    }
}

impl Fixture {
    async fn create(&self, doc: Value) -> (u16, Value) {
        json(
            self.http
                .post(format!("{}/gadget", self.base))
                .json(&json!({"resource_data": doc}))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn patch(&self, id: &str, set: Value) -> (u16, Value) {
        json(
            self.http
                .patch(format!("{}/gadget/{id}", self.base))
                .json(&json!({"patch": {"$set": set}}))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn action(&self, id: &str, action: &str, args: Value) -> (u16, Value) {
        json(
            self.http
                .post(format!("{}/gadget/{id}/{action}", self.base))
                .json(&args)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn get(&self, id: &str) -> Value {
        let (status, body) = json(
            self.http
                .get(format!("{}/gadget/{id}", self.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body["resource_data"].clone()
    }
}

/// A 422 whose message names `field` and the `rule` keyword.
#[track_caller]
fn refused(reply: (u16, Value), field: &str, rule: &str) {
    let (status, body) = reply;
    assert_eq!(status, 422, "{body}");
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("validation failed at `{field}`: "))
            && message.ends_with(&format!("({rule})")),
        "expected {field} / {rule}: {body}"
    );
}

fn valid() -> Value {
    json!({"name": "a", "level": 0, "code": "ab-1", "tags": ["xy"]})
}

fn with(field: &str, value: Value) -> Value {
    let mut doc = valid();
    doc[field] = value;
    doc
}

async fn openapi_shows_the_constraints(kind: Kind) {
    let f = fixture(kind).await;
    let (status, doc) = json(
        f.http
            .get(format!("{}/openapi.json", f.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let schemas = &doc["components"]["schemas"];
    let schema = &schemas["gadget"]["properties"];
    assert_eq!(schema["name"]["minLength"], 1, "{schema}");
    assert_eq!(schema["name"]["maxLength"], 8, "{schema}");
    assert_eq!(schema["level"]["minimum"], 0, "{schema}");
    assert_eq!(schema["level"]["maximum"], 100, "{schema}");
    assert_eq!(schema["code"]["pattern"], "^[a-z]+-[0-9]+$", "{schema}");
    assert_eq!(schema["tags"]["maxItems"], 3, "{schema}");
    assert_eq!(schema["tags"]["items"]["minLength"], 2, "{schema}");
    // The same rules in what a patch may set and in the action's argument.
    let set = &schemas["gadget_patch"]["properties"]["$set"]["properties"];
    assert_eq!(set["level"]["maximum"], 100, "{set}");
    let by = &schemas["gadget_bump_args"]["properties"]["by"];
    assert_eq!(
        (&by["minimum"], &by["maximum"]),
        (&json!(1), &json!(10)),
        "{by}"
    );
}

async fn create_is_held_to_the_constraints(kind: Kind) {
    let f = fixture(kind).await;
    // The boundaries pass.
    for doc in [
        valid(),
        with("name", json!("12345678")),
        with("level", json!(100)),
        with("code", Value::Null),
        with("tags", json!(["ab", "cd", "éé"])),
        with("tags", json!([])),
    ] {
        let (status, body) = f.create(doc.clone()).await;
        assert_eq!(status, 201, "{doc} -> {body}");
    }
    refused(f.create(with("name", json!(""))).await, "name", "minLength");
    let (_, body) = f.create(with("name", json!(""))).await;
    assert_eq!(
        body["error"],
        "validation failed at `name`: shorter than 1 character (minLength)"
    );
    refused(
        f.create(with("name", json!("123456789"))).await,
        "name",
        "maxLength",
    );
    refused(f.create(with("level", json!(-1))).await, "level", "minimum");
    refused(
        f.create(with("level", json!(101))).await,
        "level",
        "maximum",
    );
    refused(
        f.create(with("code", json!("AB-1"))).await,
        "code",
        "pattern",
    );
    refused(
        f.create(with("code", json!("ab-1x"))).await,
        "code",
        "pattern",
    );
    refused(
        f.create(with("tags", json!(["ab", "cd", "ef", "gh"])))
            .await,
        "tags",
        "maxItems",
    );
    refused(
        f.create(with("tags", json!(["ab", "c"]))).await,
        "tags[1]",
        "minLength",
    );
    // Nothing refused was stored.
    let (status, list) = json(
        f.http
            .get(format!("{}/gadget", f.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let count = list
        .as_array()
        .or_else(|| list["items"].as_array())
        .map(Vec::len);
    assert_eq!(count, Some(6), "{list}");
}

async fn patch_and_actions_are_held_to_the_constraints(kind: Kind) {
    let f = fixture(kind).await;
    let (status, created) = f.create(valid()).await;
    assert_eq!(status, 201, "{created}");
    let id = created["resource_id"].as_str().unwrap().to_owned();
    // A patch that breaks a rule changes nothing.
    refused(f.patch(&id, json!({"name": ""})).await, "name", "minLength");
    refused(
        f.patch(&id, json!({"level": 101})).await,
        "level",
        "maximum",
    );
    refused(
        f.patch(&id, json!({"code": "nope"})).await,
        "code",
        "pattern",
    );
    refused(
        f.patch(&id, json!({"tags": ["ab", "cd", "ef", "gh"]}))
            .await,
        "tags",
        "maxItems",
    );
    assert_eq!(f.get(&id).await, valid());
    // At the boundary it passes.
    let (status, body) = f.patch(&id, json!({"level": 95, "name": "12345678"})).await;
    assert_eq!(status, 200, "{body}");
    // An argument outside its range.
    refused(
        f.action(&id, "bump", json!({"by": 11})).await,
        "by",
        "maximum",
    );
    refused(
        f.action(&id, "bump", json!({"by": 0})).await,
        "by",
        "minimum",
    );
    // A result outside the document's range is not stored.
    refused(
        f.action(&id, "bump", json!({"by": 6})).await,
        "level",
        "maximum",
    );
    assert_eq!(f.get(&id).await["level"], 95);
    let (status, body) = f.action(&id, "bump", json!({"by": 5})).await;
    assert_eq!((status, body), (200, json!(100)));
}

/// A huge array against `maxItems` is counted, not walked: answered well within the request
/// timeout, with the rule.
async fn huge_array_against_max_items(kind: Kind) {
    let f = fixture(kind).await;
    let tags: Vec<&str> = vec!["x"; 50_000];
    let started = Instant::now();
    refused(
        f.create(with("tags", json!(tags))).await,
        "tags",
        "maxItems",
    );
    // Not a speed assertion: a bound far above the answer, so a hang shows as a failure.
    assert!(started.elapsed() < Duration::from_secs(10));
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        mod memory { $( #[tokio::test] async fn $case() { super::$case(super::Kind::Memory).await } )* }
        mod embedded { $( #[tokio::test] async fn $case() { super::$case(super::Kind::Embedded).await } )* }
    };
}

on_every_backend!(
    openapi_shows_the_constraints,
    create_is_held_to_the_constraints,
    patch_and_actions_are_held_to_the_constraints,
    huge_array_against_max_items,
);

#[tokio::test]
async fn a_pattern_that_cannot_compile_stops_the_node() {
    let cluster = MemoryCluster::new();
    let started = Node::builder("bad")
        .memory(&cluster)
        .resource::<Lookahead>()
        .start()
        .await;
    let Err(error) = started else {
        panic!("the node started with a pattern it cannot enforce");
    };
    let message = error.to_string();
    assert!(
        matches!(error, Error::BadRequest { .. })
            && message.contains("lookahead")
            && message.contains("^a(?=[0-9])")
            && message.contains("look-around"),
        "{message}"
    );
    // Registered later: refused the same way, and not served.
    let node = Node::builder("late")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    let error = node.register::<Lookahead>().await.unwrap_err();
    assert!(error.to_string().contains("^a(?=[0-9])"), "{error}");
    assert!(
        !node
            .resource_infos()
            .iter()
            .any(|info| info.name == "lookahead")
    );
}
