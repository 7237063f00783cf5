use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

async fn yield_now() {}

#[actions]
impl Power {
    #[action]
    async fn square(&self) -> Result<i64> {
        let rc = std::rc::Rc::new(self.value);
        yield_now().await;
        Ok(*rc)
    }
}

fn main() {}
