use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action(name = "a", name = "b")]
    async fn square(&self) -> Result<i64> {
        Ok(self.value)
    }
}

fn main() {}
