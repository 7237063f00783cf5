//! [`Context`]: what an action and a worker handler get.

use crate::{Collection, Node, Resource};

/// What an action and a hook get: the node they run on, and the resource they act on.
#[derive(Clone, Debug)]
pub struct Context {
    node: Node,
    collection: String,
    resource_id: Option<String>,
}

impl Context {
    pub(crate) fn new(node: Node, collection: &str, resource_id: Option<String>) -> Self {
        Self {
            node,
            collection: collection.to_owned(),
            resource_id,
        }
    }

    /// The node the action runs on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The typed client of any collection of the cluster.
    pub fn collection<R: Resource>(&self) -> Collection<R> {
        self.node.collection::<R>()
    }

    /// The collection the action belongs to.
    pub fn collection_name(&self) -> &str {
        &self.collection
    }

    /// The resource a resource action acts on.
    pub fn resource_id(&self) -> Option<&str> {
        self.resource_id.as_deref()
    }
}
