use zeroservices::prelude::*;

#[resource(collection = "power", crate = "zero services")]
pub struct Power {
    pub value: i64,
}

fn main() {}
