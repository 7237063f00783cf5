//! Runs the trybuild cases: `ui/<macro>/pass/*.rs` must compile and their `main` must run
//! without panicking; `ui/<macro>/fail/*.rs` must fail with exactly the blessed `.stderr`.
//!
//! Bless new output with `TRYBUILD=overwrite cargo test -p ui-tests`, then read the diff.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/resource/pass/*.rs");
    t.compile_fail("tests/ui/resource/fail/*.rs");
    t.pass("tests/ui/model/pass/*.rs");
    t.compile_fail("tests/ui/model/fail/*.rs");
    t.pass("tests/ui/actions/pass/*.rs");
    t.compile_fail("tests/ui/actions/fail/*.rs");
    t.pass("tests/ui/service/pass/*.rs");
    t.compile_fail("tests/ui/service/fail/*.rs");
}
