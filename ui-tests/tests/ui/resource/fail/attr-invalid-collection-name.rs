use zeroservices::prelude::*;

#[resource(collection = "Power Items")]
pub struct PowerItem {
    pub value: i64,
}

fn main() {}
