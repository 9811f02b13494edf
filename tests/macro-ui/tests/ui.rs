//! Compile-time errors of the attribute macros: each file under `ui/fail` is one mistake
//! with the error it must give (`.stderr`). Regenerate the `.stderr` files with
//! `TRYBUILD=overwrite`. The signatures that must keep compiling are the `pass-*` test
//! programs of this package (`pass/`).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui/fail/*.rs");
}
