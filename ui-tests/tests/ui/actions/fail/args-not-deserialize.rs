use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

pub struct Step {
    pub by: i64,
}

#[actions]
impl Power {
    #[action]
    async fn add(&mut self, step: Step) -> Result<i64> {
        self.value += step.by;
        Ok(self.value)
    }
}

fn main() {}
