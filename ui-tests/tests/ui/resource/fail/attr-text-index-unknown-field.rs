use zeroservices::prelude::*;

#[resource(collection = "power", text_index(value, descripton))]
pub struct Power {
    pub value: i64,
    pub description: String,
}

fn main() {}
