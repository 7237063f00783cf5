//! The in-process medium and discovery: a [`MemoryCluster`] is a little network inside one
//! process, for tests and single-process apps.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use serde_json::Value;

use super::{Endpoints, Inbound, Medium, Request};
use crate::discovery::{Discovery, LeaveReason, PeerEvent, PeerSink};
use crate::{Error, Event, NodeInfo, Result};

#[derive(Default)]
struct Hub {
    inbound: HashMap<String, Arc<dyn Inbound>>,
    members: HashMap<String, (NodeInfo, Arc<dyn PeerSink>)>,
}

/// An in-process network: nodes built on the same cluster see each other, exchange requests
/// and events as JSON values, and discover each other at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> zeroservices::Result<()> {
/// use zeroservices::{Node, medium::MemoryCluster};
/// let cluster = MemoryCluster::new();
/// let a = Node::builder("a").memory(&cluster).start().await?;
/// let b = Node::builder("b").memory(&cluster).start().await?;
/// assert_eq!(b.peers().len(), 1);
/// # a.stop().await; b.stop().await; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct MemoryCluster {
    hub: Arc<Mutex<Hub>>,
}

impl MemoryCluster {
    /// A new, empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A medium attached to this cluster (one per node).
    pub fn medium(&self) -> MemoryMedium {
        MemoryMedium {
            hub: self.hub.clone(),
            id: OnceLock::new(),
        }
    }

    /// A discovery attached to this cluster (one per node).
    pub fn discovery(&self) -> MemoryDiscovery {
        MemoryDiscovery {
            hub: self.hub.clone(),
            id: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        lock(&self.hub)
    }

    /// Node ids currently attached.
    pub fn node_ids(&self) -> Vec<String> {
        self.lock().inbound.keys().cloned().collect()
    }
}

fn lock(hub: &Mutex<Hub>) -> std::sync::MutexGuard<'_, Hub> {
    // A panic while holding this lock cannot leave the maps half-updated (each update is one
    // insert or remove), so a poisoned lock is still consistent.
    hub.lock().unwrap_or_else(|e| e.into_inner())
}

/// The medium half of a [`MemoryCluster`].
pub struct MemoryMedium {
    hub: Arc<Mutex<Hub>>,
    id: OnceLock<String>,
}

#[async_trait]
impl Medium for MemoryMedium {
    async fn start(&self, node_id: &str, inbound: Arc<dyn Inbound>) -> Result<Endpoints> {
        self.id
            .set(node_id.to_owned())
            .map_err(|_| Error::internal("memory medium started twice"))?;
        lock(&self.hub).inbound.insert(node_id.to_owned(), inbound);
        Ok(Endpoints::from([("memory".to_owned(), node_id.to_owned())]))
    }

    async fn call(&self, peer: &NodeInfo, request: Request) -> Result<Value> {
        let target = lock(&self.hub).inbound.get(&peer.id).cloned();
        let Some(target) = target else {
            return Err(Error::unavailable(format!(
                "node {} is not reachable",
                peer.id
            )));
        };
        // The same bytes a network medium would carry: a serialised request and reply.
        let request: Request = serde_json::from_value(serde_json::to_value(request)?)?;
        let from = self.id.get().cloned();
        // Run the handler on its own task, as a network peer would, so a handler that panics
        // fails this call instead of the caller.
        tokio::spawn(async move { target.request(from, request).await })
            .await
            .map_err(|e| Error::internal(format!("request handler failed: {e}")))?
    }

    async fn publish(&self, event: &Event) -> Result<()> {
        let me = self.id.get();
        let targets: Vec<_> = lock(&self.hub)
            .inbound
            .iter()
            .filter(|(id, _)| Some(*id) != me)
            .map(|(_, inbound)| inbound.clone())
            .collect();
        for target in targets {
            target.event(event.clone());
        }
        Ok(())
    }

    async fn stop(&self) {
        if let Some(id) = self.id.get() {
            lock(&self.hub).inbound.remove(id);
        }
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}

/// The discovery half of a [`MemoryCluster`]: joins and leaves are seen at once by every node.
pub struct MemoryDiscovery {
    hub: Arc<Mutex<Hub>>,
    id: OnceLock<String>,
}

#[async_trait]
impl Discovery for MemoryDiscovery {
    async fn start(&self, me: NodeInfo, sink: Arc<dyn PeerSink>) -> Result<()> {
        self.id
            .set(me.id.clone())
            .map_err(|_| Error::internal("memory discovery started twice"))?;
        let others: Vec<_> = {
            let mut hub = lock(&self.hub);
            let others = hub.members.values().cloned().collect();
            hub.members
                .insert(me.id.clone(), (me.clone(), sink.clone()));
            others
        };
        for (info, other_sink) in others {
            other_sink.peer_event(PeerEvent::Seen(me.clone()));
            sink.peer_event(PeerEvent::Seen(info));
        }
        Ok(())
    }

    async fn announce(&self, me: NodeInfo) -> Result<()> {
        let others: Vec<_> = {
            let mut hub = lock(&self.hub);
            if let Some(entry) = hub.members.get_mut(&me.id) {
                entry.0 = me.clone();
            }
            hub.members
                .iter()
                .filter(|(id, _)| **id != me.id)
                .map(|(_, (_, sink))| sink.clone())
                .collect()
        };
        for sink in others {
            sink.peer_event(PeerEvent::Seen(me.clone()));
        }
        Ok(())
    }

    async fn stop(&self) {
        let Some(id) = self.id.get() else { return };
        let others: Vec<_> = {
            let mut hub = lock(&self.hub);
            hub.members.remove(id);
            hub.members.values().map(|(_, s)| s.clone()).collect()
        };
        for sink in others {
            sink.peer_event(PeerEvent::Left {
                id: id.clone(),
                reason: LeaveReason::Goodbye,
            });
        }
    }
}
