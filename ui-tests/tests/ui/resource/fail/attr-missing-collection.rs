use zeroservices::prelude::*;

#[resource]
pub struct Power {
    pub value: i64,
}

fn main() {}
