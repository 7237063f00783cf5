//! [`Collection`]: the typed client of one collection, the same on every node of the cluster.

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::json::from_value;
use crate::medium::Request;
use crate::protocol::{
    AddLinkArgs, Call, CreateArgs, Created, FollowLinksArgs, IncomingLinksArgs, LinkedResource,
    ListArgs, Page, PatchArgs,
};
use crate::{Change, Document, Error, EventStream, Node, Patch, Query, Resource, Result};

/// Whether a failed call may succeed if tried again.
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::Timeout { .. }
            | Error::Unavailable { .. }
            | Error::OwnerGone { .. }
            | Error::RequestInProgress { .. }
    )
}

/// The wait before attempt `attempt` (1 for the first retry).
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50)
        .saturating_mul(1 << attempt.saturating_sub(1).min(8))
        .min(MAX_BACKOFF)
}

/// The typed client of collection `R`: every call goes to the node that owns `R`, here or on a
/// peer, and behaves the same either way.
///
/// Get one with [`Node::collection`] or [`crate::Context::collection`].
pub struct Collection<R> {
    node: Node,
    retries: u32,
    _resource: PhantomData<fn() -> R>,
}

impl<R> Clone for Collection<R> {
    fn clone(&self) -> Self {
        Self {
            node: self.node.clone(),
            retries: self.retries,
            _resource: PhantomData,
        }
    }
}

/// The longest wait between two attempts of a retried call.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl<R: Resource> Collection<R> {
    pub(crate) fn new(node: Node) -> Self {
        Self {
            node,
            retries: 0,
            _resource: PhantomData,
        }
    }

    /// The collection name.
    pub fn name(&self) -> &'static str {
        R::COLLECTION
    }

    /// This client, retrying each call up to `retries` more times when it fails with an error
    /// that may pass ([`Error::Timeout`], [`Error::Unavailable`], [`Error::OwnerGone`],
    /// [`Error::RequestInProgress`]), waiting 50 ms, then twice as long each time (at most 2 s).
    ///
    /// A call that may change something is sent with a request id of its own, the same on
    /// every attempt: the owner runs it once and answers the copies with the first reply, so a
    /// retried create never creates twice (see the README's guarantees).
    ///
    /// ```no_run
    /// # use zeroservices::prelude::*;
    /// # #[resource(collection = "power")] pub struct Power { pub value: i64 }
    /// # async fn demo(node: Node) -> zeroservices::Result<()> {
    /// let powers = node.collection::<Power>().with_retries(3);
    /// let id = powers.create(Power { value: 2 }).await?; // at most once, even if retried
    /// # Ok(()) }
    /// ```
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    async fn request(&self, request: Request) -> Result<Value> {
        if self.retries == 0 {
            return self.node.request(request).await;
        }
        let request = self.with_request_id(request);
        let mut attempt = 0;
        loop {
            match self.node.request(request.clone()).await {
                Err(e) if attempt < self.retries && retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn request_as<T: DeserializeOwned>(&self, request: Request) -> Result<T> {
        if self.retries == 0 {
            return self.node.request_as(request).await;
        }
        let request = self.with_request_id(request);
        let mut attempt = 0;
        loop {
            match self.node.request_as(request.clone()).await {
                Err(e) if attempt < self.retries && retryable(&e) => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return other,
            }
        }
    }

    /// `request` with a request id when it may change something (all its attempts share it).
    fn with_request_id(&self, mut request: Request) -> Request {
        if request.request_id.is_none() && !Call::is_read(&request.action) {
            request.request_id = Some(self.node.new_request_id());
        }
        request
    }

    fn req(&self, action: &str) -> Request {
        Request::new(R::COLLECTION, action)
    }

    fn built_in(&self, call: Call) -> Request {
        call.into_request(R::COLLECTION)
    }

    /// Creates a resource with a fresh id; returns the id.
    pub async fn create(&self, resource: R) -> Result<String> {
        self.create_inner(None, &resource).await
    }

    /// Creates a resource with the given id; [`Error::DuplicateId`] if it is taken.
    pub async fn create_with_id(&self, id: &str, resource: R) -> Result<String> {
        self.create_inner(Some(id), &resource).await
    }

    async fn create_inner(&self, id: Option<&str>, resource: &R) -> Result<String> {
        let resource_data =
            serde_json::to_value(resource).map_err(|e| Error::internal(e.to_string()))?;
        let request = self.built_in(Call::Create {
            id: id.map(str::to_owned),
            args: CreateArgs { resource_data },
        });
        let reply: Created = self.request_as(request).await?;
        Ok(reply.resource_id)
    }

    /// Reads a resource.
    ///
    /// A stored document that does not decode into `R` (written by an older version, or by
    /// hand) is an [`Error::Internal`] naming its id and the field.
    pub async fn get(&self, id: &str) -> Result<R> {
        self.get_versioned(id).await.map(|(resource, _)| resource)
    }

    /// Reads a resource with its version (1 when created, one more at each change; the `ETag`
    /// of the REST API), for a later [`Collection::patch_if`] or [`Collection::delete_if`].
    pub async fn get_versioned(&self, id: &str) -> Result<(R, u64)> {
        let raw = self
            .node
            .request_raw(self.built_in(Call::Get { id: id.to_owned() }))
            .await?;
        match crate::json::from_raw::<Document<R>>(&raw) {
            Ok(reply) => Ok((reply.resource_data, reply.version)),
            Err(e) => Err(Error::internal(format!(
                "{} {id}: the stored document does not decode: {e}",
                R::COLLECTION
            ))),
        }
    }

    /// Applies an update document (`patch!({"$set": {...}})`) and returns the updated resource.
    pub async fn patch(&self, id: &str, patch: Patch) -> Result<R> {
        let request = self.built_in(Call::Patch {
            id: id.to_owned(),
            args: PatchArgs { patch },
        });
        let reply: Document<R> = self.request_as(request).await?;
        Ok(reply.resource_data)
    }

    /// Applies an update document only if the resource is still at `version` (read with
    /// [`Collection::get_versioned`]); returns the updated resource and its new version.
    ///
    /// # Errors
    /// [`Error::PreconditionFailed`] (nothing changed) when the resource is at another version:
    /// read it again and decide again. Otherwise those of [`Collection::patch`].
    pub async fn patch_if(&self, id: &str, version: u64, patch: Patch) -> Result<(R, u64)> {
        let request = self
            .built_in(Call::Patch {
                id: id.to_owned(),
                args: PatchArgs { patch },
            })
            .if_version(Some(version));
        let reply: Document<R> = self.request_as(request).await?;
        Ok((reply.resource_data, reply.version))
    }

    /// Deletes a resource.
    pub async fn delete(&self, id: &str) -> Result<()> {
        self.request(self.built_in(Call::Delete { id: id.to_owned() }))
            .await
            .map(drop)
    }

    /// Deletes a resource only if it is still at `version`; [`Error::PreconditionFailed`]
    /// (nothing deleted) otherwise.
    pub async fn delete_if(&self, id: &str, version: u64) -> Result<()> {
        let request = self
            .built_in(Call::Delete { id: id.to_owned() })
            .if_version(Some(version));
        self.request(request).await.map(drop)
    }

    /// Lists the resources matching a query (`query!({...})`, or `Query::all()`).
    ///
    /// The owner answers at most its page limit (`ZS_MAX_PAGE`, default 1,000) per request;
    /// a longer list is read page by page (`skip` moving on), so a change made meanwhile may
    /// be seen or missed. A stored document that does not decode into `R` is skipped, logged
    /// with its id and counted ([`crate::node::NodeStats::documents_skipped`]), never failing
    /// the whole list.
    pub async fn list(&self, query: Query) -> Result<Vec<Document<R>>> {
        #[derive(serde::Deserialize)]
        struct Id {
            resource_id: String,
        }
        let mut found = Vec::new();
        let mut skip = query.skip.unwrap_or(0);
        let mut wanted = query.limit.filter(|n| *n > 0);
        loop {
            let args = ListArgs {
                filter: Some(query.filter.clone()),
                sort: Some(query.sort.clone()),
                limit: wanted,
                skip: Some(skip),
                text: query.text.clone(),
                paged: true,
            };
            let page: Page<Box<RawValue>> =
                self.request_as(self.built_in(Call::List(args))).await?;
            let n = page.items.len() as u64;
            for item in page.items {
                match serde_json::from_str::<Document<R>>(item.get()) {
                    Ok(doc) => found.push(doc),
                    Err(e) => {
                        let id = serde_json::from_str::<Id>(item.get())
                            .map(|i| i.resource_id)
                            .unwrap_or_default();
                        tracing::warn!(
                            collection = R::COLLECTION,
                            resource_id = %id,
                            error = %e,
                            "a listed document does not decode; skipped"
                        );
                        self.node.count_skipped_document();
                    }
                }
            }
            if let Some(left) = &mut wanted {
                *left = left.saturating_sub(n);
                if *left == 0 {
                    break;
                }
            }
            if !page.more || n == 0 {
                break;
            }
            skip = skip.saturating_add(n);
        }
        Ok(found)
    }

    /// Calls a custom action on one resource (`#[action] async fn square(&mut self)`).
    pub async fn call<T: DeserializeOwned>(
        &self,
        id: &str,
        action: &str,
        args: impl Serialize,
    ) -> Result<T> {
        let args = serde_json::to_value(args).map_err(|e| Error::bad_request(e.to_string()))?;
        self.request_as(self.req(action).id(id).args(args)).await
    }

    /// Calls a custom action on the whole collection (`#[action(collection)]`).
    pub async fn call_collection<T: DeserializeOwned>(
        &self,
        action: &str,
        args: impl Serialize,
    ) -> Result<T> {
        let args = serde_json::to_value(args).map_err(|e| Error::bad_request(e.to_string()))?;
        self.request_as(self.req(action).args(args)).await
    }

    /// Links resource `id` to `target` (`(collection, id)`) under `relation`, as the original's
    /// `add_link`; publishes `<collection>.add_link.<id>`.
    pub async fn add_link(
        &self,
        id: &str,
        relation: &str,
        target: (&str, &str),
        title: Option<&str>,
    ) -> Result<()> {
        let args = AddLinkArgs {
            relation: relation.to_owned(),
            target_id: (target.0.to_owned(), target.1.to_owned()),
            title: title.map(str::to_owned),
        };
        let call = Call::AddLink {
            id: id.to_owned(),
            args,
        };
        self.request(self.built_in(call)).await.map(drop)
    }

    /// The resources that resource `id` links to under `relation`, typed as `T` (skipping links
    /// to other collections and to deleted resources).
    pub async fn follow_links<T: Resource>(
        &self,
        id: &str,
        relation: &str,
    ) -> Result<Vec<Document<T>>> {
        let call = Call::FollowLinks {
            id: id.to_owned(),
            args: FollowLinksArgs {
                relation: relation.to_owned(),
            },
        };
        let linked: Vec<LinkedResource> = self.request_as(self.built_in(call)).await?;
        linked
            .into_iter()
            .filter(|l| l.resource_name == T::COLLECTION)
            .map(|l| {
                Ok(Document {
                    resource_id: l.resource_id,
                    resource_data: from_value(l.resource_data)?,
                    version: l.version,
                })
            })
            .collect()
    }

    /// The resources of this collection that link to `target` (`(collection, id)`) under
    /// `relation`.
    pub async fn incoming_links(
        &self,
        relation: &str,
        target: (&str, &str),
    ) -> Result<Vec<Document<R>>> {
        let call = Call::IncomingLinks(IncomingLinksArgs {
            relation: relation.to_owned(),
            target_id: (target.0.to_owned(), target.1.to_owned()),
        });
        self.request_as(self.built_in(call)).await
    }

    /// Every change to this collection anywhere in the cluster, typed.
    pub fn subscribe(&self) -> ChangeStream<R> {
        ChangeStream {
            events: self.node.subscribe(R::COLLECTION),
            _resource: PhantomData,
        }
    }
}

/// A stream of typed changes; see [`Collection::subscribe`]. Events whose document does not fit
/// `R` (a peer with another version of the type) are logged and skipped.
pub struct ChangeStream<R> {
    events: EventStream,
    _resource: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Stream for ChangeStream<R> {
    type Item = Change<R>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Change<R>>> {
        loop {
            match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(event)) => match Change::from_event(&event) {
                    Ok(change) => return Poll::Ready(Some(change)),
                    Err(e) => {
                        tracing::warn!(topic = %event.topic, error = %e, "event skipped: does not fit the resource type");
                    }
                },
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
