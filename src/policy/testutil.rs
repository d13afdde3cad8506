//! Shared by the policy tests: a minimal valid policy to vary, and assertions that name the key a
//! rejection must report.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::policy::{parse, Policy, PolicyError};

/// The smallest valid policy; tests replace one line of it.
pub const BASE: &str = "\
name: web
run:
  command: [\"/bin/sleep\", \"1000\"]
memory:
  high: 1536M
  max: 2G
triggers:
  pressure: {some: 150ms, window: 1s}
";

/// BASE with `from` replaced by `to`; panics if `from` is not in BASE so a typo can't make a test
/// silently check the unmodified policy.
pub fn base_with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

pub fn accepts(text: &str) -> Policy {
    match parse(Path::new("/etc/oomguard/policies/web.yaml"), text) {
        Ok(p) => p,
        Err(errors) => panic!("rejected:\n{}\n---\n{text}", lines(&errors)),
    }
}

pub fn errors(text: &str) -> Vec<PolicyError> {
    match parse(Path::new("/etc/oomguard/policies/web.yaml"), text) {
        Ok(p) => panic!("accepted: {p:?}\n---\n{text}"),
        Err(errors) => errors,
    }
}

/// Asserts that `text` is rejected with an error at exactly `key` whose message contains `needle`.
pub fn rejects(text: &str, key: &str, needle: &str) {
    let errors = errors(text);
    assert!(
        errors
            .iter()
            .any(|e| e.key == key && e.message.contains(needle)),
        "expected {key}: ...{needle}...; got:\n{}\n---\n{text}",
        lines(&errors)
    );
}

fn lines(errors: &[PolicyError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `text` to `dir/name` with `mode`.
pub fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    path
}

/// BASE named `name`.
pub fn policy(name: &str) -> String {
    BASE.replacen("name: web", &format!("name: {name}"), 1)
}

/// tempfile makes its directories 0700 and owned by us: a safe place, unless a test opens it.
/// It lives under the system temp dir (/tmp, world-writable), which is fine for a plain file but
/// not on the way through a symlink: see [`checkout_dir`].
pub fn safe_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A 0755 tempdir whose ancestors (unlike /tmp's) are not group/world writable
/// (`crate::testing::tight_base`): where symlink chains and programs that must be accepted live.
pub fn checkout_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(".perms-test-")
        .tempdir_in(crate::testing::tight_base())
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
