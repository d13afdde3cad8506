//! Rules for `restart.hooks:`: an argv list run before a restart's signal, one run once the
//! replacement is running, and how long either may take. Running them is `crate::hooks`.

use std::time::Duration;

use super::bounds::Bounds;
use super::raw::RawHooks;
use super::validate::Check;
use crate::units::Dur;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// `restart.hooks.timeout`: at least 100ms (a hook must be able to start at all), at most 5 minutes
/// because the `before` hook delays the restart's signal by up to this long while the worker goes
/// on growing: a memory trigger's margin below memory.max has to cover it.
const TIMEOUT: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: Duration::from_secs(300),
    why: "the before hook delays the restart's signal by up to this long",
};

/// The words substituted in a hook's arguments (never in its program), with what they become:
/// tools such as `py-spy dump --pid PID` take the pid in argv, and no shell is there to expand
/// an environment variable. `{new_pid}` exists only for `after`.
pub const PLACEHOLDERS: [&str; 4] = ["{pid}", "{new_pid}", "{instance}", "{reason}"];

/// The validated `restart.hooks`.
#[derive(Clone, Debug, PartialEq)]
pub struct Hooks {
    /// Run when the instance has been chosen for a restart, before its signal.
    pub before: Option<Vec<String>>,
    /// Run once the replacement is running; the respawn does not wait for it.
    pub after: Option<Vec<String>>,
    /// Either hook's process group is SIGKILLed after this long.
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Hooks {
        Hooks {
            before: None,
            after: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl Check<'_> {
    pub(super) fn hooks(&mut self, raw: Option<RawHooks>) -> Option<Hooks> {
        let Some(raw) = raw else {
            return Some(Hooks::default());
        };
        let before = self.hook("restart.hooks.before", raw.before);
        let after = self.hook("restart.hooks.after", raw.after);
        let timeout = self.optional(
            "restart.hooks.timeout",
            raw.timeout,
            Dur(DEFAULT_TIMEOUT),
            "",
        );
        let timeout = self.bounded("restart.hooks.timeout", timeout.map(|d| d.0), TIMEOUT);
        Some(Hooks {
            before: before?,
            after: after?,
            timeout: timeout?,
        })
    }

    /// `Some(None)` when absent, `None` when invalid (the error is recorded).
    fn hook(
        &mut self,
        key: &str,
        raw: Option<super::raw::Field<Vec<String>>>,
    ) -> Option<Option<Vec<String>>> {
        let Some(f) = raw else {
            return Some(None);
        };
        let argv = self.take(
            key,
            f,
            "write a list of strings, e.g. [\"/usr/local/bin/lb-drain\", \"{instance}\"] (no \
             shell is involved)",
        )?;
        let before = self.errors.len();
        self.argv(key, &argv);
        if let Some(program) = argv.first() {
            if PLACEHOLDERS.iter().any(|p| program.contains(p)) {
                self.fail(
                    &format!("{key}[0]"),
                    format!(
                        "`{program}` holds a placeholder: the program must be a fixed path; \
                         placeholders ({}) are substituted in its arguments only",
                        PLACEHOLDERS.join(", ")
                    ),
                );
            }
        }
        if key.ends_with(".before") {
            if let Some(i) = argv.iter().position(|a| a.contains("{new_pid}")) {
                self.fail(
                    &format!("{key}[{i}]"),
                    "{new_pid} is only known after the respawn: use it in restart.hooks.after",
                );
            }
        }
        (self.errors.len() == before).then_some(Some(argv))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::testutil::{accepts, rejects, BASE};

    fn hooks(section: &str) -> String {
        format!("{BASE}restart:\n  hooks:\n{section}\n")
    }

    #[test]
    fn absent_hooks_run_nothing_and_time_out_after_10s() {
        let h = accepts(BASE).restart.hooks;
        assert_eq!((h.before, h.after), (None, None));
        assert_eq!(h.timeout, Duration::from_secs(10));
    }

    #[test]
    fn argv_lists_with_placeholders_in_arguments() {
        let h = accepts(&hooks(
            "    before: [/usr/local/bin/lb-drain, \"{instance}\", \"--pid={pid}\"]\n    \
             after: [/usr/local/bin/lb-undrain, \"{new_pid}\"]\n    timeout: 2s",
        ))
        .restart
        .hooks;
        assert_eq!(
            h.before.unwrap(),
            ["/usr/local/bin/lb-drain", "{instance}", "--pid={pid}"]
        );
        assert_eq!(h.after.unwrap(), ["/usr/local/bin/lb-undrain", "{new_pid}"]);
        assert_eq!(h.timeout, Duration::from_secs(2));
    }

    #[test]
    fn hooks_are_validated_like_run_command() {
        rejects(
            &hooks("    before: [lb-drain]"),
            "restart.hooks.before[0]",
            "not an absolute path",
        );
        rejects(&hooks("    after: []"), "restart.hooks.after", "is empty");
        rejects(
            &hooks("    after: /usr/bin/true --now"),
            "restart.hooks.after",
            "no shell is involved",
        );
        rejects(
            &hooks("    before: [\"/usr/bin/x\", \"a\\0b\"]"),
            "restart.hooks.before[1]",
            "NUL byte",
        );
        rejects(
            &hooks("    before: [\"/usr/bin/{instance}\"]"),
            "restart.hooks.before[0]",
            "must be a fixed path",
        );
        rejects(
            &hooks("    before: [/usr/bin/x, \"{new_pid}\"]"),
            "restart.hooks.before[1]",
            "only known after the respawn",
        );
        rejects(
            &hooks("    befor: [/usr/bin/x]"),
            "restart.hooks.befor",
            "unknown key",
        );
    }

    #[test]
    fn timeout_range_is_100ms_to_5m() {
        rejects(
            &hooks("    timeout: 50ms"),
            "restart.hooks.timeout",
            "is below the allowed range 100ms to 5m",
        );
        rejects(
            &hooks("    timeout: 6m"),
            "restart.hooks.timeout",
            "is above the allowed range",
        );
        rejects(
            &hooks("    timeout: 10"),
            "restart.hooks.timeout",
            "no unit",
        );
        assert_eq!(
            accepts(&hooks("    timeout: 100ms")).restart.hooks.timeout,
            Duration::from_millis(100)
        );
    }
}
