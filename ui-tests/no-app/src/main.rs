use zeroservices::prelude::*;

#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

#[service(name = "power_service", resources(Power))]
async fn main() {}
