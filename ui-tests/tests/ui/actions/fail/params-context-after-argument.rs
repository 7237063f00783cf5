use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[resource(collection = "step")]
pub struct Step {
    pub by: i64,
}

#[actions]
impl Power {
    #[action]
    async fn add(&mut self, step: Step, ctx: &Context) -> Result<i64> {
        let _ = ctx;
        self.value += step.by;
        Ok(self.value)
    }
}

fn main() {}
