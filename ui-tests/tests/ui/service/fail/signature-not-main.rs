use zeroservices::prelude::*;

#[service(name = "power_service")]
async fn serve() {}

fn main() {}
