//! The counters of one medium: what it served, sent and received, and every message it dropped
//! (each drop counted, and logged once per sender).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::wire::Rejection;
use crate::security::DropLog;

/// Counters of a [`ZmqMedium`](super::ZmqMedium), over its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZmqStats {
    /// Well-formed requests handed to the node.
    pub requests_served: u64,
    /// Replies written on the ROUTER.
    pub replies_sent: u64,
    /// Replies the ROUTER could not deliver (the caller's connection is gone).
    pub replies_undeliverable: u64,
    /// Requests refused at once with `unavailable` because 4096 requests were already being
    /// served.
    pub requests_refused_busy: u64,
    /// Calls sent to peers.
    pub calls_sent: u64,
    /// Replies to our calls received.
    pub replies_received: u64,
    /// Calls failed with `unavailable` because the peer's connection was lost or not made.
    pub calls_failed_unavailable: u64,
    /// Messages dropped for a wrong frame count, invalid JSON or an unexpected shape.
    pub dropped_malformed: u64,
    /// Messages dropped for not opening with the cluster key (unsealed, forged, another key),
    /// or sealed while this node has none.
    pub dropped_unsigned: u64,
    /// With a cluster key: sealed messages outside the replay window, seen before (replays),
    /// or over the replay memory's bound.
    pub dropped_replayed: u64,
    /// Messages dropped for exceeding `max_message_bytes`.
    pub dropped_oversized: u64,
    /// Connections (on any of the ROUTER, DEALER, PUB and SUB sockets) closed because a frame
    /// header of the peer would take its message over `max_message_bytes`; nothing was
    /// allocated for that frame.
    pub connections_closed_oversized: u64,
    /// Messages dropped for an unknown protocol version.
    pub dropped_version: u64,
    /// Events written on the PUB socket.
    pub events_published: u64,
    /// Events the PUB socket did not take: its fan-out queue (100,000 events) was full, or it
    /// was closing. Reaches no subscriber.
    pub events_dropped: u64,
    /// Copies of events a subscriber's queue in the PUB socket did not take (PUB semantics: a
    /// subscriber too slow to drain its queue, or disconnecting, loses them; the others still
    /// get them), one per subscriber and event.
    pub events_undelivered: u64,
    /// Events received from peers and handed to the node.
    pub events_received: u64,
    /// Events not published because no peer wants their topic.
    pub events_unwanted: u64,
}

/// The live counters behind [`ZmqStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests_served: AtomicU64,
    pub(crate) replies_sent: AtomicU64,
    pub(crate) replies_undeliverable: AtomicU64,
    pub(crate) requests_refused_busy: AtomicU64,
    pub(crate) calls_sent: AtomicU64,
    pub(crate) replies_received: AtomicU64,
    pub(crate) calls_failed_unavailable: AtomicU64,
    pub(crate) events_published: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) events_received: AtomicU64,
    pub(crate) events_unwanted: AtomicU64,
    malformed: DropLog,
    unsigned: DropLog,
    replayed: DropLog,
    oversized: DropLog,
    version: DropLog,
    /// Connections closed for an oversized frame header, logged once per peer address. Shared
    /// with the sockets' hooks (an `Arc` of its own: a hook holding the medium's core would
    /// keep it alive through the PUB socket it owns).
    pub(crate) oversized_frames: Arc<DropLog>,
}

/// Adds one to `counter`.
pub(crate) fn bump(counter: &AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to `counter`; returns the new value.
pub(crate) fn add(counter: &AtomicU64, n: u64) -> u64 {
    counter.fetch_add(n, Ordering::Relaxed) + n
}

impl Counters {
    /// Counts a dropped message (`what`: `request`, `response`, `event`) from `sender`, and
    /// logs it once per sender.
    pub(crate) fn reject(&self, sender: &str, what: &str, rejection: &Rejection) {
        match rejection {
            Rejection::Malformed(reason) => self.malformed.drop_from(sender, what, reason),
            Rejection::Answerable { reason, .. } => {
                self.malformed
                    .drop_from(sender, what, &format!("unusable {what}: {reason}"));
            }
            Rejection::Unsigned(reason) => self.unsigned.drop_from(sender, what, reason),
            Rejection::Replayed(reason) => self.replayed.drop_from(sender, what, reason),
            Rejection::Version => self
                .version
                .drop_from(sender, what, "unknown protocol version"),
            Rejection::Oversized(n) => {
                self.oversized
                    .drop_from(sender, what, &format!("{n} bytes over the limit"));
            }
        }
    }

    /// The counters so far.
    pub(crate) fn snapshot(&self) -> ZmqStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ZmqStats {
            requests_served: get(&self.requests_served),
            replies_sent: get(&self.replies_sent),
            replies_undeliverable: get(&self.replies_undeliverable),
            requests_refused_busy: get(&self.requests_refused_busy),
            calls_sent: get(&self.calls_sent),
            replies_received: get(&self.replies_received),
            calls_failed_unavailable: get(&self.calls_failed_unavailable),
            dropped_malformed: self.malformed.count(),
            dropped_unsigned: self.unsigned.count(),
            dropped_replayed: self.replayed.count(),
            dropped_oversized: self.oversized.count(),
            connections_closed_oversized: self.oversized_frames.count(),
            dropped_version: self.version.count(),
            events_published: get(&self.events_published),
            events_dropped: get(&self.events_dropped),
            events_received: get(&self.events_received),
            events_unwanted: get(&self.events_unwanted),
            // Counted inside the PUB socket; `Core::stats` reads it.
            events_undelivered: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rejection_has_its_counter() {
        let counters = Counters::default();
        counters.reject("a", "request", &Rejection::Malformed("x".into()));
        counters.reject(
            "a",
            "request",
            &Rejection::Answerable {
                id: 1,
                reason: "y".into(),
            },
        );
        counters.reject("a", "event", &Rejection::Unsigned("unsigned"));
        counters.reject("a", "event", &Rejection::Replayed("seen before"));
        counters.reject("b", "response", &Rejection::Version);
        counters.reject("b", "response", &Rejection::Version);
        counters.reject("c", "request", &Rejection::Oversized(10));
        counters
            .oversized_frames
            .drop_from("d", "zeromq connection", "closed");
        let stats = counters.snapshot();
        assert_eq!(
            stats,
            ZmqStats {
                dropped_malformed: 2,
                dropped_unsigned: 1,
                dropped_replayed: 1,
                dropped_version: 2,
                dropped_oversized: 1,
                connections_closed_oversized: 1,
                ..ZmqStats::default()
            }
        );
    }

    #[test]
    fn counters_show_in_the_snapshot() {
        let c = Counters::default();
        let all = [
            &c.requests_served,
            &c.replies_sent,
            &c.replies_undeliverable,
            &c.requests_refused_busy,
            &c.calls_sent,
            &c.replies_received,
            &c.calls_failed_unavailable,
            &c.events_published,
            &c.events_dropped,
            &c.events_received,
            &c.events_unwanted,
        ];
        for (n, counter) in all.into_iter().enumerate() {
            add(counter, n as u64 + 1);
        }
        bump(&c.events_unwanted);
        let s = c.snapshot();
        let got = [
            s.requests_served,
            s.replies_sent,
            s.replies_undeliverable,
            s.requests_refused_busy,
            s.calls_sent,
            s.replies_received,
            s.calls_failed_unavailable,
            s.events_published,
            s.events_dropped,
            s.events_received,
            s.events_unwanted,
        ];
        assert_eq!(got, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]);
    }
}
