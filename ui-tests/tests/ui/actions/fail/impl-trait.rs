use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

pub trait Square {
    fn square(&self) -> i64;
}

#[actions]
impl Square for Power {
    fn square(&self) -> i64 {
        self.value * self.value
    }
}

fn main() {}
