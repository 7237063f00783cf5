use zeroservices::prelude::*;

#[service(name = "power service")]
async fn main() {}
