//! Events out: the PUB socket, and signing and handing it one event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::zeromq::{PubSocket, SocketSend};
use futures::FutureExt;
use serde_json::Value;

use super::core::Core;
use super::stats::{add, bump};
use super::{lock, wire};
use crate::{Error, Result};

/// The PUB socket of a running medium. `send` on it only pushes onto the crate's lock-free
/// fan-out queue (it never waits), so publishers call it directly under this lock: no hop
/// through a task.
#[derive(Default)]
pub(crate) struct Publisher {
    socket: Mutex<Option<PubSocket>>,
    /// When a dropped event was last logged (at most one line every 5 s).
    drop_logged: Mutex<Option<Instant>>,
    /// The undelivered-message counters of every PUB socket this medium has had (one per
    /// start): what subscribers' queues did not take.
    undelivered: Mutex<Vec<Arc<AtomicU64>>>,
}

impl Publisher {
    /// Publishes on `socket` from now on.
    pub(crate) fn set(&self, socket: PubSocket) {
        lock(&self.undelivered).push(socket.dropped_counter());
        *lock(&self.socket) = Some(socket);
    }

    /// Event copies the PUB sockets' subscriber queues did not take, over the medium's life.
    pub(crate) fn undelivered(&self) -> u64 {
        lock(&self.undelivered)
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops publishing; the socket, to close it.
    pub(crate) fn take(&self) -> Option<PubSocket> {
        lock(&self.socket).take()
    }
}

/// Seals and hands one event to the PUB socket.
pub(crate) fn publish_event(core: &Core, topic: &str, data: &Value) -> Result<()> {
    let body = core.wire.encode_event(core.node_id(), topic, data)?;
    let topic_frame = core.wire.topic_frame(topic);
    let [body, seal] = core.wire.seal(wire::SEAL_EVENT, &topic_frame, body);
    let message = wire::multipart(vec![topic_frame, body, seal]);
    let publisher = &core.publisher;
    let mut socket = lock(&publisher.socket);
    let Some(pub_socket) = socket.as_mut() else {
        return Err(Error::unavailable("the zeromq medium is not running"));
    };
    match pub_socket.send(message).now_or_never() {
        Some(Ok(())) => {
            bump(&core.counters.events_published);
            Ok(())
        }
        // Refused (its fan-out queue is full, or it is closing), or not taken at once: counted
        // and logged (at most one line every 5 s).
        Some(Err(e)) => {
            drop(socket);
            dropped(core, topic, &e.to_string());
            Ok(())
        }
        None => {
            drop(socket);
            dropped(core, topic, "the PUB socket did not take the event at once");
            Ok(())
        }
    }
}

/// Counts an event the PUB socket did not take; logs it at most once every 5 s.
fn dropped(core: &Core, topic: &str, why: &str) {
    let dropped = add(&core.counters.events_dropped, 1);
    let mut last = lock(&core.publisher.drop_logged);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
        *last = Some(Instant::now());
        tracing::warn!(
            %topic,
            dropped_so_far = dropped,
            "event dropped: {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use ::zeromq::Socket;
    use serde_json::json;

    use super::*;
    use crate::config::NetworkConfig;

    #[test]
    fn nothing_is_published_without_a_socket() {
        let core = Core::new(NetworkConfig::default());
        assert!(matches!(
            publish_event(&core, "power.create.1", &json!(1)),
            Err(Error::Unavailable { .. })
        ));
        assert!(core.publisher.take().is_none());
        assert_eq!(core.stats().events_published, 0);
    }

    #[test]
    fn an_event_over_the_limit_is_refused_before_the_socket() {
        let core = Core::new(NetworkConfig {
            max_message_bytes: 100,
            ..NetworkConfig::default()
        });
        assert!(matches!(
            publish_event(&core, "t", &json!("x".repeat(200))),
            Err(Error::BadRequest { .. })
        ));
    }

    /// The two ways an event is lost at the PUB socket are counted: a full fan-out queue
    /// (`events_dropped`, the event reaches nobody) and a subscriber that does not read (its
    /// queue fills: `events_undelivered`, per copy). Real sockets on loopback; one thread, so
    /// the fan-out task runs only when the test awaits.
    #[tokio::test]
    async fn a_full_fan_out_queue_and_a_stalled_subscriber_are_counted() {
        let core = Core::new(NetworkConfig {
            max_subscriber_queue: 1000,
            ..NetworkConfig::default()
        });
        let mut socket = PubSocket::with_options(core.socket_options());
        let at = socket.bind("tcp://127.0.0.1:0").await.unwrap();
        core.publisher.set(socket);
        let mut stalled = ::zeromq::SubSocket::new();
        stalled.connect(&at.to_string()).await.unwrap();
        stalled.subscribe("").await.unwrap();
        let mut reader = ::zeromq::SubSocket::new();
        reader.connect(&at.to_string()).await.unwrap();
        reader.subscribe("").await.unwrap();
        // Subscribed once an event reaches the reader (the stalled one subscribed first).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no event reached the reader");
            publish_event(&core, "t", &json!(1)).unwrap();
            if tokio::time::timeout(
                Duration::from_millis(20),
                ::zeromq::SocketRecv::recv(&mut reader),
            )
            .await
            .is_ok()
            {
                break;
            }
        }
        drop(reader);
        assert_eq!(core.stats().events_dropped, 0);

        // Without an await, the fan-out task cannot drain: the 100,001st event is refused.
        for _ in 0..100_001 {
            publish_event(&core, "t", &json!(1)).unwrap();
        }
        assert!(core.stats().events_dropped >= 1, "{:?}", core.stats());

        // The stalled subscriber's queue (`ZS_MAX_SUBSCRIBER_QUEUE`, 1,000 here) and TCP
        // buffers fill; then every copy its queue does not take is counted.
        let mut published = 0u64;
        while core.stats().events_undelivered == 0 {
            assert!(
                Instant::now() < deadline && published < 2_000_000,
                "nothing counted after {published} more events: {:?}",
                core.stats()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            for _ in 0..20_000 {
                publish_event(&core, "t", &json!("x".repeat(100))).unwrap();
            }
            published += 20_000;
        }
        let socket = core.publisher.take().unwrap();
        let _ = socket.close().await;
        drop(stalled);
    }

    #[tokio::test]
    async fn a_bound_socket_takes_events_at_once() {
        let core = Core::new(NetworkConfig::default());
        let mut socket = PubSocket::with_options(core.socket_options());
        socket.bind("tcp://127.0.0.1:0").await.unwrap();
        core.publisher.set(socket);
        // No subscriber: the fan-out queue takes it and delivers it to nobody.
        publish_event(&core, "power.create.1", &json!(1)).unwrap();
        assert_eq!(core.stats().events_published, 1);
        let socket = core.publisher.take().unwrap();
        let _ = socket.close().await;
        assert!(publish_event(&core, "t", &json!(1)).is_err());
    }
}
