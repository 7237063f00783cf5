use zeroservices::prelude::*;

#[service]
async fn main() {}
