//! Compile errors of the attribute macros point at the offending token; every key with typed
//! literals compiles and registers typed values.

#[test]
fn macro_errors_point_at_the_offending_token() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
    cases.pass("tests/ui/pass/*.rs");
}
