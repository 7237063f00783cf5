//! The owner's side of a change log read: the `zeroservices.changes` request.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LogAfter, LogEntry};
use crate::event::topic_matches;
use crate::{Error, Node, Result};

/// The pseudo-collection of a change log read, sent to an owner of the collection.
pub(crate) const CHANGES: &str = "zeroservices.changes";

/// The most entries one read returns.
pub(crate) const MAX_PAGE: usize = 512;
/// A read stops adding entries past this many bytes of JSON (at least one entry is returned).
pub(crate) const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What a reader asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChangesArgs {
    pub(crate) collection: String,
    pub(crate) log: String,
    pub(crate) after: LogAfter,
    /// Only entries whose topic falls under one of these (all when empty); the others are
    /// passed over (`through` moves past them).
    #[serde(default)]
    pub(crate) prefixes: Vec<String>,
    pub(crate) limit: usize,
}

/// What the owner answers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ChangesReply {
    /// The matching entries, in order.
    pub(crate) entries: Vec<LogEntry>,
    /// The sequence number read up to (the reader's next position), matching or not; 0 when
    /// nothing was read.
    pub(crate) through: u64,
    pub(crate) head: u64,
    pub(crate) expired: bool,
    /// Whether entries are left after `through`.
    pub(crate) more: bool,
}

/// Serves a read of one of this node's change logs.
pub(crate) async fn serve(node: &Node, args: Value) -> Result<Value> {
    let args: ChangesArgs = crate::json::from_value(args)?;
    if args.prefixes.len() > 1024 {
        return Err(Error::bad_request(
            "a change log read names at most 1024 prefixes",
        ));
    }
    let Some(store) = node.local_store_of(&args.collection) else {
        return Err(Error::unknown_collection(args.collection));
    };
    let limit = args.limit.clamp(1, MAX_PAGE);
    let page = store
        .read_log(&args.collection, &args.log, args.after, limit)
        .await?
        .ok_or_else(|| Error::not_found(format!("change log of {}", args.collection), &args.log))?;
    let mut reply = ChangesReply {
        head: page.head,
        expired: page.expired,
        more: page.entries.len() >= limit,
        ..ChangesReply::default()
    };
    let mut bytes = 0;
    for entry in page.entries {
        let wanted = args.prefixes.is_empty()
            || args.prefixes.iter().any(|p| topic_matches(p, &entry.topic));
        if wanted {
            if bytes > MAX_PAGE_BYTES {
                // The rest in the next read.
                reply.more = true;
                break;
            }
            bytes += serde_json::to_vec(&entry.data).map_or(0, |v| v.len()) + entry.topic.len();
            reply.through = entry.seq;
            reply.entries.push(entry);
        } else {
            reply.through = entry.seq;
        }
    }
    serde_json::to_value(&reply).map_err(|e| Error::internal(e.to_string()))
}
