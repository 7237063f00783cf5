use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn delete(&mut self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
