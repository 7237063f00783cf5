// The user's own derives work after and before the attribute, next to ours.
use zeroservices::prelude::*;

#[resource(collection = "after")]
#[derive(Debug, Clone, PartialEq, Default)]
pub struct After {
    pub value: i64,
}

#[derive(Debug, Clone, PartialEq)]
#[resource(collection = "before")]
pub struct Before {
    pub value: i64,
}

fn main() {
    let after = After { value: 1 };
    assert_eq!(after.clone(), after);
    assert_eq!(format!("{:?}", After::default()), "After { value: 0 }");
    assert_eq!(<After as Resource>::COLLECTION, "after");

    let before = Before { value: 2 };
    assert_eq!(before.clone(), before);
    assert_eq!(<Before as Resource>::COLLECTION, "before");
}
