//! `#[service]` in a crate that turned zeroservices' `app` feature off: one error, naming the
//! feature (not a cascade of unresolved paths). The fixture is its own crate
//! (`ui-tests/no-app`), checked with the workspace's lock file.

use std::path::Path;
use std::process::Command;

#[test]
fn a_service_without_the_app_feature_is_one_clear_error() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = here.join("no-app");
    let target = here.join("../target/tests/no-app");
    // The workspace's versions, so nothing new is resolved.
    std::fs::copy(here.join("../Cargo.lock"), fixture.join("Cargo.lock")).unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["check", "--quiet", "--color", "never", "--manifest-path"])
        .arg(fixture.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("cargo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the fixture compiled:\n{stderr}");
    assert!(
        stderr.contains("#[service] needs the `app` feature of zeroservices"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error") && !l.starts_with("error: could not compile"))
        .collect();
    assert_eq!(errors.len(), 1, "one error, not a cascade:\n{stderr}");
}
