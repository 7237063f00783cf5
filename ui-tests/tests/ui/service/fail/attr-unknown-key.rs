use zeroservices::prelude::*;

#[service(name = "power_service", nmae = "power")]
async fn main() {}
