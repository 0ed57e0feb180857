//! Compile-time behaviour of the derives: every table error, every misuse of the typestate
//! API and of handlers is a compile error with a pinned message; the pass cases compile.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
