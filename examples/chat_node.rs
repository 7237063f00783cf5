//! The chat of the original framework, on bare nodes: one node per user, no resources.
//!
//! - Users appear and disappear with their nodes: `on_peer_join` / `on_peer_leave` become
//!   local events `chat.join.<user>` / `chat.leave.<user>`.
//! - A broadcast message is a cluster event `chat.message.<from>` `{"from", "text"}`.
//! - A direct message is a unicast message to the target node's `on_message` hook, which shows
//!   it as a local event `chat.direct.<from>` `{"from", "to", "text"}`; nobody else sees it.
//!
//! Each node serves a small page at `/chat` that shows all of that live over `/realtime`, and
//! `POST /chat/say {"text", "to"?}`, `GET /chat/users`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use zeroservices::http::{HttpConfig, HttpServer};
use zeroservices::{Error, Event, Node, NodeBuilder, NodeInfo, Result};

/// Node names of chat users start with this.
pub const PREFIX: &str = "chat.";

fn user_of(info: &NodeInfo) -> Option<&str> {
    info.name.strip_prefix(PREFIX)
}

/// One user's chat node.
#[derive(Clone)]
pub struct ChatNode {
    node: Node,
    user: String,
}

impl ChatNode {
    /// Starts the chat node of `user` on `builder`'s cluster.
    pub async fn start(user: &str, builder: impl FnOnce(String) -> NodeBuilder) -> Result<Self> {
        if user.is_empty() || user.contains(char::is_whitespace) || user.contains('.') {
            return Err(Error::validation(
                "user",
                "a user name has no spaces or dots",
            ));
        }
        // The hooks need the node to emit local events; it exists only after start, so they
        // reach it through a cell filled right after.
        let cell: Arc<std::sync::OnceLock<Node>> = Arc::default();
        let (on_join, on_leave, on_message) = (cell.clone(), cell.clone(), cell.clone());
        let me = user.to_owned();
        let node = builder(format!("{PREFIX}{user}"))
            .on_peer_join(move |info| {
                if let (Some(node), Some(who)) = (on_join.get(), user_of(info)) {
                    node.emit_local(Event {
                        topic: format!("chat.join.{who}"),
                        data: json!({ "user": who }),
                    });
                }
            })
            .on_peer_leave(move |info, reason| {
                if let (Some(node), Some(who)) = (on_leave.get(), user_of(info)) {
                    node.emit_local(Event {
                        topic: format!("chat.leave.{who}"),
                        data: json!({ "user": who, "reason": format!("{reason:?}").to_lowercase() }),
                    });
                }
            })
            .on_message(move |_from, body: Value| {
                let node = on_message.get().cloned();
                let me = me.clone();
                async move {
                    let from = body.get("from").and_then(Value::as_str).unwrap_or("?").to_owned();
                    let text = body.get("text").and_then(Value::as_str).unwrap_or("").to_owned();
                    if let Some(node) = node {
                        node.emit_local(Event {
                            topic: format!("chat.direct.{from}"),
                            data: json!({ "from": from, "to": me, "text": text }),
                        });
                    }
                    Ok(json!({ "delivered": true }))
                }
            })
            .start()
            .await?;
        let _ = cell.set(node.clone());
        Ok(Self {
            node,
            user: user.to_owned(),
        })
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// This user's name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The other users online, sorted.
    pub fn users(&self) -> Vec<String> {
        let mut users: Vec<String> = self
            .node
            .peers()
            .iter()
            .filter_map(|p| user_of(&p.info).map(str::to_owned))
            .collect();
        users.sort();
        users.dedup();
        users
    }

    /// Says `text` to everyone.
    pub async fn say(&self, text: &str) {
        self.node
            .publish(Event {
                topic: format!("chat.message.{}", self.user),
                data: json!({ "from": self.user, "text": text }),
            })
            .await;
    }

    /// Says `text` to `to` only.
    pub async fn tell(&self, to: &str, text: &str) -> Result<()> {
        let target = self
            .node
            .peers()
            .into_iter()
            .find(|p| user_of(&p.info) == Some(to))
            .ok_or_else(|| Error::not_found("user", to))?;
        self.node
            .send(&target.info.id, json!({ "from": self.user, "text": text }))
            .await?;
        // The sender sees what it sent, too.
        self.node.emit_local(Event {
            topic: format!("chat.direct.{}", self.user),
            data: json!({ "from": self.user, "to": to, "text": text }),
        });
        Ok(())
    }

    /// Serves the chat page and its API next to the node's REST and websocket routes.
    pub async fn serve(&self, config: HttpConfig) -> Result<HttpServer> {
        let chat = Router::new()
            .route("/chat", get(page))
            .route("/chat/users", get(users))
            .route("/chat/say", post(say))
            .with_state(self.clone());
        zeroservices::http::serve_with(self.node.clone(), config, chat).await
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}

async fn users(State(chat): State<ChatNode>) -> Json<Value> {
    Json(json!({ "me": chat.user, "users": chat.users() }))
}

async fn say(
    State(chat): State<ChatNode>,
    Json(body): Json<Value>,
) -> (axum::http::StatusCode, Json<Value>) {
    let text = body
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .trim()
        .to_owned();
    if text.is_empty() {
        return (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({ "error": "empty message" })),
        );
    }
    let result = match body
        .get("to")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        Some(to) => chat.tell(to, &text).await,
        None => {
            chat.say(&text).await;
            Ok(())
        }
    };
    match result {
        Ok(()) => (axum::http::StatusCode::OK, Json(json!({ "ok": true }))),
        Err(e) => (
            zeroservices::http::status_for(&e),
            Json(json!({ "error": e.to_string() })),
        ),
    }
}
