use zeroservices::prelude::*;

#[actions]
pub struct Power {
    pub value: i64,
}

fn main() {}
