//! The CLI's exit codes as a script sees them (docs/protocol.md "CLI exit codes"): a usage error
//! (clap's 2) must not read as "daemon not running" (3), nor as a refusal (1).

use std::process::Command;

fn oomguard(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .args(args)
        .output()
        .expect("run oomguard");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn each_outcome_has_its_own_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-daemon.sock");
    let missing = missing.to_str().expect("utf-8 tempdir");

    let (code, stderr) = oomguard(&["schema"]);
    assert_eq!(code, Some(0), "schema: {stderr}");

    let (code, stderr) = oomguard(&["check", "/nonexistent/oomguard-policy.yaml"]);
    assert_eq!(code, Some(1), "check of a missing file: {stderr}");

    let (code, stderr) = oomguard(&["stauts"]);
    assert_eq!(code, Some(2), "a mistyped subcommand: {stderr}");
    let (code, stderr) = oomguard(&["status", "--no-such-flag"]);
    assert_eq!(code, Some(2), "an unknown flag: {stderr}");

    for cmd in ["status", "metrics", "reload", "events"] {
        let (code, stderr) = oomguard(&["--socket", missing, cmd]);
        assert_eq!(code, Some(3), "{cmd} with no daemon: {stderr}");
        assert!(stderr.contains("the daemon is not running"), "{stderr}");
    }
}
