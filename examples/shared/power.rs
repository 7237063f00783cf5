//! The `power` resource of the original ZeroServices examples: a number to square.
//!
//! Shared by the `power`, `api_power` (and later `worker`) examples:
//! `use zeroservices_examples::power::{Power, Status};`.

use zeroservices::prelude::*;

/// Where a power computation is.
#[model]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting for its square (`"pending"`).
    #[default]
    Pending,
    /// Squared (`"done"`).
    Done,
}

/// A number to square.
#[resource(collection = "power", text_index(description))]
#[derive(Debug, Clone, PartialEq)]
pub struct Power {
    /// The number: at most 3,037,000,499 either way, so that its square fits in an `i64`
    /// (the schema says so and the owner enforces it: 422 outside).
    #[schemars(range(min = -3_037_000_499_i64, max = 3_037_000_499_i64))]
    pub value: i64,
    /// `pending` until squared, then `done`.
    #[serde(default)]
    pub status: Status,
    /// `value * value`, once computed.
    #[serde(default)]
    pub result: Option<i64>,
    /// Free text, searchable (`{"$text": {"$search": "..."}}`), at most 200 characters.
    #[serde(default)]
    #[schemars(length(max = 200))]
    pub description: Option<String>,
}

impl Power {
    /// A pending power of `value`.
    pub fn new(value: i64) -> Self {
        Self {
            value,
            status: Status::Pending,
            result: None,
            description: None,
        }
    }
}

#[actions]
impl Power {
    /// Squares the value: stores the result and marks the power done.
    #[action]
    async fn square(&mut self) -> Result<i64> {
        let result = self
            .value
            .checked_mul(self.value)
            .ok_or_else(|| Error::failed(format!("{} squared overflows", self.value)))?;
        self.result = Some(result);
        self.status = Status::Done;
        Ok(result)
    }

    /// Sets every done power back to pending, without a result; returns how many changed.
    #[action(collection)]
    async fn reset(ctx: &Context) -> Result<u64> {
        let powers = ctx.collection::<Power>();
        let done = powers.list(query!({"status": "done"})).await?;
        let mut changed = 0;
        for document in done {
            powers
                .patch(
                    &document.resource_id,
                    patch!({"$set": {"status": "pending"}, "$unset": {"result": ""}}),
                )
                .await?;
            changed += 1;
        }
        Ok(changed)
    }
}
