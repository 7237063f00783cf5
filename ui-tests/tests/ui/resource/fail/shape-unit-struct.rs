use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power;

fn main() {}
