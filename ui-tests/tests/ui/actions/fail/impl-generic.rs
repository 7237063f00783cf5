use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

pub struct Wrapper<T>(T);

#[actions]
impl<T> Wrapper<T> {
    #[action]
    async fn peek(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}
