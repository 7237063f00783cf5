use zeroservices::prelude::*;

// The enum keeps its other derives and gets ours: only the derive error shows.
#[model]
#[derive(Debug, Clone, serde::Serialize)]
pub enum Status {
    Pending,
    Done,
}

fn main() {
    println!("{:?} {:?}", Status::Pending.clone(), Status::Done);
}
