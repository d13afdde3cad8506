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

/// A directory whose ancestors are not group/world-writable, for test files that must pass the
/// ownership rules all the way up (`crate::policy::Program`): the checkout when its ancestors
/// qualify; a checkout under /tmp (a CI clone, say) falls back to /run or /root.
#[doc(hidden)]
pub fn tight_base() -> &'static std::path::Path {
    use std::os::unix::fs::MetadataExt;
    let tight = |p: &std::path::Path| {
        p.ancestors()
            .all(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o022 == 0))
    };
    [env!("CARGO_MANIFEST_DIR"), "/run", "/root"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| tight(p))
        .expect("no directory without group/world-writable ancestors for the tests")
}
