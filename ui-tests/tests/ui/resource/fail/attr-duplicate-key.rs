use zeroservices::prelude::*;

#[resource(collection = "power", collection = "powers")]
pub struct Power {
    pub value: i64,
}

fn main() {}
