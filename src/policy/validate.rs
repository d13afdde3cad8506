//! Raw YAML to validated [`Policy`]: every rule in docs/policy.md is checked, and every broken
//! rule is reported, so one `oomguard check` run lists everything to fix.
//!
//! This file holds the entry point and the [`Check`] collector; the rules for each section live in
//! `run`, `limits` (memory and triggers) and `restart`.

use std::path::Path;

use super::raw::{Field, RawPolicy};
use super::yaml::yaml_error;
use crate::policy::{Policy, PolicyError};
use crate::vocabulary::Mode;

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
        prefix: "",
    };
    let name = c.name(path, raw.name);
    let mode = c.optional("mode", raw.mode, Mode::Enforce, "");
    let run = c.run(raw.run);
    let (memory, max) = c.memory(raw.memory);
    let triggers = c.triggers(raw.triggers, max);
    let restart = c.restart(raw.restart);
    let children = c.children(raw.children, memory.as_ref());
    c.overlap_fits(restart.as_ref(), memory.as_ref());
    match (name, mode, run, memory, triggers, restart, children) {
        (
            Some(name),
            Some(mode),
            Some(run),
            Some(memory),
            Some(triggers),
            Some(restart),
            Some(children),
        ) if c.errors.is_empty() => Ok(Policy {
            name,
            source: path.to_path_buf(),
            mode,
            run,
            memory,
            triggers,
            restart,
            children,
        }),
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
    /// Put before every key reported: "children." while the `children:` section reuses the rules
    /// of the instance's `memory:` and `triggers:`.
    pub prefix: &'static str,
}

impl Check<'_> {
    pub(super) fn fail(&mut self, key: &str, message: impl Into<String>) {
        let key = format!("{}{key}", self.prefix);
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

    pub(super) fn name(&mut self, path: &Path, field: Option<Field<String>>) -> Option<String> {
        if let Some(field) = field {
            let name = self.take(
                "name",
                field,
                "names are strings, quote it (e.g. name: \"5\")",
            )?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::policy::testutil::{accepts, base_with, errors, rejects, BASE};
    use crate::policy::{MemoryLimits, MemoryTrigger, PressureTrigger, RestartPolicy, Run};
    use crate::policy::{StallKind, Triggers};
    use crate::units::Limit;

    const FULL: &str = r#"
name: celery
mode: observe
run:
  command: ["/srv/app/venv/bin/celery", "-A", "orders", "worker"]
  instances: 2
  user: nobody
  group: root
  workdir: /srv/app
  env: {BROKER: "redis://localhost", EMPTY: ""}
memory:
  high: 1536M
  max: 2G
  swap_max: 0
triggers:
  pressure: {full: 150ms, window: 1s, for: 2s}
  memory: {above: 1900M, for: 10s}
restart:
  signal: SIGINT
  grace: 45s
  backoff: {initial: 2s, max: 1m}
  limit: {count: 3, within: 10m}
"#;

    #[test]
    fn full_policy_maps_every_key() {
        let p = accepts(FULL);
        let secs = Duration::from_secs;
        assert_eq!(
            p,
            Policy {
                name: "celery".into(),
                source: PathBuf::from("/etc/oomguard/policies/web.yaml"),
                mode: Mode::Observe,
                run: Run {
                    command: vec![
                        "/srv/app/venv/bin/celery".into(),
                        "-A".into(),
                        "orders".into(),
                        "worker".into()
                    ],
                    instances: 2,
                    user: Some("nobody".into()),
                    group: Some("root".into()),
                    workdir: Some(PathBuf::from("/srv/app")),
                    env: BTreeMap::from([
                        ("BROKER".into(), "redis://localhost".into()),
                        ("EMPTY".into(), String::new()),
                    ]),
                },
                memory: MemoryLimits {
                    high: Limit::Bytes(1536 << 20),
                    max: Limit::Bytes(2 << 30),
                    swap_max: Some(Limit::Bytes(0)),
                    boundary: true,
                },
                triggers: Triggers {
                    pressure: Some(PressureTrigger {
                        kind: StallKind::Full,
                        stall: Duration::from_millis(150),
                        window: secs(1),
                        sustain: secs(2),
                    }),
                    memory: Some(MemoryTrigger {
                        above: 1900 << 20,
                        sustain: secs(10),
                    }),
                },
                restart: RestartPolicy {
                    signal: libc::SIGINT,
                    grace: secs(45),
                    ready: secs(5),
                    backoff_initial: secs(2),
                    backoff_max: secs(60),
                    limit_count: 3,
                    limit_within: secs(600),
                    hooks: Default::default(),
                    overlap: None,
                },
                children: None,
            }
        );
        assert_eq!(p.instance_ids(), ["celery/0", "celery/1"]);
    }

    #[test]
    fn defaults_fill_optional_keys() {
        let p = accepts(BASE);
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.run.instances, 1);
        assert_eq!(
            (&p.run.user, &p.run.group, &p.run.workdir),
            (&None, &None, &None)
        );
        assert!(p.run.env.is_empty());
        assert_eq!(p.memory.swap_max, None);
        assert_eq!(p.triggers.pressure.map(|t| t.sustain), Some(Duration::ZERO));
        assert_eq!(p.triggers.memory, None);
        assert_eq!(
            p.restart,
            RestartPolicy {
                signal: libc::SIGTERM,
                grace: Duration::from_secs(30),
                ready: Duration::from_secs(5),
                backoff_initial: Duration::from_secs(1),
                backoff_max: Duration::from_secs(300),
                limit_count: 10,
                limit_within: Duration::from_secs(3600),
                hooks: Default::default(),
                overlap: None,
            }
        );
        assert_eq!(p.instance_ids(), ["web/0"]);
    }

    #[test]
    fn name_defaults_to_the_file_stem() {
        let text = BASE.replacen("name: web\n", "", 1);
        let p = parse(
            Path::new("/etc/oomguard/policies/orders-worker.yaml"),
            &text,
        )
        .unwrap();
        assert_eq!(p.name, "orders-worker");
        let errs = parse(Path::new("/etc/oomguard/policies/Orders.Worker.yml"), &text).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "name");
        assert!(errs[0].message.contains("rename the file"), "{}", errs[0]);
    }

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        let long = "a".repeat(64);
        for bad in [
            "", "Web", "a/b", "..", "../etc", ".hidden", "-a", "_a", "a b", "a.b", "é", &long,
        ] {
            let text = base_with("name: web", &format!("name: {bad:?}"));
            rejects(&text, "name", "cgroup directory");
        }
        for good in ["a", "0", "a-b_c", "celery2", &"a".repeat(63)] {
            assert_eq!(
                accepts(&base_with("name: web", &format!("name: {good:?}"))).name,
                good
            );
        }
        rejects(&base_with("name: web", "name: 5"), "name", "quote it");
    }

    #[test]
    fn mode_must_be_enforce_or_observe() {
        rejects(
            &format!("mode: enforcing\n{BASE}"),
            "mode",
            "`enforce` or `observe`",
        );
        assert_eq!(
            accepts(&format!("mode: observe\n{BASE}")).mode,
            Mode::Observe
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "
run: {command: [celery], instances: 0}
memory: {high: 3G, max: 2G}
triggers: {memory: {above: 5G}}
restart: {signal: KILL, grace: 0s}
";
        let errs = parse(Path::new("/p/Bad Name.yaml"), text).unwrap_err();
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "name",
                "run.command[0]",
                "run.instances",
                "memory.high",
                "triggers.memory.above",
                "restart.signal",
                "restart.grace"
            ]
        );
        assert!(errs.iter().all(|e| e.file == Path::new("/p/Bad Name.yaml")));
    }

    #[test]
    fn errors_display_as_file_key_message() {
        let errs = errors(&base_with("high: 1536M", "high: 3G"));
        assert_eq!(
            errs[0].to_string(),
            "/etc/oomguard/policies/web.yaml: memory.high: memory.high (3G) is above memory.max \
             (2G): lower high or raise max"
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        rejects(
            &format!("{BASE}colour: blue\n"),
            "colour",
            "line 9: unknown key",
        );
        rejects(
            &base_with("  max: 2G", "  max: 2G\n  hihg: 1G"),
            "memory.hihg",
            "line 7",
        );
        rejects(
            &base_with(
                "{some: 150ms, window: 1s}",
                "{some: 150ms, window: 1s, fro: 2s}",
            ),
            "triggers.pressure.fro",
            "expected one of `some`, `full`, `window`, `for`",
        );
        rejects(&format!("{BASE}name: again\n"), "name", "is set twice");
        rejects(
            &base_with("  max: 2G", "  max: 2G\n  max: 3G"),
            "memory.max",
            "is set twice",
        );
    }

    #[test]
    fn yaml_shape_and_syntax_errors_are_one_error() {
        rejects("", "(yaml)", "the file is empty");
        rejects("# nothing yet\n", "(yaml)", "the file is empty");
        rejects("just a string", "(yaml)", "expected a mapping of keys");
        rejects(
            &base_with("memory:\n  high: 1536M\n  max: 2G", "memory: 2G"),
            "memory",
            "line 4",
        );
        rejects("run: {command: [\"/bin/x\"]\nmemory", "(yaml)", "line 2");
        rejects(
            &format!("{BASE}---\n{BASE}"),
            "(yaml)",
            "more than one document",
        );
    }
}
