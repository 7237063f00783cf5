use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn square(self: Box<Self>) -> Result<i64> {
        Ok(self.value * self.value)
    }
}

fn main() {}
