// `crate = "..."` points the generated code at zeroservices under another path.
extern crate zeroservices as zs;

mod runtime {
    pub use ::zeroservices::*;
}

#[zs::resource(collection = "power", crate = "::zs")]
pub struct Power {
    pub value: i64,
}

mod renamed {
    #[zs::service(name = "renamed", resources(super::Power), crate = "::zs")]
    pub async fn main(_node: zs::Node) -> zs::Result<()> {
        Ok(())
    }
}

mod reexported {
    #[zs::service(name = "reexported", http(port = 5001), crate = "crate::runtime")]
    pub async fn main() {}
}

fn main() {
    let _: [fn() -> std::process::ExitCode; 2] = [renamed::main, reexported::main];
}
