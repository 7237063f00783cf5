//! The envelopes on the wire (see the [ZeroMQ medium's documentation](crate::medium::zeromq)
//! for the contract): their types, encoding, decoding, version check, and sealing with a cluster
//! key. No sockets, no counters. What does not open or decode comes back as a [`Rejection`] for
//! the caller to count and log. The ZeroMQ and NATS media share them: the same envelopes, the
//! same seals, in ZeroMQ frames or NATS payloads.

use std::borrow::Cow;

#[cfg(feature = "zeromq")]
use ::zeromq::ZmqMessage;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::medium::{PROTOCOL_VERSION, Request};
use crate::security::ClusterKey;
use crate::security::seal::{OVERHEAD, Purpose, Refusal, Sealer};
use crate::{Error, Result};

/// The kind byte of a call (request, interest, sync) in a seal's associated data.
pub(crate) const SEAL_CALL: u8 = b'c';
/// The kind byte of a response.
pub(crate) const SEAL_RESPONSE: u8 = b'r';
/// The kind byte of an event (whose topic frame is bound too).
pub(crate) const SEAL_EVENT: u8 = b'e';

/// The kind byte of a change log entry stored in a NATS JetStream stream (its subject after
/// `<prefix>.log.` is bound too).
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) const SEAL_LOG: u8 = b'l';

/// The `kind` of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// An application request, DEALER -> ROUTER.
    Request,
    /// The reply to a request, an `interest` or a `sync`, ROUTER -> DEALER.
    Response,
    /// An event, PUB -> SUB.
    Event,
    /// Control: what the sender wants from the receiver, DEALER -> ROUTER.
    Interest,
    /// Control: publish a sync marker (and record the sender's interest), DEALER -> ROUTER.
    Sync,
}

/// The topic prefixes a node wants from its peers, as of `version` (bumped with every change:
/// a receiver keeps the newest it got).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Interest {
    pub(crate) version: u64,
    pub(crate) prefixes: Vec<String>,
}

/// What a DEALER sends: a request or one of the medium's control messages.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outgoing<'a> {
    Request(&'a Request),
    Interest(&'a Interest),
    Sync {
        topic: &'a str,
        interest: &'a Interest,
    },
}

/// A call as received by the ROUTER, typed.
// Short-lived, moved once per call: boxing the request would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq)]
pub(crate) enum Call {
    /// An application request for the node.
    Request {
        id: u64,
        from: Option<String>,
        request: Request,
    },
    /// A control message for the medium itself.
    Control {
        id: u64,
        from: String,
        control: Control,
    },
}

/// The medium's own control messages.
#[derive(Debug, PartialEq)]
pub(crate) enum Control {
    /// Record what the sender wants.
    Interest(Interest),
    /// Record what the sender wants (when given), then publish `topic` (a sync marker).
    Sync {
        topic: String,
        interest: Option<Interest>,
    },
}

/// Why a message was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// A wrong frame count, invalid JSON, or an unexpected shape.
    Malformed(String),
    /// Not sealed, or not opening (forged, altered, another key) while a cluster key is
    /// configured; or sealed while none is.
    Unsigned(&'static str),
    /// Sealed right, but outside the replay window or seen before.
    Replayed(&'static str),
    /// A `v` other than [`PROTOCOL_VERSION`].
    Version,
    /// Over `max_message_bytes` (the size given).
    Oversized(usize),
    /// A call of this version with a usable id but an unusable body: counted as malformed and
    /// answered with a `bad_request` error.
    Answerable { id: u64, reason: String },
}

#[derive(Serialize)]
struct CallOut<'a> {
    v: u32,
    kind: Kind,
    id: u64,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<&'a Request>,
    #[serde(skip_serializing_if = "Option::is_none")]
    topic: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interest: Option<&'a Interest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
}

#[derive(Deserialize)]
struct CallIn {
    v: u32,
    kind: Kind,
    id: u64,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    request: Option<Request>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    interest: Option<Interest>,
    #[serde(default, deserialize_with = "lenient_text")]
    tp: Option<Text>,
    #[serde(default, deserialize_with = "lenient_text")]
    ts: Option<Text>,
}

/// An optional text field of an envelope that must never make it fail (the trace context):
/// a string within [`TEXT_MAX`] bytes, or garbage (any other JSON, or too long) to count.
#[derive(Debug)]
enum Text {
    Ok(String),
    Garbage,
}

impl Text {
    fn ok(&self) -> Option<&str> {
        match self {
            Text::Ok(text) => Some(text),
            Text::Garbage => None,
        }
    }
}

/// The longest trace-context field kept (a `tracestate` is at most 512 bytes).
const TEXT_MAX: usize = crate::telemetry::TRACESTATE_MAX;

fn lenient_text<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Text>, D::Error> {
    use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};

    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Text>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
            Ok(Some(if v.len() <= TEXT_MAX {
                Text::Ok(v.to_owned())
            } else {
                Text::Garbage
            }))
        }
        fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
            Ok(Some(Text::Garbage))
        }
        fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
            Ok(Some(Text::Garbage))
        }
        fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
            Ok(Some(Text::Garbage))
        }
        fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
            Ok(Some(Text::Garbage))
        }
        fn visit_seq<A: SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Some(Text::Garbage))
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Some(Text::Garbage))
        }
    }
    d.deserialize_any(V)
}

/// The trace context an envelope carried (`"tp"`, `"ts"`): `None` when absent; garbage is
/// counted and logged, never an error.
fn received_context(
    from: &str,
    tp: Option<&Text>,
    ts: Option<&Text>,
) -> Option<crate::telemetry::TraceParent> {
    match tp? {
        Text::Ok(tp) => {
            crate::telemetry::TraceParent::received(from, Some(tp), ts.and_then(Text::ok))
        }
        Text::Garbage => {
            crate::telemetry::reject(from, "\"tp\" is not a short string");
            None
        }
    }
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    v: u32,
    kind: Kind,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Error>,
}

/// Present-but-null must read as `Some("null")`, not `None`.
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A response as received: `ok` stays JSON text (copied once), parsed by whoever waits for it
/// straight into its own type.
#[derive(Deserialize)]
struct ResponseIn<'a> {
    v: u32,
    kind: Kind,
    id: u64,
    #[serde(default, borrow, deserialize_with = "present")]
    ok: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Error>,
}

#[derive(Serialize)]
struct EventOut<'a> {
    v: u32,
    kind: Kind,
    from: &'a str,
    topic: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    tp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a str>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    v: u32,
    kind: Kind,
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(default)]
    data: Value,
    #[serde(default, deserialize_with = "lenient_text")]
    tp: Option<Text>,
    #[serde(default, deserialize_with = "lenient_text")]
    ts: Option<Text>,
}

/// The fields needed to classify an envelope that did not parse.
#[derive(Deserialize)]
struct Probe {
    #[serde(default)]
    v: Option<Value>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    id: Option<u64>,
}

/// Encodes, seals and opens messages for one medium: its cluster key, replay guard and message
/// limit.
pub(crate) struct Wire {
    sealer: Option<Sealer>,
    max_message_bytes: usize,
}

impl Wire {
    #[cfg(test)]
    pub(crate) fn new(key: Option<ClusterKey>, max_message_bytes: usize) -> Self {
        Self::with_window(key, max_message_bytes, crate::config::DEFAULT_REPLAY_WINDOW)
    }

    pub(crate) fn with_window(
        key: Option<ClusterKey>,
        max_message_bytes: usize,
        window: std::time::Duration,
    ) -> Self {
        Self {
            sealer: key.map(|key| Sealer::new(key, Purpose::Wire, PROTOCOL_VERSION as u8, window)),
            max_message_bytes,
        }
    }

    /// The keyring, if any.
    pub(crate) fn key(&self) -> Option<&ClusterKey> {
        self.sealer.as_ref().map(Sealer::key)
    }

    /// What sealing adds to a message (the seal frame and the tag): a message's frames together
    /// must stay within `max_message_bytes` (a peer closes the connection otherwise).
    pub(crate) fn mac_len(&self) -> usize {
        if self.sealer.is_some() { OVERHEAD } else { 0 }
    }

    /// Seals `body` (of `kind`, bound to `context`: the topic frame of an event): the body
    /// frame (ciphertext and tag) and the seal frame; without a key, `body` and an empty frame.
    pub(crate) fn seal(&self, kind: u8, context: &[u8], mut body: Vec<u8>) -> [Vec<u8>; 2] {
        match &self.sealer {
            Some(sealer) => {
                let header = sealer.seal(kind, context, &mut body);
                [body, header]
            }
            None => [body, Vec::new()],
        }
    }

    /// Opens a body frame with its seal frame: the plain body, or why it was dropped.
    pub(crate) fn open<'a>(
        &self,
        kind: u8,
        context: &[u8],
        body: &'a [u8],
        seal: &[u8],
    ) -> std::result::Result<Cow<'a, [u8]>, Rejection> {
        match &self.sealer {
            None if seal.is_empty() => Ok(Cow::Borrowed(body)),
            None => Err(Rejection::Unsigned(
                "sealed with a cluster key, and this node has none",
            )),
            Some(sealer) => match sealer.open(kind, context, seal, body) {
                Ok(opened) => Ok(Cow::Owned(opened.plain)),
                Err(Refusal::Forged(reason)) => Err(Rejection::Unsigned(reason)),
                Err(Refusal::Replayed(reason)) => Err(Rejection::Replayed(reason)),
            },
        }
    }

    /// Opens a stored body (a change log entry read back from NATS JetStream): as
    /// [`Wire::open`], without the replay guard (see [`Sealer::open_stored`]).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn open_stored<'a>(
        &self,
        kind: u8,
        context: &[u8],
        body: &'a [u8],
        seal: &[u8],
    ) -> std::result::Result<Cow<'a, [u8]>, Rejection> {
        match &self.sealer {
            None if seal.is_empty() => Ok(Cow::Borrowed(body)),
            None => Err(Rejection::Unsigned(
                "sealed with a cluster key, and this node has none",
            )),
            Some(_) if seal.is_empty() => Err(Rejection::Unsigned("not sealed (no cluster key?)")),
            Some(sealer) => match sealer.open_stored(kind, context, seal, body) {
                Ok(plain) => Ok(Cow::Owned(plain)),
                Err(Refusal::Forged(reason) | Refusal::Replayed(reason)) => {
                    Err(Rejection::Unsigned(reason))
                }
            },
        }
    }

    /// The topic frame of an event on `topic`: the topic itself, or with a key each dot segment
    /// replaced by a keyed tag (prefix filtering by segments still works, names do not show).
    pub(crate) fn topic_frame(&self, topic: &str) -> Vec<u8> {
        match &self.sealer {
            Some(sealer) => sealer.topic(topic).into_bytes(),
            None => topic.as_bytes().to_vec(),
        }
    }

    /// The SUB subscriptions for a topic prefix: itself, or with a key its tags under each key
    /// of the ring.
    pub(crate) fn topic_filters(&self, prefix: &str) -> Vec<String> {
        match &self.sealer {
            Some(sealer) => sealer.topic_filters(prefix),
            None => vec![prefix.to_owned()],
        }
    }

    /// Whether `frame` is the topic frame of `topic` (under some key of the ring).
    pub(crate) fn topic_is(&self, frame: &[u8], topic: &str) -> bool {
        match &self.sealer {
            Some(sealer) => sealer.topic_is(frame, topic),
            None => frame == topic.as_bytes(),
        }
    }

    /// Whether frames of these sizes together stay within `max_message_bytes`; the size of the
    /// largest (the body) is reported otherwise.
    pub(crate) fn check_size(&self, frames: &[&[u8]]) -> std::result::Result<(), Rejection> {
        let total: usize = frames.iter().map(|f| f.len()).sum();
        if total > self.max_message_bytes {
            let body = frames.iter().map(|f| f.len()).max().unwrap_or(0);
            return Err(Rejection::Oversized(body));
        }
        Ok(())
    }

    /// The body of a call, or a `bad_request` when it would exceed the message limit.
    pub(crate) fn encode_call(&self, id: u64, from: &str, call: Outgoing<'_>) -> Result<Vec<u8>> {
        let (kind, request, topic, interest) = match call {
            Outgoing::Request(request) => (Kind::Request, Some(request), None, None),
            Outgoing::Interest(interest) => (Kind::Interest, None, None, Some(interest)),
            Outgoing::Sync { topic, interest } => (Kind::Sync, None, Some(topic), Some(interest)),
        };
        let trace = request.and_then(|r| r.trace.as_deref());
        let body = serde_json::to_vec(&CallOut {
            v: PROTOCOL_VERSION,
            kind,
            id,
            from,
            request,
            topic,
            interest,
            tp: trace.map(crate::telemetry::TraceParent::traceparent),
            ts: trace.and_then(crate::telemetry::TraceParent::tracestate),
        })?;
        if body.len() + self.mac_len() > self.max_message_bytes {
            return Err(Error::bad_request(format!(
                "request of {} bytes exceeds the {} byte message limit",
                body.len(),
                self.max_message_bytes
            )));
        }
        Ok(body)
    }

    /// The body of a response; a reply too large to send becomes an `internal` error reply.
    pub(crate) fn encode_response(&self, id: u64, reply: &Result<Box<RawValue>>) -> Vec<u8> {
        let (ok, error) = match reply {
            Ok(value) => (Some(&**value), None),
            Err(error) => (None, Some(error)),
        };
        let envelope = ResponseOut {
            v: PROTOCOL_VERSION,
            kind: Kind::Response,
            id,
            ok,
            error,
        };
        let mut body = Vec::with_capacity(64 + ok.map_or(0, |raw| raw.get().len()));
        if serde_json::to_writer(&mut body, &envelope).is_err() {
            body.clear();
        }
        if body.len() + self.mac_len() > self.max_message_bytes {
            let error = Error::internal(format!(
                "reply of {} bytes exceeds the {} byte message limit",
                body.len(),
                self.max_message_bytes
            ));
            return self.encode_response(id, &Err(error));
        }
        body
    }

    /// The body of an event, or a `bad_request` when it would exceed the message limit.
    ///
    /// The event carries the trace context of the current span (the publisher's `zs.publish`)
    /// when one is exported.
    pub(crate) fn encode_event(&self, from: &str, topic: &str, data: &Value) -> Result<Vec<u8>> {
        let trace = crate::telemetry::current();
        let body = serde_json::to_vec(&EventOut {
            v: PROTOCOL_VERSION,
            kind: Kind::Event,
            from,
            topic,
            data,
            tp: trace
                .as_ref()
                .map(crate::telemetry::TraceParent::traceparent),
            ts: trace
                .as_ref()
                .and_then(crate::telemetry::TraceParent::tracestate),
        })?;
        let topic_len = if self.sealer.is_some() {
            topic.len() * 2 + 16
        } else {
            topic.len()
        };
        if body.len() + topic_len + self.mac_len() > self.max_message_bytes {
            return Err(Error::bad_request(format!(
                "event {topic} of {} bytes exceeds the {} byte message limit",
                body.len(),
                self.max_message_bytes
            )));
        }
        Ok(body)
    }
}

/// A multipart message of these frames.
#[cfg(feature = "zeromq")]
pub(crate) fn multipart(frames: Vec<Vec<u8>>) -> ZmqMessage {
    let mut frames = frames.into_iter();
    let mut message = ZmqMessage::from(frames.next().unwrap_or_default());
    for frame in frames {
        message.push_back(frame.into());
    }
    message
}

/// `Ok` when a message has `expected` frames; `shape` names them for the log.
pub(crate) fn check_frames(
    count: usize,
    expected: usize,
    shape: &str,
) -> std::result::Result<(), Rejection> {
    if count == expected {
        Ok(())
    } else {
        Err(Rejection::Malformed(format!(
            "{count} frames, expected {shape}"
        )))
    }
}

/// The id of whatever call `body` is, if it has one (to refuse it when busy).
pub(crate) fn probe_id(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Probe>(body).ok()?.id
}

/// Classifies a body that did not parse: an unknown version, a call of this version with a
/// usable id (answerable when `answerable`), or malformed.
fn classify(body: &[u8], error: &serde_json::Error, answerable: bool) -> Rejection {
    let Ok(probe) = serde_json::from_slice::<Probe>(body) else {
        return Rejection::Malformed("invalid JSON".to_owned());
    };
    let version_ok = probe.v.as_ref().and_then(Value::as_u64) == Some(u64::from(PROTOCOL_VERSION));
    let call = matches!(probe.kind.as_deref(), Some("request" | "interest" | "sync"));
    match probe.id {
        _ if probe.v.is_some() && !version_ok => Rejection::Version,
        Some(id) if version_ok && answerable && call => Rejection::Answerable {
            id,
            reason: error.to_string(),
        },
        _ => Rejection::Malformed("unexpected envelope".to_owned()),
    }
}

/// Decodes a call (a ROUTER's body frame).
pub(crate) fn decode_call(body: &[u8]) -> std::result::Result<Call, Rejection> {
    let envelope: CallIn = serde_json::from_slice(body).map_err(|e| classify(body, &e, true))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(Rejection::Version);
    }
    let CallIn {
        kind,
        id,
        from,
        mut request,
        topic,
        interest,
        tp,
        ts,
        ..
    } = envelope;
    if let Some(request) = request.as_mut() {
        request.trace =
            received_context("a request envelope", tp.as_ref(), ts.as_ref()).map(Box::new);
    }
    let answer = |reason: &str| Rejection::Answerable {
        id,
        reason: reason.to_owned(),
    };
    let control = match (kind, request, topic, interest) {
        (Kind::Request, Some(request), ..) => return Ok(Call::Request { id, from, request }),
        (Kind::Request, None, ..) => return Err(answer("a request needs \"request\"")),
        (Kind::Interest, _, _, Some(interest)) => Control::Interest(interest),
        (Kind::Interest, _, _, None) => {
            return Err(answer(
                "interest needs \"interest\": {\"version\", \"prefixes\"}",
            ));
        }
        (Kind::Sync, _, Some(topic), interest) => Control::Sync { topic, interest },
        (Kind::Sync, _, None, _) => return Err(answer("sync needs a \"topic\"")),
        (Kind::Response | Kind::Event, ..) => {
            return Err(Rejection::Malformed(
                "not a request, interest or sync envelope".to_owned(),
            ));
        }
    };
    match from {
        Some(from) => Ok(Call::Control { id, from, control }),
        None => Err(answer(
            "a control message needs the sender's node id in \"from\"",
        )),
    }
}

/// Decodes a response (a DEALER's body frame): its id and the reply.
pub(crate) fn decode_response(
    body: &[u8],
) -> std::result::Result<(u64, Result<Box<RawValue>>), Rejection> {
    let envelope: ResponseIn<'_> =
        serde_json::from_slice(body).map_err(|e| classify(body, &e, false))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(Rejection::Version);
    }
    let reply = match (envelope.kind, envelope.ok, envelope.error) {
        (Kind::Response, Some(raw), None) => Ok(raw.to_owned()),
        (Kind::Response, None, Some(error)) => Err(error),
        _ => {
            return Err(Rejection::Malformed("not a response envelope".to_owned()));
        }
    };
    Ok((envelope.id, reply))
}

/// Decodes an event (a SUB's body frame, opened): its topic and data. The caller checks the
/// topic against the topic frame ([`Wire::topic_is`]).
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) fn decode_event(body: &[u8]) -> std::result::Result<(String, Value), Rejection> {
    decode_event_traced(body).map(|(topic, data, _)| (topic, data))
}

/// [`decode_event`] with the publisher's trace context, if it sent one (garbage is counted and
/// ignored).
pub(crate) fn decode_event_traced(
    body: &[u8],
) -> std::result::Result<(String, Value, Option<crate::telemetry::TraceParent>), Rejection> {
    let envelope: EventIn<'_> =
        serde_json::from_slice(body).map_err(|e| classify(body, &e, false))?;
    if envelope.v != PROTOCOL_VERSION {
        return Err(Rejection::Version);
    }
    if envelope.kind != Kind::Event {
        return Err(Rejection::Malformed("not an event envelope".to_owned()));
    }
    let trace = received_context(
        "an event envelope",
        envelope.tp.as_ref(),
        envelope.ts.as_ref(),
    );
    Ok((envelope.topic.into_owned(), envelope.data, trace))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn wire() -> Wire {
        Wire::new(None, 4096)
    }

    fn interest() -> Interest {
        Interest {
            version: 3,
            prefixes: vec!["power".to_owned(), "chat.message".to_owned()],
        }
    }

    fn body(value: Value) -> Vec<u8> {
        value.to_string().into_bytes()
    }

    const V: u32 = PROTOCOL_VERSION;

    #[test]
    fn the_protocol_is_version_3() {
        // Version 1 carried the medium's control traffic as `$medium` requests; version 2 signed
        // envelopes with an HMAC, version 3 seals them.
        assert_eq!(PROTOCOL_VERSION, 3);
    }

    #[test]
    fn a_request_round_trips() {
        let request = Request::new("power", "get").id("42").args(json!({"a": 1}));
        let bytes = wire()
            .encode_call(7, "node-a", Outgoing::Request(&request))
            .unwrap();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            text,
            json!({"v": V, "kind": "request", "id": 7, "from": "node-a",
                   "request": {"collection": "power", "action": "get", "resource_id": "42", "args": {"a": 1}}})
        );
        assert_eq!(
            decode_call(&bytes).unwrap(),
            Call::Request {
                id: 7,
                from: Some("node-a".to_owned()),
                request
            }
        );
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_trace_context_rides_in_the_envelope() {
        use crate::telemetry::TraceParent;
        let mut request = Request::new("power", "get").id("42");
        request.trace = TraceParent::parse(TP, Some("vendor=1")).map(Box::new);
        let bytes = wire()
            .encode_call(7, "a", Outgoing::Request(&request))
            .unwrap();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((&text["tp"], &text["ts"]), (&json!(TP), &json!("vendor=1")));
        assert!(text["request"].get("trace").is_none());
        match decode_call(&bytes) {
            Ok(Call::Request { request: got, .. }) => assert_eq!(got, request),
            other => panic!("{other:?}"),
        }
        // None: no field at all (what an older peer sends and reads).
        let bytes = wire()
            .encode_call(8, "a", Outgoing::Request(&Request::new("power", "get")))
            .unwrap();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(text.get("tp").is_none() && text.get("ts").is_none());
        // Events: no span, no context; one sent is read back.
        let bytes = wire()
            .encode_event("a", "power.create.1", &json!(1))
            .unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("\"tp\""));
        let event = body(json!({"v": V, "kind": "event", "topic": "t", "data": 1, "tp": TP}));
        let (_, _, trace) = decode_event_traced(&event).unwrap();
        assert_eq!(trace.unwrap().traceparent(), TP);
    }

    #[test]
    fn a_hostile_trace_context_is_ignored_and_counted() {
        let hostile = [
            json!(1),
            json!(true),
            json!(-2.5),
            json!([1, [2, [3]]]),
            json!({"a": {"b": [1]}}),
            json!("x".repeat(10_000)),
            json!("garbage"),
            json!(TP.to_uppercase()),
            json!(TP.replace("-01", "-1")),
        ];
        for tp in hostile {
            let before = crate::telemetry::rejected_contexts();
            let call = body(json!({"v": V, "kind": "request", "id": 1, "from": "a",
                "request": {"collection": "c", "action": "a"}, "tp": tp, "ts": tp}));
            match decode_call(&call) {
                Ok(Call::Request { request, .. }) => assert_eq!(request.trace, None, "{tp:.40}"),
                other => panic!("{tp:.40}: {other:?}"),
            }
            let event = body(json!({"v": V, "kind": "event", "topic": "t", "data": 1,
                "tp": tp, "ts": tp}));
            let (topic, _, trace) = decode_event_traced(&event).unwrap();
            assert_eq!((topic.as_str(), trace), ("t", None));
            assert!(
                crate::telemetry::rejected_contexts() >= before + 2,
                "{tp:.40}"
            );
        }
        // A usable traceparent with a hostile tracestate keeps the traceparent only.
        let call = body(json!({"v": V, "kind": "request", "id": 1, "from": "a",
            "request": {"collection": "c", "action": "a"}, "tp": TP, "ts": {"x": 1}}));
        match decode_call(&call) {
            Ok(Call::Request { request, .. }) => {
                let trace = request.trace.unwrap();
                assert_eq!(
                    (trace.traceparent().as_str(), trace.tracestate()),
                    (TP, None)
                );
            }
            other => panic!("{other:?}"),
        }
        // `null` is no context, not garbage.
        let call = body(json!({"v": V, "kind": "request", "id": 1,
            "request": {"collection": "c", "action": "a"}, "tp": null}));
        assert!(
            matches!(decode_call(&call), Ok(Call::Request { request, .. }) if request.trace.is_none())
        );
    }

    #[test]
    fn control_messages_have_their_own_kinds() {
        let interest = interest();
        let bytes = wire()
            .encode_call(1, "a", Outgoing::Interest(&interest))
            .unwrap();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            text,
            json!({"v": V, "kind": "interest", "id": 1, "from": "a",
                   "interest": {"version": 3, "prefixes": ["power", "chat.message"]}})
        );
        assert_eq!(
            decode_call(&bytes).unwrap(),
            Call::Control {
                id: 1,
                from: "a".to_owned(),
                control: Control::Interest(interest.clone())
            }
        );

        let sync = Outgoing::Sync {
            topic: "$sync.x.1",
            interest: &interest,
        };
        let bytes = wire().encode_call(2, "a", sync).unwrap();
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(text["kind"], json!("sync"));
        assert_eq!(text["topic"], json!("$sync.x.1"));
        assert!(text.get("request").is_none());
        assert_eq!(
            decode_call(&bytes).unwrap(),
            Call::Control {
                id: 2,
                from: "a".to_owned(),
                control: Control::Sync {
                    topic: "$sync.x.1".to_owned(),
                    interest: Some(interest)
                }
            }
        );
        // A sync without an interest is fine: only the marker is asked for.
        let bare = body(json!({"v": V, "kind": "sync", "id": 3, "from": "a", "topic": "$sync.y"}));
        assert!(matches!(
            decode_call(&bare),
            Ok(Call::Control {
                control: Control::Sync { interest: None, .. },
                ..
            })
        ));
    }

    #[test]
    fn a_medium_collection_is_an_application_request_now() {
        let old = body(json!({"v": V, "kind": "request", "id": 4, "from": "a",
            "request": {"collection": "$medium", "action": "sync", "args": {"topic": "$sync.x"}}}));
        assert!(matches!(
            decode_call(&old),
            Ok(Call::Request { request, .. }) if request.collection == "$medium"
        ));
    }

    #[test]
    fn responses_round_trip_ok_null_and_error() {
        let w = wire();
        let ok = crate::json::to_raw(&json!({"x": [1, 2]})).unwrap();
        let (id, reply) = decode_response(&w.encode_response(9, &Ok(ok))).unwrap();
        assert_eq!(id, 9);
        assert_eq!(reply.unwrap().get(), r#"{"x":[1,2]}"#);
        // `"ok": null` is a reply of null, not a missing reply.
        let null = crate::json::to_raw(&Value::Null).unwrap();
        let (_, reply) = decode_response(&w.encode_response(1, &Ok(null))).unwrap();
        assert_eq!(reply.unwrap().get(), "null");
        let error = Error::bad_request("no");
        let bytes = w.encode_response(2, &Err(error));
        let text: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(text["kind"], json!("response"));
        assert_eq!(text["error"]["kind"], json!("bad_request"));
        let (id, reply) = decode_response(&bytes).unwrap();
        assert_eq!(id, 2);
        assert!(matches!(reply, Err(Error::BadRequest { .. })), "{reply:?}");
    }

    #[test]
    fn an_oversized_reply_becomes_an_internal_error() {
        let w = Wire::new(None, 200);
        let big = crate::json::to_raw(&"x".repeat(500)).unwrap();
        let bytes = w.encode_response(5, &Ok(big));
        assert!(bytes.len() <= 200);
        let (id, reply) = decode_response(&bytes).unwrap();
        assert_eq!(id, 5);
        assert!(matches!(reply, Err(Error::Internal { .. })), "{reply:?}");
    }

    #[test]
    fn senders_refuse_what_exceeds_the_limit() {
        let w = Wire::new(Some(ClusterKey::new("k")), 200);
        let request = Request::new("c", "a").args(json!("x".repeat(150)));
        assert!(matches!(
            w.encode_call(1, "a", Outgoing::Request(&request)),
            Err(Error::BadRequest { .. })
        ));
        assert!(matches!(
            w.encode_event("a", "t", &json!("x".repeat(150))),
            Err(Error::BadRequest { .. })
        ));
        assert!(w.encode_event("a", "t", &json!("small")).is_ok());
    }

    #[test]
    fn events_round_trip_and_must_match_their_topic_frame() {
        let w = wire();
        let bytes = w
            .encode_event("a", "power.create.1", &json!({"n": 1}))
            .unwrap();
        let (topic, data) = decode_event(&bytes).unwrap();
        assert_eq!((topic.as_str(), data), ("power.create.1", json!({"n": 1})));
        assert!(w.topic_is(b"power.create.1", &topic));
        assert!(!w.topic_is(b"power.create.2", &topic));
        let request = body(json!({"v": V, "kind": "request", "topic": "t", "data": 1}));
        assert!(matches!(
            decode_event(&request),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn unknown_versions_are_rejected_as_such() {
        for v in [json!(1), json!(99), json!("2"), json!(-1), json!(u64::MAX)] {
            let call = body(json!({"v": v, "kind": "request", "id": 1,
                "request": {"collection": "c", "action": "a"}}));
            assert_eq!(decode_call(&call).err(), Some(Rejection::Version), "{v}");
            let response = body(json!({"v": v, "kind": "response", "id": 1, "ok": 1}));
            assert_eq!(
                decode_response(&response).err(),
                Some(Rejection::Version),
                "{v}"
            );
            let event = body(json!({"v": v, "kind": "event", "topic": "t", "data": 1}));
            assert_eq!(decode_event(&event).err(), Some(Rejection::Version), "{v}");
        }
    }

    #[test]
    fn malformed_calls_are_dropped_or_answered() {
        let malformed = |b: &[u8]| matches!(decode_call(b), Err(Rejection::Malformed(_)));
        assert!(malformed(b""));
        assert!(malformed(&[0xff, 0x00, 0x13, 0x37]));
        assert!(malformed(b"[1, 2, 3]"));
        assert!(malformed(b"{\"v\":2,\"kind\":\"request\""));
        // No id: nothing to answer.
        assert!(malformed(&body(
            json!({"v": V, "kind": "request", "request": {}})
        )));
        // Not a call.
        assert!(malformed(&body(
            json!({"v": V, "kind": "response", "id": 1, "ok": 1})
        )));
        assert!(malformed(&body(json!({"v": V, "kind": "shout", "id": 1}))));
        // A call with an id and an unusable body gets a `bad_request` reply.
        let answerable = |value: Value| match decode_call(&body(value)) {
            Err(Rejection::Answerable { id, .. }) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            answerable(json!({"v": V, "kind": "request", "id": 9, "request": {"nope": true}})),
            9
        );
        assert_eq!(answerable(json!({"v": V, "kind": "request", "id": 8})), 8);
        assert_eq!(
            answerable(json!({"v": V, "kind": "interest", "id": 7, "from": "a"})),
            7
        );
        assert_eq!(
            answerable(json!({"v": V, "kind": "interest", "id": 6,
                "interest": {"version": 1, "prefixes": []}})),
            6
        );
        assert_eq!(
            answerable(json!({"v": V, "kind": "interest", "id": 5, "from": "a",
                "interest": {"version": "new", "prefixes": []}})),
            5
        );
        assert_eq!(
            answerable(json!({"v": V, "kind": "sync", "id": 4, "from": "a"})),
            4
        );
    }

    #[test]
    fn malformed_responses_are_dropped() {
        let malformed =
            |value: Value| matches!(decode_response(&body(value)), Err(Rejection::Malformed(_)));
        assert!(malformed(json!({"v": V, "kind": "response", "id": 1})));
        assert!(malformed(
            json!({"v": V, "kind": "response", "id": 1, "ok": 1, "error": {"kind": "internal", "message": "x"}})
        ));
        assert!(malformed(
            json!({"v": V, "kind": "request", "id": 1, "ok": 1})
        ));
        assert!(malformed(json!({"v": V, "kind": "response", "ok": 1})));
        assert!(matches!(
            decode_response(b"\x00garbage"),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn deep_nesting_is_rejected_not_a_crash() {
        let mut deep = "[".repeat(5000);
        deep.push_str(&"]".repeat(5000));
        assert!(matches!(
            decode_call(deep.as_bytes()),
            Err(Rejection::Malformed(_))
        ));
        let nested_args = format!(
            r#"{{"v":{V},"kind":"request","id":3,"request":{{"collection":"c","action":"a","args":{deep}}}}}"#
        );
        assert!(matches!(
            decode_call(nested_args.as_bytes()),
            Err(Rejection::Answerable { id: 3, .. })
        ));
    }

    #[test]
    fn bodies_are_sealed_with_a_key() {
        let keyed = Wire::new(Some(ClusterKey::new("k")), 4096);
        let receiver = Wire::new(Some(ClusterKey::new("k")), 4096);
        let [body, seal] = keyed.seal(SEAL_CALL, b"", b"{\"secret\":1}".to_vec());
        assert_eq!(body.len() + seal.len(), 12 + keyed.mac_len());
        assert!(!body.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            receiver
                .open(SEAL_CALL, b"", &body, &seal)
                .unwrap()
                .as_ref(),
            b"{\"secret\":1}"
        );
        assert!(matches!(
            receiver.open(SEAL_CALL, b"", &body, &seal),
            Err(Rejection::Replayed(_))
        ));
        let fresh = Wire::new(Some(ClusterKey::new("k")), 4096);
        assert!(matches!(
            fresh.open(SEAL_RESPONSE, b"", &body, &seal),
            Err(Rejection::Unsigned(_))
        ));
        assert!(matches!(
            fresh.open(SEAL_CALL, b"", b"{}", b""),
            Err(Rejection::Unsigned(_))
        ));
        let other = Wire::new(Some(ClusterKey::new("other")), 4096);
        assert!(matches!(
            other.open(SEAL_CALL, b"", &body, &seal),
            Err(Rejection::Unsigned(_))
        ));
        // Without a key: an empty seal frame, and a sealed message is refused.
        let plain = wire();
        let [body, seal] = plain.seal(SEAL_CALL, b"", b"{}".to_vec());
        assert_eq!((body.as_slice(), seal.len()), (&b"{}"[..], 0));
        assert_eq!(plain.mac_len(), 0);
        assert!(plain.open(SEAL_CALL, b"", b"{}", b"x").is_err());
        // Topic frames: tags with a key.
        assert_eq!(plain.topic_frame("a.b"), b"a.b");
        let tagged = keyed.topic_frame("power.create");
        assert!(!tagged.windows(5).any(|w| w == b"power"));
        assert!(receiver.topic_is(&tagged, "power.create"));
        assert!(tagged.starts_with(receiver.topic_filters("power")[0].as_bytes()));
    }

    #[test]
    fn frames_and_sizes_are_checked() {
        assert_eq!(check_frames(2, 2, "[body, mac]"), Ok(()));
        assert!(matches!(
            check_frames(3, 2, "[body, mac]"),
            Err(Rejection::Malformed(reason)) if reason == "3 frames, expected [body, mac]"
        ));
        let w = Wire::new(None, 10);
        assert_eq!(w.check_size(&[b"12345", b"12345"]), Ok(()));
        assert_eq!(
            w.check_size(&[b"123456", b"12345"]),
            Err(Rejection::Oversized(6))
        );
        let message = multipart(vec![b"a".to_vec(), Vec::new(), b"c".to_vec()]);
        assert_eq!(message.len(), 3);
        assert_eq!(probe_id(br#"{"id": 12, "whatever": []}"#), Some(12));
        assert_eq!(probe_id(b"nope"), None);
    }
}
