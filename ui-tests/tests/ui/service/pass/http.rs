// The `http` forms: bare or empty (port 5001), and every key. Named, never called (see
// signatures.rs).
use std::process::ExitCode;

mod bare {
    use zeroservices::prelude::*;

    #[service(name = "rest_api", http)]
    pub async fn main() {}
}

mod empty {
    use zeroservices::prelude::*;

    #[service(name = "rest_api", http())]
    pub async fn main() {}
}

mod every_key {
    use zeroservices::prelude::*;

    #[service(
        name = "rest_api",
        http(port = 65535, host = "0.0.0.0", allowed_origins = "https://a.example, https://b.example"),
    )]
    pub async fn main() {}
}

mod ipv6 {
    use zeroservices::prelude::*;

    #[service(http(host = "::1", port = 5001u16), name = "v6")]
    pub async fn main() {}
}

fn main() {
    let _: [fn() -> ExitCode; 4] = [bare::main, empty::main, every_key::main, ipv6::main];
}
