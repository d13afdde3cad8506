//! Shared by the policy tests: a minimal valid policy to vary, and assertions that name the key a
//! rejection must report.

use std::path::Path;

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
