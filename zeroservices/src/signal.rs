//! The one way a process learns it should stop: SIGINT (Ctrl-C) or SIGTERM.
//!
//! [`Signals`] listens for both from the moment it is made (so an early signal is not lost)
//! and names each one it receives; [`shutdown_signal`] waits for the first. [`App`](crate::App),
//! [`Worker::run`](crate::worker::Worker::run) and the `zeroservices` command use them, then
//! stop their node with [`Node::stop`](crate::Node::stop), which drains the work in flight.

/// SIGINT and SIGTERM, registered once (on non-Unix systems, Ctrl-C only).
#[derive(Debug)]
pub struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Default for Signals {
    fn default() -> Self {
        Self::new()
    }
}

impl Signals {
    /// Starts listening. A signal that cannot be listened for is logged, and never arrives.
    /// Needs a tokio runtime with IO enabled.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!("cannot listen for {name}: {err}");
                    None
                }
            };
            Self {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the next signal and names it (`"SIGINT"`, `"SIGTERM"`).
    pub async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(self.interrupt.as_mut()) => "SIGINT",
                () = next(self.terminate.as_mut()) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            match tokio::signal::ctrl_c().await {
                Ok(()) => "Ctrl-C",
                Err(_) => std::future::pending().await,
            }
        }
    }
}

/// Resolves at the first SIGINT or SIGTERM (on non-Unix systems, Ctrl-C only).
pub async fn shutdown_signal() {
    let signal = Signals::new().recv().await;
    tracing::info!("{signal}: leaving the cluster");
}
