use zeroservices::prelude::*;

#[resource(collection = "power")]
pub fn power() -> i64 {
    2
}

fn main() {}
