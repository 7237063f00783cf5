use zeroservices::prelude::*;

#[service(name = "rest_api", http(port = 70000))]
async fn main() {}
