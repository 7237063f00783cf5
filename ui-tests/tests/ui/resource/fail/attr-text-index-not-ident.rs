use zeroservices::prelude::*;

#[resource(collection = "power", text_index("description"))]
pub struct Power {
    pub description: String,
}

fn main() {}
