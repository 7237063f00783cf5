use zeroservices::prelude::*;

const NAME: &str = "power";

#[resource(collection = NAME)]
pub struct Power {
    pub value: i64,
}

fn main() {}
