//! A two-node cluster in one process: `power_service` owns the `power` collection, `client`
//! owns nothing and uses it through the typed client, while a subscriber prints every event.
//!
//! Run it from the repository root:
//!
//! ```text
//! cargo run --release --example cluster
//! ```
//!
//! Expect one line per event (`power.create.<id>`, `power.square.<id>`, `power.patch.<id>`,
//! `power.delete.<id>`) and the results of each call.

use futures::StreamExt;
use zeroservices::medium::MemoryCluster;
use zeroservices::prelude::*;

/// A number to square.
#[resource(collection = "power")]
#[derive(Debug)]
pub struct Power {
    /// The number.
    pub value: i64,
    /// `value * value`, once computed.
    pub result: Option<i64>,
}

#[actions]
impl Power {
    /// Squares the value and keeps the result.
    #[action]
    async fn square(&mut self) -> Result<i64> {
        let r = self.value * self.value;
        self.result = Some(r);
        Ok(r)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();

    let cluster = MemoryCluster::new();
    let owner = Node::builder("power_service")
        .memory(&cluster)
        .resource::<Power>()
        .start()
        .await?;
    let client = Node::builder("client").memory(&cluster).start().await?;

    let mut events = client.subscribe("power");
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            println!("event {} {}", event.topic, event.data);
            if event.topic.starts_with("power.delete") {
                break;
            }
        }
    });

    let powers = client.collection::<Power>();
    let id = powers
        .create(Power {
            value: 12,
            result: None,
        })
        .await?;
    println!("created {id}");
    let squared: i64 = powers.call(&id, "square", ()).await?;
    println!("square -> {squared}");
    let patched = powers.patch(&id, patch!({"$inc": {"value": 1}})).await?;
    println!("patched -> {patched:?}");
    let big = powers.list(query!({"value": {"$gt": 10}})).await?;
    println!("list value > 10 -> {} resource(s)", big.len());
    powers.delete(&id).await?;

    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), printer).await;
    client.stop().await;
    owner.stop().await;
    Ok(())
}
