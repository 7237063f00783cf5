use zeroservices::prelude::*;

#[service(name = "power_service")]
struct Main;

fn main() {}
