//! Exactly-once effects: a mutating request that carries a request id or an `Idempotency-Key`
//! is claimed in the collection's store before it runs, and a copy gets the first reply (see
//! the README's guarantees).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::{ResourceService, reply};
use crate::medium::Request;
use crate::protocol::{BuiltIn, Created};
use crate::resource::ActionCall;
use crate::store::{Claim, MARK, Mark};
use crate::{Error, Node, Resource, Result};

impl<R: Resource> ResourceService<R> {
    /// Whether `request` changes something (so a copy of it must not run again).
    fn mutates(&self, request: &Request) -> bool {
        match BuiltIn::from_name(&request.action) {
            Some(action) => action.writes(),
            None => R::actions()
                .iter()
                .find(|a| a.name == request.action)
                .is_some_and(|a| !matches!(a.call, ActionCall::Read(_))),
        }
    }

    /// The key the store remembers a mutating request by, and for how long: its
    /// `Idempotency-Key`, else its request id; `None` for a read or a request with neither.
    pub(super) fn remembered_as(
        &self,
        node: &Node,
        request: &Request,
    ) -> Result<Option<(String, Duration)>> {
        let limits = node.limits();
        let (key, keep) = match (&request.idempotency_key, &request.request_id) {
            (Some(key), _) => (format!("key:{key}"), limits.idempotency_key_ttl),
            (None, Some(id)) => (format!("req:{id}"), limits.request_memory),
            (None, None) => return Ok(None),
        };
        if key.len() > MAX_REQUEST_KEY_BYTES {
            return Err(Error::bad_request(format!(
                "a request id or Idempotency-Key is at most {} bytes",
                MAX_REQUEST_KEY_BYTES - 4
            )));
        }
        Ok(self.mutates(request).then_some((key, keep)))
    }

    /// Serves a mutating request at most once per `key`: a copy gets the first reply (or
    /// [`Error::RequestInProgress`] while the first runs); the same key with another request
    /// gets [`Error::IdempotencyKeyReused`].
    pub(super) async fn once(
        &self,
        node: &Node,
        request: Request,
        key: String,
        keep: Duration,
    ) -> Result<Value> {
        // Only an `Idempotency-Key` (chosen by a client) can come back with another request; a
        // request id is the calling node's, used for one request: no fingerprint needed.
        let fingerprint = if request.idempotency_key.is_some() {
            fingerprint(&request)
        } else {
            String::new()
        };
        // The claim outlives any wait of the caller for the first attempt.
        let lease = node
            .request_timeout()
            .saturating_mul(2)
            .max(Duration::from_secs(1));
        let collection = self.collection();
        let reused = || Error::IdempotencyKeyReused {
            message: format!(
                "this Idempotency-Key (or request id) was already used for another request on {collection}; use a new key for a new request"
            ),
        };
        match self
            .store
            .claim_request(collection, &key, &fingerprint, lease)
            .await?
        {
            Claim::New => {}
            Claim::Done {
                fingerprint: f,
                reply,
            } => {
                if f != fingerprint {
                    return Err(reused());
                }
                node.count_replayed_reply();
                return Ok(reply);
            }
            Claim::Applied {
                fingerprint: f,
                resource_id,
            } => {
                if f != fingerprint {
                    return Err(reused());
                }
                node.count_replayed_reply();
                return self.reply_of_applied(&request, resource_id).await;
            }
            Claim::InProgress { fingerprint: f } => {
                if !f.is_empty() && f != fingerprint {
                    return Err(reused());
                }
                return Err(Error::RequestInProgress {
                    message: format!(
                        "a copy of this request to {collection} is still being served; retry to get its reply"
                    ),
                });
            }
        }
        let mark = Mark {
            collection: collection.to_owned(),
            key: key.clone(),
            fingerprint,
            keep,
            reply: Arc::default(),
        };
        let served = MARK.scope(Some(mark), self.dispatch(node, request)).await;
        match &served {
            Ok(reply) => {
                if let Err(e) = self
                    .store
                    .complete_request(collection, &key, reply, keep)
                    .await
                {
                    // The change is made; only a copy of the request could now run it again.
                    tracing::warn!(collection, error = %e, "could not record a request's reply");
                }
            }
            Err(e) if !surely_unchanged(e) => {
                // The store may have made the change (a write that timed out): the claim stays
                // until its lease ends, so a copy arriving meanwhile does not run it again.
                tracing::debug!(collection, error = %e, "claim kept: the change may have been made");
            }
            Err(_) => {
                // The request was refused before any change: a retry may run it.
                if let Err(e) = self.store.release_request(collection, &key).await {
                    tracing::debug!(collection, error = %e, "could not release a request claim");
                }
            }
        }
        served
    }

    /// The reply to a copy of a request whose change was made but whose reply was not recorded
    /// (the owner stopped in between): what that reply would say, from what is stored now.
    async fn reply_of_applied(
        &self,
        request: &Request,
        resource_id: Option<String>,
    ) -> Result<Value> {
        let id = resource_id.or_else(|| request.resource_id.clone());
        match (BuiltIn::from_name(&request.action), id) {
            (Some(BuiltIn::Create), Some(id)) => reply(&Created {
                resource_id: id,
                version: 1,
            }),
            (Some(BuiltIn::Delete), _) => Ok(Value::Null),
            (Some(BuiltIn::Patch | BuiltIn::AddLink), Some(id)) => self.get(id).await,
            _ => Err(Error::internal(format!(
                "{} on {} was made, but its reply was lost when its owner stopped",
                request.action,
                self.collection()
            ))),
        }
    }
}

/// Whether a request that failed with `error` surely changed nothing (it was refused), as
/// opposed to failing at a store that may have made the change.
fn surely_unchanged(error: &Error) -> bool {
    !matches!(
        error,
        Error::Unavailable { .. } | Error::Timeout { .. } | Error::Internal { .. }
    )
}

/// The longest key a request is remembered by (`req:` or `key:` and the id or key).
const MAX_REQUEST_KEY_BYTES: usize = 260;

/// What a request asks (action, id, arguments), as 32 hex digits of a SHA-256: a copy has the
/// same, another request under the same key another.
fn fingerprint(request: &Request) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(request.action.as_bytes());
    hash.update([0]);
    hash.update(request.resource_id.as_deref().unwrap_or("").as_bytes());
    hash.update([0]);
    hash.update(request.args.to_string().as_bytes());
    hex::encode(&hash.finalize()[..16])
}
