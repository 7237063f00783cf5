use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn reset(&mut self) {
        self.value = 0;
    }
}

fn main() {}
