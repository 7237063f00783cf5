use zeroservices::prelude::*;

#[resource(collection = "")]
pub struct Power {
    pub value: i64,
}

fn main() {}
