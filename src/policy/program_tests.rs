//! Tests for `program`: the `#!` line, the rules on the file, its interpreter and every
//! directory above them, and the exec of the checked file. Accepted programs live under the
//! checkout (`checkout_dir`: its ancestors are not group/world-writable, unlike /tmp's).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::unistd::{chown, geteuid, Uid};

use super::*;
use crate::policy::load_file;
use crate::policy::testutil::{checkout_dir, safe_dir, write, BASE};

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    write(dir, name, &format!("#!/bin/sh\n{body}\n"), 0o755)
}

fn refused(path: &Path, needles: &[&str]) {
    let err = Program::open(path).unwrap_err().to_string();
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} not in: {err}");
    }
}

/// Giving a file away needs root; under tests/run.sh root is required.
fn root() -> bool {
    if geteuid().is_root() {
        return true;
    }
    crate::testing::skip_without_root("needs root to chown");
    false
}

async fn output(p: &Program, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let out = p.command(&args).output().await.unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_interpreter_line_is_read_as_the_kernel_reads_it() {
    let line = |h: &[u8]| interpreter_line(h).unwrap();
    assert_eq!(line(b"\x7fELF\x02\x01"), None);
    assert_eq!(line(b"#!/bin/sh\necho"), Some(("/bin/sh".into(), None)));
    assert_eq!(
        line(b"#! \t/usr/bin/env  python3 -u \t\nx"),
        Some(("/usr/bin/env".into(), Some("python3 -u".into())))
    );
    let err = interpreter_line(b"#!sh\n").unwrap_err();
    assert!(err.contains("not an absolute path"), "{err}");
    let long = [b"#!/bin/".as_slice(), &[b'x'; 300]].concat();
    let err = interpreter_line(&long[..HEADER_BYTES]).unwrap_err();
    assert!(err.contains("longer than 255 bytes"), "{err}");
}

#[tokio::test]
async fn a_root_owned_script_runs_with_its_interpreter_and_arguments() {
    let dir = checkout_dir();
    let path = script(dir.path(), "hook", "echo \"$1 $2\"; cat \"$0\" | wc -l");
    let p = Program::open(&path).unwrap();
    assert_eq!(output(&p, &["a", "b c"]).await, "a b c\n2\n");
    // A binary: argv[0] is the path as written (busybox picks its applet by it).
    let p = Program::open(Path::new("/bin/sh")).unwrap();
    assert_eq!(output(&p, &["-c", "echo $0"]).await, "/bin/sh\n");
}

#[tokio::test]
async fn what_runs_is_the_file_that_was_checked() {
    let dir = checkout_dir();
    let path = script(dir.path(), "hook", "echo checked");
    let p = Program::open(&path).unwrap();
    // Renamed over it after the check, as a user who could write the directory would.
    let other = script(dir.path(), "other", "echo swapped");
    fs::rename(&other, &path).unwrap();
    assert_eq!(output(&p, &[]).await, "checked\n");
    assert_eq!(
        output(&Program::open(&path).unwrap(), &[]).await,
        "swapped\n"
    );
}

#[test]
fn a_program_someone_else_can_write_is_refused() {
    let dir = checkout_dir();
    let path = script(dir.path(), "hook", "true");
    let shown = fs::canonicalize(&path).unwrap().display().to_string();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o775)).unwrap();
    refused(
        &path,
        &[
            "(run as root): the file is writable by group or others (mode 0775)",
            &format!("chown root: {shown}; chmod go-w {shown}"),
        ],
    );
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    if !root() {
        return;
    }
    chown(&path, Some(Uid::from_raw(1000)), None).unwrap();
    refused(&path, &["the file is owned by uid 1000", "chown root: "]);
}

#[test]
fn every_directory_above_the_program_counts() {
    let dir = checkout_dir();
    let bin = dir.path().join("app/bin");
    fs::create_dir_all(&bin).unwrap();
    let path = script(&bin, "drain", "true");
    Program::open(&path).unwrap();
    // Not its own directory: one above it, as /srv/app is the app user's.
    let app = fs::canonicalize(dir.path().join("app")).unwrap();
    fs::set_permissions(&app, fs::Permissions::from_mode(0o775)).unwrap();
    refused(
        &path,
        &[&format!(
            "directory {} is writable by group or others",
            app.display()
        )],
    );
    fs::set_permissions(&app, fs::Permissions::from_mode(0o755)).unwrap();
    if root() {
        chown(&app, Some(Uid::from_raw(1000)), None).unwrap();
        refused(
            &path,
            &[&format!("directory {} is owned by uid 1000", app.display())],
        );
    }
    // Under /tmp (world-writable), whatever the file's own directory.
    let tmp = safe_dir();
    let path = script(tmp.path(), "hook", "true");
    refused(&path, &["directory /tmp is writable by group or others"]);
}

#[test]
fn the_interpreter_is_checked_too() {
    if !root() {
        return;
    }
    let dir = checkout_dir();
    let sh = dir.path().join("sh");
    fs::copy(fs::canonicalize("/bin/sh").unwrap(), &sh).unwrap();
    let path = write(
        dir.path(),
        "hook",
        &format!("#!{} -e\ntrue\n", sh.display()),
        0o755,
    );
    Program::open(&path).unwrap();
    chown(&sh, Some(Uid::from_raw(1000)), None).unwrap();
    refused(
        &path,
        &[&format!(
            "its interpreter {} (the #! line): the file is owned by uid 1000",
            sh.display()
        )],
    );
    let nested = write(
        dir.path(),
        "nested",
        &format!("#!{}\ntrue\n", path.display()),
        0o755,
    );
    chown(&sh, Some(Uid::from_raw(0)), None).unwrap();
    refused(&nested, &["is itself a script"]);
}

fn policy_with(dir: &Path, run: &str, hook: &Path) -> PathBuf {
    let text = BASE.replacen("  command: [\"/bin/sleep\", \"1000\"]\n", run, 1)
        + &format!("restart:\n  hooks:\n    before: [\"{}\"]\n", hook.display());
    write(dir, "web.yaml", &text, 0o644)
}

#[test]
fn load_refuses_a_root_run_program_that_fails_the_rules() {
    if !root() {
        return;
    }
    let dir = checkout_dir();
    let hook = script(dir.path(), "hook", "true");
    let root_cmd = format!("  command: [\"{}\"]\n", hook.display());
    load_file(&policy_with(dir.path(), &root_cmd, &hook)).unwrap();
    chown(&hook, Some(Uid::from_raw(1000)), None).unwrap();
    let errs = load_file(&policy_with(dir.path(), &root_cmd, &hook)).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["run.command[0]", "restart.hooks.before[0]"],
        "{errs:?}"
    );
    assert!(
        errs[1].to_string().contains("owned by uid 1000"),
        "{}",
        errs[1]
    );
    // A worker with a user of its own is not root's program; the hook still is.
    let as_nobody = format!("{root_cmd}  user: nobody\n");
    let errs = load_file(&policy_with(dir.path(), &as_nobody, &hook)).unwrap_err();
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["restart.hooks.before[0]"], "{errs:?}");
    // A program that is not there yet is checked when it starts.
    load_file(&policy_with(
        dir.path(),
        "  command: [\"/bin/sleep\"]\n",
        &dir.path().join("none"),
    ))
    .unwrap();
}
