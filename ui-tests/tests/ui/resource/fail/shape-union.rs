use zeroservices::prelude::*;

#[resource(collection = "power")]
pub union Power {
    int: i64,
    float: f64,
}

fn main() {}
