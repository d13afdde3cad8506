//! `oomguard check` as an operator runs it: the built binary on a file in a tempdir.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// A valid policy whose `triggers.pressure.for` is `{sustain}`.
fn policy(sustain: &str) -> String {
    format!(
        "run:\n  command: [\"/bin/sleep\", \"1000\"]\nmemory:\n  high: 1536M\n  max: 2G\n\
         triggers:\n  pressure: {{some: 150ms, window: 1s, for: {sustain}}}\n"
    )
}

fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    // The directory and the file must not be group/world writable (a tempdir is 0700).
    let path = dir.path().join("web.yaml");
    fs::write(&path, text).expect("write policy");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .arg("check")
        .arg(&path)
        .output()
        .expect("run oomguard check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Issue 7, defect 10: this passed `check` and later overflowed `Instant` arithmetic in the daemon.
#[test]
fn check_refuses_an_absurd_duration_with_exit_1() {
    let (code, stderr) = check(&policy("300000000000y"));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("triggers.pressure.for")
            && stderr.contains("is above the allowed range 0s to 1h"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_the_same_file_with_a_sane_duration() {
    let (code, stderr) = check(&policy("2s"));
    assert_eq!(code, Some(0), "{stderr}");
}

/// Every shipped example (policies/*.yaml, the framework policies with `children:` included)
/// passes `oomguard check` as an operator would install it: the files copied with mode 0644
/// into one directory, checked as that directory, one `ok:` line per file.
#[test]
fn check_accepts_every_shipped_example_policy() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut names = Vec::new();
    for entry in fs::read_dir(&examples).expect("read policies/") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_name().expect("a file name").to_owned();
        let copy = dir.path().join(&name);
        fs::copy(&path, &copy).expect("copy example");
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o644)).expect("chmod");
        names.push(name.to_string_lossy().into_owned());
    }
    assert!(names.len() >= 10, "policies/ holds only {names:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .arg("check")
        .arg(dir.path())
        .output()
        .expect("run oomguard check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for name in &names {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok: ") && l.contains(&format!("/{name} "))),
            "{name} not accepted:\n{stdout}\n{stderr}"
        );
    }
}
