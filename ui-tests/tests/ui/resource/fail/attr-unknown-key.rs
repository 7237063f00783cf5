use zeroservices::prelude::*;

#[resource(collection = "power", colection = "power")]
pub struct Power {
    pub value: i64,
}

fn main() {}
