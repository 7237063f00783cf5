//! Readiness: whether a node can do its job now, for `GET /readyz` (see the HTTP module) and
//! anyone else who asks ([`Node::readiness`]).
//!
//! | check | ready when | not ready, says |
//! |---|---|---|
//! | `node` | started and not stopping | `stopping` |
//! | `discovery` | [`Discovery::health`](crate::discovery::Discovery::health): started, not stopped, its task alive | its words (`udp discovery is stopped`) |
//! | `medium` | [`Medium::health`](crate::medium::Medium::health): serving (and connected, for a medium that depends on a server) | its words |
//! | `store` | every store behind a collection this node owns answers one read (a `get` of an id no resource has) within the timeout | `did not answer within 1000 ms`, `unavailable`, ... |
//!
//! A node that owns nothing (a gateway) has no store to check: its `store` is `ok`. The stores
//! are read at once, each bounded by the timeout, so a probe takes at most the timeout.
//!
//! The reasons are safe to show to anyone (an open probe): no host, path or driver message. The
//! full error of a failed store read is in [`Check::detail`], for the log.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::{Node, read};
use crate::Error;
use crate::store::Store;

/// The id the readiness read asks a store for: whitespace makes it an id no resource can have.
const PROBE_ID: &str = "zeroservices readiness probe";

/// One check of [`Readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// `node`, `discovery`, `medium` or `store`.
    pub name: &'static str,
    /// `None` when it passed; else why not, safe to show to anyone.
    pub failure: Option<String>,
    /// The full error of a failed check, for the log only (hosts, driver messages).
    pub detail: Option<String>,
}

impl Check {
    fn ok(name: &'static str) -> Self {
        Self {
            name,
            failure: None,
            detail: None,
        }
    }

    fn failed(name: &'static str, failure: impl Into<String>, detail: Option<String>) -> Self {
        Self {
            name,
            failure: Some(failure.into()),
            detail,
        }
    }
}

/// What [`Node::readiness`] found: every check, in a fixed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// `node`, `discovery`, `medium`, `store`.
    pub checks: Vec<Check>,
}

impl Readiness {
    /// Whether every check passed.
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|c| c.failure.is_none())
    }

    /// The failed checks as one line, `store: did not answer within 1000 ms; ...`; `None` when
    /// ready.
    pub fn reason(&self) -> Option<String> {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter_map(|c| c.failure.as_ref().map(|f| format!("{}: {f}", c.name)))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    /// The full errors of the failed checks, for the log.
    pub fn detail(&self) -> String {
        self.checks
            .iter()
            .filter_map(|c| {
                let why = c.detail.as_ref().or(c.failure.as_ref())?;
                Some(format!("{}: {why}", c.name))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The body of `GET /readyz`: `{"status": "ready", "checks": {"node": "ok", ...}}`, or
    /// `{"status": "not_ready", "error": "<reason>", "checks": {"store": "<why>", ...}}`.
    pub fn to_json(&self) -> Value {
        let checks: Map<String, Value> = self
            .checks
            .iter()
            .map(|c| {
                let value = c.failure.clone().unwrap_or_else(|| "ok".to_owned());
                (c.name.to_owned(), Value::String(value))
            })
            .collect();
        match self.reason() {
            None => json!({"status": "ready", "checks": checks}),
            Some(reason) => json!({"status": "not_ready", "error": reason, "checks": checks}),
        }
    }
}

impl Node {
    /// Whether this node can do its job now: started and not stopping, its discovery running,
    /// its medium up, and every store behind a collection it owns answering a read within
    /// `timeout`. The checks are those of the HTTP probe (see the README, "Operating"); `GET /readyz` answers with it.
    pub async fn readiness(&self, timeout: Duration) -> Readiness {
        let inner = &self.inner;
        let node = if !inner.started.load(Ordering::SeqCst) {
            Check::failed("node", "starting", None)
        } else if inner.shutdown.stopping().is_cancelled() || inner.stopped.load(Ordering::SeqCst) {
            Check::failed("node", "stopping", None)
        } else {
            Check::ok("node")
        };
        let discovery = match inner.discovery.health() {
            Ok(()) => Check::ok("discovery"),
            Err(why) => Check::failed("discovery", why, None),
        };
        let medium = match inner.medium.health() {
            Ok(()) => Check::ok("medium"),
            Err(why) => Check::failed("medium", why, None),
        };
        let store = self.stores_answer(timeout).await;
        Readiness {
            checks: vec![node, discovery, medium, store],
        }
    }

    /// One read of each distinct store behind the collections this node owns, all at once.
    async fn stores_answer(&self, timeout: Duration) -> Check {
        // One collection per store (a store shared by every collection is read once).
        let mut stores: Vec<(String, Arc<dyn Store>)> = Vec::new();
        for (collection, service) in read(&self.inner.services).iter() {
            let store = service.store();
            if !stores.iter().any(|(_, s)| Arc::ptr_eq(s, store)) {
                stores.push((collection.clone(), store.clone()));
            }
        }
        let reads = stores.iter().map(|(collection, store)| async move {
            match tokio::time::timeout(timeout, store.get(collection, PROBE_ID)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => {
                    let failure = match &e {
                        Error::Unavailable { .. } => "unavailable".to_owned(),
                        Error::Timeout { .. } => "timed out".to_owned(),
                        _ => "failed".to_owned(),
                    };
                    Some((failure, format!("`{collection}`: {e}")))
                }
                Err(_) => {
                    let failure = format!("did not answer within {} ms", timeout.as_millis());
                    Some((failure.clone(), format!("`{collection}`: {failure}")))
                }
            }
        });
        let failures: Vec<(String, String)> = futures::future::join_all(reads)
            .await
            .into_iter()
            .flatten()
            .collect();
        match failures.first() {
            None => Check::ok("store"),
            Some((failure, _)) => {
                let detail = failures
                    .iter()
                    .map(|(_, d)| d.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                Check::failed("store", failure.clone(), Some(detail))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Check, Readiness};

    #[test]
    fn the_body_names_every_check_and_the_reason() {
        let ready = Readiness {
            checks: vec![Check::ok("node"), Check::ok("store")],
        };
        assert!(ready.is_ready());
        assert_eq!(
            ready.to_json(),
            serde_json::json!({"status": "ready", "checks": {"node": "ok", "store": "ok"}})
        );
        let down = Readiness {
            checks: vec![
                Check::ok("node"),
                Check::failed(
                    "store",
                    "unavailable",
                    Some("mongodb://10.0.0.1 refused".into()),
                ),
            ],
        };
        assert!(!down.is_ready());
        assert_eq!(down.reason().as_deref(), Some("store: unavailable"));
        let body = down.to_json().to_string();
        assert!(!body.contains("10.0.0.1"), "{body}");
        assert!(down.detail().contains("10.0.0.1"));
    }
}
