//! A two-node in-process cluster: node B owns nothing and uses node A's `power` collection
//! through the typed client, exactly as it would over the network.

use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use zeroservices::NodeInfo;
use zeroservices::discovery::Discovery;
use zeroservices::medium::{MemoryCluster, Request};
use zeroservices::prelude::*;

/// Whether a power has been computed.
#[model]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for a worker.
    #[default]
    Pending,
    /// Computed.
    Done,
}

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// Pending or done.
    #[serde(default)]
    pub status: Status,
    /// `value * value` once done.
    pub result: Option<i64>,
    /// Free text.
    pub description: Option<String>,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Nested data, for dotted paths.
    #[serde(default)]
    pub meta: Meta,
}

/// Nested data.
#[model]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Meta {
    /// A counter.
    #[serde(default)]
    pub hits: i64,
    /// An owner.
    pub owner: Option<String>,
}

/// Arguments of `reset`.
#[model]
pub struct ResetArgs {
    /// The value every power is reset to.
    pub value: i64,
}

/// Arguments of `add`.
#[model]
pub struct AddArgs {
    /// How much to add.
    pub amount: i64,
}

#[actions]
impl Power {
    /// Squares the value and stores the result.
    #[action]
    async fn square(&mut self) -> Result<i64> {
        let r = self.value * self.value;
        self.result = Some(r);
        self.status = Status::Done;
        Ok(r)
    }

    /// Adds to the value; refuses negative amounts.
    #[action]
    async fn add(&mut self, args: AddArgs) -> Result<i64> {
        if args.amount < 0 {
            return Err(Error::failed("amount must not be negative"));
        }
        self.value += args.amount;
        Ok(self.value)
    }

    /// Reads the value, doubled; changes nothing.
    #[action]
    async fn double(&self, ctx: &Context) -> Result<i64> {
        assert!(ctx.resource_id().is_some());
        Ok(self.value * 2)
    }

    /// Sets every power back to pending with a new value; returns how many changed.
    #[action(collection)]
    async fn reset(ctx: &Context, args: ResetArgs) -> Result<u64> {
        let powers = ctx.collection::<Power>();
        let mut n = 0;
        for doc in powers.list(Query::all()).await? {
            let patch = patch!({"$set": {"value": args.value, "status": "pending"}, "$unset": {"result": ""}});
            powers.patch(&doc.resource_id, patch).await?;
            n += 1;
        }
        Ok(n)
    }
}

fn power(value: i64) -> Power {
    Power {
        value,
        status: Status::Pending,
        result: None,
        description: None,
        tags: vec![],
        meta: Meta::default(),
    }
}

struct Cluster {
    a: Node,
    b: Node,
}

async fn cluster() -> Cluster {
    let cluster = MemoryCluster::new();
    let a = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .start()
        .await
        .unwrap();
    let b = Node::builder("client")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    Cluster { a, b }
}

/// Takes the next event, failing after a deadline instead of hanging.
async fn next_event(stream: &mut (impl futures::Stream<Item = Event> + Unpin)) -> Event {
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("no event within 5 s")
        .expect("event stream ended")
}

#[tokio::test]
async fn node_without_resources_uses_a_remote_collection() {
    let Cluster { a, b } = cluster().await;
    assert_eq!(b.local_collections(), Vec::<String>::new());
    assert_eq!(b.collections(), vec!["power".to_owned()]);
    let mut events = b.subscribe("power");
    let powers = b.collection::<Power>();

    // create, with a generated id and with a chosen one
    let id = powers.create(power(3)).await.unwrap();
    assert_eq!(id.len(), 32);
    let ev = next_event(&mut events).await;
    assert_eq!(ev.topic, format!("power.create.{id}"));
    assert_eq!(ev.data["action"], "create");
    assert_eq!(ev.data["resource_name"], "power");
    assert_eq!(ev.data["resource_id"], id.as_str());
    assert_eq!(ev.data["resource_data"]["value"], 3);
    assert_eq!(ev.data["resource_data"]["status"], "pending");

    let fixed = powers.create_with_id("p/42-x", power(4)).await.unwrap();
    assert_eq!(fixed, "p/42-x");
    next_event(&mut events).await;

    // the resource lives on A
    let on_a = a.store().get("power", &id).await.unwrap().unwrap();
    assert_eq!(on_a["value"], 3);
    assert!(b.store().get("power", &id).await.unwrap().is_none());

    // get
    assert_eq!(powers.get(&id).await.unwrap(), power(3));

    // patch: every update operator, one after the other, each with its event
    let p = powers
        .patch(
            &id,
            patch!({"$set": {"description": "three", "meta.owner": "ann"}}),
        )
        .await
        .unwrap();
    assert_eq!(p.description.as_deref(), Some("three"));
    assert_eq!(p.meta.owner.as_deref(), Some("ann"));
    let ev = next_event(&mut events).await;
    assert_eq!(ev.topic, format!("power.patch.{id}"));
    assert_eq!(
        ev.data["patch"],
        json!({"$set": {"description": "three", "meta.owner": "ann"}})
    );
    assert_eq!(ev.data["resource_data"]["description"], "three");

    let p = powers
        .patch(&id, patch!({"$inc": {"value": 2, "meta.hits": 1}}))
        .await
        .unwrap();
    assert_eq!((p.value, p.meta.hits), (5, 1));
    next_event(&mut events).await;

    let p = powers
        .patch(&id, patch!({"$push": {"tags": "odd"}}))
        .await
        .unwrap();
    let p2 = powers
        .patch(&id, patch!({"$push": {"tags": "prime"}}))
        .await
        .unwrap();
    assert_eq!(p.tags, vec!["odd"]);
    assert_eq!(p2.tags, vec!["odd", "prime"]);
    next_event(&mut events).await;
    next_event(&mut events).await;

    let p = powers
        .patch(&id, patch!({"$pull": {"tags": "odd"}}))
        .await
        .unwrap();
    assert_eq!(p.tags, vec!["prime"]);
    next_event(&mut events).await;

    let p = powers
        .patch(&id, patch!({"$unset": {"description": ""}}))
        .await
        .unwrap();
    assert_eq!(p.description, None);
    let ev = next_event(&mut events).await;
    assert_eq!(ev.data["patch"], json!({"$unset": {"description": ""}}));

    // list with filters, sort, skip, limit
    for v in [10, 20, 30] {
        powers.create(power(v)).await.unwrap();
        next_event(&mut events).await;
    }
    let values = |docs: Vec<Document<Power>>| {
        docs.into_iter()
            .map(|d| d.resource_data.value)
            .collect::<Vec<_>>()
    };
    let all = powers
        .list(Query::all().sort("value", Order::Asc))
        .await
        .unwrap();
    assert_eq!(values(all), vec![4, 5, 10, 20, 30]);
    let big = powers
        .list(
            query!({"value": {"$gte": 10}})
                .sort("value", Order::Desc)
                .skip(1)
                .limit(1),
        )
        .await
        .unwrap();
    assert_eq!(values(big), vec![20]);
    let tagged = powers.list(query!({"tags": "prime"})).await.unwrap();
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].resource_id, id);
    let dotted = powers
        .list(query!({"meta.owner": {"$in": ["ann", "bob"]}}))
        .await
        .unwrap();
    assert_eq!(values(dotted), vec![5]);
    let either = powers
        .list(query!({"$or": [{"value": 4}, {"value": {"$gt": 25}}]}).sort("value", Order::Asc))
        .await
        .unwrap();
    assert_eq!(values(either), vec![4, 30]);

    // delete
    powers.delete(&fixed).await.unwrap();
    let mut ev = next_event(&mut events).await;
    assert_eq!(ev.topic, "power.delete.p/42-x");
    // Its position in the owner's change log (opaque).
    let cursor = ev.data.as_object_mut().unwrap().remove("cursor");
    assert!(cursor.is_some_and(|c| c.is_string()));
    assert_eq!(
        ev.data,
        json!({"action": "delete", "resource_name": "power", "resource_id": "p/42-x",
               "version": 2}),
        "the delete is the second change of a resource created and never patched"
    );
    assert!(matches!(
        powers.get(&fixed).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        powers.delete(&fixed).await,
        Err(Error::NotFound { .. })
    ));

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn custom_actions_run_on_the_owner() {
    let Cluster { a, b } = cluster().await;
    let powers = b.collection::<Power>();
    let mut changes = powers.subscribe();
    let id = powers.create(power(12)).await.unwrap();
    let created = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(created.kind, ChangeKind::Create);
    assert_eq!(created.data.as_ref().map(|p| p.value), Some(12));

    // &mut self: stored, and broadcast as power.square.<id>
    let r: i64 = powers.call(&id, "square", ()).await.unwrap();
    assert_eq!(r, 144);
    let stored = a.collection::<Power>().get(&id).await.unwrap();
    assert_eq!((stored.result, stored.status), (Some(144), Status::Done));
    let change = tokio::time::timeout(Duration::from_secs(5), changes.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.topic, format!("power.square.{id}"));
    assert_eq!(change.kind, ChangeKind::Action("square".into()));
    assert_eq!(change.data.unwrap().result, Some(144));

    // with an argument struct; a user error comes back as it was raised
    let v: i64 = powers.call(&id, "add", json!({"amount": 3})).await.unwrap();
    assert_eq!(v, 15);
    let err = powers
        .call::<i64>(&id, "add", json!({"amount": -1}))
        .await
        .unwrap_err();
    assert_eq!(err, Error::failed("amount must not be negative"));
    let err = powers
        .call::<i64>(&id, "add", json!({"amount": "x"}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { path, .. } if path == "amount"),
        "{err:?}"
    );

    // &self: nothing stored, no event
    let d: i64 = powers.call(&id, "double", ()).await.unwrap();
    assert_eq!(d, 30);

    // a collection action
    powers.create(power(2)).await.unwrap();
    let n: u64 = powers
        .call_collection("reset", json!({"value": 7}))
        .await
        .unwrap();
    assert_eq!(n, 2);
    let all = powers.list(Query::all()).await.unwrap();
    assert!(all.iter().all(|d| d.resource_data.value == 7
        && d.resource_data.status == Status::Pending
        && d.resource_data.result.is_none()));

    // unknown action
    let err = powers.call::<i64>(&id, "cube", ()).await.unwrap_err();
    assert!(matches!(err, Error::UnknownAction { .. }), "{err:?}");

    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn invalid_input_is_refused_and_changes_nothing() {
    let Cluster { a, b } = cluster().await;
    let id = b.collection::<Power>().create(power(3)).await.unwrap();

    // a create whose document breaks the schema, sent raw
    let bad = Request::new("power", "create").args(json!({"resource_data": {"value": "three"}}));
    let err = b.request(bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::Validation { path, .. } if path == "value"),
        "{err:?}"
    );
    let missing =
        Request::new("power", "create").args(json!({"resource_data": {"status": "done"}}));
    let err = b.request(missing).await.unwrap_err();
    assert!(
        matches!(&err, Error::Validation { message, .. } if message.contains("value")),
        "{err:?}"
    );

    // a patch that would break the schema
    let err = b
        .collection::<Power>()
        .patch(&id, patch!({"$set": {"status": "lost"}}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { path, .. } if path == "status"),
        "{err:?}"
    );
    let err = b
        .collection::<Power>()
        .patch(&id, patch!({"$set": {"meta.hits": "many"}}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { path, .. } if path == "meta.hits"),
        "{err:?}"
    );
    // a malformed patch and a malformed filter
    let err = b
        .collection::<Power>()
        .patch(&id, patch!({"value": 4}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
    let err = b
        .collection::<Power>()
        .list(query!({"value": {"$near": 4}}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
    // nothing changed
    assert_eq!(b.collection::<Power>().get(&id).await.unwrap(), power(3));

    // duplicate id, missing id
    let err = b
        .collection::<Power>()
        .create_with_id(&id, power(1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateId { .. }), "{err:?}");
    let err = b
        .collection::<Power>()
        .patch("nope", patch!({"$set": {"value": 1}}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");

    // an unknown collection
    let err = b.request(Request::new("energy", "list")).await.unwrap_err();
    assert_eq!(err, Error::unknown_collection("energy"));
    assert_eq!(err.to_string(), "Unknown service energy");

    a.stop().await;
    // the owner left: the collection is known but unowned
    let err = b.collection::<Power>().get(&id).await.unwrap_err();
    assert!(matches!(err, Error::OwnerGone { .. }), "{err:?}");
    b.stop().await;
}

#[tokio::test]
async fn events_arrive_in_order_on_every_node() {
    let Cluster { a, b } = cluster().await;
    let mut on_a = a.subscribe("*");
    let mut on_b = b.subscribe("power.patch");
    let powers = b.collection::<Power>();
    let id = powers.create(power(0)).await.unwrap();
    for i in 1..=50 {
        powers
            .patch(&id, patch!({"$set": {"value": i}}))
            .await
            .unwrap();
    }
    // A (the owner) sees its own events; B sees only patches
    assert_eq!(
        next_event(&mut on_a).await.topic,
        format!("power.create.{id}")
    );
    for i in 1..=50 {
        assert_eq!(
            next_event(&mut on_a).await.data["resource_data"]["value"],
            i
        );
        let ev = next_event(&mut on_b).await;
        assert_eq!(ev.topic, format!("power.patch.{id}"));
        assert_eq!(ev.data["resource_data"]["value"], i);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_slow_owner_yields_a_timeout() {
    let cluster = MemoryCluster::new();
    let a = Node::builder("slow")
        .memory(&cluster)
        .on_message(|_, _| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(serde_json::Value::Null)
        })
        .start()
        .await
        .unwrap();
    let b = Node::builder("client")
        .memory(&cluster)
        .request_timeout(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let err = b.send(a.id(), json!({"hello": 1})).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after_ms: 100, .. }),
        "{err:?}"
    );
    assert_eq!(b.stats().requests_timed_out, 1);
    a.stop().await;
    b.stop().await;
}

/// Someone, kept in a store of its own.
#[resource(collection = "user")]
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    /// Their name.
    pub name: String,
}

#[tokio::test]
async fn a_resource_can_pin_its_own_store() {
    use std::sync::Arc;
    use zeroservices::store::{MemoryStore, Store};
    let cluster = MemoryCluster::new();
    let users_store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = Node::builder("svc")
        .memory(&cluster)
        .resource::<Power>()
        .resource_in::<User>(users_store.clone())
        .start()
        .await
        .unwrap();
    let b = Node::builder("client")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    let uid = b
        .collection::<User>()
        .create(User { name: "ann".into() })
        .await
        .unwrap();
    let pid = b.collection::<Power>().create(power(1)).await.unwrap();
    assert!(users_store.get("user", &uid).await.unwrap().is_some());
    assert!(a.store().get("user", &uid).await.unwrap().is_none());
    assert!(a.store().get("power", &pid).await.unwrap().is_some());
    assert!(users_store.get("power", &pid).await.unwrap().is_none());
    a.stop().await;
    b.stop().await;
}

/// A sink for a discovery started by hand: the fake peer below needs one, and hears nothing
/// it cares about.
struct Deaf;

impl zeroservices::discovery::PeerSink for Deaf {
    fn peer_event(&self, _: zeroservices::discovery::PeerEvent) {}
}

#[tokio::test]
async fn a_peer_speaking_another_protocol_version_is_ignored_and_counted() {
    let cluster = MemoryCluster::new();
    let node = Node::builder("client")
        .memory(&cluster)
        .start()
        .await
        .unwrap();
    // A node of an older release announces `power` with protocol 1.
    let old = NodeInfo {
        id: "old-1".into(),
        name: "power_service".into(),
        kind: NodeKind::Node,
        protocol: 1,
        endpoints: Default::default(),
        resources: vec![Power::info()],
        watches: vec![],
        insecure: false,
        stores: Default::default(),
    };
    let discovery = cluster.discovery();
    discovery
        .start(old.clone(), std::sync::Arc::new(Deaf))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.stats().peers_incompatible == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the announcement never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not a peer: no request is routed to a node that could not read it.
    assert!(node.peers().is_empty());
    let err = node
        .collection::<Power>()
        .get("1")
        .await
        .expect_err("no owner");
    assert!(matches!(err, Error::UnknownCollection { .. }), "{err:?}");
    discovery.announce(old).await.unwrap();
    assert!(node.peers().is_empty());
    discovery.stop().await;
    node.stop().await;
}
