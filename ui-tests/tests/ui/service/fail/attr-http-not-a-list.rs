use zeroservices::prelude::*;

#[service(name = "rest_api", http = 5001)]
async fn main() {}
