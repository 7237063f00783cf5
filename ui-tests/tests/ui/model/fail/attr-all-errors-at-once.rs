use zeroservices::prelude::*;

// Every mistake of the attribute is reported, in one go.
#[model(unknown = 1, crate = "not a path", crate = "::zeroservices")]
pub enum Status {
    Pending,
    Done,
}

fn main() {
    let _ = Status::Pending;
    let _ = Status::Done;
}
