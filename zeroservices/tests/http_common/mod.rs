//! Shared by the HTTP tests: resources, in-process clusters with an HTTP server, and small
//! HTTP and websocket client helpers with deadlines.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use zeroservices::http::{HttpConfig, HttpServer, serve};
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;

/// Whether a power has been computed.
#[model]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting.
    #[default]
    Pending,
    /// Computed.
    Done,
}

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Pending or done.
    #[serde(default)]
    pub status: Status,
    /// `value * value` once done.
    pub result: Option<i64>,
    /// Free text.
    pub description: Option<String>,
}

/// Arguments of `reset`.
#[model]
pub struct ResetArgs {
    /// The new value.
    pub value: i64,
}

/// Arguments of `add`.
#[model]
pub struct AddArgs {
    /// How much to add.
    pub amount: i64,
}

/// Arguments of `nap`.
#[model]
pub struct NapArgs {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

#[actions]
impl Power {
    /// Squares the value.
    #[action]
    async fn square(&mut self) -> Result<i64> {
        let r = self.value * self.value;
        self.result = Some(r);
        self.status = Status::Done;
        Ok(r)
    }

    /// Adds to the value; refuses negative amounts.
    #[action]
    async fn add(&mut self, args: AddArgs) -> Result<i64> {
        if args.amount < 0 {
            return Err(Error::failed("amount must not be negative"));
        }
        self.value += args.amount;
        Ok(self.value)
    }

    /// The value, doubled.
    #[action]
    async fn double(&self) -> Result<i64> {
        Ok(self.value * 2)
    }

    /// Sets every power to a new value; returns how many changed.
    #[action(collection)]
    async fn reset(ctx: &Context, args: ResetArgs) -> Result<u64> {
        let powers = ctx.collection::<Power>();
        let mut n = 0;
        for doc in powers.list(Query::all()).await? {
            powers
                .patch(
                    &doc.resource_id,
                    patch!({"$set": {"value": args.value, "status": "pending"}}),
                )
                .await?;
            n += 1;
        }
        Ok(n)
    }

    /// Sleeps, then answers how long it slept (for timeouts).
    #[action(collection)]
    async fn nap(_ctx: &Context, args: NapArgs) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(args.ms)).await;
        Ok(args.ms)
    }
}

/// A chat message.
#[resource(collection = "chat")]
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// What was said.
    pub text: String,
}

/// A job, only to show up in and leave the OpenAPI document.
#[resource(collection = "job")]
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Its name.
    pub name: String,
    /// Its state.
    #[serde(default)]
    pub status: Status,
}

/// A node owning `power` and `chat`.
pub async fn owner(cluster: &MemoryCluster) -> Node {
    Node::builder("power_service")
        .memory(cluster)
        .resource::<Power>()
        .resource::<ChatMessage>()
        .start()
        .await
        .unwrap()
}

/// A node owning nothing, with this request timeout.
pub async fn gateway(cluster: &MemoryCluster, timeout: Duration) -> Node {
    let node = Node::builder("api")
        .memory(cluster)
        .request_timeout(timeout)
        .start()
        .await
        .unwrap();
    node.wait_for_collection("power", Duration::from_secs(5))
        .await
        .unwrap();
    node
}

/// Serves `node` on 127.0.0.1, any port.
pub async fn start(node: &Node, config: HttpConfig) -> (HttpServer, String) {
    let server = serve(node.clone(), config.port(0)).await.unwrap();
    let base = server.url();
    (server, base)
}

/// An HTTP client whose requests cannot hang.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response's status and JSON body (`Null` when empty).
pub async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
    };
    (status, body)
}

/// The websocket client.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens `ws://.../realtime`, with an optional `Authorization` header.
pub async fn ws_connect(base: &str, authorization: Option<&str>) -> Result<Ws, String> {
    let url = format!("{}/realtime", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(auth) = authorization {
        request
            .headers_mut()
            .insert("authorization", auth.parse().unwrap());
    }
    let connect = tokio_tungstenite::connect_async(request);
    match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("websocket connect timed out".into()),
    }
}

/// Sends a JSON text message.
pub async fn ws_send(ws: &mut Ws, value: Value) {
    ws.send(WsMessage::text(value.to_string())).await.unwrap();
}

/// Sends raw text.
pub async fn ws_send_text(ws: &mut Ws, text: &str) {
    ws.send(WsMessage::text(text)).await.unwrap();
}

/// The next text message as JSON, failing after `within`.
pub async fn ws_next_within(ws: &mut Ws, within: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("no websocket message in time")
            .expect("websocket closed")
            .expect("websocket error");
        match message {
            WsMessage::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("unexpected websocket message {other:?}"),
        }
    }
}

/// The next text message as JSON, within 5 s.
pub async fn ws_next(ws: &mut Ws) -> Value {
    ws_next_within(ws, Duration::from_secs(5)).await
}

/// Subscribes to `topics` and waits for the acknowledgement.
pub async fn ws_subscribe(ws: &mut Ws, topics: &[&str]) {
    ws_send(
        ws,
        serde_json::json!({"type": "subscribe", "topics": topics}),
    )
    .await;
    let ack = ws_next(ws).await;
    assert_eq!(ack["type"], "subscribed", "{ack}");
    assert_eq!(ack["topics"], serde_json::json!(topics));
}

/// Asserts that no text message arrives within `quiet` (used only to prove an absence, after
/// a later message has already been waited for).
pub async fn ws_assert_quiet(ws: &mut Ws, quiet: Duration) {
    if let Ok(Some(Ok(WsMessage::Text(text)))) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("unexpected websocket message: {text}");
    }
}

/// `Basic base64(user:password)`.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}
