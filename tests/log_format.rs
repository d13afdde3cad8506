//! `oomguard run --log-format json` as a container log pipeline reads it: every stderr line a
//! JSON object. The daemon cannot start on the test host (not root, no cgroup v2 memory
//! controller, or no such policy directory), so what it prints is its refusal: that line too
//! must be JSON, and the refusal must still be said.

use std::process::{Command, Output};

/// `oomguard run --log-format FORMAT` where it cannot start: no such policy directory.
fn refused_start(format: &str) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .args(["run", "--log-format", format, "--policies"])
        .arg(dir.path().join("no-such-policies"))
        .arg("--socket")
        .arg(dir.path().join("run/oomguard.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .output()
        .expect("run oomguard")
}

#[test]
fn a_refused_start_is_logged_as_json_lines() {
    let out = refused_start("json");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    // Where the host looks like a container (CI runs in one), the PID 1 init also says what it
    // does before and after the daemon: the refusal is the ERROR line among them.
    let last = lines
        .iter()
        .find(|l| l["level"] == "ERROR")
        .unwrap_or_else(|| panic!("no ERROR line: {stderr}"));
    assert!(
        last["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{stderr}"
    );
    assert!(
        last["timestamp"].is_string() && last["target"].is_string(),
        "{stderr}"
    );
}

/// Plain text on a pipe (`docker logs`, a file, a log shipper) carries no ANSI colour codes.
#[test]
fn plain_text_on_a_pipe_has_no_escape_codes() {
    let out = refused_start("text");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).expect("utf-8");
    assert!(stderr.contains("ERROR"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "escape codes on a pipe: {stderr:?}"
    );
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .args(["run", "--log-format", "yaml"])
        .output()
        .expect("run oomguard");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auto") && stderr.contains("json"),
        "{stderr}"
    );
}
