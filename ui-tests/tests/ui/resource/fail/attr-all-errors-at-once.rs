use zeroservices::prelude::*;

// Every mistake of the attribute is reported, in one go.
#[resource(
    collection = "Power",
    text_index(nope),
    unknown = 1,
    collection = "power"
)]
pub struct Power {
    pub value: i64,
}

fn main() {}
