//! [`Shutdown`]: the one way a node stops, and what it waits for.
//!
//! Stopping cancels the node's token: HTTP servers stop accepting and drain, requests from
//! peers that arrive now are refused (`Unavailable`, so the caller tries another owner), worker
//! rules start no new handler. The work already running — HTTP requests, requests from peers,
//! worker handlers — holds a token of the node's [`TaskTracker`], and the node waits for all of
//! it, at most the shutdown timeout (`ZS_SHUTDOWN_TIMEOUT_MS`, default 5 s). What is still
//! running then is told to give up (the abort token) and the node closes anyway.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

pub(crate) struct Shutdown {
    /// Cancelled when the node starts stopping.
    stopping: CancellationToken,
    /// Cancelled when the drain ran out of time: whatever still runs gives up.
    abort: CancellationToken,
    /// The work the node waits for before it closes.
    work: TaskTracker,
    timeout: Duration,
}

impl Shutdown {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            stopping: CancellationToken::new(),
            abort: CancellationToken::new(),
            work: TaskTracker::new(),
            timeout,
        }
    }

    /// Cancelled when the node starts stopping.
    pub(crate) fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    /// Cancelled when the drain ran out of time.
    pub(crate) fn abort(&self) -> &CancellationToken {
        &self.abort
    }

    /// The work the node waits for when it stops.
    #[cfg(feature = "http")]
    pub(crate) fn work(&self) -> &TaskTracker {
        &self.work
    }

    /// Counts one piece of work until the token is dropped; `None` once the node is stopping
    /// (refuse the work).
    pub(crate) fn enter(&self) -> Option<TaskTrackerToken> {
        if self.stopping.is_cancelled() {
            return None;
        }
        Some(self.work.token())
    }

    /// Starts stopping: the stopping token is cancelled, no new work is taken.
    pub(crate) fn begin(&self) {
        self.stopping.cancel();
        self.work.close();
    }

    /// Waits for the work in flight, at most the timeout; false (and the abort token
    /// cancelled) when some was still running then.
    pub(crate) async fn drain(&self) -> bool {
        self.begin();
        let drained = tokio::time::timeout(self.timeout, self.work.wait())
            .await
            .is_ok();
        if !drained {
            tracing::warn!(
                still_running = self.work.len(),
                timeout_ms = self.timeout.as_millis() as u64,
                "shutdown timeout (ZS_SHUTDOWN_TIMEOUT_MS): closing with work still in flight"
            );
            self.abort.cancel();
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_the_work_in_flight() {
        let shutdown = Shutdown::new(Duration::from_secs(10));
        let token = shutdown.enter().expect("running");
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            // The work finishes after stopping began.
            let _token = token;
            let _ = done_rx.await;
        });
        let drain = shutdown.drain();
        tokio::pin!(drain);
        // Not drained while the work runs.
        tokio::select! {
            biased;
            _ = &mut drain => panic!("drained with work in flight"),
            () = tokio::task::yield_now() => {}
        }
        assert!(shutdown.stopping().is_cancelled());
        assert!(shutdown.enter().is_none(), "no new work once stopping");
        done_tx.send(()).unwrap();
        assert!(drain.await);
        assert!(!shutdown.abort().is_cancelled());
    }

    #[tokio::test]
    async fn drain_is_bounded() {
        let shutdown = Shutdown::new(Duration::from_millis(100));
        let _stuck = shutdown.enter().expect("running");
        let started = tokio::time::Instant::now();
        assert!(!shutdown.drain().await);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(shutdown.abort().is_cancelled());
    }
}
