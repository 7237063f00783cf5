// In a valid service, a type error in the body lands on the user's code.
use zeroservices::prelude::*;

#[service(name = "power_service")]
async fn main(node: Node) -> Result<()> {
    let count: u32 = node.name();
    Ok(())
}
