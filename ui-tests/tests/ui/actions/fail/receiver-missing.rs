use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn reset(ctx: &Context) -> Result<()> {
        let _ = ctx;
        Ok(())
    }
}

fn main() {}
