use zeroservices::prelude::*;

#[service(name = "rest_api", http(port = "5001"))]
async fn main() {}
