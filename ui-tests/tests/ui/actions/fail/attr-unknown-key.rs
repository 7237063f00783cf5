use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action(colection)]
    async fn reset() -> Result<()> {
        Ok(())
    }
}

fn main() {}
