use zeroservices::prelude::*;

#[resource(text_index(description))]
pub struct Power {
    pub description: String,
}

fn main() {}
