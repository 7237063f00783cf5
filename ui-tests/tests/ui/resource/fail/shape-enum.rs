use zeroservices::prelude::*;

#[resource(collection = "power")]
pub enum Power {
    Small(i64),
    Large(i64),
}

fn main() {}
