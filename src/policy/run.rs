//! Rules for the `run:` section: what is executed, how many times, as whom, where, with what env.
//!
//! The only outside access in all of validation is here: the user/group lookup (NSS), because a
//! policy naming a user that does not exist would otherwise fail only at spawn time, long after
//! the operator has moved on.

use std::collections::BTreeMap;

use nix::unistd::{Group, User};

use super::raw::RawRun;
use super::validate::Check;
use crate::policy::Run;

const MAX_INSTANCES: i64 = 1000;

impl Check<'_> {
    pub(super) fn run(&mut self, raw: Option<RawRun>) -> Option<Run> {
        let Some(raw) = raw else {
            self.fail(
                "run",
                "missing: add a `run:` section with at least `command:`",
            );
            return None;
        };
        let before = self.errors.len();
        let command = self.required(
            "run.command",
            raw.command,
            "give the program and its arguments as a list, e.g. [\"/usr/bin/celery\", \"worker\"]",
            "write a list of strings, e.g. [\"/usr/bin/celery\", \"worker\"] (no shell is involved)",
        );
        if let Some(command) = &command {
            self.argv("run.command", command);
        }
        let instances = self.optional(
            "run.instances",
            raw.instances,
            1,
            "write a whole number from 1 to 1000",
        );
        if let Some(n) = instances {
            if !(1..=MAX_INSTANCES).contains(&n) {
                self.fail(
                    "run.instances",
                    format!("{n} is out of range: use 1 to {MAX_INSTANCES}"),
                );
            }
        }
        let user = match raw.user {
            Some(f) => self.take("run.user", f, "write a user name").map(Some),
            None => Some(None),
        };
        if let Some(Some(user)) = &user {
            self.user(user);
        }
        let group = match raw.group {
            Some(f) => self.take("run.group", f, "write a group name").map(Some),
            None => Some(None),
        };
        if let Some(Some(group)) = &group {
            self.group(group);
        }
        let workdir = match raw.workdir {
            Some(f) => self
                .take("run.workdir", f, "write an absolute path")
                .map(Some),
            None => Some(None),
        };
        if let Some(Some(dir)) = &workdir {
            if !dir.starts_with('/') || dir.contains('\0') {
                self.fail(
                    "run.workdir",
                    format!("`{dir}` is not an absolute path: write the full path, e.g. /srv/app"),
                );
            }
        }
        let mut env = BTreeMap::new();
        for (k, v) in raw.env.unwrap_or_default() {
            let key = format!("run.env.{k}");
            if k.is_empty() {
                self.fail(
                    "run.env",
                    "has an empty variable name: remove it or name it",
                );
            } else if k.contains(['=', '\0']) {
                self.fail(
                    &key,
                    "variable names cannot contain '=' or NUL: the kernel splits NAME=value at \
                     the first '='; rename it",
                );
            }
            match v.0 {
                Ok(v) if v.contains('\0') => {
                    self.fail(&key, "the value contains a NUL byte: remove it")
                }
                Ok(v) => {
                    env.insert(k, v);
                }
                Err(e) => self.fail(
                    &key,
                    format!("{e}: environment values are strings, quote it (e.g. PORT: \"8000\")"),
                ),
            }
        }
        if self.errors.len() > before {
            return None;
        }
        Some(Run {
            command: command?,
            instances: u32::try_from(instances?).ok()?,
            user: user?,
            group: group?,
            workdir: workdir?.map(Into::into),
            env,
        })
    }

    /// An argv list as exec takes it (`run.command`, `restart.hooks.*`): an absolute program,
    /// no NUL bytes; no shell and no PATH lookup are involved.
    pub(super) fn argv(&mut self, key: &str, command: &[String]) {
        let Some(program) = command.first() else {
            self.fail(
                key,
                "is empty: give the program and its arguments, e.g. [\"/usr/bin/celery\", \"worker\"]",
            );
            return;
        };
        if !program.starts_with('/') {
            self.fail(
                &format!("{key}[0]"),
                format!(
                    "`{program}` is not an absolute path: oomguard does no PATH lookup, write the \
                     full path (see `command -v {program}`)"
                ),
            );
        }
        for (i, arg) in command.iter().enumerate() {
            if arg.contains('\0') {
                self.fail(
                    &format!("{key}[{i}]"),
                    "contains a NUL byte, which cannot be passed to exec: remove it",
                );
            }
        }
    }

    fn user(&mut self, user: &str) {
        match User::from_name(user) {
            Ok(Some(_)) => {}
            Ok(None) => self.fail(
                "run.user",
                format!(
                    "user `{user}` does not exist on this host: create it (useradd --system \
                     {user}) or change run.user"
                ),
            ),
            Err(e) => self.fail(
                "run.user",
                format!("could not look up user `{user}`: {e}: check /etc/nsswitch.conf"),
            ),
        }
    }

    fn group(&mut self, group: &str) {
        match Group::from_name(group) {
            Ok(Some(_)) => {}
            Ok(None) => self.fail(
                "run.group",
                format!(
                    "group `{group}` does not exist on this host: create it (groupadd --system \
                     {group}) or change run.group"
                ),
            ),
            Err(e) => self.fail(
                "run.group",
                format!("could not look up group `{group}`: {e}: check /etc/nsswitch.conf"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::testutil::{accepts, base_with, rejects, BASE};

    const CMD: &str = "  command: [\"/bin/sleep\", \"1000\"]";

    fn run_with(extra: &str) -> String {
        base_with(CMD, &format!("{CMD}\n{extra}"))
    }

    #[test]
    fn command_is_required_absolute_argv() {
        rejects(&base_with(CMD, "  instances: 1"), "run.command", "missing");
        rejects(&base_with(CMD, "  command: []"), "run.command", "is empty");
        rejects(
            &base_with(CMD, "  command: [celery, worker]"),
            "run.command[0]",
            "absolute path",
        );
        rejects(
            &base_with(CMD, "  command: [\"\"]"),
            "run.command[0]",
            "absolute path",
        );
        rejects(
            &base_with(CMD, "  command: /bin/sleep 1000"),
            "run.command",
            "list of strings",
        );
        rejects(
            &base_with(CMD, "  command: [\"/bin/x\", \"a\\0b\"]"),
            "run.command[1]",
            "NUL",
        );
        rejects(
            &BASE.replacen("run:\n  command: [\"/bin/sleep\", \"1000\"]\n", "", 1),
            "run",
            "missing",
        );
    }

    #[test]
    fn instances_are_1_to_1000() {
        for bad in ["0", "1001", "-1"] {
            rejects(
                &run_with(&format!("  instances: {bad}")),
                "run.instances",
                "use 1 to 1000",
            );
        }
        rejects(
            &run_with("  instances: two"),
            "run.instances",
            "whole number",
        );
        assert_eq!(accepts(&run_with("  instances: 1000")).run.instances, 1000);
        assert_eq!(
            accepts(&run_with("  instances: 3")).instance_ids(),
            ["web/0", "web/1", "web/2"]
        );
    }

    #[test]
    fn user_and_group_must_exist() {
        let p = accepts(&run_with("  user: nobody\n  group: root"));
        assert_eq!(p.run.user.as_deref(), Some("nobody"));
        assert_eq!(p.run.group.as_deref(), Some("root"));
        rejects(
            &run_with("  user: oomguard-no-such-user"),
            "run.user",
            "useradd --system",
        );
        rejects(
            &run_with("  group: oomguard-no-such-group"),
            "run.group",
            "groupadd --system",
        );
        rejects(&run_with("  user: \"\""), "run.user", "does not exist");
    }

    #[test]
    fn workdir_is_absolute() {
        assert_eq!(
            accepts(&run_with("  workdir: /srv/app")).run.workdir,
            Some("/srv/app".into())
        );
        rejects(
            &run_with("  workdir: srv/app"),
            "run.workdir",
            "absolute path",
        );
    }

    #[test]
    fn env_names_and_values_are_checked() {
        let p = accepts(&run_with("  env: {A: \"1\", B_C: x y}"));
        assert_eq!(p.run.env.get("B_C").map(String::as_str), Some("x y"));
        rejects(&run_with("  env: {\"A=B\": x}"), "run.env.A=B", "'='");
        rejects(
            &run_with("  env: {\"\": x}"),
            "run.env",
            "empty variable name",
        );
        rejects(&run_with("  env: {\"A\\0\": x}"), "run.env.A\0", "NUL");
        rejects(&run_with("  env: {A: \"x\\0y\"}"), "run.env.A", "NUL");
        rejects(&run_with("  env: {PORT: 8000}"), "run.env.PORT", "quote it");
    }
}
