//! How nodes talk: request/response to one node and events to all, behind the [`Medium`] trait.
//!
//! The in-process [`MemoryMedium`] serves tests and single-process apps; it passes the same JSON
//! values a network medium would, so code behaves the same on both.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::access::User;
use crate::changes::{LogPage, Retention};
use crate::{Event, NodeInfo, Result};

mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(any(feature = "zeromq", feature = "nats"))]
#[cfg_attr(not(feature = "zeromq"), allow(dead_code))]
pub(crate) mod wire;
#[cfg(feature = "zeromq")]
pub mod zeromq;

#[cfg(feature = "nats")]
pub use self::nats::{NatsLink, NatsMedium, NatsStats};
#[cfg(feature = "zeromq")]
pub use self::zeromq::{ZmqMedium, ZmqStats};
pub use memory::{MemoryCluster, MemoryDiscovery, MemoryMedium};

/// The version of the node-to-node protocol, carried by every envelope and announcement.
///
/// Version 3 seals every message with the cluster key (AES-256-GCM, a timestamp and a
/// counter against replays; event topics as keyed tags) where version 2 added an HMAC. Version 2
/// gave the ZeroMQ medium's control messages (`interest`, `sync`) envelope kinds of their own;
/// version 1 sent them as requests to a collection `$medium`.
pub const PROTOCOL_VERSION: u32 = 3;

/// The collection name a unicast message to a node's `on_message` hook is addressed to.
pub const NODE_MESSAGE: &str = "$node";

/// A request to the node that owns `collection`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// The collection (or [`NODE_MESSAGE`] for a message to the node itself).
    pub collection: String,
    /// `create`, `get`, `patch`, `delete`, `list`, or a custom action.
    pub action: String,
    /// The resource, for resource-level actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// The arguments: `{"resource_data"}` for create, `{"patch"}` for patch, `{"where", "sort",
    /// "limit", "skip", "text"}` for list, the action's argument for custom actions.
    #[serde(default)]
    pub args: Value,
    /// The caller the HTTP layer authenticated, for the owner's
    /// [`Authorizer`](crate::access::Authorizer); `None` for a node's own calls (trusted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// Names this call for exactly-once effects: the owner runs a mutating request (create,
    /// patch, delete, add_link, a custom action that is not read-only) once per id, and answers
    /// a copy with the same id with the first reply (for
    /// [`Limits::request_memory`](crate::Limits::request_memory)). A node sets one on each
    /// mutating request it sends to a peer, and a fail-over resends it unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// An HTTP `Idempotency-Key` (prefixed with the calling user): like `request_id`, remembered
    /// for [`Limits::idempotency_key_ttl`](crate::Limits::idempotency_key_ttl), and the same
    /// key with another request is refused ([`Error::IdempotencyKeyReused`](crate::Error)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// For a change of one resource (`patch`, `delete`, a resource action, `add_link`): the
    /// version the caller expects it to be at (REST `If-Match`). The owner changes nothing and
    /// answers [`crate::Error::PreconditionFailed`] when the stored version is another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_version: Option<u64>,
    /// For a resource action: answer [`crate::protocol::ActionReply`] `{"result", "version"}`
    /// instead of the bare result, so that the caller learns the resource's version (the REST
    /// reply's `ETag`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_version: bool,
    /// The trace context the request continues: set by the calling node from its `zs.call`
    /// span and carried in the envelope's `"tp"`/`"ts"` (not in the request object); the owner's
    /// `zs.serve` span is its child (see [`crate::telemetry`]). `None` when nothing exports traces.
    #[serde(skip)]
    // Boxed: a request without one (tracing off) stays as small as it was.
    pub trace: Option<Box<crate::telemetry::TraceParent>>,
}

impl Request {
    /// A request without arguments.
    pub fn new(collection: impl Into<String>, action: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            action: action.into(),
            resource_id: None,
            args: Value::Null,
            user: None,
            request_id: None,
            idempotency_key: None,
            if_version: None,
            with_version: false,
            trace: None,
        }
    }

    /// Sets the resource id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.resource_id = Some(id.into());
        self
    }

    /// Sets the arguments.
    pub fn args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }

    /// Sets the calling user.
    pub fn user(mut self, user: Option<User>) -> Self {
        self.user = user;
        self
    }

    /// Makes the request conditional on the resource's version (see [`Request::if_version`]).
    pub fn if_version(mut self, version: Option<u64>) -> Self {
        self.if_version = version;
        self
    }

    /// Asks a resource action to answer with the resource's version (see
    /// [`Request::with_version`]).
    pub fn with_version(mut self) -> Self {
        self.with_version = true;
        self
    }
}

/// Addresses a node can be reached at, announced by discovery (`router`, `pub`, ...).
pub type Endpoints = BTreeMap<String, String>;

/// What a medium delivers to its node.
#[async_trait]
pub trait Inbound: Send + Sync + 'static {
    /// Serves a request that arrived for this node; `from` is the caller's node id when known.
    async fn request(&self, from: Option<String>, request: Request) -> Result<Value>;

    /// [`Inbound::request`], the reply as JSON text (a medium sends it on as is). The default
    /// serialises what [`Inbound::request`] returns.
    async fn request_raw(&self, from: Option<String>, request: Request) -> Result<Box<RawValue>> {
        let value = self.request(from, request).await?;
        crate::json::to_raw(&value)
    }
    /// Takes an event published by another node.
    fn event(&self, event: Event);

    /// [`Inbound::event`] with the publisher's trace context, when its envelope carried one
    /// (the delivery's span links to it). The default drops the context.
    fn event_traced(&self, event: Event, trace: Option<crate::telemetry::TraceParent>) {
        let _ = trace;
        self.event(event);
    }

    /// The change logs this node writes, as `(collection, log id)` pairs: a medium that keeps
    /// a durable copy of them (NATS JetStream) re-publishes what it lacks. The default: none.
    fn change_logs(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Up to `limit` entries of this node's change log `log` of `collection` after sequence
    /// number `after` (see [`Store::read_log`](crate::store::Store::read_log)); `None` when the
    /// node does not hold that log. The default: `None`.
    async fn read_change_log(
        &self,
        collection: &str,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Result<Option<LogPage>> {
        let _ = (collection, log, after, limit);
        Ok(None)
    }

    /// How long this node's change logs keep their entries (a durable copy keeps them as
    /// long). The default: [`Retention::default`].
    fn change_log_retention(&self) -> Retention {
        Retention::default()
    }

    /// Whether `request`'s handler does so little synchronous work that a medium may poll it
    /// in place, on the task that reads its socket (answering at once when it completes without
    /// waiting), instead of on a task of its own. The default: yes (an echo); a node says yes
    /// only for `get` (one document), so a `list` or an action that computes for a while never
    /// stalls the requests behind it.
    fn serve_inline(&self, request: &Request) -> bool {
        let _ = request;
        true
    }
}

/// Request/response to one node, and events to every node.
#[async_trait]
pub trait Medium: Send + Sync + 'static {
    /// Starts serving `node_id`: requests and events from peers go to `inbound`. Returns the
    /// endpoints peers reach this node at, which discovery announces.
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints>;

    /// Sends a request to `peer` and waits for its reply. The node applies the request timeout
    /// around this call; a medium must not hang past a peer's death if it can tell.
    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value>;

    /// Like [`Medium::call`], the reply as the JSON text it arrived as, for the caller to
    /// deserialise into its own type (or pass on) without a [`Value`] in between. The default
    /// serialises what [`Medium::call`] returns.
    async fn call_raw(&self, peer: &NodeInfo, request: Request) -> Result<Box<RawValue>> {
        let value = self.call(peer, request).await?;
        crate::json::to_raw(&value)
    }

    /// Whether the medium balances a collection's requests among its owners itself (NATS: a
    /// queue group per collection): the node then sends an ordinary request with
    /// [`Medium::call_any`] instead of picking an owner from its directory, and falls back to
    /// calling the owners it knows one by one ([`Medium::call_raw`]) when that fails with
    /// `Unavailable`. The default: no (ZeroMQ, in-process: the node picks).
    fn balances(&self) -> bool {
        false
    }

    /// Sends a request to any node that serves its collection and waits for the reply, when
    /// [`Medium::balances`]. The default fails with `Unavailable` (the node then picks an
    /// owner itself).
    async fn call_any(&self, request: Request) -> Result<Box<RawValue>> {
        Err(crate::Error::unavailable(format!(
            "the {} medium does not route requests by collection ({})",
            self.describe(),
            request.collection
        )))
    }

    /// The collections this node serves from now on (after [`Medium::start`], once the node
    /// has checked it may own them); a medium that routes by collection listens for their
    /// requests. The default does nothing: peers find the owners in their directories.
    async fn serve(&self, collections: Vec<String>) -> Result<()> {
        let _ = collections;
        Ok(())
    }

    /// Publishes an event to every peer (not to this node's own subscribers: the node does that).
    async fn publish(&self, event: &Event) -> Result<()>;

    /// An entry the node's store just wrote to a change log (every one, whether or not anybody
    /// wants its event; it carries its one-log `cursor`). A medium that keeps the change logs
    /// durably (NATS JetStream) queues it; it must not block or fail the write. The default
    /// ignores it.
    fn logged(&self, entry: &Arc<Event>) {
        let _ = entry;
    }

    /// Up to `limit` entries of change log `log` of `collection` after sequence number `after`,
    /// from a durable copy the medium keeps (NATS JetStream), without asking the log's owner;
    /// `None` when the medium keeps none or cannot read it now. In the page, the entries
    /// follow on from `after` without a gap (none: the copy does not hold the entry after
    /// `after`, yet or any more), `head` is the last sequence number the copy holds, and
    /// `expired` says that the copy dropped the entries after `after` by age (its first entry
    /// of the log is later). The default: `None`.
    async fn read_log(
        &self,
        collection: &str,
        log: &str,
        after: u64,
        limit: usize,
    ) -> Option<LogPage> {
        let _ = (collection, log, after, limit);
        None
    }

    /// A peer joined or announced new endpoints: connect to it (subscribe to its events).
    async fn peer_joined(&self, peer: &NodeInfo) {
        let _ = peer;
    }

    /// The topic prefixes this node's subscribers want (`""`: every event), called whenever
    /// that set changes (first before [`Medium::start`]). A medium that can filter at the source
    /// asks its peers for these events only; the default ignores it (every event arrives).
    fn set_interest(&self, prefixes: Vec<String>) {
        let _ = prefixes;
    }

    /// Whether any peer wants events on `topic` (publishing one nobody wants can be skipped).
    /// The default: yes.
    fn wants(&self, topic: &str) -> bool {
        let _ = topic;
        true
    }

    /// Waits until the prefixes of the last [`Medium::set_interest`] are in effect at every peer
    /// connected now, so that every event those peers publish from then on reaches this node;
    /// bounded by the request timeout. The default returns at once.
    async fn sync_interest(&self) {}

    /// A peer left: drop its connections.
    async fn peer_left(&self, peer_id: &str) {
        let _ = peer_id;
    }

    /// Stops serving and closes every connection.
    async fn stop(&self);

    /// Whether the medium is up (serving, and connected where it depends on a server), for the
    /// readiness probe (`GET /readyz`): `Err` says why not, in words safe to show to anyone (no
    /// address, no host). The default: up.
    fn health(&self) -> std::result::Result<(), String> {
        Ok(())
    }

    /// A short name for logs.
    fn describe(&self) -> String;

    /// The NATS medium this is, if it is one: what reaches JetStream (a worker group's
    /// durable consumer, see [`worker`](crate::worker)).
    #[cfg(feature = "nats")]
    fn as_nats(&self) -> Option<&NatsMedium> {
        None
    }

    /// The ZeroMQ medium this is, if it is one (its [`ZmqStats`] for `GET /metrics`).
    #[cfg(feature = "zeromq")]
    fn as_zmq(&self) -> Option<&ZmqMedium> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_is_an_optional_field_of_a_request() {
        let plain = Request::new("power", "get").id("1");
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("user").is_none(), "{json}");
        let with_user = plain.clone().user(Some(User::new("ann").roles(["admin"])));
        let json = serde_json::to_value(&with_user).unwrap();
        assert_eq!(
            json["user"],
            serde_json::json!({"name": "ann", "roles": ["admin"]})
        );
        assert_eq!(serde_json::from_value::<Request>(json).unwrap(), with_user);
        // A request from a node that does not send users reads as one without.
        let old = serde_json::json!({"collection": "power", "action": "get", "resource_id": "1"});
        assert_eq!(serde_json::from_value::<Request>(old).unwrap(), plain);
    }
}
