//! Links over REST: `add_link`, `follow_links` and `incoming_links` are built-in actions of
//! every resource, reached through a gateway that owns nothing.

mod http_common;

use std::time::Duration;

use http_common::*;
use serde_json::json;
use zeroservices::http::HttpConfig;
use zeroservices::medium::MemoryCluster;

#[tokio::test]
async fn links_over_rest() {
    let cluster = MemoryCluster::new();
    let _owner = owner(&cluster).await;
    let gateway = gateway(&cluster, Duration::from_secs(5)).await;
    let (_server, base) = start(&gateway, HttpConfig::new(0)).await;
    let http = client();
    let create = |collection: &'static str, id: &'static str, data: serde_json::Value| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let (status, _) = json(
                http.post(format!("{base}/{collection}"))
                    .json(&json!({"resource_id": id, "resource_data": data}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_eq!(status, 201);
        }
    };
    create("power", "p1", json!({"value": 1})).await;
    create("power", "p2", json!({"value": 2})).await;
    create("chat", "c1", json!({"text": "about p1"})).await;

    // add: the chat message links to both powers, the second power links to the message.
    for (from, relation, target, title) in [
        ("chat/c1", "about", ["power", "p1"], Some("first")),
        ("chat/c1", "about", ["power", "p2"], None),
        ("power/p2", "mentioned_in", ["chat", "c1"], None),
    ] {
        let (status, body) = json(
            http.post(format!("{base}/{from}/add_link"))
                .json(&json!({"relation": relation, "target_id": target, "title": title}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let (_, doc) = json(http.get(format!("{base}/chat/c1")).send().await.unwrap()).await;
    assert_eq!(
        doc["resource_data"]["_links"]["about"],
        json!([{"target_id": ["power", "p1"], "title": "first"}, {"target_id": ["power", "p2"]}])
    );
    assert_eq!(
        doc["resource_data"]["_links"]["latest"]["power"],
        json!(["power", "p2"])
    );

    // follow
    let (status, body) = json(
        http.post(format!("{base}/chat/c1/follow_links"))
            .json(&json!({"relation": "about"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    let values: Vec<_> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["resource_data"]["value"].clone())
        .collect();
    assert_eq!(values, [json!(1), json!(2)]);
    assert_eq!(body[0]["resource_name"], "power");
    assert_eq!(body[0]["title"], "first");

    // incoming: which chat messages are about p2?
    let (status, body) = json(
        http.post(format!("{base}/chat/incoming_links"))
            .json(&json!({"relation": "about", "target_id": ["power", "p2"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().unwrap().len(), 1);
    assert_eq!(body[0]["resource_id"], "c1");

    // A bad relation is a 422 naming the field; a missing resource a 404.
    let (status, body) = json(
        http.post(format!("{base}/chat/c1/add_link"))
            .json(&json!({"relation": "la.test", "target_id": ["power", "p1"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("relation"));
    let (status, _) = json(
        http.post(format!("{base}/chat/nope/add_link"))
            .json(&json!({"relation": "about", "target_id": ["power", "p1"]}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
}
