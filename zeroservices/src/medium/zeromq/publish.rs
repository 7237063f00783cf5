//! Events out: the PUB socket, and signing and handing it one event.

use std::sync::Mutex;
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
}

impl Publisher {
    /// Publishes on `socket` from now on.
    pub(crate) fn set(&self, socket: PubSocket) {
        *lock(&self.socket) = Some(socket);
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
        Some(Err(e)) => {
            bump(&core.counters.events_dropped);
            tracing::debug!(%topic, error = %e, "event not published");
            Ok(())
        }
        None => {
            drop(socket);
            let dropped = add(&core.counters.events_dropped, 1);
            let mut last = lock(&publisher.drop_logged);
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                *last = Some(Instant::now());
                tracing::warn!(
                    %topic,
                    dropped_so_far = dropped,
                    "the PUB socket did not take the event at once; event dropped"
                );
            }
            Ok(())
        }
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
