//! Raw YAML to validated [`Policy`]: every rule in docs/policy.md is checked, and every broken
//! rule is reported, so one `oomguard check` run lists everything to fix.
//!
//! This file holds the entry point and the [`Check`] collector; the rules for each section live in
//! `run`, `limits` (memory and triggers) and `restart`.

use std::path::Path;
use std::time::Duration;

use super::raw::{Field, RawPolicy};
use super::yaml::yaml_error;
use crate::policy::{Mode, Policy, PolicyError};

/// Parses and validates one policy file's text. `path` is used for messages and, when the file has
/// no `name:`, for the name (its stem). Touches no files; looks up `run.user`/`run.group`.
pub fn parse(path: &Path, text: &str) -> Result<Policy, Vec<PolicyError>> {
    // Option so that an empty (or comments-only) file gets its own message instead of "EOF".
    let raw: RawPolicy = match serde_yaml::from_str::<Option<RawPolicy>>(text) {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            return Err(vec![PolicyError::new(
                path,
                "(yaml)",
                "the file is empty: a policy needs at least `run`, `memory` and `triggers` (see docs/policy.md)",
            )])
        }
        Err(e) => return Err(vec![yaml_error(path, &e)]),
    };
    let mut c = Check {
        file: path,
        errors: Vec::new(),
    };
    let name = c.name(path, raw.name);
    let mode = c.optional("mode", raw.mode, Mode::Enforce, "");
    let run = c.run(raw.run);
    let (memory, max) = c.memory(raw.memory);
    let triggers = c.triggers(raw.triggers, max);
    let restart = c.restart(raw.restart);
    match (name, mode, run, memory, triggers, restart) {
        (Some(name), Some(mode), Some(run), Some(memory), Some(triggers), Some(restart))
            if c.errors.is_empty() =>
        {
            Ok(Policy {
                name,
                source: path.to_path_buf(),
                mode,
                run,
                memory,
                triggers,
                restart,
            })
        }
        _ => Err(c.errors),
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: the name becomes a cgroup directory, so nothing that could climb
/// out of it ('/', '..') or collide on a case-insensitive reading.
pub(super) fn check_name(name: &str) -> Result<(), String> {
    const RULE: &str = "names become a cgroup directory, so use only a-z, 0-9, '_' and '-', \
                        starting with a letter or digit, at most 63 characters";
    if name.is_empty() {
        return Err(format!("is empty: {RULE}"));
    }
    if name.len() > 63 {
        return Err(format!(
            "`{name}` is {} characters long: {RULE}",
            name.len()
        ));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        return Err(format!("`{name}` contains {bad:?}: {RULE}"));
    }
    if name.starts_with(['_', '-']) {
        return Err(format!("`{name}` starts with {:?}: {RULE}", &name[..1]));
    }
    Ok(())
}

/// Collects problems while walking the raw policy. Each section returns `None` if anything in it
/// was invalid, so cross-key rules only run on values that parsed.
pub(super) struct Check<'a> {
    pub file: &'a Path,
    pub errors: Vec<PolicyError>,
}

impl Check<'_> {
    pub(super) fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(PolicyError::new(self.file, key, message.into()));
    }

    /// `None` (and an error) if the value is present but invalid. `hint` is appended to serde's own
    /// message for plain types, whose messages ("expected i64") don't say what to write.
    pub(super) fn take<T>(&mut self, key: &str, field: Field<T>, hint: &str) -> Option<T> {
        match field.0 {
            Ok(v) => Some(v),
            Err(e) if hint.is_empty() => {
                self.fail(key, e);
                None
            }
            Err(e) => {
                self.fail(key, format!("{e}: {hint}"));
                None
            }
        }
    }

    /// A key with a default: `Some(default)` when absent, `None` when present but invalid.
    pub(super) fn optional<T>(
        &mut self,
        key: &str,
        field: Option<Field<T>>,
        default: T,
        hint: &str,
    ) -> Option<T> {
        match field {
            None => Some(default),
            Some(f) => self.take(key, f, hint),
        }
    }

    /// A key without a default: absence is an error whose message says what to write.
    pub(super) fn required<T>(
        &mut self,
        key: &str,
        field: Option<Field<T>>,
        missing: &str,
        hint: &str,
    ) -> Option<T> {
        match field {
            None => {
                self.fail(key, format!("missing: {missing}"));
                None
            }
            Some(f) => self.take(key, f, hint),
        }
    }

    /// A duration that must be above zero.
    pub(super) fn positive(&mut self, key: &str, d: Option<Duration>) -> Option<Duration> {
        match d {
            Some(d) if d.is_zero() => {
                self.fail(key, "must be above 0: write e.g. 1s");
                None
            }
            other => other,
        }
    }

    pub(super) fn name(&mut self, path: &Path, field: Option<Field<String>>) -> Option<String> {
        if let Some(field) = field {
            let name = self.take("name", field, "write the name as a string")?;
            return match check_name(&name) {
                Ok(()) => Some(name),
                Err(e) => {
                    self.fail("name", e);
                    None
                }
            };
        }
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let stem = stem.unwrap_or_default();
        match check_name(&stem) {
            Ok(()) => Some(stem),
            Err(e) => {
                self.fail(
                    "name",
                    format!(
                        "not set, and the file name does not make a valid one ({e}): set `name:` \
                         or rename the file"
                    ),
                );
                None
            }
        }
    }
}
