use zeroservices::prelude::*;

// A bad attribute value is one error: the expansion is still emitted (with a placeholder), so
// the code below, which uses the type as a resource, does not fail too.
#[resource(collection = "Power")]
pub struct Power {
    pub value: i64,
}

fn announce<R: Resource>() -> &'static str {
    R::COLLECTION
}

fn main() {
    println!("{}", announce::<Power>());
}
