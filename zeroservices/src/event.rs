//! Change events: topics `<collection>.<action>.<resource_id>`, dot-segment prefix
//! subscriptions, and the node-local bus that feeds subscribers.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// One event: a topic and its JSON payload.
///
/// Resource events carry `{"action", "resource_name", "resource_id"}` plus `resource_data` (the
/// document after a create, a patch or a `&mut self` action) and `patch` (the update document of
/// a patch); deletes carry no data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `<collection>.<action>.<resource_id>`, or any dot-separated topic for user events.
    pub topic: String,
    /// The payload.
    pub data: Value,
}

impl Event {
    /// A resource event with its standard payload; made inside an exported span, it carries
    /// that span's trace context too (`traceparent`, `tracestate`: see [`crate::telemetry`]).
    pub fn resource(
        collection: &str,
        action: &str,
        resource_id: &str,
        mut extra: serde_json::Map<String, Value>,
    ) -> Self {
        extra.insert("action".into(), Value::from(action));
        extra.insert("resource_name".into(), Value::from(collection));
        extra.insert("resource_id".into(), Value::from(resource_id));
        crate::telemetry::stamp(&mut extra);
        Self {
            // One allocation of the exact size.
            topic: [collection, action, resource_id].join("."),
            data: Value::Object(extra),
        }
    }

    /// Whether a subscription to `prefix` receives this event.
    pub fn matches(&self, prefix: &str) -> bool {
        topic_matches(prefix, &self.topic)
    }
}

/// Whether `topic` falls under the dot-segment `prefix`: `*` and `""` match everything, `power`
/// matches `power.create.42` but not `powers.create.1`.
pub fn topic_matches(prefix: &str, topic: &str) -> bool {
    if prefix == "*" || prefix.is_empty() {
        return true;
    }
    match topic.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('.'),
        None => false,
    }
}

/// The prefix a subscription asks the medium for: `*` is everything (`""`).
fn wire_prefix(prefix: &str) -> String {
    if prefix == "*" {
        String::new()
    } else {
        prefix.to_owned()
    }
}

/// Callback told the node's new set of wanted prefixes.
type InterestSink = Box<dyn Fn(Vec<String>) + Send + Sync>;

/// What a node's subscribers want: each topic prefix with how many streams hold it. When the
/// set changes, the medium is told (`Medium::set_interest`), so that peers send this node only
/// the events somebody here listens to.
#[derive(Default)]
pub(crate) struct Interest {
    counts: Mutex<BTreeMap<String, usize>>,
    sink: OnceLock<InterestSink>,
}

impl Interest {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The wanted prefixes: `[""]` when anything wants everything.
    pub(crate) fn prefixes(&self) -> Vec<String> {
        collapse(&self.lock())
    }

    /// Tells `sink` every later change (once; later calls are ignored).
    pub(crate) fn on_change(&self, sink: impl Fn(Vec<String>) + Send + Sync + 'static) {
        let _ = self.sink.set(Box::new(sink));
    }

    pub(crate) fn add(&self, prefix: &str) {
        let mut counts = self.lock();
        let count = counts.entry(wire_prefix(prefix)).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.changed(&counts);
        }
    }

    fn remove(&self, prefix: &str) {
        let mut counts = self.lock();
        let key = wire_prefix(prefix);
        let Some(count) = counts.get_mut(&key) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
            self.changed(&counts);
        }
    }

    /// Called under the lock, so the medium sees the changes in order.
    fn changed(&self, counts: &BTreeMap<String, usize>) {
        if let Some(sink) = self.sink.get() {
            sink(collapse(counts));
        }
    }
}

fn collapse(counts: &BTreeMap<String, usize>) -> Vec<String> {
    if counts.contains_key("") {
        vec![String::new()]
    } else {
        counts.keys().cloned().collect()
    }
}

/// Drops its prefix from the node's interest when the stream holding it is dropped.
struct InterestGuard {
    interest: Arc<Interest>,
    prefix: String,
}

impl Drop for InterestGuard {
    fn drop(&mut self) {
        self.interest.remove(&self.prefix);
    }
}

/// An event as the node's bus carries it (and as a change log's page is read): shared by every
/// stream and follower that reads it, with its websocket message text made once for all of them
/// (but the cursor, which is each stream's own). The event itself is an `Arc` too, so that a
/// change log's entry and the bus hold the same one.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) event: Arc<Event>,
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
    body: OnceLock<Body>,
}

/// `{"type":"event","topic":…,"data":{…` (the data's fields but `cursor`), without the
/// closing braces.
#[derive(Debug)]
#[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
struct Body {
    text: String,
    /// Whether `data` is an object (a cursor can be added) and whether it has fields left.
    object: bool,
    fields: bool,
}

impl Shared {
    pub(crate) fn new(event: Event) -> Self {
        Self::of(Arc::new(event))
    }

    /// An event kept elsewhere too (a change log's entry).
    pub(crate) fn of(event: Arc<Event>) -> Self {
        Self {
            event,
            body: OnceLock::new(),
        }
    }

    /// The event, without a copy when this was the last reference.
    pub(crate) fn into_event(self: Arc<Self>) -> Event {
        match Arc::try_unwrap(self) {
            Ok(shared) => Arc::unwrap_or_clone(shared.event),
            Err(shared) => Event::clone(&shared.event),
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
    fn body(&self) -> &Body {
        if let Some(body) = self.body.get() {
            return body;
        }
        // Made outside the `OnceLock`: followers of the same event on two worker threads may
        // both make it (one is kept), but neither blocks its thread while the other writes it.
        let made = self.make_body();
        self.body.get_or_init(|| made)
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
    fn make_body(&self) -> Body {
        let mut out: Vec<u8> = Vec::with_capacity(256);
        out.extend_from_slice(br#"{"type":"event","topic":"#);
        // Writing JSON strings and values to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.event.topic);
        out.extend_from_slice(br#","data":"#);
        let (object, fields) = match &self.event.data {
            Value::Object(map) => {
                out.push(b'{');
                let mut fields = false;
                for (key, value) in map {
                    if key == "cursor" {
                        continue;
                    }
                    if fields {
                        out.push(b',');
                    }
                    fields = true;
                    let _ = serde_json::to_writer(&mut out, key);
                    out.push(b':');
                    let _ = serde_json::to_writer(&mut out, value);
                }
                (true, fields)
            }
            other => {
                let _ = serde_json::to_writer(&mut out, other);
                (false, false)
            }
        };
        Body {
            // serde_json writes UTF-8.
            text: String::from_utf8(out).unwrap_or_default(),
            object,
            fields,
        }
    }

    /// The websocket message of the event, `{"type":"event","topic","data"}`, with `cursor` as
    /// `data.cursor` (in place of the one the event carries; none given: none written).
    #[cfg_attr(not(feature = "http"), allow(dead_code))] // read by the websocket only
    pub(crate) fn message(&self, cursor: Option<&str>) -> String {
        let body = self.body();
        let mut text = String::with_capacity(body.text.len() + cursor.map_or(0, str::len) + 16);
        text.push_str(&body.text);
        if body.object {
            if let Some(cursor) = cursor {
                if body.fields {
                    text.push(',');
                }
                text.push_str(r#""cursor":"#);
                // A cursor is URL-safe text (written as it is); anything else is escaped.
                if cursor
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                {
                    text.push('"');
                    text.push_str(cursor);
                    text.push('"');
                } else {
                    text.push_str(&serde_json::to_string(cursor).unwrap_or_default());
                }
            }
            text.push('}');
        }
        text.push('}');
        text
    }
}

/// The node-local event bus: every event this node publishes or receives goes through it.
#[derive(Clone)]
pub(crate) struct EventBus {
    /// Events are shared by the subscribers: a stream of `Event`s makes one copy when its
    /// prefix matches (none for the streams it does not match); the websocket's followers
    /// copy nothing and share the message text ([`Shared`]).
    tx: broadcast::Sender<Arc<Shared>>,
    lagged: Arc<AtomicU64>,
    interest: Arc<Interest>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            lagged: Arc::new(AtomicU64::new(0)),
            interest: Arc::default(),
        }
    }

    /// What the subscribers want, for the medium.
    pub(crate) fn interest(&self) -> &Arc<Interest> {
        &self.interest
    }

    /// Hands `event` to every subscriber; copies it only when somebody listens.
    pub(crate) fn send(&self, event: &Event) {
        // No receiver is not an error: nobody listens.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(Shared::new(event.clone())));
        }
    }

    /// [`send`](Self::send) of an event shared with its keeper (a change log's entry): no copy.
    pub(crate) fn send_shared(&self, event: &Arc<Event>) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(Shared::of(event.clone())));
        }
    }

    /// [`send`](Self::send) without a copy.
    pub(crate) fn send_owned(&self, event: Event) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::new(Shared::new(event)));
        }
    }

    /// Whether any stream listens.
    pub(crate) fn has_receivers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub(crate) fn subscribe(&self, prefix: impl Into<String>) -> EventStream {
        let prefix = prefix.into();
        self.interest.add(&prefix);
        EventStream {
            inner: BroadcastStream::new(self.tx.subscribe()),
            _interest: InterestGuard {
                interest: self.interest.clone(),
                prefix: prefix.clone(),
            },
            prefix,
            lagged: self.lagged.clone(),
            lagged_here: 0,
        }
    }

    /// Events dropped because a subscriber fell behind, over the node's life.
    pub(crate) fn lagged(&self) -> u64 {
        self.lagged.load(Ordering::Relaxed)
    }
}

/// A stream of the events whose topic falls under a prefix; see [`crate::Node::subscribe`].
///
/// Each subscriber has a bounded buffer (4096 events); a subscriber that falls further behind
/// loses the oldest events, which is logged and counted (`Node::stats().events_lagged`).
pub struct EventStream {
    inner: BroadcastStream<Arc<Shared>>,
    prefix: String,
    lagged: Arc<AtomicU64>,
    /// Events this stream lost since [`EventStream::take_lagged`] was last called.
    lagged_here: u64,
    _interest: InterestGuard,
}

impl EventStream {
    /// The prefix this stream was opened with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// How many events this stream lost (fell behind) since the last call.
    pub(crate) fn take_lagged(&mut self) -> u64 {
        std::mem::take(&mut self.lagged_here)
    }

    /// The next event whose topic falls under the prefix, as the bus shares it (no copy): the
    /// websocket's followers read events this way.
    pub(crate) fn poll_shared(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Arc<Shared>>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(shared))) => {
                    if shared.event.matches(&self.prefix) {
                        return Poll::Ready(Some(shared));
                    }
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
                    self.lagged_here += n;
                    tracing::warn!(
                        prefix = %self.prefix,
                        dropped = n,
                        "event subscriber fell behind; oldest events dropped"
                    );
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// [`EventStream::poll_shared`] as a future.
    pub(crate) async fn next_shared(&mut self) -> Option<Arc<Shared>> {
        std::future::poll_fn(|cx| self.poll_shared(cx)).await
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        // Copied out of the bus only when it matches (without a copy when this stream holds
        // the last reference).
        self.poll_shared(cx)
            .map(|shared| shared.map(Shared::into_event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_shared_event_reaches_the_matching_streams_only() {
        use futures::StreamExt;
        let bus = EventBus::new(16);
        let mut a = bus.subscribe("a");
        let mut a2 = bus.subscribe("a.create");
        let mut b = bus.subscribe("b");
        let event = Arc::new(Event::resource("a", "create", "1", Default::default()));
        bus.send_shared(&event);
        // The keeper's copy is untouched; every matching stream gets an equal event.
        assert_eq!(a.next().await.as_ref(), Some(&*event));
        assert_eq!(a2.next().await.as_ref(), Some(&*event));
        // A copied and an owned event too, in order; `b` sees only its own.
        bus.send(&Event::resource("b", "patch", "2", Default::default()));
        bus.send_owned(Event::resource("a", "delete", "3", Default::default()));
        assert_eq!(
            b.next().await.map(|e| e.topic).as_deref(),
            Some("b.patch.2")
        );
        assert_eq!(
            a.next().await.map(|e| e.topic).as_deref(),
            Some("a.delete.3")
        );
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b.next())
                .await
                .is_err(),
            "b got an event of a"
        );
        assert_eq!(
            Arc::strong_count(&event),
            1,
            "the bus keeps no copy once read"
        );
    }

    #[test]
    fn prefixes_match_on_dot_segments() {
        assert!(topic_matches("power", "power.create.42"));
        assert!(topic_matches("power.create", "power.create.42"));
        assert!(topic_matches("power.create.42", "power.create.42"));
        assert!(topic_matches("*", "chat.message"));
        assert!(!topic_matches("pow", "power.create.42"));
        assert!(!topic_matches("power", "powers.create.1"));
        assert!(!topic_matches("power.patch", "power.create.42"));
    }

    #[test]
    fn resource_events_have_the_original_payload() {
        let e = Event::resource("power", "delete", "42", Default::default());
        assert_eq!(e.topic, "power.delete.42");
        assert_eq!(
            e.data,
            serde_json::json!({"action": "delete", "resource_name": "power", "resource_id": "42"})
        );
    }

    #[tokio::test]
    async fn streams_filter_by_prefix() {
        use futures::StreamExt;
        let bus = EventBus::new(16);
        let mut s = bus.subscribe("power.patch");
        bus.send(&Event::resource("power", "create", "1", Default::default()));
        bus.send(&Event::resource("power", "patch", "1", Default::default()));
        let e = s.next().await.unwrap();
        assert_eq!(e.topic, "power.patch.1");
    }

    #[test]
    fn interest_follows_the_streams() {
        let bus = EventBus::new(16);
        let told = Arc::new(Mutex::new(Vec::new()));
        let sink = told.clone();
        bus.interest()
            .on_change(move |p| sink.lock().unwrap().push(p));
        let a = bus.subscribe("power");
        let b = bus.subscribe("power");
        let c = bus.subscribe("tick.create");
        assert_eq!(bus.interest().prefixes(), ["power", "tick.create"]);
        drop(a);
        assert_eq!(bus.interest().prefixes(), ["power", "tick.create"]);
        let all = bus.subscribe("*");
        assert_eq!(bus.interest().prefixes(), [""]);
        drop(all);
        drop(b);
        drop(c);
        assert!(bus.interest().prefixes().is_empty());
        let told = told.lock().unwrap().clone();
        let expect: Vec<Vec<String>> = vec![
            vec!["power".into()],
            vec!["power".into(), "tick.create".into()],
            vec!["".into()],
            vec!["power".into(), "tick.create".into()],
            vec!["tick.create".into()],
            vec![],
        ];
        assert_eq!(told, expect);
    }

    /// One shared event read by many clients at once, on many threads: a large document with
    /// hostile keys and text (quotes, escapes, unicode, a `cursor` field of its own, deep
    /// nesting). Every thread gets the whole event with its own cursor (the event's `cursor` is
    /// replaced, never doubled), whichever thread made the text; a stream's own copy of the
    /// event changes nothing of what the others read.
    #[test]
    fn a_shared_event_read_by_many_threads_at_once() {
        let mut deep = serde_json::json!("bottom");
        for _ in 0..100 {
            deep = serde_json::json!({ "d": deep });
        }
        let data = serde_json::json!({
            "cursor": "the event's own",
            "text": "x\"y\\z\n\u{1F600}".repeat(10_000),
            "\"odd\" key": [1, 2.5, null, true],
            "deep": deep,
        });
        let shared = Arc::new(Shared::new(Event {
            topic: "power.create.1".into(),
            data: data.clone(),
        }));
        let start = Arc::new(std::sync::Barrier::new(8));
        let readers: Vec<_> = (0..8)
            .map(|i| {
                let (shared, start) = (shared.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let cursor = format!("c1.{i}");
                    let text = shared.message(Some(&cursor));
                    (cursor, text)
                })
            })
            .collect();
        for reader in readers {
            let (cursor, text) = reader.join().unwrap();
            let message: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(message["type"], "event");
            assert_eq!(message["topic"], "power.create.1");
            let mut expect = data.clone();
            expect["cursor"] = Value::from(cursor);
            assert_eq!(message["data"], expect);
        }
        // A stream's own copy: changing it leaves the shared event as it was.
        let mut copy = shared.clone().into_event();
        copy.data["text"] = Value::from("changed");
        assert_eq!(shared.event.data, data);
        let again: Value = serde_json::from_str(&shared.message(None)).unwrap();
        assert_eq!(again["data"]["text"], data["text"]);
        assert!(again["data"].get("cursor").is_none());
    }
}
