use zeroservices::prelude::*;

#[service(http(port = 5001))]
async fn main() {}
