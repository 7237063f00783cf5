//! Hostile input against the HTTP server: idle and half-sent connections, the connection cap,
//! websocket limits, errors that must not leak internals, and the body limit. Real sockets on
//! 127.0.0.1, any free port; every wait has a deadline.

mod http_common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{SinkExt, StreamExt};
use http_common::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use zeroservices::http::HttpConfig;
use zeroservices::medium::MemoryCluster;
use zeroservices::store::{Claim, Store};
use zeroservices::{Error, Node, Patch, Query, Result};

/// A request that keeps the connection open.
const KEEP_ALIVE_GET: &[u8] = b"GET /power HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// Reads one whole HTTP response (headers and a `Content-Length` body) before `deadline`;
/// `None` when the connection closes first.
async fn read_response(stream: &mut TcpStream, deadline: Instant) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(String::from_utf8_lossy(&buf).into_owned());
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("no response in time")
            .unwrap_or(0);
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Waits until the server closes `stream` (EOF or reset), failing at `deadline`.
async fn wait_closed(stream: &mut TcpStream, deadline: Instant) {
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => panic!("the server did not close the connection in time"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn connect(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

async fn owner_node() -> (MemoryCluster, Node) {
    let cluster = MemoryCluster::new();
    let node = owner(&cluster).await;
    (cluster, node)
}

/// The node answers a plain GET.
async fn still_serves(base: &str) {
    let (status, body) = json(client().get(format!("{base}/power")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn idle_and_half_sent_connections_do_not_stall_a_get() {
    let (_cluster, node) = owner_node().await;
    let (server, base) = start(&node, HttpConfig::default()).await;
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut stream = connect(&base).await;
        match i % 30 {
            0 => stream.write_all(b"GET /power HT").await.unwrap(),
            1 => stream
                .write_all(b"GET /power HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await
                .unwrap(),
            _ => {}
        }
        idle.push(stream);
    }
    let started = Instant::now();
    still_serves(&base).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a GET waited {:?} behind idle connections",
        started.elapsed()
    );
    // A raw keep-alive request on yet another connection, too.
    let mut stream = connect(&base).await;
    stream.write_all(KEEP_ALIVE_GET).await.unwrap();
    let response = read_response(&mut stream, Instant::now() + Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(idle);
    server.shutdown().await;
}

#[tokio::test]
async fn partial_headers_are_closed_after_the_header_timeout() {
    let (_cluster, node) = owner_node().await;
    let timeout = Duration::from_millis(300);
    let config = HttpConfig::default()
        .header_timeout(timeout)
        .idle_timeout(Duration::from_secs(30));
    let (server, base) = start(&node, config).await;

    // Headers that never end.
    let mut slow = connect(&base).await;
    let started = Instant::now();
    slow.write_all(b"GET /power HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    wait_closed(&mut slow, started + Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(took >= timeout, "closed after {took:?}, before the timeout");

    // A connection that sends nothing at all is closed the same way.
    let mut silent = connect(&base).await;
    let started = Instant::now();
    wait_closed(&mut silent, started + Duration::from_secs(5)).await;
    assert!(started.elapsed() >= timeout);

    // Between requests the idle timeout applies, not the header timeout: a keep-alive
    // connection idle for a few header timeouts is still served.
    let mut keep = connect(&base).await;
    keep.write_all(KEEP_ALIVE_GET).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let first = read_response(&mut keep, deadline).await.expect("answered");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(timeout * 3).await; // the idleness under test
    keep.write_all(KEEP_ALIVE_GET).await.unwrap();
    let second = read_response(&mut keep, Instant::now() + Duration::from_secs(5))
        .await
        .expect("a keep-alive connection idle under the idle timeout is still open");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");

    still_serves(&base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let (_cluster, node) = owner_node().await;
    let idle = Duration::from_millis(300);
    let config = HttpConfig::default()
        .header_timeout(Duration::from_secs(30))
        .idle_timeout(idle);
    let (server, base) = start(&node, config).await;
    let mut stream = connect(&base).await;
    stream.write_all(KEEP_ALIVE_GET).await.unwrap();
    let response = read_response(&mut stream, Instant::now() + Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let answered = Instant::now();
    wait_closed(&mut stream, answered + Duration::from_secs(5)).await;
    assert!(
        answered.elapsed() >= idle,
        "closed after {:?}",
        answered.elapsed()
    );
    still_serves(&base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn over_the_connection_cap_a_connection_waits_until_another_closes() {
    let (_cluster, node) = owner_node().await;
    let config = HttpConfig::default()
        .max_connections(3)
        .header_timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(30));
    let (server, base) = start(&node, config).await;
    // Three served keep-alive connections: the cap is reached.
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&base).await;
        stream.write_all(KEEP_ALIVE_GET).await.unwrap();
        let response = read_response(&mut stream, Instant::now() + Duration::from_secs(5))
            .await
            .expect("answered");
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        open.push(stream);
    }
    // The fourth waits in the backlog: no answer while the others stay...
    let mut waiting = connect(&base).await;
    waiting.write_all(KEEP_ALIVE_GET).await.unwrap();
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.peek(&mut byte)).await;
    assert!(early.is_err(), "a connection over the cap was served");
    // ... and is served once one of them goes away.
    drop(open.pop());
    let response = read_response(&mut waiting, Instant::now() + Duration::from_secs(5))
        .await
        .expect("served once a slot is free");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(open);
    drop(waiting);
    // Closed connections free their slots: plain clients are served again.
    still_serves(&base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_message_over_the_limit_closes_that_socket_only() {
    let (_cluster, node) = owner_node().await;
    let config = HttpConfig::default().ws_max_message_bytes(1024);
    let (server, base) = start(&node, config).await;
    let mut other = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut other, &["power"]).await;

    let mut big = ws_connect(&base, None).await.unwrap();
    let text = json!({"type": "subscribe", "topics": ["x".repeat(2000)]}).to_string();
    big.send(WsMessage::text(text)).await.unwrap();
    let error = ws_next(&mut big).await;
    assert_eq!(error["type"], "error", "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("1024") && message.contains("ZS_WS_MAX_MESSAGE_BYTES"),
        "{message}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let close = loop {
        match tokio::time::timeout_at(deadline, big.next()).await {
            Ok(Some(Ok(WsMessage::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1009));

    // A message under the limit is fine on the other socket, and the node still serves.
    ws_send(
        &mut other,
        json!({"type": "unsubscribe", "topics": ["power"]}),
    )
    .await;
    assert_eq!(ws_next(&mut other).await["type"], "unsubscribed");
    still_serves(&base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_subscribe_over_the_topic_limit_is_an_error_and_the_socket_stays() {
    let (_cluster, node) = owner_node().await;
    let config = HttpConfig::default().ws_max_topics(2);
    let (server, base) = start(&node, config).await;
    let mut ws = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut ws, &["power", "chat"]).await;
    ws_send(&mut ws, json!({"type": "subscribe", "topics": ["job"]})).await;
    let error = ws_next(&mut ws).await;
    assert_eq!(error["type"], "error", "{error}");
    let message = error["error"].as_str().unwrap();
    assert!(
        message.contains("at most 2") && message.contains("ZS_WS_MAX_TOPICS"),
        "{message}"
    );
    // Still open and still subscribed: an event of a subscribed topic arrives.
    let (status, _) = json(
        client()
            .post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 3}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 201);
    let event = ws_next(&mut ws).await;
    assert_eq!(event["type"], "event", "{event}");
    // Room again after an unsubscribe.
    ws_send(&mut ws, json!({"type": "unsubscribe", "topics": ["chat"]})).await;
    assert_eq!(ws_next(&mut ws).await["type"], "unsubscribed");
    ws_subscribe(&mut ws, &["job"]).await;
    still_serves(&base).await;
    server.shutdown().await;
}

/// A websocket upgrade request by hand, to read the refusal's status and body.
async fn upgrade_by_hand(base: &str) -> (u16, Value) {
    json(
        client()
            .get(format!("{base}/realtime"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn websocket_clients_over_the_limit_get_a_503_naming_it() {
    let (_cluster, node) = owner_node().await;
    let config = HttpConfig::default().ws_max_clients(2);
    let (server, base) = start(&node, config).await;
    let mut first = ws_connect(&base, None).await.unwrap();
    let mut second = ws_connect(&base, None).await.unwrap();
    ws_subscribe(&mut first, &["power"]).await;
    ws_subscribe(&mut second, &["power"]).await;

    let (status, body) = upgrade_by_hand(&base).await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("at most 2") && message.contains("ZS_WS_MAX_CLIENTS"),
        "{message}"
    );
    assert!(ws_connect(&base, None).await.is_err());
    still_serves(&base).await;

    // A client leaves: its place is free again (once the server has seen it go).
    first.close(None).await.unwrap();
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut third = loop {
        match ws_connect(&base, None).await {
            Ok(ws) => break ws,
            Err(e) if Instant::now() < deadline => {
                assert!(e.contains("503"), "{e}");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("no place freed: {e}"),
        }
    };
    ws_subscribe(&mut third, &["power"]).await;
    ws_subscribe(&mut second, &["chat"]).await;
    server.shutdown().await;
}

/// A store whose every failure names a secret file.
struct LeakyStore;

#[async_trait]
impl Store for LeakyStore {
    async fn insert(&self, _: &str, _: Option<&str>, _: Value) -> Result<String> {
        Err(Error::unavailable(
            "cannot open /secret/data/power.redb: Permission denied (os error 13) on db-7.internal",
        ))
    }
    async fn get(&self, _: &str, _: &str) -> Result<Option<Value>> {
        Err(Error::internal("/secret/path/x.redb: checksum mismatch"))
    }
    async fn replace(&self, _: &str, _: &str, _: Value, _: Option<u64>) -> Result<u64> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
    async fn patch(&self, _: &str, _: &str, _: &Patch, _: Option<u64>) -> Result<Value> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
    async fn delete(&self, _: &str, _: &str, _: Option<u64>) -> Result<u64> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
    async fn list(&self, _: &str, _: &Query) -> Result<Vec<(String, Value)>> {
        Ok(Vec::new())
    }
    fn describe(&self) -> String {
        "leaky".into()
    }
    async fn claim_request(&self, _: &str, _: &str, _: &str, _: Duration) -> Result<Claim> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
    async fn complete_request(&self, _: &str, _: &str, _: &Value, _: Duration) -> Result<()> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
    async fn release_request(&self, _: &str, _: &str) -> Result<()> {
        Err(Error::internal("/secret/path/x.redb: read-only"))
    }
}

/// Log lines, kept for the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn store_errors_reach_the_log_not_the_client() {
    // Current-thread runtime: the server's tasks log into this subscriber.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let cluster = MemoryCluster::new();
    let node = Node::builder("power_service")
        .memory(&cluster)
        .store(LeakyStore)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let (server, base) = start(&node, HttpConfig::default()).await;
    let http = client();

    // Internal: 500, a generic message and the request id of the header.
    let response = http.get(format!("{base}/power/abc")).send().await.unwrap();
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let (status, body) = json(response).await;
    assert_eq!(status, 500, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("secret") && !text.contains(".redb"),
        "{text}"
    );
    assert_eq!(body["request_id"], header.as_str(), "{body}");
    assert!(body["error"].is_string());
    let log = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains(&header))
        .unwrap_or_else(|| panic!("no log line with {header}:\n{log}"));
    assert!(line.contains("/secret/path/x.redb"), "{line}");

    // Unavailable: 503, no path, no host; a sane client id is kept.
    let response = http
        .post(format!("{base}/power"))
        .header("x-request-id", "client-42.a")
        .json(&json!({"resource_data": {"value": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-42.a");
    let (status, body) = json(response).await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("secret") && !text.contains("db-7") && !text.contains("os error"),
        "{text}"
    );
    assert_eq!(body["request_id"], "client-42.a");

    // An id that is not sane is not echoed; a success carries no id of its own (none is made
    // per successful request), a client's sane one is echoed.
    let response = http
        .get(format!("{base}/power"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    assert!(!response.headers().contains_key("x-request-id"));
    assert_eq!(response.status(), 200);
    let response = http
        .get(format!("{base}/power"))
        .header("x-request-id", "mine-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "mine-1");
    let response = http
        .get(format!("{base}/nothing"))
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty() && id.len() <= 64, "{id}");

    // 4xx keep their helpful messages, and carry an id too.
    let response = http.get(format!("{base}/nothing")).send().await.unwrap();
    assert!(response.headers().contains_key("x-request-id"));
    let (status, body) = json(response).await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("nothing"),
        "{body}"
    );
    let (status, body) = json(
        http.post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": "ten"}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("value"), "{body}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_a_413_naming_the_limit() {
    let (_cluster, node) = owner_node().await;
    let (server, base) = start(&node, HttpConfig::default().max_body_bytes(100)).await;
    let description = "x".repeat(500);
    let (status, body) = json(
        client()
            .post(format!("{base}/power"))
            .json(&json!({"resource_data": {"value": 1, "description": description}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("100 bytes") && message.contains("ZS_MAX_BODY_BYTES"),
        "{message}"
    );
    still_serves(&base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn idle_and_half_sent_connections_do_not_hold_up_shutdown() {
    let (_cluster, node) = owner_node().await;
    let config = HttpConfig::default()
        .header_timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(30))
        .shutdown_timeout(Duration::from_secs(20));
    let (server, base) = start(&node, config).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut stream = connect(&base).await;
        stream.write_all(KEEP_ALIVE_GET).await.unwrap();
        read_response(&mut stream, Instant::now() + Duration::from_secs(5))
            .await
            .expect("answered");
        open.push(stream);
    }
    let mut partial = connect(&base).await;
    partial
        .write_all(b"GET /power HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut silent = connect(&base).await;
    // The partial head has reached the server once a request after it is answered.
    still_serves(&base).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for idle connections",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    for stream in open.iter_mut().chain([&mut partial, &mut silent]) {
        wait_closed(stream, deadline).await;
    }
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_is_closed_after_the_header_timeout() {
    let (_cluster, node) = owner_node().await;
    let timeout = Duration::from_millis(400);
    let config = HttpConfig::default()
        .header_timeout(timeout)
        .idle_timeout(Duration::from_secs(30));
    let (server, base) = start(&node, config).await;
    let body = br#"{"resource_data": {"value": 7}}"#;
    let head = format!(
        "POST /power HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );

    // Half a body, then nothing.
    let mut stalled = connect(&base).await;
    stalled.write_all(head.as_bytes()).await.unwrap();
    stalled.write_all(&body[..10]).await.unwrap();
    let started = Instant::now();
    wait_closed(&mut stalled, started + Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= timeout,
        "closed after {:?}",
        started.elapsed()
    );

    // A body that keeps coming, in pieces further apart than nothing but closer than the
    // timeout, is read to its end and answered.
    let mut steady = connect(&base).await;
    steady.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(8) {
        tokio::time::sleep(timeout / 4).await; // the pace under test
        steady.write_all(piece).await.unwrap();
    }
    let response = read_response(&mut steady, Instant::now() + Duration::from_secs(5))
        .await
        .expect("answered");
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    still_serves(&base).await;
    server.shutdown().await;
}
