use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power(i64, Option<i64>);

fn main() {}
