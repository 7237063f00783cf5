// With a signature error, the resources are still checked, on the type.
use zeroservices::prelude::*;

pub struct Power {
    pub value: i64,
}

#[service(name = "power_service", resources(Power))]
fn main() {}
