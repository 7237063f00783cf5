//! The ZeroMQ medium over real sockets on 127.0.0.1, driven directly (no node).

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};
use zeroservices::config::NetworkConfig;
use zeroservices::medium::{Endpoints, Inbound, Medium, Request, ZmqMedium};
use zeroservices::security::{ClusterKey, testing};
use zeroservices::{Error, Event, NodeInfo, NodeKind, Result};

/// The protocol version of the envelopes built by hand here.
const V: u32 = zeroservices::medium::PROTOCOL_VERSION;

/// Echoes `args`, fails on `fail`, sleeps on `sleep`, and records events.
#[derive(Default)]
struct TestInbound {
    events: Mutex<Vec<Event>>,
}

impl TestInbound {
    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

#[async_trait]
impl Inbound for TestInbound {
    async fn request(&self, from: Option<String>, request: Request) -> Result<Value> {
        match request.action.as_str() {
            "echo" => Ok(json!({"from": from, "id": request.resource_id, "args": request.args})),
            "null" => Ok(Value::Null),
            "whoami" => Ok(serde_json::to_value(&request.user).unwrap()),
            "fail" => Err(Error::not_found(request.collection, "42")),
            "sleep" => {
                let ms = request.args.as_u64().unwrap_or(10_000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!("slept"))
            }
            other => Err(Error::bad_request(format!("no action {other}"))),
        }
    }

    fn event(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}

fn config(key: Option<&str>) -> NetworkConfig {
    NetworkConfig {
        interface: Ipv4Addr::LOCALHOST,
        cluster_key: key.map(ClusterKey::new),
        request_timeout: Duration::from_secs(2),
        ..NetworkConfig::default()
    }
}

fn info(id: &str, endpoints: Endpoints) -> NodeInfo {
    NodeInfo {
        id: id.to_owned(),
        name: "test".to_owned(),
        kind: NodeKind::Node,
        protocol: zeroservices::medium::PROTOCOL_VERSION,
        endpoints,
        resources: Vec::new(),
        watches: Vec::new(),
        insecure: false,
        stores: Default::default(),
    }
}

struct Started {
    medium: ZmqMedium,
    inbound: Arc<TestInbound>,
    info: NodeInfo,
}

async fn start(id: &str, medium: ZmqMedium) -> Started {
    let inbound = Arc::new(TestInbound::default());
    let endpoints = medium.start(id, inbound.clone()).await.expect("start");
    assert!(
        endpoints["router"].starts_with("tcp://127.0.0.1:"),
        "{endpoints:?}"
    );
    assert!(
        endpoints["pub"].starts_with("tcp://127.0.0.1:"),
        "{endpoints:?}"
    );
    Started {
        medium,
        inbound,
        info: info(id, endpoints),
    }
}

async fn node(id: &str, key: Option<&str>) -> Started {
    start(id, ZmqMedium::new(config(key))).await
}

/// Polls `cond` until it holds or `within` passes; returns whether it held.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn echo(n: u64) -> Request {
    Request::new("things", "echo")
        .id(n.to_string())
        .args(json!({"n": n}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_round_trip() {
    let a = node("a", None).await;
    let b = node("b", None).await;

    let reply = a.medium.call(&b.info, echo(7)).await.unwrap();
    assert_eq!(reply, json!({"from": "a", "id": "7", "args": {"n": 7}}));

    // A typed error crosses as it is; a null value is a value, not a missing one.
    let err = a
        .medium
        .call(&b.info, Request::new("power", "fail"))
        .await
        .unwrap_err();
    assert_eq!(err, Error::not_found("power", "42"));
    let null = a
        .medium
        .call(&b.info, Request::new("x", "null"))
        .await
        .unwrap();
    assert_eq!(null, Value::Null);

    let (sa, sb) = (a.medium.stats(), b.medium.stats());
    assert_eq!(sa.calls_sent, 3);
    assert_eq!(sa.replies_received, 3);
    assert_eq!(sb.requests_served, 3);
    assert!(
        eventually(Duration::from_secs(2), || b.medium.stats().replies_sent
            == 3)
        .await
    );
    a.medium.stop().await;
    b.medium.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_on_one_connection() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    let calls = (0..200u64).map(|n| {
        let (medium, peer) = (&a.medium, &b.info);
        async move { (n, medium.call(peer, echo(n)).await) }
    });
    let replies = futures::future::join_all(calls).await;
    for (n, reply) in replies {
        assert_eq!(reply.unwrap()["args"]["n"], json!(n));
    }
    assert_eq!(a.medium.stats().replies_received, 200);
    assert_eq!(b.medium.stats().requests_served, 200);
    a.medium.stop().await;
    b.medium.stop().await;
}

/// Topics `medium` received so far, in order.
fn topics(started: &Started) -> Vec<String> {
    started
        .inbound
        .events()
        .into_iter()
        .map(|e| e.topic)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_are_told_what_a_node_wants_without_a_sync() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    // `a` knows `b` but has not heard from it: `b` gets everything.
    a.medium.peer_joined(&b.info).await;
    assert!(a.medium.wants("tick.create.1"));
    // `b` learns of `a` and tells it (on joining, then on every change), no sync asked.
    b.medium.peer_joined(&a.info).await;
    b.medium.set_interest(vec!["power".into()]);
    assert!(
        eventually(Duration::from_secs(5), || !a.medium.wants("tick.create.1")).await,
        "a never heard that b wants only power"
    );
    assert!(a.medium.wants("power.create.1"));
    // A burst of changes ends with the last one told.
    for prefix in ["chat", "tick", "chat", "power.patch"] {
        b.medium.set_interest(vec![prefix.into()]);
    }
    assert!(
        eventually(Duration::from_secs(5), || a.medium.wants("power.patch.7")
            && !a.medium.wants("chat.message"))
        .await
    );
    // `b` leaves: `a` forgets what it wanted (and has nobody left to send to).
    a.medium.peer_left(&b.info.id).await;
    assert!(!a.medium.wants("power.patch.7"));
    // What `b` says after `a` saw it leave (a late `interest`, here a sync carrying one) is
    // not recorded: `a` keeps sending to nobody otherwise.
    b.medium.set_interest(vec!["tick".into()]);
    b.medium.sync_interest().await;
    assert!(!a.medium.wants("tick.create.1"));
    // Until `b` joins again: then it gets everything until it says otherwise.
    a.medium.peer_joined(&b.info).await;
    assert!(a.medium.wants("chat.message"));
    for n in [a, b] {
        n.medium.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synced_interest_gets_every_event_it_wants_and_nothing_else() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    b.medium.set_interest(vec!["power".into()]);
    b.medium.peer_joined(&a.info).await;
    // No slow-joiner loop: once synced, the very first event published arrives.
    b.medium.sync_interest().await;
    let publish = |topic: &str| {
        let event = Event {
            topic: topic.to_owned(),
            data: json!(topic),
        };
        let medium = &a.medium;
        async move { medium.publish(&event).await.unwrap() }
    };
    // The sync told `a` what `b` wants: `a` does not even publish the rest.
    assert!(a.medium.wants("power.create.1"));
    assert!(!a.medium.wants("tick.create.1"));
    assert!(!a.medium.wants("powers.create.1"));
    publish("tick.create.1").await;
    publish("powers.create.1").await;
    publish("power.create.1").await;
    assert_eq!(a.medium.stats().events_unwanted, 2);
    assert!(eventually(Duration::from_secs(5), || !topics(&b).is_empty()).await);
    // One PUB -> SUB connection keeps order: anything wanted before would be here already.
    assert_eq!(topics(&b), ["power.create.1"]);

    // Changing the interest moves the filter at the source; the sync markers never show.
    b.medium.set_interest(vec!["tick".into()]);
    b.medium.sync_interest().await;
    publish("power.create.2").await;
    publish("tick.create.2").await;
    assert!(eventually(Duration::from_secs(5), || topics(&b).len() == 2).await);
    assert_eq!(topics(&b), ["power.create.1", "tick.create.2"]);

    // No interest: a (synced) peer sends nothing at all.
    b.medium.set_interest(Vec::new());
    b.medium.sync_interest().await;
    let published = a.medium.stats().events_published;
    publish("tick.create.3").await;
    b.medium.set_interest(vec!["tick".into()]);
    b.medium.sync_interest().await;
    publish("tick.create.4").await;
    assert!(eventually(Duration::from_secs(5), || topics(&b).len() == 3).await);
    assert_eq!(
        topics(&b),
        ["power.create.1", "tick.create.2", "tick.create.4"]
    );
    // `power.create.2` and `tick.create.3` were never published either; each sync made a marker event at `a`, seen only by
    // `b`'s medium.
    assert!(a.medium.stats().events_published >= published + 2);
    assert_eq!(a.medium.stats().events_unwanted, 4);
    for n in [a, b] {
        n.medium.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_pub_to_sub_with_prefix_subscriptions() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    let sniffer = start(
        "sniffer",
        ZmqMedium::new(config(None)).with_subscriptions(vec!["power".into()]),
    )
    .await;
    a.medium.peer_joined(&b.info).await;
    sniffer.medium.peer_joined(&b.info).await;

    // Slow joiner: publish until the first event arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.inbound.events().is_empty() || sniffer.inbound.events().is_empty() {
        assert!(Instant::now() < deadline, "no event crossed within 5 s");
        b.medium
            .publish(&Event::resource("power", "create", "0", Default::default()))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Once subscribed, nothing is lost and the sniffer sees only `power` (not `powers`).
    b.medium
        .publish(&Event {
            topic: "powers.create.1".into(),
            data: json!(1),
        })
        .await
        .unwrap();
    b.medium
        .publish(&Event {
            topic: "chat.message".into(),
            data: json!({"text": "hi"}),
        })
        .await
        .unwrap();
    b.medium
        .publish(&Event::resource(
            "power",
            "delete",
            "last",
            Default::default(),
        ))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || {
            a.inbound
                .events()
                .iter()
                .any(|e| e.topic == "power.delete.last")
                && sniffer
                    .inbound
                    .events()
                    .iter()
                    .any(|e| e.topic == "power.delete.last")
        })
        .await
    );
    let at_a: Vec<_> = a.inbound.events().into_iter().map(|e| e.topic).collect();
    assert!(at_a.contains(&"chat.message".to_owned()));
    assert!(at_a.contains(&"powers.create.1".to_owned()));
    let chat = a
        .inbound
        .events()
        .into_iter()
        .find(|e| e.topic == "chat.message")
        .unwrap();
    assert_eq!(chat.data, json!({"text": "hi"}));
    for e in sniffer.inbound.events() {
        assert!(e.topic.starts_with("power."), "sniffer got {}", e.topic);
    }
    assert!(b.medium.stats().events_published >= 3);
    assert!(a.medium.stats().events_received >= 3);
    for n in [a, b, sniffer] {
        n.medium.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_cluster_key_gets_nothing() {
    let a = node("a", Some("key-one")).await;
    let friend = node("friend", Some("key-one")).await;
    let stranger = node("stranger", Some("key-two")).await;

    // Same key: served.
    assert!(a.medium.call(&friend.info, echo(1)).await.is_ok());

    // Another key: the stranger drops our request; we get no answer.
    let call = a.medium.call(&stranger.info, echo(2));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), call)
            .await
            .is_err()
    );
    assert!(
        eventually(Duration::from_secs(2), || stranger
            .medium
            .stats()
            .dropped_unsigned
            >= 1)
        .await
    );
    assert_eq!(stranger.medium.stats().requests_served, 0);

    // Its events are dropped and counted. (The stranger knows `a` but never hears what `a`
    // wants, its request being unsigned for it: so it sends `a` everything.)
    a.medium.peer_joined(&stranger.info).await;
    stranger.medium.peer_joined(&a.info).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.medium.stats().dropped_unsigned == 0 {
        assert!(
            Instant::now() < deadline,
            "the stranger's events were never seen"
        );
        stranger
            .medium
            .publish(&Event {
                topic: "chat.message".into(),
                data: json!("forged"),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.inbound.events().is_empty());
    assert_eq!(a.medium.stats().events_received, 0);
    for n in [a, friend, stranger] {
        n.medium.stop().await;
    }
}

fn frames(parts: Vec<Vec<u8>>) -> ZmqMessage {
    let mut parts = parts.into_iter();
    let mut message = ZmqMessage::from(parts.next().unwrap());
    for part in parts {
        message.push_back(part.into());
    }
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_the_router_is_dropped_and_counted() {
    let key = ClusterKey::new("secret");
    let mut cfg = config(Some("secret"));
    cfg.max_message_bytes = 4096;
    let b = start("b", ZmqMedium::new(cfg)).await;

    let mut raw = DealerSocket::new();
    raw.connect(&b.info.endpoints["router"]).await.unwrap();
    let signed = |body: &[u8]| -> ZmqMessage { frames(testing::seal_call(&key, body)) };
    let good = |id: u64| {
        json!({"v": V, "kind": "request", "id": id, "from": "raw",
               "request": {"collection": "c", "action": "echo", "args": id}})
        .to_string()
        .into_bytes()
    };

    // Wrong frame counts.
    raw.send(frames(vec![good(1)])).await.unwrap();
    raw.send(frames(vec![good(2), b"x".to_vec(), b"y".to_vec()]))
        .await
        .unwrap();
    // Truncated JSON, binary noise, a JSON that is no envelope.
    let truncated = good(3);
    raw.send(signed(&truncated[..truncated.len() / 2]))
        .await
        .unwrap();
    raw.send(signed(&[0xff, 0x00, 0x13, 0x37])).await.unwrap();
    raw.send(signed(b"[1, 2, 3]")).await.unwrap();
    // An unknown protocol version, well signed and well formed otherwise.
    let future = json!({"v": 99, "kind": "request", "id": 4, "from": "raw",
                        "request": {"collection": "c", "action": "echo"}});
    raw.send(signed(future.to_string().as_bytes()))
        .await
        .unwrap();
    // Oversized: the ROUTER closes that connection at the frame header (hostile_wire.rs), so
    // it goes on a connection of its own.
    let mut big = DealerSocket::new();
    big.connect(&b.info.endpoints["router"]).await.unwrap();
    let huge = json!({"v": V, "kind": "request", "id": 5, "from": "raw",
                      "request": {"collection": "c", "action": "echo", "args": "x".repeat(10_000)}});
    big.send(signed(huge.to_string().as_bytes())).await.unwrap();
    // Not sealed, and sealed under another key.
    raw.send(frames(vec![good(6), Vec::new()])).await.unwrap();
    raw.send(frames(testing::seal_call(
        &ClusterKey::new("guess"),
        &good(7),
    )))
    .await
    .unwrap();
    raw.send(frames(vec![good(8), b"not hex at all".to_vec()]))
        .await
        .unwrap();

    assert!(
        eventually(Duration::from_secs(5), || {
            let s = b.medium.stats();
            s.dropped_malformed >= 5
                && s.dropped_version >= 1
                && s.connections_closed_oversized >= 1
                && s.dropped_unsigned >= 3
        })
        .await,
        "{:?}",
        b.medium.stats()
    );
    let s = b.medium.stats();
    assert_eq!(s.dropped_malformed, 5, "{s:?}");
    assert_eq!(s.dropped_version, 1, "{s:?}");
    assert_eq!(s.connections_closed_oversized, 1, "{s:?}");
    assert_eq!(s.dropped_oversized, 0, "{s:?}");
    assert_eq!(s.dropped_unsigned, 3, "{s:?}");
    assert_eq!(s.requests_served, 0, "{s:?}");

    // A well-formed envelope with a bad request object gets a typed error reply.
    let bad = json!({"v": V, "kind": "request", "id": 9, "from": "raw", "request": {"nope": true}});
    raw.send(signed(bad.to_string().as_bytes())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .unwrap()
        .unwrap();
    let reply = testing::open_response(&key, reply.get(0).unwrap(), reply.get(1).unwrap()).unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(reply["id"], json!(9));
    assert_eq!(reply["error"]["kind"], json!("bad_request"));

    // The raw socket still gets served when it speaks properly...
    raw.send(signed(&good(10))).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), 2);
    let reply = testing::open_response(&key, reply.get(0).unwrap(), reply.get(1).unwrap()).unwrap();
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(
        reply,
        json!({"v": V, "kind": "response", "id": 10, "ok": {"from": "raw", "id": null, "args": 10}})
    );

    // ...and so does a proper medium.
    let a = node("a", Some("secret")).await;
    assert_eq!(
        a.medium.call(&b.info, echo(11)).await.unwrap()["args"]["n"],
        json!(11)
    );
    a.medium.stop().await;
    b.medium.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_fails_calls_instead_of_hanging() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    assert!(a.medium.call(&b.info, echo(1)).await.is_ok());

    // A call in flight when the peer dies fails at once with `unavailable`.
    let in_flight = a
        .medium
        .call(&b.info, Request::new("c", "sleep").args(json!(30_000)));
    let kill = async {
        assert!(
            eventually(Duration::from_secs(2), || b.medium.stats().requests_served
                == 2)
            .await
        );
        b.medium.stop().await;
    };
    let started = Instant::now();
    let (reply, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(3), in_flight),
        kill
    );
    let reply = reply.expect("the in-flight call hung past the peer's death");
    assert!(matches!(reply, Err(Error::Unavailable { .. })), "{reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Later calls fail at once (the connection is known to be down), not after a connect
    // timeout (1 s here).
    for n in 0..5 {
        let started = Instant::now();
        let reply =
            tokio::time::timeout(Duration::from_secs(3), a.medium.call(&b.info, echo(n))).await;
        match reply {
            Ok(Err(Error::Unavailable { .. })) => {}
            Ok(other) => panic!("a call to a dead peer returned {other:?}"),
            Err(_) => panic!("a call to a dead peer hung for {:?}", started.elapsed()),
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.medium.peer_left("b").await;
    a.medium.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_on_a_new_port_is_reached_again() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    a.medium.peer_joined(&b.info).await;
    assert!(a.medium.call(&b.info, echo(1)).await.is_ok());
    let old_router = b.info.endpoints["router"].clone();
    b.medium.stop().await;

    let b2 = node("b", None).await;
    assert_ne!(b2.info.endpoints["router"], old_router);
    a.medium.peer_joined(&b2.info).await;
    let reply = tokio::time::timeout(Duration::from_secs(3), a.medium.call(&b2.info, echo(2)))
        .await
        .expect("the restarted peer was not reached in time");
    assert_eq!(reply.unwrap()["args"]["n"], json!(2));

    // Its events arrive on the new SUB.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.inbound.events().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no event from the restarted peer"
        );
        b2.medium
            .publish(&Event {
                topic: "hello".into(),
                data: json!("again"),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.medium.stop().await;
    b2.medium.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_leaves_nothing_pending_and_the_late_reply_is_ignored() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    let slow = a
        .medium
        .call(&b.info, Request::new("c", "sleep").args(json!(300)));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    // The late reply arrives and is dropped quietly; the connection keeps working.
    assert!(
        eventually(Duration::from_secs(3), || a.medium.stats().replies_received
            == 1)
        .await
    );
    assert_eq!(
        a.medium.call(&b.info, echo(3)).await.unwrap()["args"]["n"],
        json!(3)
    );
    a.medium.stop().await;
    b.medium.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_listened_fails_fast() {
    let a = node("a", None).await;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ghost = info(
        "ghost",
        Endpoints::from([("router".to_owned(), format!("tcp://127.0.0.1:{port}"))]),
    );
    let started = Instant::now();
    let reply = tokio::time::timeout(Duration::from_secs(3), a.medium.call(&ghost, echo(1))).await;
    assert!(
        matches!(reply, Ok(Err(Error::Unavailable { .. }))),
        "{reply:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    a.medium.stop().await;
}

/// The calling user a request carries crosses the wire with it (issue 13: an owner decides too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calling_user_crosses_the_wire() {
    for key in [None, Some("k")] {
        let a = node("a", key).await;
        let b = node("b", key).await;
        let ann = zeroservices::access::User::new("ann").roles(["writer"]);
        let request = Request::new("power", "whoami").user(Some(ann));
        let reply = a.medium.call(&b.info, request).await.unwrap();
        assert_eq!(reply, json!({"name": "ann", "roles": ["writer"]}));
        let reply = a
            .medium
            .call(&b.info, Request::new("power", "whoami"))
            .await
            .unwrap();
        assert_eq!(reply, Value::Null);
        a.medium.stop().await;
        b.medium.stop().await;
    }
}

/// With a key, a stranger's plain SUB subscribed to everything on a node's PUB gets only
/// ciphertext: neither the data nor the names in the topic (collection, action, id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_sub_reads_no_plaintext() {
    let key = ClusterKey::new("secret");
    let a = node("a", Some("secret")).await;
    let friend = node("friend", Some("secret")).await;
    // A peer that never said what it wants gets everything: `a` publishes.
    a.medium.peer_joined(&friend.info).await;
    let mut stranger = zeromq::SubSocket::new();
    stranger.subscribe("").await.unwrap();
    stranger.connect(&a.info.endpoints["pub"]).await.unwrap();
    let marker = "MARKER-7f3c2a";
    let topic = "invoices.create.inv-42";
    let deadline = Instant::now() + Duration::from_secs(5);
    // The subscription reaches the PUB a moment after the connect: publish until one arrives.
    let message = loop {
        assert!(Instant::now() < deadline, "the stranger got nothing");
        a.medium
            .publish(&Event {
                topic: topic.into(),
                data: json!({"secret": marker}),
            })
            .await
            .unwrap();
        if let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(50), stranger.recv()).await
        {
            break message;
        }
    };
    let frames: Vec<Vec<u8>> = message.into_vec().into_iter().map(|f| f.to_vec()).collect();
    assert_eq!(frames.len(), 3);
    let all: Vec<u8> = frames.concat();
    for plain in [marker, "secret", "invoices", "create", "inv-42", "\"v\""] {
        assert!(
            !all.windows(plain.len()).any(|w| w == plain.as_bytes()),
            "{plain:?} readable by a stranger"
        );
    }
    // The topic frame is tags (a prefix filter still), and a key holder opens the body.
    assert_eq!(frames[0], testing::topic_frame(&key, topic).into_bytes());
    let opened = testing::open_event(&key, &frames[0], &frames[1], &frames[2]).unwrap();
    let opened: Value = serde_json::from_slice(&opened).unwrap();
    assert_eq!(opened["data"]["secret"], json!(marker));
    assert_eq!(opened["topic"], json!(topic));
    for n in [a, friend] {
        n.medium.stop().await;
    }
}

/// The bytes of a sealed request captured off the wire and sent again (on the same
/// connection or another) are not served again: dropped and counted as replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_request_sent_again_is_not_served_again() {
    let key = ClusterKey::new("secret");
    let b = node("b", Some("secret")).await;
    let mut raw = DealerSocket::new();
    raw.connect(&b.info.endpoints["router"]).await.unwrap();
    let body = json!({"v": V, "kind": "request", "id": 1, "from": "raw",
                      "request": {"collection": "c", "action": "echo", "args": 1}});
    let captured = testing::seal_call(&key, body.to_string().as_bytes());
    raw.send(frames(captured.clone())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), raw.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(testing::open_response(&key, reply.get(0).unwrap(), reply.get(1).unwrap()).is_some());
    assert_eq!(b.medium.stats().requests_served, 1);

    raw.send(frames(captured.clone())).await.unwrap();
    let mut other = DealerSocket::new();
    other.connect(&b.info.endpoints["router"]).await.unwrap();
    other.send(frames(captured.clone())).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || b.medium.stats().dropped_replayed
            >= 2)
        .await,
        "{:?}",
        b.medium.stats()
    );
    let s = b.medium.stats();
    assert_eq!((s.requests_served, s.dropped_replayed), (1, 2), "{s:?}");
    // No reply to a replay.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), raw.recv())
            .await
            .is_err()
    );
    // A fresh request is served.
    raw.send(frames(testing::seal_call(
        &key,
        body.to_string().as_bytes(),
    )))
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(5), raw.recv())
            .await
            .is_ok()
    );
    assert_eq!(b.medium.stats().requests_served, 2);
    b.medium.stop().await;
}

/// A rolling key rotation on three nodes (Consul's `keyring -install/-use/-remove`): k2 is
/// installed everywhere as a secondary, made the primary node by node, then k1 is removed,
/// while every node keeps calling every other; no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_key_rotation_fails_no_request() {
    let keys: Vec<ClusterKey> = (0..3).map(|_| ClusterKey::new("k1")).collect();
    let mut nodes = Vec::new();
    for (n, key) in keys.iter().enumerate() {
        let cfg = NetworkConfig {
            cluster_key: Some(key.clone()),
            ..config(None)
        };
        nodes.push(Arc::new(start(&format!("n{n}"), ZmqMedium::new(cfg)).await));
    }
    for a in &nodes {
        for b in &nodes {
            if a.info.id != b.info.id {
                a.medium.peer_joined(&b.info).await;
            }
        }
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut callers = Vec::new();
    for i in 0..3 {
        let (from, to) = (nodes[i].clone(), nodes[(i + 1) % 3].clone());
        let (stop, done, failures) = (stop.clone(), done.clone(), failures.clone());
        callers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                match from.medium.call(&to.info, echo(n)).await {
                    Ok(_) => {
                        done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{i}: {e}")),
                }
            }
        }));
    }
    // Each step: change one node's keyring, then wait for calls to go on under it.
    let progress = || {
        let before = done.load(std::sync::atomic::Ordering::Relaxed);
        let done = done.clone();
        async move {
            assert!(
                eventually(Duration::from_secs(5), || {
                    done.load(std::sync::atomic::Ordering::Relaxed) >= before + 30
                })
                .await,
                "calls stalled"
            );
        }
    };
    progress().await;
    for step in ["k1,k2", "k2,k1", "k2"] {
        for key in &keys {
            key.reload(step).unwrap();
            progress().await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for caller in callers {
        caller.await.unwrap();
    }
    assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
    for n in &nodes {
        let s = n.medium.stats();
        assert_eq!((s.dropped_unsigned, s.dropped_replayed), (0, 0), "{s:?}");
    }
    // k1 alone is now out.
    let old = node("old", Some("k1")).await;
    assert!(
        tokio::time::timeout(
            Duration::from_millis(500),
            old.medium.call(&nodes[0].info, echo(1))
        )
        .await
        .is_err()
    );
    old.medium.stop().await;
    for n in &nodes {
        n.medium.stop().await;
    }
}

/// A keyring read from a file (`ZS_CLUSTER_KEY_FILE`) is re-read on SIGHUP while the medium
/// runs: a new primary key without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_is_read_again_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys");
    std::fs::write(&path, "k1\n").unwrap();
    let key = zeroservices::security::keyfile::load(&path).unwrap();
    let before = key.key_ids();
    let config = NetworkConfig {
        cluster_key: Some(key.clone()),
        cluster_key_file: Some(path.clone()),
        ..config(None)
    };
    // Started: the SIGHUP handler is in place (the default action would end the process).
    let a = start("a", ZmqMedium::new(config)).await;
    std::fs::write(&path, "# rotated\nk2\nk1\n").unwrap();
    let pid = std::process::id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    assert!(
        eventually(Duration::from_secs(5), || key.len() == 2).await,
        "the keyring was not reloaded"
    );
    assert_ne!(key.key_ids()[0], before[0], "k2 is the primary now");
    assert_eq!(key.key_ids()[1], before[0], "k1 still opens");
    a.medium.stop().await;
}

/// Publishes `probe` events from `b` until `a` has seen one (the slow joiner), then forgets
/// what `a` saw.
async fn joined(a: &Started, b: &Started) {
    a.medium.peer_joined(&b.info).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.inbound.events().is_empty() {
        assert!(Instant::now() < deadline, "no event crossed within 5 s");
        b.medium
            .publish(&Event {
                topic: "probe".into(),
                data: json!(null),
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.inbound.events.lock().unwrap().clear();
}

/// Event `n` of `resource` (`power.patch.<resource>`).
fn patch(resource: &str, n: u64) -> Event {
    Event {
        topic: format!("power.patch.{resource}"),
        data: json!({"n": n}),
    }
}

/// The `n` of each event of `resource` seen by `at`, in the order seen.
fn order_of(at: &Started, resource: &str) -> Vec<u64> {
    let topic = format!("power.patch.{resource}");
    at.inbound
        .events()
        .iter()
        .filter(|e| e.topic == topic)
        .map(|e| e.data["n"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_keeps_each_resources_order_across_batches() {
    for key in [None, Some("secret")] {
        let a = node("a", key).await;
        let b = node("b", key).await;
        joined(&a, &b).await;
        // 3 x 700 events in one burst, interleaved: many times the PUB's fan-out batch (128)
        // and the SUB's burst (256), so batches end in the middle of every resource's run.
        const PER: u64 = 700;
        for n in 0..PER {
            for r in ["r0", "r1", "r2"] {
                b.medium.publish(&patch(r, n)).await.unwrap();
            }
        }
        assert!(
            eventually(Duration::from_secs(20), || ["r0", "r1", "r2"]
                .iter()
                .all(|r| order_of(&a, r).len() >= PER as usize))
            .await,
            "{key:?}: {} of {} arrived",
            a.inbound.events().len(),
            3 * PER
        );
        for r in ["r0", "r1", "r2"] {
            assert_eq!(order_of(&a, r), (0..PER).collect::<Vec<_>>(), "{key:?} {r}");
        }
        assert_eq!(b.medium.stats().events_dropped, 0);
        for n in [a, b] {
            n.medium.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_event_is_delivered_without_waiting_for_a_batch() {
    let a = node("a", None).await;
    let b = node("b", None).await;
    joined(&a, &b).await;
    // One event, nothing after it: nothing waits for a batch to fill (bounded deadline, not
    // a measure of speed), again after a burst.
    for round in 0..2u64 {
        if round == 1 {
            for n in 0..300 {
                b.medium.publish(&patch("burst", n)).await.unwrap();
            }
        }
        b.medium.publish(&patch("lone", round)).await.unwrap();
        assert!(
            eventually(Duration::from_secs(5), || order_of(&a, "lone").len()
                > round as usize)
            .await,
            "round {round}: the lone event did not arrive"
        );
    }
    assert_eq!(order_of(&a, "lone"), vec![0, 1]);
    assert_eq!(order_of(&a, "burst"), (0..300).collect::<Vec<_>>());
    for n in [a, b] {
        n.medium.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_inside_a_burst_are_dropped_and_counted_and_the_rest_arrive_in_order() {
    let mut cfg = config(None);
    cfg.max_message_bytes = 4096;
    let a = start("a", ZmqMedium::new(cfg)).await;
    // A raw PUB, as a hostile peer: `a` subscribes to it as to any peer.
    let mut raw = zeromq::PubSocket::new();
    let at = raw.bind("tcp://127.0.0.1:0").await.unwrap();
    let peer = info("raw", Endpoints::from([("pub".to_owned(), at.to_string())]));
    a.medium.peer_joined(&peer).await;
    let event = |topic: &str, n: u64| {
        let body =
            json!({"v": V, "kind": "event", "from": "raw", "topic": topic, "data": {"n": n}});
        frames(vec![
            topic.as_bytes().to_vec(),
            body.to_string().into_bytes(),
            Vec::new(),
        ])
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.inbound.events().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the SUB did not connect within 5 s"
        );
        raw.send(event("probe", 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.inbound.events.lock().unwrap().clear();
    let before = a.medium.stats();

    // One burst: 600 good events with bad ones among them.
    let topic = "power.patch.x";
    for n in 0..600u64 {
        raw.send(event(topic, n)).await.unwrap();
        match n % 100 {
            // Wrong frame count.
            10 => raw
                .send(frames(vec![topic.as_bytes().to_vec()]))
                .await
                .unwrap(),
            // Not JSON.
            20 => raw
                .send(frames(vec![
                    topic.as_bytes().to_vec(),
                    vec![0xff, 0],
                    Vec::new(),
                ]))
                .await
                .unwrap(),
            // The envelope's topic is not the topic frame's (a forged route).
            30 => {
                let mut parts = event("power.patch.other", 1_000_000).into_vec();
                parts[0] = topic.as_bytes().to_vec().into();
                raw.send(frames(parts.into_iter().map(|p| p.to_vec()).collect()))
                    .await
                    .unwrap();
            }
            // A seal frame this keyless node cannot open.
            40 => {
                let mut parts = event(topic, 2_000_000).into_vec();
                parts[2] = vec![3u8; 33].into();
                raw.send(frames(parts.into_iter().map(|p| p.to_vec()).collect()))
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    assert!(
        eventually(Duration::from_secs(10), || order_of(&a, "x").len() >= 600).await,
        "{} of 600 arrived",
        order_of(&a, "x").len()
    );
    assert_eq!(order_of(&a, "x"), (0..600).collect::<Vec<_>>());
    let after = a.medium.stats();
    assert_eq!(after.dropped_malformed - before.dropped_malformed, 18);
    assert_eq!(after.dropped_unsigned - before.dropped_unsigned, 6);

    // An oversized message closes that connection; the SUB connects again and events flow.
    raw.send(frames(vec![
        topic.as_bytes().to_vec(),
        vec![b'x'; 8192],
        Vec::new(),
    ]))
    .await
    .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || a
            .medium
            .stats()
            .connections_closed_oversized
            > after.connections_closed_oversized)
        .await
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .inbound
        .events()
        .iter()
        .any(|e| e.topic == "power.patch.again")
    {
        assert!(
            Instant::now() < deadline,
            "no event after the oversized message"
        );
        raw.send(event("power.patch.again", 0)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.medium.stop().await;
}
