use zeroservices::prelude::*;

#[service(name = "power_service")]
async fn main(node: Node, port: u16) {}
