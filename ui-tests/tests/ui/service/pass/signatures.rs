// Every accepted form of a `#[service]` main. Each sits in its own module and is only named,
// never called: a service main serves until a signal, and would join a cluster on the network
// (trybuild runs a pass case's crate-root `main`).
use std::process::ExitCode;

use zeroservices::prelude::*;

/// A number to square.
#[resource(collection = "power")]
pub struct Power {
    pub value: i64,
}

/// A second collection.
#[resource(collection = "other")]
pub struct Other {
    pub name: String,
}

mod bare {
    use zeroservices::prelude::*;

    #[service(name = "bare")]
    pub async fn main() {}
}

mod with_node {
    use zeroservices::prelude::*;

    /// Owns two collections (this doc comment is the `--help` description).
    #[service(name = "power_service", resources(super::Power, crate::Other))]
    #[allow(unused_mut)]
    pub async fn main(mut node: Node) -> Result<()> {
        let _powers = node.collection::<super::Power>();
        Ok(())
    }
}

mod result_without_node {
    use zeroservices::prelude::*;

    #[service(name = "result-only")]
    pub async fn main() -> Result<()> {
        Err(Error::failed("the body may fail: exit code 1"))
    }
}

mod any_param_name_and_path {
    #[zeroservices::service(name = "named.node_1")]
    pub async fn main(_cluster_member: zeroservices::Node) {}
}

mod other_error_types {
    use zeroservices::prelude::*;

    #[service(name = "io")]
    pub async fn main(_node: Node) -> std::result::Result<(), std::io::Error> {
        Ok(())
    }
}

mod boxed_error {
    use zeroservices::prelude::*;

    #[service(name = "boxed")]
    pub async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let value: i64 = "42".parse()?;
        assert_eq!(value, 42);
        Ok(())
    }
}

fn main() {
    // The generated entry points: plain functions returning the exit code.
    let entry_points: [fn() -> ExitCode; 6] = [
        bare::main,
        with_node::main,
        result_without_node::main,
        any_param_name_and_path::main,
        other_error_types::main,
        boxed_error::main,
    ];
    assert_eq!(entry_points.len(), 6);
}
