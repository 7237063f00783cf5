//! Who calls, and what they may do: the calling [`User`] a request carries, the [`Operation`]
//! it asks for, and the [`Authorizer`] that decides.
//!
//! The HTTP layer authenticates a user (Basic, a users file, a JWT) and asks its authorizer at
//! the edge; the [`Request`] it sends carries the user, so the owner of the collection asks the
//! authorizer installed on its node ([`NodeBuilder::authorizer`](crate::NodeBuilder::authorizer))
//! as well. A request without a user (a node's own typed calls, a worker) is trusted: every node
//! of the cluster is.

use serde::{Deserialize, Serialize};

use crate::medium::Request;
use crate::protocol::BuiltIn;
use crate::{Error, Result};

/// An authenticated caller: the user name (a Basic user, a JWT's `sub`) and its roles.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// The user name: the Basic auth user or the token's subject (`sub`).
    pub name: String,
    /// The roles: from the users file or the token's `roles` claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl User {
    /// A user without roles.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            roles: Vec::new(),
        }
    }

    /// Sets the roles.
    pub fn roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }

    /// Whether the user has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// What a caller asks to do on a collection, for an [`Authorizer`].
///
/// The built-in link actions are asked as what they do: `add_link` is a [`Operation::Patch`] of
/// the source and a [`Operation::Get`] of the target's collection, `follow_links` a
/// [`Operation::Get`] of the source and of each target (the targets the user may not read are
/// left out of the answer), `incoming_links` a [`Operation::List`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /{collection}`; also whether `GET /` and `/openapi.json` show the collection.
    List,
    /// `POST /{collection}`.
    Create,
    /// `GET /{collection}/{id}`.
    Get,
    /// `PATCH /{collection}/{id}`.
    Patch,
    /// `DELETE /{collection}/{id}`.
    Delete,
    /// A custom action: `POST /{collection}/{action}` or `POST /{collection}/{id}/{action}`.
    Action(String),
    /// Receiving the collection's events on the realtime websocket.
    Subscribe,
}

impl Operation {
    /// What `request` asks on its own collection (the target of an `add_link` is asked apart).
    pub fn of(request: &Request) -> Self {
        match BuiltIn::from_name(&request.action) {
            Some(BuiltIn::Create) => Self::Create,
            Some(BuiltIn::Get | BuiltIn::FollowLinks) => Self::Get,
            Some(BuiltIn::Patch | BuiltIn::AddLink) => Self::Patch,
            Some(BuiltIn::Delete) => Self::Delete,
            Some(BuiltIn::List | BuiltIn::IncomingLinks) => Self::List,
            None => Self::Action(request.action.clone()),
        }
    }

    /// The operation's name in messages: the built-in action's, the custom action's, or
    /// `subscribe`.
    pub fn name(&self) -> &str {
        match self {
            Self::List => BuiltIn::List.name(),
            Self::Create => BuiltIn::Create.name(),
            Self::Get => BuiltIn::Get.name(),
            Self::Patch => BuiltIn::Patch.name(),
            Self::Delete => BuiltIn::Delete.name(),
            Self::Action(name) => name,
            Self::Subscribe => "subscribe",
        }
    }
}

/// Per-user, per-collection, per-operation authorization.
///
/// Asked by the HTTP layer before every REST operation, for each collection `GET /` and
/// `/openapi.json` show, for every websocket event, and by the owner of a collection for every
/// request that carries a user. `user` is the authenticated caller, `None` when the HTTP server
/// requires no authentication. A `false` answers a REST call with 403 `{"error": ...}`
/// ([`Error::Forbidden`] across the wire); for the websocket, events of the collections for
/// which [`Operation::Subscribe`] is refused are not sent.
///
/// ```
/// use zeroservices::access::{Authorizer, Operation, User};
///
/// /// Only admins delete payments.
/// struct Rules;
///
/// impl Authorizer for Rules {
///     fn authorize(&self, user: Option<&User>, collection: &str, op: &Operation) -> bool {
///         let admin = user.is_some_and(|u| u.has_role("admin"));
///         admin || !(collection == "payment" && *op == Operation::Delete)
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// Whether `user` may do `operation` on `collection`.
    fn authorize(&self, user: Option<&User>, collection: &str, operation: &Operation) -> bool;
}

impl<F> Authorizer for F
where
    F: Fn(Option<&User>, &str, &Operation) -> bool + Send + Sync + 'static,
{
    fn authorize(&self, user: Option<&User>, collection: &str, operation: &Operation) -> bool {
        self(user, collection, operation)
    }
}

/// Asks `authorizer`, if any: [`Error::Forbidden`] when refused.
pub(crate) fn check(
    authorizer: Option<&dyn Authorizer>,
    user: Option<&User>,
    collection: &str,
    operation: &Operation,
) -> Result<()> {
    match authorizer {
        Some(a) if !a.authorize(user, collection, operation) => Err(Error::Forbidden {
            collection: collection.to_owned(),
            operation: operation.name().to_owned(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_actions_are_asked_as_what_they_do() {
        let op = |action: &str| Operation::of(&Request::new("power", action));
        assert_eq!(op("add_link"), Operation::Patch);
        assert_eq!(op("follow_links"), Operation::Get);
        assert_eq!(op("incoming_links"), Operation::List);
        assert_eq!(op("create"), Operation::Create);
        assert_eq!(op("reset"), Operation::Action("reset".into()));
    }

    #[test]
    fn a_user_crosses_the_wire_with_its_roles() {
        let user = User::new("ann").roles(["admin"]);
        let json = serde_json::to_value(&user).unwrap();
        assert_eq!(json, serde_json::json!({"name": "ann", "roles": ["admin"]}));
        assert_eq!(serde_json::from_value::<User>(json).unwrap(), user);
        let bare = serde_json::to_value(User::new("bob")).unwrap();
        assert_eq!(bare, serde_json::json!({"name": "bob"}));
    }

    #[test]
    fn a_refusal_is_forbidden() {
        let only_ann =
            |u: Option<&User>, _: &str, _: &Operation| u.is_some_and(|u| u.name == "ann");
        let ann = User::new("ann");
        let bob = User::new("bob");
        assert!(check(Some(&only_ann), Some(&ann), "power", &Operation::Get).is_ok());
        let err = check(Some(&only_ann), Some(&bob), "power", &Operation::Get).unwrap_err();
        assert_eq!(err.kind(), "forbidden");
        assert!(check(None, Some(&bob), "power", &Operation::Get).is_ok());
    }
}
