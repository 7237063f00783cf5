use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

pub struct Opaque;

#[actions]
impl Power {
    #[action]
    async fn opaque(&self) -> Result<Opaque> {
        Ok(Opaque)
    }
}

fn main() {}
