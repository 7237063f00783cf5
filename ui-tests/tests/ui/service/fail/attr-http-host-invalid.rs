use zeroservices::prelude::*;

#[service(name = "rest_api", http(host = "localhost"))]
async fn main() {}
