use zeroservices::prelude::*;

// The struct still gets its other derives and its Resource impl: only the derive error shows.
#[resource(collection = "power")]
#[derive(Debug, Clone, serde::Serialize)]
pub struct Power {
    pub value: i64,
}

fn main() {
    let power = Power { value: 1 };
    println!("{:?} {}", power.clone(), <Power as Resource>::COLLECTION);
}
