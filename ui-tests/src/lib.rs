//! Compile-time tests of the `zeroservices` macros.
//!
//! This crate depends only on `zeroservices`, like a user crate would: the cases under
//! `tests/ui/<macro>/pass` show that `#[resource]` and `#[actions]` need nothing else (no
//! `serde` or `schemars` dependency), and the cases under `tests/ui/<macro>/fail` pin the
//! error messages. Run them with `cargo test -p ui-tests`; bless new output with
//! `TRYBUILD=overwrite cargo test -p ui-tests`.
