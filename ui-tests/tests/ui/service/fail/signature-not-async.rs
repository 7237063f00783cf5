use zeroservices::prelude::*;

#[service(name = "power_service")]
fn main() {}
