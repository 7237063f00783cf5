// Every mistake of the attribute and the signature is reported in one compilation.
use zeroservices::prelude::*;

#[service(nmae = "x", http(port = 0, origins = "*"), resources = Power)]
fn main(node: Node, extra: u32) {}
