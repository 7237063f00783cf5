use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power<T> {
    pub value: T,
}

fn main() {}
