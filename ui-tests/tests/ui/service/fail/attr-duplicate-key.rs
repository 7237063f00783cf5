use zeroservices::prelude::*;

#[service(name = "power_service", name = "again")]
async fn main() {}
