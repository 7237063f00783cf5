use zeroservices::prelude::*;

#[service(name = "rest_api", http(port = 5001, basic_auth = "admin:secret"))]
async fn main() {}
