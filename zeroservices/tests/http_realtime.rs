//! The realtime websocket with a real websocket client: subscriptions, prefixes, `*`, bad
//! messages, Basic auth on the upgrade, an `Authorizer` hiding a collection's events, a slow
//! client that must not delay the others, and shutdown.

mod http_common;

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use http_common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use zeroservices::Event;
use zeroservices::http::{BasicAuth, HttpConfig, Operation, User};
use zeroservices::medium::MemoryCluster;

async fn create(base: &str, collection: &str, id: &str, data: serde_json::Value) {
    let (status, body) = json(
        client()
            .post(format!("{base}/{collection}"))
            .json(&json!({"resource_id": id, "resource_data": data}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn subscriptions_by_prefix_and_star() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let http = client();

    let mut creates = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut creates, &["power.create"]).await;
    let mut all = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut all, &["*"]).await;
    let mut one = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut one, &["power.patch.p1", "chat"]).await;

    create(&base, "power", "p1", json!({"value": 3})).await;
    let (status, _) = json(
        http.patch(format!("{base}/power/p1"))
            .json(&json!({"patch": {"$set": {"description": "x"}}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    create(&base, "chat", "m1", json!({"text": "hi"})).await;
    let response = http
        .delete(format!("{base}/power/p1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 204);

    // "*": everything, in order, with the original payloads
    let e = ws_next(&mut all).await;
    assert_eq!(e["type"], "event");
    assert_eq!(e["topic"], "power.create.p1");
    assert_eq!(e["data"]["action"], "create");
    assert_eq!(e["data"]["resource_name"], "power");
    assert_eq!(e["data"]["resource_id"], "p1");
    assert_eq!(e["data"]["resource_data"]["value"], 3);
    let e = ws_next(&mut all).await;
    assert_eq!(e["topic"], "power.patch.p1");
    assert_eq!(e["data"]["patch"], json!({"$set": {"description": "x"}}));
    assert_eq!(e["data"]["resource_data"]["description"], "x");
    assert_eq!(ws_next(&mut all).await["topic"], "chat.create.m1");
    let e = ws_next(&mut all).await;
    assert_eq!(e["topic"], "power.delete.p1");
    assert!(e["data"].get("resource_data").is_none());

    // "power.create": only the create
    assert_eq!(ws_next(&mut creates).await["topic"], "power.create.p1");
    // one resource's patches, and a whole collection
    assert_eq!(ws_next(&mut one).await["topic"], "power.patch.p1");
    assert_eq!(ws_next(&mut one).await["topic"], "chat.create.m1");

    // unsubscribe, acknowledged; then only what is left arrives
    ws_send(&mut one, json!({"type": "unsubscribe", "topics": ["chat"]})).await;
    assert_eq!(
        ws_next(&mut one).await,
        json!({"type": "unsubscribed", "topics": ["chat"]})
    );
    ws_subscribe(&mut one, &["power.create"]).await;
    create(&base, "chat", "m2", json!({"text": "again"})).await;
    create(&base, "power", "p2", json!({"value": 4})).await;
    // the chat event came first: had it been sent, it would be read here
    assert_eq!(ws_next(&mut one).await["topic"], "power.create.p2");
    assert_eq!(ws_next(&mut creates).await["topic"], "power.create.p2");
    ws_assert_quiet(&mut creates, Duration::from_millis(50)).await;
    ws_assert_quiet(&mut one, Duration::from_millis(50)).await;

    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn the_originals_join_and_events_from_another_node() {
    let cluster = MemoryCluster::new();
    let owner = owner(&cluster).await;
    let api = gateway(&cluster, Duration::from_secs(5)).await;
    let (server, base) = start(&api, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_send(&mut ws, json!({"type": "join", "topics": ["power"]})).await;
    let ack = ws_next(&mut ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["topics"], json!(["power"]));
    // The first subscribe's acknowledgement carries the stream's starting cursor.
    assert!(ack["cursor"].is_string(), "{ack}");
    // created on the owner directly: the event crosses the cluster to the gateway's clients
    let id = owner
        .collection::<Power>()
        .create(Power {
            value: 9,
            status: Status::Pending,
            result: None,
            description: None,
        })
        .await
        .unwrap();
    let e = ws_next(&mut ws).await;
    assert_eq!(e["topic"], format!("power.create.{id}"));
    assert_eq!(e["data"]["resource_data"]["value"], 9);
    // a user event published by any node, under a subscribed prefix
    owner
        .publish(Event {
            topic: "power.custom.hello".into(),
            data: json!({"hello": "world"}),
        })
        .await;
    assert_eq!(
        ws_next(&mut ws).await,
        json!({"type": "event", "topic": "power.custom.hello", "data": {"hello": "world"}})
    );
    server.shutdown().await;
    api.stop().await;
    owner.stop().await;
}

#[tokio::test]
async fn bad_messages_get_an_error_and_the_socket_stays_open() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    for bad in [
        "not json",
        "42",
        r#"{"topics": ["power"]}"#,
        r#"{"type": "dance", "topics": ["power"]}"#,
        r#"{"type": "subscribe"}"#,
        r#"{"type": "subscribe", "topics": "power"}"#,
        r#"{"type": "subscribe", "topics": ["power", 7]}"#,
    ] {
        ws_send_text(&mut ws, bad).await;
        let reply = ws_next(&mut ws).await;
        assert_eq!(reply["type"], "error", "{bad}: {reply}");
        assert!(reply["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    ws.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(ws_next(&mut ws).await["type"], "error");
    // still open, and still working
    ws_subscribe(&mut ws, &["power"]).await;
    create(&base, "power", "p", json!({"value": 1})).await;
    assert_eq!(ws_next(&mut ws).await["topic"], "power.create.p");
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn basic_auth_on_the_upgrade() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0).basic_auth(BasicAuth::new("ann", "pw"));
    let (server, base) = start(&node, config).await;
    let missing = ws_connect(&base, None).await.unwrap_err();
    assert!(missing.contains("401"), "{missing}");
    let malformed = ws_connect(&base, Some("Basic %%%")).await.unwrap_err();
    assert!(malformed.contains("401"), "{malformed}");
    let wrong = ws_connect(&base, Some(&basic("ann", "nope")))
        .await
        .unwrap_err();
    assert!(wrong.contains("401"), "{wrong}");
    let mut ws = ws_connect(&base, Some(&basic("ann", "pw"))).await.unwrap();
    ws_subscribe(&mut ws, &["*"]).await;
    node.publish(Event {
        topic: "power.custom.1".into(),
        data: json!(null),
    })
    .await;
    assert_eq!(ws_next(&mut ws).await["topic"], "power.custom.1");
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn a_plain_get_on_realtime_is_a_json_error() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let response = client()
        .get(format!("{base}/realtime"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(response).await;
    assert!((400..500).contains(&status), "{status}");
    assert!(body["error"].is_string());
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn an_authorizer_hides_a_collections_events() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0)
        .basic_auth(BasicAuth::new("ann", "pw"))
        .authorizer(|user: Option<&User>, collection: &str, op: &Operation| {
            !(user.is_some_and(|u| u.name == "ann")
                && collection == "chat"
                && *op == Operation::Subscribe)
        });
    let (server, base) = start(&node, config).await;
    let mut ws = ws_connect(&base, Some(&basic("ann", "pw"))).await.unwrap();
    ws_subscribe(&mut ws, &["*"]).await;
    let mut chat_only = ws_connect(&base, Some(&basic("ann", "pw"))).await.unwrap();
    ws_subscribe(&mut chat_only, &["chat"]).await;
    let chats = node.collection::<ChatMessage>();
    chats
        .create_with_id(
            "m1",
            ChatMessage {
                text: "secret".into(),
            },
        )
        .await
        .unwrap();
    node.collection::<Power>()
        .create_with_id(
            "p1",
            Power {
                value: 2,
                status: Status::Pending,
                result: None,
                description: None,
            },
        )
        .await
        .unwrap();
    // the chat event was published first: had it been sent, it would be read first
    let e = ws_next(&mut ws).await;
    assert_eq!(e["topic"], "power.create.p1", "{e}");
    ws_assert_quiet(&mut ws, Duration::from_millis(50)).await;
    // the other collection's events keep arriving
    chats.delete("m1").await.unwrap();
    node.collection::<Power>().delete("p1").await.unwrap();
    assert_eq!(ws_next(&mut ws).await["topic"], "power.delete.p1");
    ws_assert_quiet(&mut chat_only, Duration::from_millis(50)).await;
    server.shutdown().await;
    node.stop().await;
}

/// One client never reads; another must get every event promptly, and the slow one is
/// disconnected once its small buffer overflows.
#[tokio::test]
async fn a_slow_client_does_not_delay_the_others() {
    const EVENTS: usize = 200;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).ws_buffer(8)).await;
    let mut slow = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut slow, &["*"]).await;
    let mut fast = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut fast, &["bulk"]).await;

    // 128 KiB events: the slow client's socket buffers fill after a few dozen
    let blob = "x".repeat(128 * 1024);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..EVENTS {
        let sent = Instant::now();
        node.publish(Event {
            topic: format!("bulk.tick.{i}"),
            data: json!({"i": i, "blob": blob}),
        })
        .await;
        let e = ws_next_within(&mut fast, Duration::from_secs(2)).await;
        assert_eq!(e["data"]["i"], i, "fast client got events out of order");
        slowest = slowest.max(sent.elapsed());
    }
    eprintln!(
        "fast client: {EVENTS} events in {:?}, slowest {:?}",
        started.elapsed(),
        slowest
    );
    assert!(
        slowest < Duration::from_secs(1),
        "slowest event {slowest:?}"
    );

    // the slow client was disconnected: it reads what was in flight, then the end
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut received = 0;
    let mut told = false;
    loop {
        match tokio::time::timeout_at(deadline, slow.next()).await {
            Err(_) => panic!("slow client still connected after {received} events"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => break,
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("event") => received += 1,
                    Some("error") => {
                        assert!(v["error"].as_str().unwrap().contains("too slow"), "{v}");
                        told = true;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    eprintln!("slow client: {received} events before the disconnect, told: {told}");
    assert!(received < EVENTS, "the slow client was never disconnected");
    // the server is still healthy
    let mut again = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut again, &["bulk"]).await;
    server.shutdown().await;
    node.stop().await;
}

#[tokio::test]
async fn shutdown_closes_websockets() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut ws, &["*"]).await;
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("websocket not closed on shutdown");
    assert_eq!(closed, Some(1001));
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown took too long")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    // no longer listening
    assert!(ws_connect(&base, None).await.is_err());
    node.stop().await;
}

#[tokio::test]
async fn a_client_close_is_answered() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut ws, &["*"]).await;
    ws.close(None).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(WsMessage::Close(_))) => return true,
                Some(Ok(_)) => {}
                None | Some(Err(_)) => return false,
            }
        }
    })
    .await
    .expect("no answer to the close");
    assert!(
        reply,
        "the server dropped the connection without a close frame"
    );
    server.shutdown().await;
    node.stop().await;
}

/// Opens `/realtime` as a page of `origin` would (a browser sends its `Origin`).
async fn ws_from(base: &str, origin: &str) -> Result<Ws, String> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/realtime", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("websocket connect timed out".into()),
    }
}

/// A page of another site gets a 403; a client with no `Origin` (not a browser), the node's
/// own pages and the allowed origins get the websocket.
#[tokio::test]
async fn the_origin_of_a_page_is_checked() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let refused = ws_from(&base, "https://evil.example").await.unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    let port = base.rsplit(':').next().unwrap();
    let other_port = if port == "1" { "2" } else { "1" };
    let refused = ws_from(&base, &format!("http://127.0.0.1:{other_port}"))
        .await
        .unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    // Not a browser.
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut ws, &["power"]).await;
    // The node's own page (the live page opens it this way).
    let mut own = ws_from(&base, &base).await.unwrap();
    ws_subscribe(&mut own, &["power"]).await;
    drop((ws, own));
    server.shutdown().await;

    let config = HttpConfig::new(0).allowed_origins("https://app.example");
    let (server, base) = start(&node, config).await;
    let mut app = ws_from(&base, "https://app.example").await.unwrap();
    ws_subscribe(&mut app, &["power"]).await;
    let refused = ws_from(&base, "https://evil.example").await.unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    drop(app);
    server.shutdown().await;

    let (server, base) = start(&node, HttpConfig::new(0).allowed_origins("*")).await;
    let mut any = ws_from(&base, "https://evil.example").await.unwrap();
    ws_subscribe(&mut any, &["power"]).await;
    drop(any);
    server.shutdown().await;
    node.stop().await;
}

/// A burst goes out in batches (one socket write for what is queued): every event of it arrives,
/// in order, once, and a lone event after it is written at once (not held for a batch).
#[tokio::test]
async fn a_burst_arrives_whole_and_in_order_and_a_lone_event_is_not_held() {
    const EVENTS: usize = 1000;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut ws, &["burst"]).await;
    for i in 0..EVENTS {
        node.publish(Event {
            topic: format!("burst.tick.{i}"),
            data: json!({"i": i}),
        })
        .await;
    }
    for i in 0..EVENTS {
        let e = ws_next_within(&mut ws, Duration::from_secs(5)).await;
        assert_eq!(e["type"], "event", "{e}");
        assert_eq!(e["data"]["i"], i, "out of order or lost: {e}");
    }
    ws_assert_quiet(&mut ws, Duration::from_millis(50)).await;
    node.publish(Event {
        topic: "burst.lone".into(),
        data: json!({"lone": true}),
    })
    .await;
    let e = ws_next_within(&mut ws, Duration::from_secs(2)).await;
    assert_eq!(e["data"]["lone"], true, "{e}");
    server.shutdown().await;
    node.stop().await;
}

/// A client that goes away in the middle of a burst (its batch's writes fail) ends alone: the
/// other client gets the whole burst and the server keeps serving.
#[tokio::test]
async fn a_client_gone_in_a_burst_does_not_disturb_the_others() {
    const EVENTS: usize = 1000;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut stays = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut stays, &["burst"]).await;
    let mut leaves = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut leaves, &["burst"]).await;
    for i in 0..EVENTS {
        if i == EVENTS / 4 {
            // Dropped without a close frame: the socket is simply gone.
            drop(std::mem::replace(
                &mut leaves,
                ws_connect(&base, None).await.unwrap(),
            ));
        }
        node.publish(Event {
            topic: format!("burst.tick.{i}"),
            data: json!({"i": i}),
        })
        .await;
    }
    for i in 0..EVENTS {
        let e = ws_next_within(&mut stays, Duration::from_secs(5)).await;
        assert_eq!(e["data"]["i"], i, "out of order or lost: {e}");
    }
    let mut again = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut again, &["burst"]).await;
    node.publish(Event {
        topic: "burst.after".into(),
        data: json!({"after": true}),
    })
    .await;
    assert_eq!(
        ws_next_within(&mut again, Duration::from_secs(2)).await["data"]["after"],
        true
    );
    drop(leaves);
    server.shutdown().await;
    node.stop().await;
}
