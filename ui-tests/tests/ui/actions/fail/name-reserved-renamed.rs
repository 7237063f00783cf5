use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action(name = "list")]
    async fn list_all(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
