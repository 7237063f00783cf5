use zeroservices::prelude::*;

#[model]
pub fn status() {}

fn main() {
    status();
}
