// A type error in the body is reported once, on the user's code, like in any function; the
// signature error next to it causes no follow-on error.
use zeroservices::prelude::*;

#[service(name = "power_service")]
fn main(node: Node) {
    let count: u32 = node.name();
}
