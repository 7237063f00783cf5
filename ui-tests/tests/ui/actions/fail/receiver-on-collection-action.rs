use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[actions]
impl Power {
    #[action(collection)]
    async fn reset(&mut self) -> Result<()> {
        self.value = 0;
        Ok(())
    }
}

fn main() {}
