//! Claims of a worker group, held at the owner of the collection: the `zeroservices.claim`
//! request.
//!
//! Replicas of one worker (the same name) ask the owner of a changed resource's collection for
//! the change before they handle it, keyed by worker name, resource id and version. The owner
//! keeps the claim in its store, with the records of the exactly-once layer
//! ([`Store::claim_request`](crate::store::Store::claim_request)), under keys of their own
//! (`worker:<name length>:<name>:<id>:<version>`: a peer cannot reach a request record through
//! this door, since the owner builds the key itself from bounded parts).
//!
//! - `claim`: the caller (`holder`, a node id) gets the change for `lease_ms` ([`Claimed::Won`]),
//!   unless another holder's lease runs ([`Claimed::Held`]) or it was completed
//!   ([`Claimed::Done`]). A claim by the holder itself renews its lease: a replica renews while
//!   its handler runs.
//! - `complete`: the change was handled; kept as long as the owner's change log keeps changes
//!   (`ZS_CHANGE_LOG_MS`, 24 hours by default): a replica that comes to it later (a restart that
//!   resumes from an older cursor, a poll check) skips it.
//! - `release`: the handler gave up; the claim is dropped if the caller still holds it, so a
//!   poll check or another replica tries again.
//!
//! The owner serialises the operations on one key (a renewal is a release and a claim, under
//! one lock): two replicas asking one owner never both win a change. Two owners over one
//! MongoDB database each serialise their own callers only: a renewal at one can race a claim at
//! the other in the instant between its release and its claim.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::medium::Request;
use crate::store::Claim;
use crate::{Error, Node, Result};

/// The pseudo-collection of claims, sent to an owner of the collection.
pub(crate) const CLAIMS: &str = "zeroservices.claim";

/// The longest worker name, and the longest holder id, a claim may carry.
pub(crate) const MAX_NAME_BYTES: usize = 128;
/// The shortest lease an owner grants, and the longest.
const MIN_LEASE: Duration = Duration::from_millis(100);
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// What a replica asks the owner.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClaimArgs {
    pub(crate) collection: String,
    /// The worker's name (its replicas share it).
    pub(crate) worker: String,
    pub(crate) resource_id: String,
    /// The resource's version the change made.
    pub(crate) version: u64,
    /// The replica's node id.
    pub(crate) holder: String,
    /// How long the claim holds without renewal.
    #[serde(default)]
    pub(crate) lease_ms: u64,
}

/// What the owner answers to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Claimed {
    /// The caller holds the change for the lease: it handles it, then completes or releases it.
    Won,
    /// Another replica holds it (its lease runs).
    Held {
        /// That replica's node id.
        by: String,
    },
    /// Handled already.
    Done,
}

/// The actions of [`CLAIMS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimAction {
    Claim,
    Complete,
    Release,
}

impl ClaimAction {
    fn name(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Complete => "complete",
            Self::Release => "release",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "claim" => Some(Self::Claim),
            "complete" => Some(Self::Complete),
            "release" => Some(Self::Release),
            _ => None,
        }
    }
}

/// One lock per stripe of keys: the operations on one key at this owner run one at a time.
static STRIPES: [tokio::sync::Mutex<()>; 64] = [const { tokio::sync::Mutex::const_new(()) }; 64];

fn stripe(key: &str) -> &'static tokio::sync::Mutex<()> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    &STRIPES[(hasher.finish() % STRIPES.len() as u64) as usize]
}

impl ClaimArgs {
    /// The key of the claim in the owner's store; checks every part's bounds.
    fn key(&self, node: &Node) -> Result<String> {
        let bounded = |what: &str, value: &str, max: usize| {
            if value.is_empty() || value.len() > max {
                Err(Error::bad_request(format!(
                    "a claim's {what} is 1 to {max} bytes"
                )))
            } else {
                Ok(())
            }
        };
        bounded("worker", &self.worker, MAX_NAME_BYTES)?;
        bounded("holder", &self.holder, MAX_NAME_BYTES)?;
        bounded("resource_id", &self.resource_id, node.limits().max_id_bytes)?;
        Ok(format!(
            "worker:{}:{}:{}:{}",
            self.worker.len(),
            self.worker,
            self.resource_id,
            self.version
        ))
    }
}

/// Serves a claim request from a replica (or this node's own worker).
pub(crate) async fn serve(node: &Node, action: &str, args: Value) -> Result<Value> {
    let Some(action) = ClaimAction::from_name(action) else {
        return Err(Error::bad_request(format!(
            "{CLAIMS} takes the actions claim, complete and release, not {action:.64}"
        )));
    };
    let args: ClaimArgs = crate::json::from_value(args)?;
    let Some(store) = node.local_store_of(&args.collection) else {
        return Err(Error::unknown_collection(args.collection));
    };
    let key = args.key(node)?;
    let collection = args.collection.as_str();
    let _one_at_a_time = stripe(&key).lock().await;
    let reply = match action {
        ClaimAction::Claim => {
            let lease = Duration::from_millis(args.lease_ms).clamp(MIN_LEASE, MAX_LEASE);
            match store
                .claim_request(collection, &key, &args.holder, lease)
                .await?
            {
                Claim::New => Claimed::Won,
                Claim::InProgress { fingerprint } if fingerprint == args.holder => {
                    // The holder's own claim: renewed (no other claim of this key runs
                    // meanwhile, at this owner).
                    store.release_request(collection, &key).await?;
                    match store
                        .claim_request(collection, &key, &args.holder, lease)
                        .await?
                    {
                        Claim::New => Claimed::Won,
                        other => state_of(other),
                    }
                }
                other => state_of(other),
            }
        }
        ClaimAction::Complete => {
            let keep = node.limits().change_log.max_age;
            let by = Value::from(args.holder.as_str());
            store.complete_request(collection, &key, &by, keep).await?;
            Claimed::Done
        }
        ClaimAction::Release => {
            // Only the holder's own claim (or none: the claim just made is dropped again).
            match store
                .claim_request(collection, &key, &args.holder, MIN_LEASE)
                .await?
            {
                Claim::New => store.release_request(collection, &key).await?,
                Claim::InProgress { fingerprint } if fingerprint == args.holder => {
                    store.release_request(collection, &key).await?;
                }
                _ => {}
            }
            Claimed::Won
        }
    };
    serde_json::to_value(&reply).map_err(|e| Error::internal(e.to_string()))
}

fn state_of(claim: Claim) -> Claimed {
    match claim {
        Claim::New => Claimed::Won,
        Claim::InProgress { fingerprint } => Claimed::Held { by: fingerprint },
        // A worker key is never marked applied (no request writes under it): done either way.
        Claim::Applied { .. } | Claim::Done { .. } => Claimed::Done,
    }
}

/// Sends a claim request to an owner of the collection: this node when it owns it, else the
/// first owner that answers.
pub(crate) async fn ask(node: &Node, action: ClaimAction, args: &ClaimArgs) -> Result<Claimed> {
    let value = serde_json::to_value(args).map_err(|e| Error::internal(e.to_string()))?;
    if node.local_store_of(&args.collection).is_some() {
        return crate::json::from_value(serve(node, action.name(), value).await?);
    }
    let mut last = None;
    for owner in node.owners_of(&args.collection) {
        let request = Request::new(CLAIMS, action.name()).args(value.clone());
        match node.call_node(&owner, request).await {
            Ok(reply) => return crate::json::from_value(reply),
            Err(e @ (Error::Unavailable { .. } | Error::Timeout { .. })) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::unavailable(format!(
            "no owner of {} to claim a change at",
            args.collection
        ))
    }))
}
