//! Typed errors shared by every layer, and carried over the wire as they are.
//!
//! An [`Error`] serialises to `{"kind": "not_found", ...}`, so a request that fails on the node
//! that owns a collection fails with the same variant on the node that asked.

use serde::{Deserialize, Serialize};

/// The result type of every fallible zeroservices call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a zeroservices call.
///
/// The variants are stable: they cross the wire between nodes (serialised with a `kind` tag) and
/// map one to one onto HTTP statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Error {
    /// No node of the cluster owns this collection (the original's `Unknown service <name>`).
    #[error("Unknown service {collection}")]
    UnknownCollection {
        /// The collection that was asked for.
        collection: String,
    },
    /// The collection exists but has no custom action of this name.
    #[error("Unknown action {action} on {collection}")]
    UnknownAction {
        /// The collection.
        collection: String,
        /// The action that was asked for.
        action: String,
    },
    /// No resource with this id in this collection.
    #[error("{collection} {id} not found")]
    NotFound {
        /// The collection.
        collection: String,
        /// The missing id.
        id: String,
    },
    /// A document or argument does not fit the schema; `path` names the field (`value`,
    /// `items[2].name`; empty for the whole document).
    #[error("validation failed at `{path}`: {message}")]
    Validation {
        /// Dotted path of the offending field.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A create named an id that already exists.
    #[error("{collection} {id} already exists")]
    DuplicateId {
        /// The collection.
        collection: String,
        /// The id that is taken.
        id: String,
    },
    /// A conditional change (`If-Match`, [`crate::Collection::patch_if`]) expected another
    /// version of the resource than the stored one; nothing was changed.
    #[error(
        "precondition failed: {collection} {id} is at version {actual}, the request expected version {expected}"
    )]
    PreconditionFailed {
        /// The collection.
        collection: String,
        /// The resource.
        id: String,
        /// The version the request expected.
        expected: u64,
        /// The version stored.
        actual: u64,
    },
    /// A change kept losing its compare-and-set to concurrent changes of the same resource (a
    /// `&mut self` action re-run on the fresh document as many times as allowed); nothing was
    /// changed by this request, which may be retried.
    #[error("conflict: {message}")]
    Conflict {
        /// What kept conflicting.
        message: String,
    },
    /// A malformed request: a bad filter, a bad update, an unknown operator, bad JSON.
    #[error("bad request: {message}")]
    BadRequest {
        /// What is wrong.
        message: String,
    },
    /// A request over one of the limits of [`crate::limits::Limits`] (or another documented
    /// limit): `limit` names the setting and its value (`ZS_MAX_DEPTH=32`).
    #[error("{message} (limit: {limit})")]
    Limit {
        /// The setting and its value, `ZS_MAX_DEPTH=32`.
        limit: String,
        /// What went over it.
        message: String,
    },
    /// The [`Authorizer`](crate::access::Authorizer) refused the caller this operation.
    #[error("forbidden: {operation} on {collection}")]
    Forbidden {
        /// The collection.
        collection: String,
        /// The operation refused (`get`, `patch`, an action's name, ...).
        operation: String,
    },
    /// The node owning the collection did not answer in time.
    #[error("{collection}: owner did not answer within {after_ms} ms")]
    Timeout {
        /// The collection.
        collection: String,
        /// How long we waited.
        after_ms: u64,
    },
    /// The node that owned the collection has left and no other node owns it.
    #[error("no node owns {collection} any more")]
    OwnerGone {
        /// The collection.
        collection: String,
    },
    /// A copy of a request (same request id or `Idempotency-Key`) arrived while the first is
    /// still being served (HTTP 409): retry later to get its reply.
    #[error("{message}")]
    RequestInProgress {
        /// What is in progress.
        message: String,
    },
    /// An `Idempotency-Key` (or request id) already used for another request (HTTP 422).
    #[error("{message}")]
    IdempotencyKeyReused {
        /// What was reused.
        message: String,
    },
    /// A backend (store, peer connection) is down for now; retrying later may succeed.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
    },
    /// A custom action or user hook failed with its own message.
    #[error("{message}")]
    Failed {
        /// The user's message.
        message: String,
    },
    /// A bug or an unexpected condition inside zeroservices.
    #[error("internal error: {message}")]
    Internal {
        /// What happened.
        message: String,
    },
    /// This node would own `collection` over another store than a live owner of it: the two
    /// would split the collection between two data sets. Refused at start-up (a `#[service]`
    /// process exits with code 2); `message` says which nodes, which stores, and what to do.
    #[error("{message}")]
    StoreConflict {
        /// The collection.
        collection: String,
        /// The whole explanation.
        message: String,
    },
    /// A stream was asked to resume from a cursor older than what the change log keeps
    /// (`ZS_CHANGE_LOG_MAX`, `ZS_CHANGE_LOG_MS`): changes after it can no longer be read. The
    /// client reloads what it shows and subscribes afresh.
    #[error("cursor expired: {message}")]
    CursorExpired {
        /// Which log, and since when.
        message: String,
    },
}

impl Error {
    /// The collection is unknown to the whole cluster.
    pub fn unknown_collection(collection: impl Into<String>) -> Self {
        Self::UnknownCollection {
            collection: collection.into(),
        }
    }

    /// No resource `id` in `collection`.
    pub fn not_found(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self::NotFound {
            collection: collection.into(),
            id: id.into(),
        }
    }

    /// A validation failure at `path`.
    pub fn validation(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A malformed request.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
        }
    }

    /// A user-level failure, for custom actions: `Err(Error::failed("value too large"))`.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
        }
    }

    /// Something unavailable for now (a store that is down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::Unavailable {
            message: message.into(),
        }
    }

    /// A request over the limit set by the variable `var` (its value `value`).
    pub fn limit(var: &str, value: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Self::Limit {
            limit: format!("{var}={value}"),
            message: message.into(),
        }
    }

    /// Too many concurrent changes of one resource: a 409 with `message`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
        }
    }

    /// An internal error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
        }
    }

    /// The wire name of the variant (`"not_found"`, ...), also used in logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnknownCollection { .. } => "unknown_collection",
            Self::UnknownAction { .. } => "unknown_action",
            Self::NotFound { .. } => "not_found",
            Self::Validation { .. } => "validation",
            Self::DuplicateId { .. } => "duplicate_id",
            Self::PreconditionFailed { .. } => "precondition_failed",
            Self::Conflict { .. } => "conflict",
            Self::BadRequest { .. } => "bad_request",
            Self::Limit { .. } => "limit",
            Self::Forbidden { .. } => "forbidden",
            Self::Timeout { .. } => "timeout",
            Self::OwnerGone { .. } => "owner_gone",
            Self::RequestInProgress { .. } => "request_in_progress",
            Self::IdempotencyKeyReused { .. } => "idempotency_key_reused",
            Self::Unavailable { .. } => "unavailable",
            Self::Failed { .. } => "failed",
            Self::Internal { .. } => "internal",
            Self::StoreConflict { .. } => "store_conflict",
            Self::CursorExpired { .. } => "cursor_expired",
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl<T> From<serde_path_to_error::Error<T>> for Error
where
    T: std::fmt::Display,
{
    fn from(e: serde_path_to_error::Error<T>) -> Self {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        Self::validation(path, e.inner().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_cross_the_wire_as_they_are() {
        let e = Error::not_found("power", "42");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["kind"], "not_found");
        assert_eq!(json["id"], "42");
        let back: Error = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.kind(), "not_found");
    }

    #[test]
    fn unknown_collection_reads_as_the_original() {
        assert_eq!(
            Error::unknown_collection("power").to_string(),
            "Unknown service power"
        );
    }
}
