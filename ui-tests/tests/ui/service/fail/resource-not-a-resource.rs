use zeroservices::prelude::*;

/// A plain struct: not a `#[resource]`.
pub struct Power {
    pub value: i64,
}

#[service(name = "power_service", resources(Power))]
async fn main() {}
