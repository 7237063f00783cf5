//! The owner's side of a collection: turns requests into typed, validated store calls and
//! publishes an event for every change.
//!
//! # Versions and lost updates
//!
//! Every change is a compare-and-set on the document's version in the store
//! ([`Store`]'s `expect`): a patch is previewed (schema, limits) on the version it read and
//! written only if that is still the stored one; a `&mut self` action runs on the document it
//! read and its result is written the same way. When another writer got in between (another
//! request, or another owner over the same database), the change runs again on the fresh
//! document, up to [`RETRIES`] times, then fails with [`Error::Conflict`] (409). A request with
//! [`Request::if_version`] is not re-run: it fails with [`Error::PreconditionFailed`] (412).
//! The per-id lock below only saves the retries between requests of this node; correctness
//! comes from the compare-and-set.

mod once;

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::access::{self, Operation, User};
use crate::changes::{LogNote, with_note};
use crate::constraints::Constraints;
use crate::json::{from_value, to_raw};
use crate::links;
use crate::medium::Request;
use crate::metrics::{Metrics, StoreOp, timed_store};
use crate::protocol::{
    ActionReply, AddLinkArgs, BuiltIn, Call, CreateArgs, Created, Document, FollowLinksArgs,
    IncomingLinksArgs, LinkedResource, ListArgs, Page, PatchArgs,
};
use crate::resource::{ActionCall, ResourceInfo};
use crate::store::{self, MARK, Store, check_version, current_mark, is_version_path, take_version};
use crate::{Context, Error, Event, Node, Patch, Query, Resource, Result};

/// A collection served by this node, with its type erased.
#[async_trait]
pub(crate) trait Service: Send + Sync + 'static {
    fn info(&self) -> ResourceInfo;
    /// The store the collection lives in.
    fn store(&self) -> &Arc<dyn Store>;
    /// Prepares the store (indexes).
    async fn prepare(&self) -> Result<()>;
    async fn handle(&self, node: &Node, request: Request) -> Result<Value>;
    /// [`Service::handle`], the reply as JSON text; the default serialises `handle`'s value.
    async fn handle_raw(&self, node: &Node, request: Request) -> Result<Box<RawValue>> {
        let value = self.handle(node, request).await?;
        to_raw(&value)
    }
}

/// How many times a change runs on a fresh document after losing its compare-and-set, before it
/// fails with [`Error::Conflict`].
pub(crate) const RETRIES: usize = 16;

pub(crate) struct ResourceService<R> {
    store: Arc<dyn Store>,
    /// The node's counters (the store operations' latency).
    metrics: Arc<Metrics>,
    /// Whether the store keeps a change log ([`Store::log_id`]).
    logs: bool,
    /// One lock per resource id being changed, so read-modify-write is atomic on this node.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The constraint keywords of the resource's schema and of its actions' arguments.
    rules: Arc<Rules>,
    _resource: PhantomData<fn() -> R>,
}

/// The compiled constraint keywords of a resource: of its document, and of each action's
/// argument that has any.
#[derive(Debug, Default)]
pub(crate) struct Rules {
    document: Constraints,
    args: HashMap<&'static str, Constraints>,
}

impl Rules {
    /// Compiles the constraint keywords of `R`'s schema and of its actions' arguments, once.
    ///
    /// # Errors
    /// A message for a schema whose keywords cannot be enforced (a `pattern` the regex crate
    /// does not compile): the node refuses to start, or the collection to register.
    pub(crate) fn of<R: Resource>() -> std::result::Result<Self, String> {
        let document = Constraints::compile(
            &R::schema(),
            &format!("the schema of the resource `{}`", R::COLLECTION),
        )?;
        let mut args = HashMap::new();
        for action in R::actions() {
            let Some(schema) = action.args_schema else {
                continue;
            };
            let what = format!(
                "the argument schema of the action `{}` of `{}`",
                action.name,
                R::COLLECTION
            );
            let rules = Constraints::compile(&schema(), &what)?;
            if !rules.is_empty() {
                args.insert(action.name, rules);
            }
        }
        Ok(Self { document, args })
    }
}

impl<R: Resource> ResourceService<R> {
    pub(crate) fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>, rules: Arc<Rules>) -> Self {
        Self {
            rules,
            metrics,
            logs: store.log_id().is_some(),
            store,
            locks: Mutex::new(HashMap::new()),
            _resource: PhantomData,
        }
    }

    fn collection(&self) -> &'static str {
        R::COLLECTION
    }

    async fn lock_id(&self, id: &str) -> IdGuard<'_, R> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(id.to_owned()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        IdGuard {
            service: self,
            id: id.to_owned(),
            _guard: guard,
            lock,
        }
    }

    fn require_id(&self, request: &Request) -> Result<String> {
        request.resource_id.clone().ok_or_else(|| {
            Error::bad_request(format!(
                "{} on {} needs a resource id",
                request.action,
                self.collection()
            ))
        })
    }

    /// A stored document without its version field, and its version.
    async fn load(&self, id: &str) -> Result<(Value, u64)> {
        let get = self.store.get(self.collection(), id);
        let mut doc = timed_store(&self.metrics, StoreOp::Get, get)
            .await?
            .ok_or_else(|| Error::not_found(self.collection(), id))?;
        let version = take_version(&mut doc);
        Ok((doc, version))
    }

    /// After a lost compare-and-set: `Ok` to run the change again on the fresh document, the
    /// error to answer otherwise ([`Error::PreconditionFailed`] as it is when the caller gave
    /// the version, [`Error::Conflict`] once [`RETRIES`] attempts lost).
    fn retry(
        &self,
        id: &str,
        error: Error,
        if_version: Option<u64>,
        attempt: &mut usize,
    ) -> Result<()> {
        match error {
            Error::PreconditionFailed { .. } if if_version.is_none() => {
                *attempt += 1;
                if *attempt < RETRIES {
                    tracing::debug!(
                        collection = self.collection(),
                        id,
                        attempt = *attempt,
                        "compare-and-set lost; running again"
                    );
                    Ok(())
                } else {
                    Err(Error::conflict(format!(
                        "{} {id} kept changing under this request: {RETRIES} attempts lost \
                         their compare-and-set to concurrent changes; nothing was changed, try \
                         again",
                        self.collection()
                    )))
                }
            }
            e => Err(e),
        }
    }

    /// Checks a document against the resource type and returns it as the type serialises it.
    /// Publishes `<collection>.<action>.<id>` with the payload `extra()` makes, only when some
    /// subscriber (here or on a peer) wants that topic: an event nobody listens to costs nothing.
    /// Every event carries the resource's `version` after the change.
    async fn emit(
        &self,
        node: &Node,
        action: BuiltIn,
        id: &str,
        version: u64,
        extra: impl FnOnce() -> Map<String, Value>,
    ) {
        let topic = format!("{}.{action}.{id}", self.collection());
        if node.wants_event(&topic) {
            let mut data = extra();
            data.insert("version".to_owned(), Value::from(version));
            node.publish(Event::resource(self.collection(), action.name(), id, data))
                .await;
        }
    }

    /// The note that has the store log a change (`None` when the store keeps no log or the log
    /// is off): the event's action, its payload besides the standard fields, and whether it
    /// carries the document after the change.
    fn note(
        &self,
        node: &Node,
        action: &'static str,
        extra: impl FnOnce() -> Map<String, Value>,
        with_document: bool,
    ) -> Option<Arc<LogNote>> {
        let retention = node.limits().change_log;
        (self.logs && retention.enabled())
            .then(|| LogNote::new(self.collection(), action, extra(), with_document, retention))
    }

    /// Publishes the event of a change: the one the store logged (it carries its cursor), or,
    /// when nothing was logged, `unlogged`'s (only if anybody wants it).
    async fn publish_change(
        &self,
        node: &Node,
        note: Option<&Arc<LogNote>>,
        unlogged: impl AsyncFnOnce(),
    ) {
        match note.and_then(|n| n.take_logged()) {
            Some(logged) => {
                node.log_written(&logged.0);
                if node.wants_event(&logged.0.topic) {
                    node.publish_shared(&logged.0).await;
                }
            }
            None => unlogged().await,
        }
    }

    /// Reads an incoming document as the resource type and returns it as the type writes it.
    /// A field the type does not declare is refused (422 naming it), `_links` too unless
    /// `links_ok` (a stored document's links, which only the link actions change).
    ///
    /// A document that is already as the type writes it (one the collection API serialised, a
    /// body naming every field) is returned itself, with the `null`s of the fields it left out
    /// added: not serialised again (`serde_json::to_value`) and compared.
    fn validate(&self, doc: Value, links_ok: bool) -> Result<Value> {
        let reserved = || {
            Error::validation(
                store::VERSION_FIELD,
                "`_version` is reserved for the resource's version, which the store keeps",
            )
        };
        if doc.get(store::VERSION_FIELD).is_some() {
            return Err(reserved());
        }
        let typed = self.decode(&doc)?;
        if let Some(missing) = crate::json::serializes_as_with_nulls(&typed, &doc)
            && !missing.contains(&store::VERSION_FIELD)
        {
            // Nothing undeclared (every field of `doc` is one the type writes), no `_version`.
            let mut doc = doc;
            if let Value::Object(map) = &mut doc {
                for field in missing {
                    map.insert(field.to_owned(), Value::Null);
                }
            }
            // The schema's constraint keywords, on the document as the type writes it.
            self.rules.document.check(&doc)?;
            return Ok(doc);
        }
        let normal = serde_json::to_value(&typed).map_err(|e| Error::internal(e.to_string()))?;
        if let Some(path) = undeclared_field(&doc, &normal, links_ok) {
            let message = if path == links::LINKS {
                "`_links` changes only through the link actions (add_link)".to_owned()
            } else {
                format!("unknown field: {} does not declare it", self.collection())
            };
            return Err(Error::validation(path, message));
        }
        if normal.get(store::VERSION_FIELD).is_some() {
            return Err(reserved());
        }
        // The schema's constraint keywords, on the document as the type writes it.
        self.rules.document.check(&normal)?;
        Ok(normal)
    }

    /// Reads a document as the resource type (fields it does not know are ignored).
    fn decode(&self, doc: &Value) -> Result<R> {
        // The plain deserialiser first (from a reference: no copy); only a document that fails
        // goes through the slower path-tracking one, for the error's field path.
        match R::deserialize(doc) {
            Ok(typed) => Ok(typed),
            Err(_) => {
                // JSON Schema's `integer` is any number without a fraction (`470.0` too), and the
                // OpenAPI document says `integer` for an integer field: read such numbers as
                // integers before giving up.
                if let Some(whole) = integral_floats_as_integers(doc)
                    && let Ok(typed) = R::deserialize(&whole)
                {
                    return Ok(typed);
                }
                from_value(doc.clone())
            }
        }
    }

    async fn create(&self, node: &Node, id: Option<String>, args: CreateArgs) -> Result<Value> {
        let id = self.insert(node, id, args).await?;
        reply(&Created {
            resource_id: id,
            version: 1,
        })
    }

    /// A create's reply as JSON text, written straight from the id (the same text as
    /// serialising [`Created`]: no reply object built).
    async fn create_raw(&self, node: &Node, request: Request) -> Result<Box<RawValue>> {
        #[derive(Serialize)]
        struct Reply<'a> {
            resource_id: &'a str,
            version: u64,
        }
        let Call::Create { id, args } = Call::parse(BuiltIn::Create, request)? else {
            return Err(Error::internal("a create parsed as another call"));
        };
        let id = self.insert(node, id, args).await?;
        to_raw(&Reply {
            resource_id: &id,
            version: 1,
        })
    }

    /// The work of a create: validates the document, inserts it (its change logged) and
    /// publishes the event; returns the new resource's id.
    async fn insert(&self, node: &Node, id: Option<String>, args: CreateArgs) -> Result<String> {
        let data = args.resource_data;
        node.limits().check_document(&data)?;
        let doc = self.validate(data, false)?;
        // One copy for the store, the validated document itself for the event.
        let note = self.note(node, BuiltIn::Create.name(), Map::new, true);
        let (stored, unlogged) = match &note {
            Some(note) => {
                note.set_document(doc.clone());
                (doc, None)
            }
            None => (doc.clone(), Some(doc)),
        };
        let insert = timed_store(
            &self.metrics,
            StoreOp::Insert,
            self.store.insert(self.collection(), id.as_deref(), stored),
        );
        let id = with_note(note.clone(), insert).await?;
        self.publish_change(node, note.as_ref(), async || {
            let doc = unlogged.unwrap_or_default();
            self.emit(node, BuiltIn::Create, &id, 1, || {
                Map::from_iter([("resource_data".to_owned(), doc)])
            })
            .await;
        })
        .await;
        Ok(id)
    }

    async fn get(&self, id: String) -> Result<Value> {
        let (doc, version) = self.load(&id).await?;
        Ok(Document {
            resource_id: id,
            resource_data: doc,
            version,
        }
        .into_value())
    }

    async fn patch(
        &self,
        node: &Node,
        id: String,
        args: PatchArgs,
        if_version: Option<u64>,
    ) -> Result<Value> {
        let patch = args.patch;
        let limits = node.limits();
        let update = patch.compile_with(limits)?;
        for path in update.fields() {
            if links::is_links_path(&path) {
                return Err(Error::validation(
                    path,
                    "`_links` changes only through the link actions (add_link)",
                ));
            }
            if is_version_path(&path) {
                return Err(Error::validation(
                    path,
                    "`_version` is the resource's version, which only the store changes",
                ));
            }
        }
        let _guard = self.lock_id(&id).await;
        let mut attempt = 0;
        loop {
            // Apply to a copy first: a patch that breaks the schema or a limit is refused and
            // changes nothing. The store applies it only to the version previewed.
            let (mut preview, version) = self.load(&id).await?;
            check_version(self.collection(), &id, version, if_version)?;
            update.apply(&mut preview)?;
            limits.check_document(&preview)?;
            self.validate(preview, true)?;
            let note = self.note(
                node,
                BuiltIn::Patch.name(),
                || Map::from_iter([("patch".to_owned(), patch.as_value().clone())]),
                true,
            );
            let write = timed_store(
                &self.metrics,
                StoreOp::Patch,
                self.store
                    .patch(self.collection(), &id, &patch, Some(version)),
            );
            match with_note(note.clone(), write).await {
                Ok(mut doc) => {
                    let version = take_version(&mut doc);
                    self.publish_change(node, note.as_ref(), async || {
                        self.emit(node, BuiltIn::Patch, &id, version, || {
                            Map::from_iter([
                                ("patch".to_owned(), patch.as_value().clone()),
                                ("resource_data".to_owned(), doc.clone()),
                            ])
                        })
                        .await;
                    })
                    .await;
                    return Ok(Document {
                        resource_id: id,
                        resource_data: doc,
                        version,
                    }
                    .into_value());
                }
                Err(e) => self.retry(&id, e, if_version, &mut attempt)?,
            }
        }
    }

    async fn delete(&self, node: &Node, id: String, if_version: Option<u64>) -> Result<Value> {
        let _guard = self.lock_id(&id).await;
        let note = self.note(node, BuiltIn::Delete.name(), Map::new, false);
        let write = timed_store(
            &self.metrics,
            StoreOp::Delete,
            self.store.delete(self.collection(), &id, if_version),
        );
        let version = with_note(note.clone(), write).await?;
        self.publish_change(node, note.as_ref(), async || {
            // The delete is a change too: its event carries the version after the last one.
            let data = Map::from_iter([("version".to_owned(), Value::from(version + 1))]);
            node.publish(Event::resource(
                self.collection(),
                BuiltIn::Delete.name(),
                &id,
                data,
            ))
            .await;
        })
        .await;
        Ok(Value::Null)
    }

    async fn list(&self, node: &Node, args: ListArgs) -> Result<Value> {
        let limits = node.limits();
        let filter = args.filter.unwrap_or_else(|| json!({}));
        limits.check_filter(&filter)?;
        // One more than the page: tells whether the page was cut short.
        let page = limits.page(args.limit);
        let query = Query {
            filter,
            sort: args.sort.unwrap_or_default(),
            limit: Some(page as u64 + 1),
            skip: args.skip,
            text: args.text,
        };
        query.filter()?; // a malformed filter is a bad request on every backend
        let list = self.store.list(self.collection(), &query);
        let mut docs = timed_store(&self.metrics, StoreOp::List, list).await?;
        let more = docs.len() > page;
        docs.truncate(page);
        let items = documents(docs);
        Ok(if args.paged {
            Page { items, more }.into_value()
        } else {
            Value::Array(items.into_iter().map(Document::into_value).collect())
        })
    }

    /// Asks the node's authorizer, for a request that carries a user, whether it may do what
    /// the request asks of this collection.
    fn authorize(&self, node: &Node, request: &Request) -> Result<()> {
        match &request.user {
            Some(user) => access::check(
                node.authorizer().map(|a| &**a),
                Some(user),
                self.collection(),
                &Operation::of(request),
            ),
            None => Ok(()),
        }
    }

    async fn add_link(
        &self,
        node: &Node,
        id: String,
        link: AddLinkArgs,
        user: Option<&User>,
        if_version: Option<u64>,
    ) -> Result<Value> {
        links::check_relation(&link.relation)?;
        // A write on the source (asked before), a read of the target's collection.
        if user.is_some() {
            access::check(
                node.authorizer().map(|a| &**a),
                user,
                &link.target_id.0,
                &Operation::Get,
            )?;
        }
        node.limits().check_id(&link.target_id.1)?;
        let patch = Patch::new(links::add_link_patch(&link));
        let update = patch.compile()?;
        let _guard = self.lock_id(&id).await;
        let mut attempt = 0;
        let link_fields = || {
            let mut extra = Map::new();
            extra.insert("relation".into(), Value::from(link.relation.clone()));
            extra.insert(
                "target_id".into(),
                json!([link.target_id.0, link.target_id.1]),
            );
            extra.insert("title".into(), json!(link.title));
            extra
        };
        let (version, note) = loop {
            // Links grow the document: the limits hold for them as for any change.
            let (mut preview, version) = self.load(&id).await?;
            check_version(self.collection(), &id, version, if_version)?;
            update.apply(&mut preview)?;
            node.limits().check_document(&preview)?;
            let note = self.note(node, BuiltIn::AddLink.name(), link_fields, false);
            let write = timed_store(
                &self.metrics,
                StoreOp::Patch,
                self.store
                    .patch(self.collection(), &id, &patch, Some(version)),
            );
            match with_note(note.clone(), write).await {
                Ok(doc) => break (store::version_of(&doc), note),
                Err(e) => self.retry(&id, e, if_version, &mut attempt)?,
            }
        };
        self.publish_change(node, note.as_ref(), async || {
            let mut extra = link_fields();
            extra.insert("version".into(), Value::from(version));
            node.publish(Event::resource(
                self.collection(),
                BuiltIn::AddLink.name(),
                &id,
                extra,
            ))
            .await;
        })
        .await;
        Ok(Value::Null)
    }

    async fn follow_links(
        &self,
        node: &Node,
        id: String,
        args: FollowLinksArgs,
        user: Option<User>,
    ) -> Result<Value> {
        links::check_relation(&args.relation)?;
        let (doc, _) = self.load(&id).await?;
        let mut found = Vec::new();
        for (collection, target, title) in links::targets(&doc, &args.relation) {
            // Each target is a read of its collection: one the user may not read is left out,
            // here or (the read carries the user) by the target's owner.
            if let Some(user) = &user
                && access::check(
                    node.authorizer().map(|a| &**a),
                    Some(user),
                    &collection,
                    &Operation::Get,
                )
                .is_err()
            {
                continue;
            }
            let get = Call::Get { id: target.clone() }
                .into_request(collection.clone())
                .user(user.clone());
            match node.request_as::<Document<Value>>(get).await {
                Ok(reply) => found.push(LinkedResource {
                    resource_name: collection,
                    resource_id: target,
                    resource_data: reply.resource_data,
                    version: reply.version,
                    title,
                }),
                // A link to a deleted resource is skipped, not an error of the whole call.
                Err(Error::NotFound { .. }) => {
                    tracing::debug!(%collection, %target, "link target gone; skipped");
                }
                Err(Error::Forbidden { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        reply(&found)
    }

    async fn incoming_links(&self, node: &Node, args: IncomingLinksArgs) -> Result<Value> {
        links::check_relation(&args.relation)?;
        // The target is a collection and an id like add_link's (its schema says so).
        if args.target_id.0.is_empty() {
            return Err(Error::validation(
                "target_id",
                "the target's collection is empty",
            ));
        }
        node.limits().check_id(&args.target_id.1)?;
        let query = Query::new(links::incoming_filter(&args));
        let list = self.store.list(self.collection(), &query);
        let docs = timed_store(&self.metrics, StoreOp::List, list).await?;
        Ok(Value::Array(
            documents(docs)
                .into_iter()
                .map(Document::into_value)
                .collect(),
        ))
    }

    async fn action(&self, node: &Node, request: Request) -> Result<Value> {
        let Some(def) = R::actions().iter().find(|a| a.name == request.action) else {
            return Err(Error::UnknownAction {
                collection: self.collection().to_owned(),
                action: request.action,
            });
        };
        let if_version = request.if_version;
        let with_version = request.with_version;
        let answer = |result: Value, version: u64| {
            if with_version {
                reply(&ActionReply { result, version })
            } else {
                Ok(result)
            }
        };
        if let Some(rules) = self.rules.args.get(def.name) {
            // The argument's constraint keywords (its shape is serde's, when the action reads it).
            rules.check(&request.args)?;
        }
        let ctx = || Context::new(node.clone(), self.collection(), request.resource_id.clone());
        match &def.call {
            ActionCall::Collection(call) => {
                if request.resource_id.is_some() {
                    return Err(Error::bad_request(format!(
                        "{} is a collection action: call it without a resource id",
                        def.name
                    )));
                }
                if if_version.is_some() {
                    return Err(Error::bad_request(format!(
                        "{} is a collection action: a version condition (If-Match) applies to \
                         one resource",
                        def.name
                    )));
                }
                call(ctx(), request.args).await
            }
            ActionCall::Read(call) => {
                let id = self.require_id(&request)?;
                let (stored, version) = self.load(&id).await?;
                check_version(self.collection(), &id, version, if_version)?;
                let resource = self.decode(&stored)?;
                let result = call(&resource, ctx(), request.args).await?;
                answer(result, version)
            }
            ActionCall::Mutate(call) => {
                let id = self.require_id(&request)?;
                let _guard = self.lock_id(&id).await;
                let mut attempt = 0;
                // The action runs on the document it read; its result is written only if that
                // is still the stored version, otherwise it runs again on the fresh one.
                let (after, result, version, note) = loop {
                    let (stored, version) = self.load(&id).await?;
                    check_version(self.collection(), &id, version, if_version)?;
                    let mut resource = self.decode(&stored)?;
                    let result = call(&mut resource, ctx(), request.args.clone()).await?;
                    let mut after = serde_json::to_value(&resource)
                        .map_err(|e| Error::internal(e.to_string()))?;
                    // Fields the type does not know (links) survive the action.
                    if let (Some(links), Value::Object(map)) =
                        (stored.get(links::LINKS), &mut after)
                    {
                        map.insert(links::LINKS.into(), links.clone());
                    }
                    node.limits().check_document(&after)?;
                    if after == stored {
                        break (after, result, version, None);
                    }
                    // The action's result is held to the schema's constraints like any write.
                    self.rules.document.check(&after)?;
                    if let Some(mark) = current_mark(self.collection()) {
                        // Recorded with the change (in backends that can): the reply this
                        // request gives if the compare-and-set below wins.
                        let recorded = answer(result.clone(), version + 1)?;
                        *mark.reply.lock().unwrap_or_else(|e| e.into_inner()) = Some(recorded);
                    }
                    let note = self.note(
                        node,
                        def.name,
                        || Map::from_iter([("result".to_owned(), result.clone())]),
                        true,
                    );
                    let write = timed_store(
                        &self.metrics,
                        StoreOp::Replace,
                        self.store
                            .replace(self.collection(), &id, after.clone(), Some(version)),
                    );
                    match with_note(note.clone(), write).await {
                        Ok(version) => break (after, result, version, note),
                        Err(e) => self.retry(&id, e, if_version, &mut attempt)?,
                    }
                };
                // An action that changed nothing is published too (as before), unlogged.
                self.publish_change(node, note.as_ref(), async || {
                    let mut extra = Map::new();
                    extra.insert("resource_data".into(), after);
                    extra.insert("result".into(), result.clone());
                    extra.insert("version".into(), Value::from(version));
                    node.publish(Event::resource(self.collection(), def.name, &id, extra))
                        .await;
                })
                .await;
                answer(result, version)
            }
        }
    }
}

#[async_trait]
impl<R: Resource> Service for ResourceService<R> {
    fn info(&self) -> ResourceInfo {
        R::info()
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    async fn prepare(&self) -> Result<()> {
        let text: Vec<String> = R::text_index().iter().map(|s| (*s).to_owned()).collect();
        self.store.ensure_collection(self.collection(), &text).await
    }

    async fn handle_raw(&self, node: &Node, request: Request) -> Result<Box<RawValue>> {
        if request.action == BuiltIn::Create.name() {
            // Boxed: a get (below) is the hot path, and this future is copied into a box per
            // call; it should not carry a create's larger state.
            return Box::pin(self.handle_create_raw(node, request)).await;
        }
        if request.action != BuiltIn::Get.name() {
            // `handle` checks the id.
            let value = self.handle(node, request).await?;
            return to_raw(&value);
        }
        // A read is serialised straight from the stored document: no reply object built.
        self.authorize(node, &request)?;
        let id = self.require_id(&request)?;
        node.limits().check_id(&id)?;
        let span = tracing::debug_span!("zs.store", collection = self.collection(), action = "get");
        let (doc, version) = tracing::Instrument::instrument(self.load(&id), span).await?;
        #[derive(Serialize)]
        struct Reply<'a> {
            resource_id: &'a str,
            resource_data: &'a Value,
            version: u64,
        }
        to_raw(&Reply {
            resource_id: &id,
            resource_data: &doc,
            version,
        })
    }

    async fn handle(&self, node: &Node, request: Request) -> Result<Value> {
        self.authorize(node, &request)?;
        if let Some(id) = &request.resource_id {
            node.limits().check_id(id)?;
        }
        match self.remembered_as(node, &request)? {
            // Boxed: the remembered path's state is large; a plain call should not carry it.
            Some((key, keep)) => Box::pin(self.once(node, request, key, keep)).await,
            // Its writes belong to no remembered request (not to one it is nested in, when an
            // action calls this collection).
            None => MARK.scope(None, self.dispatch(node, request)).await,
        }
    }
}

impl<R: Resource> ResourceService<R> {
    /// [`Service::handle`] of a create, answered as JSON text: the same checks in the same
    /// order; a remembered request (a request id, an `Idempotency-Key`) goes through
    /// [`Self::once`] as before, whose reply is the one recorded.
    async fn handle_create_raw(&self, node: &Node, request: Request) -> Result<Box<RawValue>> {
        self.authorize(node, &request)?;
        if let Some(id) = &request.resource_id {
            node.limits().check_id(id)?;
        }
        if let Some((key, keep)) = self.remembered_as(node, &request)? {
            let value = Box::pin(self.once(node, request, key, keep)).await?;
            return to_raw(&value);
        }
        let span = tracing::debug_span!(
            "zs.store",
            collection = self.collection(),
            action = BuiltIn::Create.name(),
        );
        let create = tracing::Instrument::instrument(self.create_raw(node, request), span);
        MARK.scope(None, create).await
    }

    async fn dispatch(&self, node: &Node, request: Request) -> Result<Value> {
        let Some(action) = BuiltIn::from_name(&request.action) else {
            return self.action(node, request).await;
        };
        // The built-in action with its store operations.
        let span = tracing::debug_span!(
            "zs.store",
            collection = self.collection(),
            action = action.name(),
        );
        tracing::Instrument::instrument(self.built_in(node, action, request), span).await
    }

    async fn built_in(&self, node: &Node, action: BuiltIn, request: Request) -> Result<Value> {
        let user = request.user.clone();
        let if_version = request.if_version;
        match Call::parse(action, request)? {
            Call::Create { id, args } => self.create(node, id, args).await,
            Call::Get { id } => self.get(id).await,
            Call::Patch { id, args } => self.patch(node, id, args, if_version).await,
            Call::Delete { id } => self.delete(node, id, if_version).await,
            Call::List(args) => self.list(node, args).await,
            // Boxed: the link calls are rare and their futures the largest; inline, every
            // built-in call's future (a get's, a create's) would carry their size.
            Call::AddLink { id, args } => {
                Box::pin(self.add_link(node, id, args, user.as_ref(), if_version)).await
            }
            Call::FollowLinks { id, args } => {
                Box::pin(self.follow_links(node, id, args, user)).await
            }
            Call::IncomingLinks(args) => self.incoming_links(node, args).await,
        }
    }
}

/// A reply as JSON (the protocol's reply types always serialise).
fn reply<T: Serialize>(value: &T) -> Result<Value> {
    serde_json::to_value(value).map_err(|e| Error::internal(e.to_string()))
}

/// Stored documents as the protocol's [`Document`]s, their versions moved out of the data.
fn documents(docs: Vec<(String, Value)>) -> Vec<Document<Value>> {
    docs.into_iter()
        .map(|(resource_id, mut resource_data)| {
            let version = take_version(&mut resource_data);
            Document {
                resource_id,
                resource_data,
                version,
            }
        })
        .collect()
}

/// The first field of `input` that the resource type dropped when it read it (absent from
/// its `normal` form), as a path (`a.b`, `items[2].name`): a field the schema does not declare.
/// A `null` the type dropped is not one (an `Option` it does not write). The top-level
/// `_links` passes when `links_ok`. Paths are built only for containers and the answer.
fn undeclared_field(input: &Value, normal: &Value, links_ok: bool) -> Option<String> {
    let mut stack: Vec<(&Value, &Value, String)> = vec![(input, normal, String::new())];
    while let Some((input, normal, path)) = stack.pop() {
        let join = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match (input, normal) {
            (Value::Object(input), Value::Object(normal)) => {
                for (key, value) in input {
                    match normal.get(key) {
                        Some(written) if value.is_object() || value.is_array() => {
                            stack.push((value, written, join(key)));
                        }
                        Some(_) => {}
                        None if value.is_null() => {}
                        None if links_ok && path.is_empty() && key == links::LINKS => {}
                        None => return Some(join(key)),
                    }
                }
            }
            (Value::Array(input), Value::Array(normal)) if input.len() == normal.len() => {
                for (i, (value, written)) in input.iter().zip(normal).enumerate() {
                    if value.is_object() || value.is_array() {
                        stack.push((value, written, format!("{path}[{i}]")));
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Holds a resource's lock; forgets the lock when nobody else waits for it.
struct IdGuard<'a, R> {
    service: &'a ResourceService<R>,
    id: String,
    _guard: tokio::sync::OwnedMutexGuard<()>,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl<R> Drop for IdGuard<'_, R> {
    fn drop(&mut self) {
        let mut locks = self.service.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Three references: the map, this guard, and the mutex guard. More means a waiter.
        if Arc::strong_count(&self.lock) <= 3 {
            locks.remove(&self.id);
        }
    }
}

/// `doc` with every float that has no fraction (and fits an `i64` or `u64`) written as an
/// integer; `None` when there is none.
fn integral_floats_as_integers(doc: &Value) -> Option<Value> {
    fn walk(value: &mut Value) -> bool {
        match value {
            Value::Number(n) if n.is_f64() => {
                let Some(f) = n.as_f64() else { return false };
                // Only where a float is exact (|f| <= 2^53): a larger one may be a rounded
                // integer out of range (-2^63 - 1 reads as -2^63).
                const EXACT: f64 = 9_007_199_254_740_992.0;
                if f.fract() == 0.0 && f.abs() <= EXACT {
                    *value = Value::from(f as i64);
                    true
                } else {
                    false
                }
            }
            // Every element is visited (no short cut): each may need its rewrite.
            Value::Array(items) => {
                let mut any = false;
                for v in items {
                    any |= walk(v);
                }
                any
            }
            Value::Object(map) => {
                let mut any = false;
                for v in map.values_mut() {
                    any |= walk(v);
                }
                any
            }
            _ => false,
        }
    }
    let mut copy = doc.clone();
    walk(&mut copy).then_some(copy)
}
