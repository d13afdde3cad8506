//! Test support shared by the unit tests and the integration tests.

/// Called by a root-only test that finds itself without root. Under `tests/run.sh` (and so in
/// CI), which sets `OOMGUARD_ROOT_TESTS=required`, that is a failure: a root-only test must run
/// there, not pass by skipping. Elsewhere it prints why and the test returns.
#[doc(hidden)]
pub fn skip_without_root(why: &str) {
    if std::env::var_os("OOMGUARD_ROOT_TESTS").is_some_and(|v| v == "required") {
        panic!("root-only test run without root ({why}); OOMGUARD_ROOT_TESTS=required says it must run");
    }
    eprintln!("skipped: {why}");
}
