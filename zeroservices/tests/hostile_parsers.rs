//! Property tests: random and deeply nested JSON fed to the filter, patch and limit parsers and
//! to a node's request handling, with a bounded number of cases. Every input gets `Ok` or a
//! clean client error; nothing panics, and a failed patch leaves the document unchanged.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use zeroservices::medium::{MemoryCluster, Request};
use zeroservices::patch::Patch;
use zeroservices::prelude::*;
use zeroservices::query::Filter;
use zeroservices::{Error, Limits, Node};

/// A power, the usual resource.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Free text.
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// Keys that the parsers treat specially, beside plain and dotted field names.
const KEYS: &[&str] = &[
    "$and",
    "$or",
    "$nor",
    "$not",
    "$text",
    "$search",
    "$in",
    "$nin",
    "$all",
    "$size",
    "$exists",
    "$elemMatch",
    "$eq",
    "$ne",
    "$gt",
    "$gte",
    "$lt",
    "$lte",
    "$set",
    "$unset",
    "$inc",
    "$push",
    "$pull",
    "$each",
    "$position",
    "$slice",
    "$sort",
    "_id",
    "_links",
    "value",
    "description",
    "tags",
    "a",
    "a.b",
    "a.0.c",
    "",
    ".",
    "a..b",
    "$",
    "tags.5",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z.$0-9]{0,12}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        Just(json!(u64::MAX)),
        "[a-z ]{0,8}".prop_map(Value::from),
    ]
}

/// Random JSON, wide and up to 8 levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key(), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A value nested `depth` levels deep under operator or field keys (up to 150: deeper than
/// every limit, shallower than serde_json's own reader limit).
fn deep_value() -> impl Strategy<Value = Value> {
    (1usize..150, proptest::collection::vec(key(), 1..4), leaf()).prop_map(|(depth, keys, leaf)| {
        let mut v = leaf;
        for i in 0..depth {
            let k = &keys[i % keys.len()];
            v = if i % 3 == 2 {
                Value::Array(vec![v])
            } else {
                json!({ k.as_str(): v })
            };
        }
        v
    })
}

fn any_json() -> impl Strategy<Value = Value> {
    prop_oneof![3 => json_value(), 1 => deep_value()]
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Errors a client may get for its own bad input.
fn is_client_error(e: &Error) -> bool {
    matches!(
        e,
        Error::BadRequest { .. }
            | Error::Validation { .. }
            | Error::Limit { .. }
            | Error::NotFound { .. }
            | Error::UnknownAction { .. }
    )
}

#[test]
fn filters_parse_or_refuse_and_match_without_panicking() {
    let limits = Limits::default();
    runner()
        .run(&(any_json(), json_value()), |(filter, doc)| {
            let _ = limits.check_filter(&filter);
            match Filter::parse(&filter) {
                Ok(parsed) => {
                    let _ = parsed.matches(&doc);
                }
                Err(e) => prop_assert!(matches!(e, Error::BadRequest { .. }), "{e:?}"),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn patches_compile_or_refuse_and_fail_atomically() {
    let limits = Limits::default();
    runner()
        .run(&(any_json(), json_value()), |(patch, doc)| {
            let patch = Patch::new(patch);
            match patch.compile_with(&limits) {
                Ok(update) => {
                    let mut applied = doc.clone();
                    if let Err(e) = update.apply(&mut applied) {
                        prop_assert!(is_client_error(&e), "{e:?}");
                        prop_assert_eq!(&applied, &doc, "a failed update changed the document");
                    }
                }
                Err(e) => prop_assert!(is_client_error(&e), "{e:?}"),
            }
            let _ = limits.check_document(&doc);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_node_answers_random_requests_with_client_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = rt.block_on(async {
        let cluster = MemoryCluster::new();
        let node = Node::builder("power_service")
            .memory(&cluster)
            .limits(Limits::default())
            .resource::<Power>()
            .start()
            .await
            .unwrap();
        node.collection::<Power>()
            .create_with_id(
                "p1",
                Power {
                    value: 2,
                    description: None,
                    tags: vec!["x".into()],
                },
            )
            .await
            .unwrap();
        node
    });
    const ACTIONS: &[&str] = &[
        "create",
        "get",
        "patch",
        "delete",
        "list",
        "add_link",
        "follow_links",
        "nope",
    ];
    let ids = prop_oneof![
        Just(None),
        Just(Some("p1".to_owned())),
        "[a-z.*> ]{0,6}".prop_map(Some),
    ];
    let mut runner = TestRunner::new(Config {
        cases: 128,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(proptest::sample::select(ACTIONS), ids, any_json()),
            |(action, id, args)| {
                // Arguments as the REST layer shapes them, and raw.
                let shaped = match action {
                    "create" => json!({ "resource_data": args }),
                    "patch" => json!({ "patch": args }),
                    "list" => json!({ "where": args }),
                    _ => args,
                };
                let mut request = Request::new("power", action).args(shaped);
                request.resource_id = id;
                let result = rt.block_on(node.request(request));
                if let Err(e) = result {
                    prop_assert!(is_client_error(&e), "{action}: {e:?}");
                }
                Ok(())
            },
        )
        .unwrap();
    // Still serving.
    rt.block_on(async {
        let all = node.collection::<Power>().list(Query::all()).await.unwrap();
        assert!(all.len() <= 129);
        node.stop().await;
    });
}
