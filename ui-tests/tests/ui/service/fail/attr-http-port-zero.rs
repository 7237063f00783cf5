use zeroservices::prelude::*;

#[service(name = "rest_api", http(port = 0))]
async fn main() {}
