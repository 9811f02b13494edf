//! Compile-time behaviour of the attribute macros: each file under `ui/fail` is one mistake
//! with the error it must give (`.stderr`), and `ui/pass` holds signatures that must keep
//! compiling without warnings. Regenerate the `.stderr` files with `TRYBUILD=overwrite`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
