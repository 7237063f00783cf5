// Hygiene: the generated code names everything by absolute path, so it compiles without the
// prelude.
#![no_implicit_prelude]

extern crate std;
extern crate zeroservices;

// `#[action]` needs no import: `#[actions]` reads and removes it before it is resolved.
use zeroservices::{Context, Resource, actions, resource};

/// A number to square.
#[resource(collection = "power", text_index(description))]
pub struct Power {
    pub value: i64,
    pub description: std::string::String,
    pub result: std::option::Option<i64>,
}

#[resource(collection = "args")]
pub struct Args {
    pub by: i64,
}

#[actions]
impl Power {
    /// Squares the value.
    #[action]
    async fn square(&mut self, _ctx: &Context) -> zeroservices::Result<i64> {
        let square = self.value * self.value;
        self.result = std::option::Option::Some(square);
        std::result::Result::Ok(square)
    }

    #[action]
    async fn peek(&self, args: Args) -> zeroservices::Result<i64> {
        std::result::Result::Ok(self.value * args.by)
    }

    #[action(collection)]
    async fn reset(_ctx: Context) -> zeroservices::Result<()> {
        std::result::Result::Ok(())
    }
}

fn main() {
    std::assert_eq!(<Power as Resource>::COLLECTION, "power");
    std::assert_eq!(<Power as Resource>::actions().len(), 3);
}
