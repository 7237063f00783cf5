use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action]
    async fn add<T: Into<i64>>(&mut self, by: T) -> Result<i64> {
        self.value += by.into();
        Ok(self.value)
    }
}

fn main() {}
