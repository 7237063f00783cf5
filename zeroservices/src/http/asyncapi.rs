//! `GET /asyncapi.json`: an AsyncAPI 3.0 document of the realtime websocket (`/realtime`),
//! built at request time from the collections and actions known in the cluster, like
//! `/openapi.json` (and from the same schemas: [`Components`] hoists each resource's `$defs`).
//!
//! The document describes the node (AsyncAPI describes an application's own operations): it
//! *receives* the client's `subscribe` and `unsubscribe` (answered `subscribed`,
//! `unsubscribed` or `error`) and *sends* the events and errors. Besides a generic `event`
//! (user events of `Node::publish`, any topic), every collection has one message per change
//! event it emits, with the resource's schema as `data.resource_data`:
//! `<collection>.create`, `.patch`, `.delete`, `.add_link` and one per `&mut self` action
//! (`data.result` is the action's result schema). Read and collection actions change nothing
//! and emit no event.
//!
//! Collection and action names come from discovery (any string a peer announces): they appear
//! only as JSON strings (titles, `const`, an escaped `pattern`) and, sanitized to
//! `[A-Za-z0-9._-]+` and made unique, as component and message keys, so no name can break the
//! document.

use std::collections::HashSet;

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value, json};

use super::auth::allowed;
use super::openapi::{Components, sanitize};
use super::{AppState, AuthUser};
use crate::access::Operation;
use crate::resource::{ActionKind, ResourceInfo};

/// The error codes the websocket sends (`{"type": "error", "code"}`) besides those of a failed
/// start of the stream (an error's kind: `unavailable`, `timeout`, ...).
const ERROR_CODES: &str = "`bad_message` (not JSON, unknown type, bad `topics`, binary), \
    `too_many_topics` (ZS_WS_MAX_TOPICS; nothing subscribed), `bad_cursor` (a malformed \
    `since`; nothing subscribed), `since_not_first` (`since` on a later subscribe), \
    `cursor_expired` (at a subscribe: nothing subscribed; while streaming: the socket is closed \
    with 1000), `too_slow` (the client's queue was full; closed with 1008: resume with the last \
    cursor), `message_too_big` (ZS_WS_MAX_MESSAGE_BYTES; closed with 1009)";

/// The most bytes of a `since` cursor (`changes::Cursor`).
const MAX_CURSOR_BYTES: u64 = 16 * 1024;

/// `GET /asyncapi.json`: the collections the user may list (as `GET /` and `/openapi.json`
/// show them); the server is the `Host` the request was sent to, when it names one.
pub(crate) async fn handler(
    State(state): State<AppState>,
    user: Option<Extension<AuthUser>>,
    headers: HeaderMap,
) -> Json<Value> {
    let user = user.map(|Extension(u)| u).unwrap_or_default();
    let mut infos = state.node.resource_infos();
    infos.retain(|info| allowed(&state, &user, &info.name, &Operation::List));
    let mut doc = document(&infos);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::trim)
        .filter(|h| !h.is_empty());
    if let Some(host) = host {
        let mut schemes = Map::new();
        if state.config.basic_auth.is_some() || state.config.users.is_some() {
            schemes.insert(
                "basicAuth".into(),
                json!({"type": "http", "scheme": "basic"}),
            );
        }
        if state.config.jwt.is_some() {
            schemes.insert(
                "bearerAuth".into(),
                json!({"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}),
            );
        }
        let mut server = json!({
            "host": host,
            "protocol": "ws",
            "description": "This node: every node serves the whole cluster's events.",
        });
        if !schemes.is_empty() {
            // Any one of the schemes admits the upgrade.
            let security: Vec<Value> = schemes
                .keys()
                .map(|name| json!({ "$ref": format!("#/components/securitySchemes/{name}") }))
                .collect();
            server["security"] = Value::Array(security);
            doc["components"]["securitySchemes"] = Value::Object(schemes);
        }
        doc["servers"] = json!({ "node": server });
    }
    Json(doc)
}

/// The AsyncAPI 3.0 document of these resources' events, without servers (the handler adds the
/// one the request reached).
pub fn document(infos: &[ResourceInfo]) -> Value {
    let mut components = Components::default();
    let mut messages = Messages::default();
    add_protocol_messages(&mut messages);
    for info in infos {
        add_resource(info, &mut components, &mut messages);
    }
    let channel_messages: Map<String, Value> = messages
        .all
        .iter()
        .map(|(name, _)| {
            (
                name.clone(),
                json!({ "$ref": format!("#/components/messages/{name}") }),
            )
        })
        .collect();
    let refs = |names: &[String]| -> Value {
        names
            .iter()
            .map(|name| json!({ "$ref": format!("#/channels/realtime/messages/{name}") }))
            .collect()
    };
    let channel = json!({"$ref": "#/channels/realtime"});
    let events: Vec<String> = messages.events.clone();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "zeroservices realtime",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The change events of every resource known in the cluster, on the \
                websocket GET /realtime (JSON text messages). Send {\"type\": \"subscribe\", \
                \"topics\": [\"power\"]}; the answer {\"type\": \"subscribed\"} comes before the \
                first event. Topics are `<collection>.<action>.<resource_id>`, subscribed to by \
                dot-segment prefix (`power`, `power.patch`, `*` for everything). Every event of a \
                logged change carries `data.cursor`: resume after it with `since` on the first \
                subscribe of a new connection. The REST API is described by /openapi.json.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "realtime": {
                "address": "/realtime",
                "title": "Realtime websocket",
                "description": "One websocket per client: subscribe and unsubscribe by topic \
                    prefix, receive the events the subscriptions (and the Authorizer's \
                    `Subscribe`) let through. The upgrade checks Origin and, when the node \
                    requires it, authentication.",
                "messages": channel_messages,
                "bindings": {"ws": {"method": "GET", "bindingVersion": "0.1.0"}},
            },
        },
        "operations": {
            "receiveSubscribe": {
                "action": "receive",
                "channel": channel,
                "title": "Subscribe",
                "summary": "Subscribe to topic prefixes; the first subscribe starts the stream (at `since` when given).",
                "messages": refs(&["subscribe".to_owned()]),
                "reply": {
                    "channel": channel,
                    "messages": refs(&["subscribed".to_owned(), "error".to_owned()]),
                },
            },
            "receiveUnsubscribe": {
                "action": "receive",
                "channel": channel,
                "title": "Unsubscribe",
                "summary": "Remove exactly these topics.",
                "messages": refs(&["unsubscribe".to_owned()]),
                "reply": {
                    "channel": channel,
                    "messages": refs(&["unsubscribed".to_owned(), "error".to_owned()]),
                },
            },
            "sendEvent": {
                "action": "send",
                "channel": channel,
                "title": "Events",
                "summary": "The events under the client's topics, in order per owner's change log.",
                "messages": refs(&events),
            },
            "sendError": {
                "action": "send",
                "channel": channel,
                "title": "Errors",
                "summary": "An error about the stream (too_slow, cursor_expired, message_too_big end the connection).",
                "messages": refs(&["error".to_owned()]),
            },
        },
        "components": {
            "schemas": Value::Object(components.schemas.into_iter().collect()),
            "messages": Value::Object(messages.all.into_iter().collect()),
        },
    })
}

/// The messages being built, with unique keys, and which of them are events.
#[derive(Default)]
struct Messages {
    all: Vec<(String, Value)>,
    names: HashSet<String>,
    events: Vec<String>,
}

impl Messages {
    /// Adds a message under a key close to `preferred` (sanitized, made unique); returns the key.
    fn add(&mut self, preferred: &str, message: Value, event: bool) -> String {
        let base = sanitize(preferred);
        let mut name = base.clone();
        let mut n = 2;
        while !self.names.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        let mut message = message;
        message["name"] = Value::from(name.as_str());
        self.all.push((name.clone(), message));
        if event {
            self.events.push(name.clone());
        }
        name
    }
}

fn type_const(kind: &str) -> Value {
    json!({"type": "string", "const": kind})
}

fn topics_schema() -> Value {
    json!({
        "type": "array",
        "items": {"type": "string"},
        "description": "Dot-segment topic prefixes: `power` gets `power.create.42`, not `powers.create.1`; `*` is everything.",
    })
}

/// The protocol's own messages: subscribe, unsubscribe, their answers, the error, and the
/// generic event.
fn add_protocol_messages(messages: &mut Messages) {
    let cursor = json!({
        "type": "string",
        "maxLength": MAX_CURSOR_BYTES,
        "description": "An opaque, URL-safe position in the change logs (an event's `data.cursor`, or a first `subscribed`'s `cursor`).",
    });
    messages.add(
        "subscribe",
        json!({
            "title": "Subscribe",
            "summary": "Follow topic prefixes.",
            "description": "Answered `subscribed` (or an `error`: nothing is subscribed then). `since` is taken on the first subscribe of a connection only.",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["subscribe", "join"], "description": "`join` is the original's name."},
                    "topics": topics_schema(),
                    "since": {
                        "description": "Start the stream after this cursor (first subscribe only); null is no cursor.",
                        "anyOf": [cursor.clone(), {"type": "null"}],
                    },
                },
                "required": ["type", "topics"],
            },
        }),
        false,
    );
    messages.add(
        "unsubscribe",
        json!({
            "title": "Unsubscribe",
            "summary": "Stop following exactly these topics.",
            "payload": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["unsubscribe", "leave"], "description": "`leave` is the original's name."},
                    "topics": topics_schema(),
                },
                "required": ["type", "topics"],
            },
        }),
        false,
    );
    messages.add(
        "subscribed",
        json!({
            "title": "Subscribed",
            "summary": "The answer to a subscribe: events published after it are delivered.",
            "payload": {
                "type": "object",
                "properties": {
                    "type": type_const("subscribed"),
                    "topics": topics_schema(),
                    "cursor": {
                        "type": "string",
                        "description": "On the first subscribe only: the stream's starting point (resume from it when no event came).",
                    },
                },
                "required": ["type", "topics"],
            },
        }),
        false,
    );
    messages.add(
        "unsubscribed",
        json!({
            "title": "Unsubscribed",
            "payload": {
                "type": "object",
                "properties": {"type": type_const("unsubscribed"), "topics": topics_schema()},
                "required": ["type", "topics"],
            },
        }),
        false,
    );
    messages.add(
        "error",
        json!({
            "title": "Error",
            "summary": "A refused message or the end of the stream.",
            "description": format!("`code`: {ERROR_CODES}; or, when the stream could not start, the error's kind."),
            "payload": {
                "type": "object",
                "properties": {
                    "type": type_const("error"),
                    "code": {"type": "string"},
                    "error": {"type": "string", "description": "What went wrong, for people."},
                    "topics": {"type": "array", "items": {"type": "string"}, "description": "too_many_topics: the topics refused."},
                },
                "required": ["type", "code", "error"],
            },
        }),
        false,
    );
    messages.add(
        "event",
        json!({
            "title": "Event",
            "summary": "Any event: a user event of Node::publish (any topic and data; no cursor, never replayed), or a resource event (the messages per collection).",
            "payload": {
                "type": "object",
                "properties": {
                    "type": type_const("event"),
                    "topic": {"type": "string"},
                    "data": {},
                },
                "required": ["type", "topic", "data"],
            },
        }),
        true,
    );
}

/// `s` as a literal in an ECMAScript regular expression (the `u` flag: only the syntax
/// characters may be escaped).
fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "^$\\.*+?()[]{}|/".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The messages of one collection's events.
fn add_resource(info: &ResourceInfo, components: &mut Components, messages: &mut Messages) {
    let c = &info.name;
    let resource = components.add_root(c, &info.schema);
    let resource_ref = json!({ "$ref": format!("#/components/schemas/{resource}") });
    let version = json!({
        "type": "integer", "minimum": 0,
        "description": "The resource's version after the change (a delete: one more than the last).",
    });
    let cursor = json!({
        "type": "string",
        "description": "The position after this event in every change log the stream has seen: keep the last one to resume (absent when the change log is off).",
    });
    let traceparent = json!({
        "type": "string",
        "description": "While spans are exported: the W3C traceparent of the span that made the change (a worker's span links to it; absent without export).",
    });
    let tracestate = json!({
        "type": "string",
        "description": "The W3C tracestate that goes with traceparent, when there is one.",
    });
    let mut event =
        |action: &str, summary: String, extra: Vec<(&str, Value)>, required: &[&str]| {
            let mut properties = Map::new();
            properties.insert("action".into(), type_const(action));
            properties.insert("resource_name".into(), type_const(c));
            properties.insert("resource_id".into(), json!({"type": "string"}));
            properties.insert("version".into(), version.clone());
            properties.insert("cursor".into(), cursor.clone());
            properties.insert("traceparent".into(), traceparent.clone());
            properties.insert("tracestate".into(), tracestate.clone());
            let mut required_data: Vec<&str> =
                vec!["action", "resource_name", "resource_id", "version"];
            for (key, schema) in extra {
                properties.insert(key.to_owned(), schema);
            }
            required_data.extend_from_slice(required);
            let prefix = format!("^{}\\.{}\\.", regex_literal(c), regex_literal(action));
            messages.add(
                &format!("{c}.{action}"),
                json!({
                    "title": format!("{c}.{action}"),
                    "summary": summary,
                    "payload": {
                        "type": "object",
                        "properties": {
                            "type": type_const("event"),
                            "topic": {
                                "type": "string",
                                "pattern": prefix,
                                "description": format!("`{c}.{action}.<resource_id>`"),
                            },
                            "data": {
                                "type": "object",
                                "properties": properties,
                                "required": required_data,
                            },
                        },
                        "required": ["type", "topic", "data"],
                    },
                }),
                true,
            );
        };
    event(
        "create",
        format!("A {c} was created: its document."),
        vec![("resource_data", resource_ref.clone())],
        &["resource_data"],
    );
    event(
        "patch",
        format!("A {c} was patched: the update document and the document after it."),
        vec![
            (
                "patch",
                json!({"type": "object", "description": "The update document ($set, $unset, $inc, $push, $pull)."}),
            ),
            ("resource_data", resource_ref.clone()),
        ],
        &["patch", "resource_data"],
    );
    event(
        "delete",
        format!("A {c} was deleted (no document)."),
        Vec::new(),
        &[],
    );
    for action in &info.actions {
        if action.kind != ActionKind::Mutate {
            continue;
        }
        let a = &action.name;
        if a == crate::protocol::BuiltIn::AddLink.name() {
            event(
                a,
                format!("A link was added to a {c}."),
                vec![
                    ("relation", json!({"type": "string"})),
                    (
                        "target_id",
                        json!({
                            "type": "array", "items": {"type": "string"},
                            "minItems": 2, "maxItems": 2,
                            "description": "[collection, resource_id] of the target.",
                        }),
                    ),
                    ("title", json!({"type": ["string", "null"]})),
                ],
                &["relation", "target_id"],
            );
            continue;
        }
        let result = components.add_root(&format!("{c}_{a}_result"), &action.result_schema);
        let summary = action
            .doc
            .clone()
            .unwrap_or_else(|| format!("Action {a} of {c}"));
        event(
            a,
            format!("The action {a} ran on a {c}: {summary}"),
            vec![
                ("resource_data", resource_ref.clone()),
                (
                    "result",
                    json!({ "$ref": format!("#/components/schemas/{result}") }),
                ),
            ],
            &["resource_data", "result"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_literals_escape_only_syntax_characters() {
        assert_eq!(regex_literal("a.b-c"), "a\\.b-c");
        assert_eq!(
            regex_literal("x(y)[z]{1}|/^$*+?\\"),
            "x\\(y\\)\\[z\\]\\{1\\}\\|\\/\\^\\$\\*\\+\\?\\\\"
        );
    }
}
