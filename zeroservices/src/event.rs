//! Change events: topics `<collection>.<action>.<resource_id>`, dot-segment prefix
//! subscriptions, and the node-local bus that feeds subscribers.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// A resource event with its standard payload.
    pub fn resource(
        collection: &str,
        action: &str,
        resource_id: &str,
        mut extra: serde_json::Map<String, Value>,
    ) -> Self {
        extra.insert("action".into(), Value::from(action));
        extra.insert("resource_name".into(), Value::from(collection));
        extra.insert("resource_id".into(), Value::from(resource_id));
        Self {
            topic: format!("{collection}.{action}.{resource_id}"),
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

/// Splits `power.create.42` into its prefixes: `power`, `power.create`, `power.create.42`.
pub fn topic_prefixes(topic: &str) -> impl Iterator<Item = &str> {
    topic
        .match_indices('.')
        .map(move |(i, _)| &topic[..i])
        .chain(std::iter::once(topic))
}

/// The node-local event bus: every event this node publishes or receives goes through it.
#[derive(Clone)]
pub(crate) struct EventBus {
    tx: broadcast::Sender<Event>,
    lagged: Arc<AtomicU64>,
}

impl EventBus {
    pub(crate) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity);
        Self {
            tx,
            lagged: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Hands `event` to every subscriber; copies it only when somebody listens.
    pub(crate) fn send(&self, event: &Event) {
        // No receiver is not an error: nobody listens.
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(event.clone());
        }
    }

    pub(crate) fn subscribe(&self, prefix: impl Into<String>) -> EventStream {
        EventStream {
            inner: BroadcastStream::new(self.tx.subscribe()),
            prefix: prefix.into(),
            lagged: self.lagged.clone(),
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
    inner: BroadcastStream<Event>,
    prefix: String,
    lagged: Arc<AtomicU64>,
}

impl EventStream {
    /// The prefix this stream was opened with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Stream for EventStream {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => {
                    if event.matches(&self.prefix) {
                        return Poll::Ready(Some(event));
                    }
                }
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(n)))) => {
                    self.lagged.fetch_add(n, Ordering::Relaxed);
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn topic_prefixes_lists_each_level() {
        let p: Vec<_> = topic_prefixes("power.create.42").collect();
        assert_eq!(p, ["power", "power.create", "power.create.42"]);
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
}
