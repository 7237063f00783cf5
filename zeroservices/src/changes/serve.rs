//! The owner's side of a change log read: the `zeroservices.changes` request.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{LogAfter, LogEntry, LogPage};
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
    let reply = reply_of(page, limit, &args.prefixes);
    serde_json::to_value(&reply).map_err(|e| Error::internal(e.to_string()))
}

/// The reply to a read of `limit` entries that gave `page`: the entries under `prefixes` (all
/// when empty), at most [`MAX_PAGE_BYTES`] of them; the same whether an owner read its store or
/// a follower read a durable copy of the log (NATS JetStream).
pub(crate) fn reply_of(page: LogPage, limit: usize, prefixes: &[String]) -> ChangesReply {
    let mut reply = ChangesReply {
        head: page.head,
        expired: page.expired,
        more: page.entries.len() >= limit,
        ..ChangesReply::default()
    };
    let mut bytes = 0;
    for entry in page.entries {
        let wanted = prefixes.is_empty() || prefixes.iter().any(|p| topic_matches(p, &entry.topic));
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
    reply
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::medium::MemoryCluster;

    #[crate::resource(collection = "item")]
    pub(crate) struct Item {
        pub(crate) n: i64,
    }

    /// What a peer may send as a log read: malformed arguments, a collection this node does
    /// not own, a log it does not hold, too many prefixes, a huge limit. Each is a clear error
    /// or a bounded page, never a panic.
    #[tokio::test]
    async fn hostile_reads_get_errors_or_bounded_pages() {
        let cluster = MemoryCluster::new();
        let node = Node::builder("item_service")
            .memory(&cluster)
            .resource::<Item>()
            .start()
            .await
            .unwrap();
        for n in 0..(MAX_PAGE as i64 + 20) {
            node.collection::<Item>().create(Item { n }).await.unwrap();
        }
        let log = node.local_store_of("item").unwrap().log_id().unwrap();
        let read = |args: Value| serve(&node, args);
        for bad in [
            json!(null),
            json!("x"),
            json!({"collection": "item"}),
            json!({"collection": 1, "log": log, "after": {"seq": 0}, "limit": 1}),
        ] {
            let e = read(bad.clone()).await.unwrap_err();
            assert_eq!(e.kind(), "validation", "{bad}: {e}");
        }
        let args = |collection: &str, log: &str, prefixes: Vec<String>, limit: usize| {
            json!({"collection": collection, "log": log, "after": {"seq": 0},
                   "prefixes": prefixes, "limit": limit})
        };
        let e = read(args("nope", &log, vec![], 1)).await.unwrap_err();
        assert_eq!(e.kind(), "unknown_collection");
        let e = read(args("item", "memory:forged", vec![], 1))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), "not_found");
        let many = vec!["item".to_owned(); 1025];
        let e = read(args("item", &log, many, 1)).await.unwrap_err();
        assert_eq!(e.kind(), "bad_request");
        // A huge limit is clamped to a page; the rest is announced.
        let page: ChangesReply =
            serde_json::from_value(read(args("item", &log, vec![], usize::MAX)).await.unwrap())
                .unwrap();
        assert_eq!(page.entries.len(), MAX_PAGE);
        assert!(page.more);
        // Prefixes that match nothing pass over entries and still move on.
        let page: ChangesReply = serde_json::from_value(
            read(args("item", &log, vec!["other".into()], 10))
                .await
                .unwrap(),
        )
        .unwrap();
        assert!(page.entries.is_empty());
        assert_eq!(page.through, 10);
        node.stop().await;
    }
}
