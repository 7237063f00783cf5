use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn add(&mut self, ctx: &Context, a: i64, b: i64) -> Result<i64> {
        let _ = ctx;
        self.value += a + b;
        Ok(self.value)
    }
}

fn main() {}
