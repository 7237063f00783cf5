// `crate = "..."` points the generated code at zeroservices under another path.
extern crate zeroservices as zs;

mod runtime {
    pub use ::zeroservices::*;
}

#[zs::resource(collection = "renamed", crate = "::zs")]
pub struct Renamed {
    pub value: i64,
}

#[zs::resource(collection = "reexported", crate = "crate::runtime")]
pub struct Reexported {
    pub value: i64,
}

#[zs::actions(crate = "crate::runtime")]
impl Reexported {
    /// Doubles the value.
    #[zs::action]
    async fn double(&mut self) -> zs::Result<i64> {
        self.value *= 2;
        Ok(self.value)
    }
}

fn main() {
    use zs::Resource;
    assert_eq!(<Renamed as Resource>::COLLECTION, "renamed");
    assert_eq!(<Reexported as Resource>::COLLECTION, "reexported");
    assert_eq!(Reexported::actions()[0].name, "double");
}
