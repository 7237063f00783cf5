//! Resuming the websocket from a cursor, with a real websocket client: a client that
//! disconnects while creates continue and resumes with `since` sees every event once, in
//! order; the same through a gateway and two owners of two collections on the real ZeroMQ
//! network (loopback), the cursor covering both logs; an expired cursor; malformed and
//! oversized cursors and a late `since`, after which the connection keeps working; a client
//! told "too slow" that reconnects with its last cursor and loses nothing; a later subscribe
//! that starts its collection then, not from the stream's start; clients pushed behind the
//! bus that catch up from the log, a client too far behind (`ZS_WS_MAX_LAG`) told "too slow"
//! that resumes, and clients that stop reading, which hold bounded memory and disturb nobody.

mod http_common;

use std::collections::{BTreeMap, HashMap};
use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use http_common::*;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use zeroservices::Limits;
use zeroservices::changes::{Cursor, Retention};
use zeroservices::config::NetworkConfig;
use zeroservices::http::{HttpConfig, HttpServer};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;

fn power(value: i64) -> Power {
    Power {
        value,
        status: Status::Pending,
        result: None,
        description: None,
    }
}

/// Subscribes, optionally from `since`, and returns the acknowledgement.
async fn subscribe(ws: &mut Ws, topics: &[&str], since: Option<&str>) -> Value {
    let mut message = json!({"type": "subscribe", "topics": topics});
    if let Some(since) = since {
        message["since"] = json!(since);
    }
    ws_send(ws, message).await;
    ws_next(ws).await
}

/// Reads events until `done` holds of what was read, within `within`; returns them.
async fn read_until(ws: &mut Ws, within: Duration, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut events = Vec::new();
    while !done(&events) {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(text)))) => serde_json::from_str::<Value>(&text).unwrap(),
            Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_)))) => continue,
            other => panic!(
                "not done within {within:?} ({other:?}); read: {:?}",
                events.iter().map(id_of).collect::<Vec<_>>()
            ),
        };
        assert_eq!(message["type"], "event", "{message}");
        events.push(message);
    }
    events
}

/// Waits until `counter` reaches `n` (bounded).
async fn wait_count(counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "only {counter:?} of {n}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn id_of(event: &Value) -> String {
    event["data"]["resource_id"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

/// The logs a cursor names, as `<collection>@<log id>` (clients treat cursors as opaque; the
/// test looks inside).
fn logs_named(cursor: &str) -> Vec<String> {
    zeroservices::changes::Cursor::parse(cursor)
        .unwrap()
        .positions()
        .map(|(key, _)| {
            let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(key)
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_client_resumes_from_its_cursor_with_every_event_once_in_order() {
    const TOTAL: usize = 80;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], None).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert!(ack["cursor"].is_string());

    let created = Arc::new(AtomicUsize::new(0));
    let creator = tokio::spawn({
        let powers = node.collection::<Power>();
        let created = created.clone();
        async move {
            for i in 0..TOTAL {
                powers
                    .create_with_id(&format!("p{i:03}"), power(i as i64))
                    .await
                    .unwrap();
                created.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    let first = read_until(&mut ws, Duration::from_secs(10), |e| e.len() == 10).await;
    for e in &first {
        assert!(e["data"]["cursor"].is_string(), "{e}");
        assert_eq!(e["data"]["version"], 1);
    }
    let cursor = first[9]["data"]["cursor"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();
    drop(ws);
    // Creates go on while the client is away.
    wait_count(&created, 40).await;

    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], Some(&cursor)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(
        ack["cursor"],
        cursor.as_str(),
        "the ack names where the stream starts"
    );
    let rest = read_until(&mut ws, Duration::from_secs(20), |e| {
        e.last()
            .is_some_and(|e| id_of(e) == format!("p{:03}", TOTAL - 1))
    })
    .await;
    creator.await.unwrap();
    let ids: Vec<String> = first.iter().chain(&rest).map(id_of).collect();
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("p{i:03}")).collect();
    assert_eq!(ids, expected, "every event once, in order");
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    // Cursors only move forward along the stream: the last one resumes to nothing.
    let last = rest.last().unwrap()["data"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut again = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut again, &["power"], Some(&last)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ws_assert_quiet(&mut again, Duration::from_millis(200)).await;
    server.shutdown().await;
    node.stop().await;
}

/// A private cluster on loopback: its own multicast group port, short timers.
fn network() -> NetworkConfig {
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    NetworkConfig {
        interface: "127.0.0.1".parse().unwrap(),
        multicast_group: format!("237.252.249.227:{port}").parse().unwrap(),
        request_timeout: Duration::from_secs(5),
        heartbeat: Duration::from_millis(200),
        peer_timeout: Duration::from_secs(3),
        ..NetworkConfig::default()
    }
}

/// An HTTP gateway that owns nothing, in front of two owners (one of `power`, one of `chat`),
/// all three on the ZeroMQ medium: the client follows both collections, so its cursor covers
/// two logs on two nodes; it disconnects while both keep changing and resumes with nothing
/// lost or twice, in order per collection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_through_a_gateway_covers_two_owners() {
    const TOTAL: usize = 40;
    let net = network();
    let powers_node = Node::builder("power_service")
        .network(net.clone())
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let chats_node = Node::builder("chat_service")
        .network(net.clone())
        .resource::<ChatMessage>()
        .start()
        .await
        .unwrap();
    let gateway = Node::builder("api").network(net).start().await.unwrap();
    for collection in ["power", "chat"] {
        gateway
            .wait_for_collection(collection, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let (server, base) = start(&gateway, HttpConfig::new(0)).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power", "chat"], None).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");

    // One task alternates between the two owners, so both keep changing while the client is
    // away.
    let created = Arc::new(AtomicUsize::new(0));
    let creator = tokio::spawn({
        let powers = powers_node.collection::<Power>();
        let chats = chats_node.collection::<ChatMessage>();
        let created = created.clone();
        async move {
            for i in 0..TOTAL {
                powers
                    .create_with_id(&format!("p{i:03}"), power(i as i64))
                    .await
                    .unwrap();
                chats
                    .create_with_id(
                        &format!("m{i:03}"),
                        ChatMessage {
                            text: format!("{i}"),
                        },
                    )
                    .await
                    .unwrap();
                created.fetch_add(2, Ordering::SeqCst);
            }
        }
    });
    // Until both collections were seen: the cursor then names a log of each owner.
    let first = read_until(&mut ws, Duration::from_secs(20), |e| {
        e.len() >= 10
            && e.iter().any(|e| id_of(e).starts_with('p'))
            && e.iter().any(|e| id_of(e).starts_with('m'))
    })
    .await;
    let cursor = first.last().unwrap()["data"]["cursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let logs = logs_named(&cursor);
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("power@")), "{logs:?}");
    assert!(logs.iter().any(|l| l.starts_with("chat@")), "{logs:?}");
    drop(ws);
    let seen_before = first.len();
    wait_count(&created, seen_before + 30).await;

    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power", "chat"], Some(&cursor)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let last_p = format!("p{:03}", TOTAL - 1);
    let last_m = format!("m{:03}", TOTAL - 1);
    let seen = |e: &[Value], id: &str| first.iter().chain(e).any(|e| id_of(e) == id);
    let rest = read_until(&mut ws, Duration::from_secs(30), |e| {
        seen(e, &last_p) && seen(e, &last_m)
    })
    .await;
    creator.await.unwrap();
    ws_assert_quiet(&mut ws, Duration::from_millis(300)).await;
    let mut per_collection: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for e in first.iter().chain(&rest) {
        let id = id_of(e);
        per_collection
            .entry(id.chars().next().unwrap())
            .or_default()
            .push(id);
    }
    for (prefix, ids) in per_collection {
        let expected: Vec<String> = (0..TOTAL).map(|i| format!("{prefix}{i:03}")).collect();
        assert_eq!(ids, expected, "every {prefix} event once, in order");
    }
    server.shutdown().await;
    gateway.stop().await;
    powers_node.stop().await;
    chats_node.stop().await;
}

/// A cursor the log no longer covers gets `cursor_expired`; nothing is subscribed and the
/// connection stays open: a subscribe without `since` works.
#[tokio::test]
async fn an_expired_cursor_is_told_and_the_client_starts_over() {
    let cluster = MemoryCluster::new();
    let limits = Limits {
        change_log: Retention {
            max_entries: 5,
            max_age: Duration::from_secs(3600),
        },
        ..Limits::default()
    };
    let node = Node::builder("power_service")
        .memory(&cluster)
        .limits(limits)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let powers = node.collection::<Power>();
    let mut ws = ws_connect(&base, None).await.unwrap();
    subscribe(&mut ws, &["power"], None).await;
    powers.create_with_id("p0", power(0)).await.unwrap();
    let event = ws_next(&mut ws).await;
    let cursor = event["data"]["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    for i in 1..20 {
        powers
            .create_with_id(&format!("p{i}"), power(i))
            .await
            .unwrap();
    }
    let mut ws = ws_connect(&base, None).await.unwrap();
    let reply = subscribe(&mut ws, &["power"], Some(&cursor)).await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], "cursor_expired", "{reply}");
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("reload")),
        "{reply}"
    );
    // Nothing subscribed: a change now is not sent...
    powers.create_with_id("q0", power(0)).await.unwrap();
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    // ... and the client starts over on the same connection.
    let ack = subscribe(&mut ws, &["power"], None).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    powers.create_with_id("q1", power(1)).await.unwrap();
    assert_eq!(id_of(&ws_next(&mut ws).await), "q1");
    server.shutdown().await;
    node.stop().await;
}

/// Malformed, oversized and misplaced cursors get a clear error, subscribe to nothing, and the
/// connection keeps working.
#[tokio::test]
async fn bad_cursors_are_refused_and_the_connection_keeps_working() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"t":1,"p":{"x":1}}"#);
    let mut ws = ws_connect(&base, None).await.unwrap();
    for since in [
        json!("not a cursor"),
        json!("!!!"),
        json!(forged),
        json!(7),
        json!(["a"]),
        json!("A".repeat(20 * 1024)),
    ] {
        ws_send(
            &mut ws,
            json!({"type": "subscribe", "topics": ["power"], "since": since}),
        )
        .await;
        let reply = ws_next(&mut ws).await;
        assert_eq!(reply["type"], "error", "{reply:.200}");
        assert_eq!(reply["code"], "bad_cursor", "{reply:.200}");
        let text = reply["error"].as_str().unwrap();
        assert!(text.contains("since") && text.len() < 500, "{text}");
    }
    // Nothing was subscribed.
    let powers = node.collection::<Power>();
    powers.create_with_id("p0", power(0)).await.unwrap();
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    // The connection works: subscribe, then a late `since` is refused, the stream goes on.
    let ack = subscribe(&mut ws, &["power"], None).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let cursor = ack["cursor"].as_str().unwrap().to_owned();
    let reply = subscribe(&mut ws, &["chat"], Some(&cursor)).await;
    assert_eq!(reply["code"], "since_not_first", "{reply}");
    powers.create_with_id("p1", power(1)).await.unwrap();
    node.collection::<ChatMessage>()
        .create_with_id(
            "m1",
            ChatMessage {
                text: "not subscribed".into(),
            },
        )
        .await
        .unwrap();
    powers.create_with_id("p2", power(2)).await.unwrap();
    assert_eq!(id_of(&ws_next(&mut ws).await), "p1");
    assert_eq!(id_of(&ws_next(&mut ws).await), "p2");
    server.shutdown().await;
    node.stop().await;
}

/// An owner serving HTTP with a websocket queue of 8 messages, and a client subscribed to
/// `power` that is about to stop reading (the subscription's acknowledgement with it).
async fn slow_client() -> (MemoryCluster, Node, HttpServer, String, Ws, Value) {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).ws_buffer(8)).await;
    let mut slow = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut slow, &["power"], None).await;
    assert_eq!(ack["type"], "subscribed");
    (cluster, node, server, base, slow, ack)
}

/// Creates 96 KiB documents until the server gives up on the slow client (its queue
/// overflowed), each once the writer took the one before, while it could: so the queue
/// overflows only once the client's socket is full, which is when a goodbye has to wait for
/// room. Returns how many it created.
async fn fill_until_too_slow(node: &Node, base: &str) -> i64 {
    let blob = "x".repeat(96 * 1024);
    let powers = node.collection::<Power>();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut created = 0;
    while metric(base, "zs_websocket_too_slow_total").await < Some(1.0) {
        assert!(Instant::now() < deadline, "never told too slow");
        let mut p = power(created);
        p.description = Some(blob.clone());
        powers
            .create_with_id(&format!("p{created:04}"), p)
            .await
            .unwrap();
        created += 1;
        let taken = Instant::now() + Duration::from_millis(200);
        while metric(base, "zs_websocket_queued_messages").await > Some(0.0)
            && Instant::now() < taken
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    created
}

/// A client told "too slow" that never reads again: its goodbye waits for room (up to 5 s), but
/// a server that stops meanwhile is not held by it past the usual 500 ms bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_slow_client_does_not_hold_the_servers_stop() {
    let (_cluster, node, server, base, _stalled, _ack) = slow_client().await;
    fill_until_too_slow(&node, &base).await;
    // The client never reads again: its goodbye is waiting for room now.
    let started = Instant::now();
    server.shutdown().await;
    let took = started.elapsed();
    eprintln!("stop with a stalled slow client took {took:?}");
    assert!(
        took < Duration::from_secs(4),
        "the stop waited for the stalled client's goodbye: {took:?}"
    );
    node.stop().await;
}

/// A client that stops reading for longer than a normal goodbye takes (500 ms), then reads
/// again, still gets the "too slow" message, after what its socket held, before the close
/// (1008): the goodbye of a slow client waits up to 5 s for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_that_reads_again_gets_the_too_slow_message_before_the_close() {
    let (_cluster, node, server, base, mut slow, _ack) = slow_client().await;

    let created = fill_until_too_slow(&node, &base).await;
    // The client stays away longer than a normal goodbye would wait (part of the scenario, not
    // a wait for a condition).
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut events, mut told, mut close_code) = (0, false, None);
    loop {
        match tokio::time::timeout_at(deadline, slow.next()).await {
            Err(_) => panic!("still connected after {events} events"),
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                close_code = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("event") => {
                        assert!(!told, "an event after the too_slow message: {v}");
                        events += 1;
                    }
                    Some("error") => {
                        assert_eq!(v["code"], "too_slow", "{v}");
                        told = true;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    eprintln!("slow client: {events} of {created} events, then told: {told}, close {close_code:?}");
    assert!(told, "the client did not get the too_slow message");
    assert_eq!(close_code, Some(1008));
    server.shutdown().await;
    node.stop().await;
}

/// A client that never reads is told "too slow" and disconnected; it reconnects with the last
/// cursor it got and receives the rest, nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_too_slow_resumes_with_nothing_lost() {
    const TOTAL: usize = 120;
    let (_cluster, node, server, base, mut slow, ack) = slow_client().await;
    let start_cursor = ack["cursor"].as_str().unwrap().to_owned();

    // 96 KiB documents: the socket buffers of a client that does not read fill quickly.
    let blob = "x".repeat(96 * 1024);
    let powers = node.collection::<Power>();
    for i in 0..TOTAL {
        let mut p = power(i as i64);
        p.description = Some(blob.clone());
        powers.create_with_id(&format!("p{i:03}"), p).await.unwrap();
    }

    // Now read: what was in flight, the "too slow" error, the end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<String> = Vec::new();
    let mut cursor = start_cursor;
    let mut told = false;
    loop {
        match tokio::time::timeout_at(deadline, slow.next()).await {
            Err(_) => panic!("still connected after {} events", got.len()),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(WsMessage::Close(_)))) => break,
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("event") => {
                        got.push(id_of(&v));
                        cursor = v["data"]["cursor"].as_str().unwrap().to_owned();
                    }
                    Some("error") => {
                        assert_eq!(v["code"], "too_slow", "{v}");
                        told = true;
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    eprintln!(
        "slow client: {} events before the disconnect, told: {told}",
        got.len()
    );
    assert!(got.len() < TOTAL, "the slow client was never disconnected");

    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], Some(&cursor)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let missing = TOTAL - got.len();
    let rest = read_until(&mut ws, Duration::from_secs(30), |e| e.len() == missing).await;
    got.extend(rest.iter().map(id_of));
    let expected: Vec<String> = (0..TOTAL).map(|i| format!("p{i:03}")).collect();
    assert_eq!(got, expected, "nothing lost, nothing twice, in order");
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    let counts: HashMap<&String, usize> = got.iter().fold(HashMap::new(), |mut m, id| {
        *m.entry(id).or_default() += 1;
        m
    });
    assert!(counts.values().all(|n| *n == 1));
    server.shutdown().await;
    node.stop().await;
}

/// Waits until the clock shows a later millisecond than now (a later subscribe starts its
/// collection at its millisecond, changes of that same millisecond included).
async fn next_millisecond() {
    let ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    };
    let now = ms();
    let deadline = Instant::now() + Duration::from_secs(1);
    while ms() <= now {
        assert!(Instant::now() < deadline, "the clock stands still");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// A later subscribe to a collection the connection did not follow (or stopped following)
/// delivers its changes from then on (from its millisecond), not its log since the stream
/// started.
#[tokio::test]
async fn a_later_subscribe_starts_its_collection_then() {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0)).await;
    let chats = node.collection::<ChatMessage>();
    let powers = node.collection::<Power>();
    let chat = |i: usize| ChatMessage {
        text: format!("{i}"),
    };
    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], None).await;
    assert_eq!(ack["type"], "subscribed");
    for i in 0..5 {
        chats
            .create_with_id(&format!("m{i}"), chat(i))
            .await
            .unwrap();
    }
    powers.create_with_id("p0", power(0)).await.unwrap();
    assert_eq!(id_of(&ws_next(&mut ws).await), "p0");
    next_millisecond().await;
    assert_eq!(
        subscribe(&mut ws, &["chat"], None).await["type"],
        "subscribed"
    );
    chats.create_with_id("m5", chat(5)).await.unwrap();
    assert_eq!(
        id_of(&ws_next(&mut ws).await),
        "m5",
        "not the earlier chats"
    );
    // Stopped, changed meanwhile, followed again: from then on.
    ws_send(&mut ws, json!({"type": "unsubscribe", "topics": ["chat"]})).await;
    assert_eq!(ws_next(&mut ws).await["type"], "unsubscribed");
    for i in 6..9 {
        chats
            .create_with_id(&format!("m{i}"), chat(i))
            .await
            .unwrap();
    }
    next_millisecond().await;
    assert_eq!(
        subscribe(&mut ws, &["chat.create"], None).await["type"],
        "subscribed"
    );
    chats.create_with_id("m9", chat(9)).await.unwrap();
    powers.create_with_id("p1", power(1)).await.unwrap();
    assert_eq!(id_of(&ws_next(&mut ws).await), "m9");
    assert_eq!(id_of(&ws_next(&mut ws).await), "p1");
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    server.shutdown().await;
    node.stop().await;
}

/// `p0000`, `p0001`, … (sorted as created).
fn pid(i: usize) -> String {
    format!("p{i:04}")
}

/// Creates `p<from>` … `p<to - 1>`, each with a description of `blob` bytes.
async fn create_range(node: &Node, from: usize, to: usize, blob: usize) {
    let powers = node.collection::<Power>();
    let text = "x".repeat(blob);
    for i in from..to {
        let mut p = power(i as i64);
        if blob > 0 {
            p.description = Some(text.clone());
        }
        powers.create_with_id(&pid(i), p).await.unwrap();
    }
}

/// A counter of the node's `GET /metrics` (`None` when it is not there).
async fn metric(base: &str, name: &str) -> Option<f64> {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Waits until the counter `name` reaches `at_least` (bounded).
async fn wait_metric(base: &str, name: &str, at_least: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(base, name).await;
        if value.is_some_and(|v| v >= at_least) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {value:?}, waited for {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a client read until its connection ended (or `within` passed): the events' ids, the
/// last cursor, the error messages and the close frame's code.
struct Ending {
    ids: Vec<String>,
    cursor: String,
    errors: Vec<Value>,
    close: Option<u16>,
}

async fn read_to_the_end(ws: &mut Ws, cursor: String, within: Duration) -> Ending {
    let deadline = Instant::now() + within;
    let mut ending = Ending {
        ids: Vec::new(),
        cursor,
        errors: Vec::new(),
        close: None,
    };
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("still connected after {} events", ending.ids.len()),
            Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                ending.close = frame.map(|f| u16::from(f.code));
                break;
            }
            Ok(Some(Ok(WsMessage::Text(text)))) => {
                let v: Value = serde_json::from_str(text.as_str()).unwrap();
                match v["type"].as_str() {
                    Some("event") => {
                        ending.ids.push(id_of(&v));
                        ending.cursor = v["data"]["cursor"].as_str().unwrap().to_owned();
                    }
                    Some("error") => ending.errors.push(v),
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
    ending
}

/// Three clients resume from the same old cursor (a backlog of big documents, so their
/// forwarders wait on full sockets) and do not read while thousands more changes are made:
/// their streams fall behind the node's event bus (it drops events for them) and read the rest
/// from the change log, sharing its pages. Each then reads every change once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_pushed_behind_catch_up_with_every_event_once_in_order() {
    const BACKLOG: usize = 1000;
    const TOTAL: usize = 7000;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let (server, base) = start(&node, HttpConfig::new(0).ws_buffer(16)).await;
    let mut first = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut first, &["power"], None).await;
    let start_cursor = ack["cursor"].as_str().unwrap().to_owned();
    drop(first);
    // 16 KiB each: 16 MB of backlog, more than the sockets hold.
    create_range(&node, 0, BACKLOG, 16 * 1024).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_connect(&base, None).await.unwrap();
        let ack = subscribe(&mut ws, &["power"], Some(&start_cursor)).await;
        assert_eq!(ack["type"], "subscribed", "{ack}");
        clients.push(ws);
    }
    let lagged = node.stats().events_lagged;
    // More than the bus keeps for a stream (4096) while nobody reads.
    create_range(&node, BACKLOG, TOTAL, 0).await;
    let expected: Vec<String> = (0..TOTAL).map(pid).collect();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let events =
                    read_until(&mut ws, Duration::from_secs(60), |e| e.len() == TOTAL).await;
                ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
                events
            })
        })
        .collect();
    for reader in readers {
        let events = reader.await.unwrap();
        let ids: Vec<String> = events.iter().map(id_of).collect();
        assert_eq!(ids, expected, "every change once, in order");
        // Cursors go forward.
        let last = Cursor::parse(events[TOTAL - 1]["data"]["cursor"].as_str().unwrap()).unwrap();
        assert_eq!(
            last.positions().map(|(_, seq)| seq).sum::<u64>(),
            TOTAL as u64
        );
    }
    // (Counted when a stream looks at the bus again.)
    assert!(
        node.stats().events_lagged > lagged,
        "the streams did not fall behind the bus"
    );
    server.shutdown().await;
    node.stop().await;
}

/// A client whose stream falls more than `ws_max_lag` changes behind the log's newest (it reads
/// nothing while its backlog is sent) is told "too slow" and closed (1008), counted; it resumes
/// from its last cursor and loses nothing. Its resume started further behind than the bound:
/// that start is allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_far_behind_is_told_too_slow_and_resumes_losing_nothing() {
    const BACKLOG: usize = 1000;
    const TOTAL: usize = 3000;
    const MAX_LAG: u64 = 300;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0).ws_buffer(16).ws_max_lag(MAX_LAG);
    let (server, base) = start(&node, config).await;
    let mut first = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut first, &["power"], None).await;
    let start_cursor = ack["cursor"].as_str().unwrap().to_owned();
    drop(first);
    create_range(&node, 0, BACKLOG, 16 * 1024).await;
    let mut slow = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut slow, &["power"], Some(&start_cursor)).await;
    assert_eq!(
        ack["type"], "subscribed",
        "a resume beyond the bound starts: {ack}"
    );
    // It reads nothing while the log moves far past it.
    create_range(&node, BACKLOG, TOTAL, 0).await;
    wait_metric(&base, "zs_websocket_too_far_behind_total", 1.0).await;
    // Counted among the clients told "too slow" too (with, perhaps, the first client, gone
    // without a close while the backlog was made).
    assert!(metric(&base, "zs_websocket_too_slow_total").await >= Some(1.0));
    let ending = read_to_the_end(&mut slow, start_cursor, Duration::from_secs(30)).await;
    eprintln!(
        "too far behind: {} events before the close, told {:?}, close {:?}",
        ending.ids.len(),
        ending.errors,
        ending.close
    );
    assert!(ending.ids.len() < TOTAL, "never disconnected");
    // The goodbye is best effort (its socket was full), but what arrives says so.
    for error in &ending.errors {
        assert_eq!(error["code"], "too_slow", "{error}");
        let text = error["error"].as_str().unwrap();
        assert!(
            text.contains("ZS_WS_MAX_LAG") && text.contains("since"),
            "{text}"
        );
    }
    if let Some(code) = ending.close {
        assert_eq!(code, 1008);
    }
    let mut got = ending.ids;
    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], Some(&ending.cursor)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    let missing = TOTAL - got.len();
    let rest = read_until(&mut ws, Duration::from_secs(60), |e| e.len() == missing).await;
    got.extend(rest.iter().map(id_of));
    let expected: Vec<String> = (0..TOTAL).map(pid).collect();
    assert_eq!(got, expected, "nothing lost, nothing twice, in order");
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    server.shutdown().await;
    node.stop().await;
}

/// Clients that stop reading entirely (one live, one resuming with a backlog) hold no more
/// than their queues: both are told "too slow" and closed, what they held is given back, and a
/// client reading beside them gets every change in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_hold_bounded_memory_and_disturb_nobody() {
    const BACKLOG: usize = 500;
    const TOTAL: usize = 2500;
    const BUFFER: usize = 16;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    // The reading client on a server whose queues never fill (it is not the one under test),
    // the stuck ones on a server with small queues; one node, one event bus.
    let (roomy, roomy_base) = start(&node, HttpConfig::new(0).ws_buffer(1 << 20)).await;
    let config = HttpConfig::new(0).ws_buffer(BUFFER).ws_max_lag(500);
    let (server, base) = start(&node, config).await;
    let mut reader = ws_connect(&roomy_base, None).await.unwrap();
    let ack = subscribe(&mut reader, &["power"], None).await;
    let start_cursor = ack["cursor"].as_str().unwrap().to_owned();
    let read_all = tokio::spawn(async move {
        let events = read_until(&mut reader, Duration::from_secs(60), |e| e.len() == TOTAL).await;
        events.iter().map(id_of).collect::<Vec<_>>()
    });
    create_range(&node, 0, BACKLOG, 16 * 1024).await;
    let mut live_stuck = ws_connect(&base, None).await.unwrap();
    assert_eq!(
        subscribe(&mut live_stuck, &["power"], None).await["type"],
        "subscribed"
    );
    let mut resumed_stuck = ws_connect(&base, None).await.unwrap();
    assert_eq!(
        subscribe(&mut resumed_stuck, &["power"], Some(&start_cursor)).await["type"],
        "subscribed"
    );
    // 4 KiB each: the stuck clients' sockets fill.
    create_range(&node, BACKLOG, TOTAL, 4 * 1024).await;
    wait_metric(&base, "zs_websocket_too_slow_total", 2.0).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&base, "zs_websocket_clients").await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the stuck clients are still connected"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids = read_all.await.unwrap();
    let expected: Vec<String> = (0..TOTAL).map(pid).collect();
    assert_eq!(
        ids, expected,
        "the reading client got every change once, in order"
    );
    // Nothing is left queued for the stuck clients: what they held went with them.
    assert_eq!(
        metric(&base, "zs_websocket_queued_messages").await,
        Some(0.0)
    );
    drop((live_stuck, resumed_stuck));
    server.shutdown().await;
    roomy.shutdown().await;
    node.stop().await;
}

/// The bound counts only the collections a client follows: a client that resumes with a cursor
/// naming a collection it no longer subscribes to, and waits on a full socket while that
/// collection changes far past the bound, is not closed; it gets its whole backlog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_bound_counts_only_followed_collections() {
    const BACKLOG: usize = 600;
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    let config = HttpConfig::new(0).ws_buffer(16).ws_max_lag(100);
    let (server, base) = start(&node, config).await;
    let chats = node.collection::<ChatMessage>();
    let chat = |i: usize| ChatMessage {
        text: format!("{i}"),
    };
    let mut first = ws_connect(&base, None).await.unwrap();
    subscribe(&mut first, &["power", "chat"], None).await;
    chats.create_with_id("m0", chat(0)).await.unwrap();
    let event = ws_next(&mut first).await;
    let cursor = event["data"]["cursor"].as_str().unwrap().to_owned();
    assert!(
        logs_named(&cursor).iter().any(|l| l.starts_with("chat@")),
        "{cursor}"
    );
    drop(first);
    // 16 KiB each: more than the sockets hold, so the forwarder waits for room.
    create_range(&node, 0, BACKLOG, 16 * 1024).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    let ack = subscribe(&mut ws, &["power"], Some(&cursor)).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    // Checks while it waits (every 200 ms) see the chat log before and after it moves on.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 1..400 {
        chats
            .create_with_id(&format!("m{i}"), chat(i))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = read_until(&mut ws, Duration::from_secs(30), |e| e.len() == BACKLOG).await;
    let ids: Vec<String> = events.iter().map(id_of).collect();
    let expected: Vec<String> = (0..BACKLOG).map(pid).collect();
    assert_eq!(ids, expected);
    assert_eq!(
        metric(&base, "zs_websocket_too_far_behind_total").await,
        Some(0.0)
    );
    ws_assert_quiet(&mut ws, Duration::from_millis(200)).await;
    server.shutdown().await;
    node.stop().await;
}
