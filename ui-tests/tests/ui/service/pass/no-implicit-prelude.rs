// Hygiene: the generated code names everything by absolute path, so it compiles without the
// prelude.
#![no_implicit_prelude]

extern crate std;
extern crate zeroservices;

#[zeroservices::resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

mod service {
    #[::zeroservices::service(name = "power_service", resources(super::Power), http(port = 5001))]
    pub async fn main(_node: ::zeroservices::Node) -> ::zeroservices::Result<()> {
        ::std::result::Result::Ok(())
    }
}

fn main() {
    let _: fn() -> ::std::process::ExitCode = service::main;
}
