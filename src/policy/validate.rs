//! Raw YAML to validated [`Policy`]: every rule in docs/policy.md is checked here, and every broken
//! rule is reported, so one `oomguard check` run lists everything to fix.
//!
//! The only outside access is the user/group lookup (NSS), because a policy naming a user that does
//! not exist would otherwise fail only at spawn time, long after the operator has moved on.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Group, User};

use super::raw::{Field, RawMemory, RawPolicy, RawRestart, RawRun, RawTriggers};
use super::yaml::yaml_error;
use crate::policy::{
    MemoryLimits, MemoryTrigger, Mode, Policy, PolicyError, PressureTrigger, RestartPolicy, Run,
    StallKind, Triggers,
};
use crate::units::{ByteSize, Dur, Limit};

const MAX_INSTANCES: i64 = 1000;
/// The PSI trigger window range the kernel accepts (kernel/sched/psi.c: WINDOW_MIN_US..WINDOW_MAX_US).
const WINDOW_MIN: Duration = Duration::from_millis(500);
const WINDOW_MAX: Duration = Duration::from_secs(10);

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
const DEFAULT_LIMIT_COUNT: u32 = 10;
const DEFAULT_LIMIT_WITHIN: Duration = Duration::from_secs(3600);

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

/// Accepts "SIGTERM", "TERM", "term"; refuses what cannot be handled.
pub(super) fn parse_signal(text: &str) -> Result<i32, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match Signal::from_str(&name) {
        Ok(sig @ (Signal::SIGKILL | Signal::SIGSTOP)) => Err(format!(
            "{sig} cannot be caught, so no worker can shut down gracefully on it; oomguard already \
             kills the group itself when restart.grace runs out: use the worker's graceful \
             shutdown signal, e.g. SIGTERM"
        )),
        Ok(sig) => Ok(sig as i32),
        Err(_) => Err(format!(
            "unknown signal `{text}`: use a signal name such as SIGTERM, SIGINT, SIGQUIT, SIGHUP \
             or SIGUSR1 (the SIG prefix is optional)"
        )),
    }
}

fn sub_microsecond(d: Duration) -> String {
    format!(
        "{} is finer than a microsecond, the unit the kernel takes: round it",
        Dur(d)
    )
}

/// Collects problems while walking the raw policy. Each section returns `None` if anything in it
/// was invalid, so cross-key rules only run on values that parsed.
struct Check<'a> {
    file: &'a Path,
    errors: Vec<PolicyError>,
}

impl Check<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(PolicyError::new(self.file, key, message.into()));
    }

    /// `None` (and an error) if the value is present but invalid. `hint` is appended to serde's own
    /// message for plain types, whose messages ("expected i64") don't say what to write.
    fn take<T>(&mut self, key: &str, field: Field<T>, hint: &str) -> Option<T> {
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
    fn optional<T>(
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
    fn required<T>(
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
    fn positive(&mut self, key: &str, d: Option<Duration>) -> Option<Duration> {
        match d {
            Some(d) if d.is_zero() => {
                self.fail(key, "must be above 0: write e.g. 1s");
                None
            }
            other => other,
        }
    }

    fn name(&mut self, path: &Path, field: Option<Field<String>>) -> Option<String> {
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

    fn run(&mut self, raw: Option<RawRun>) -> Option<Run> {
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
            self.command(command);
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
        let mut env = std::collections::BTreeMap::new();
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

    fn command(&mut self, command: &[String]) {
        let Some(program) = command.first() else {
            self.fail(
                "run.command",
                "is empty: give the program and its arguments, e.g. [\"/usr/bin/celery\", \"worker\"]",
            );
            return;
        };
        if !program.starts_with('/') {
            self.fail(
                "run.command[0]",
                format!(
                    "`{program}` is not an absolute path: oomguard does no PATH lookup, write the \
                     full path (see `command -v {program}`)"
                ),
            );
        }
        for (i, arg) in command.iter().enumerate() {
            if arg.contains('\0') {
                self.fail(
                    &format!("run.command[{i}]"),
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

    /// Also returns memory.max on its own, so triggers.memory.above is checked against it even
    /// when memory.high is wrong.
    fn memory(&mut self, raw: Option<RawMemory>) -> (Option<MemoryLimits>, Option<Limit>) {
        let Some(raw) = raw else {
            self.fail(
                "memory",
                "missing: add a `memory:` section with `high:` and `max:`",
            );
            return (None, None);
        };
        let limits = self.limits(raw);
        (limits.0, limits.1)
    }

    fn limits(&mut self, raw: RawMemory) -> (Option<MemoryLimits>, Option<Limit>) {
        let high = self.required(
            "memory.high",
            raw.high,
            "set memory.high, where the kernel starts reclaiming and throttling, e.g. high: 1536M",
            "",
        );
        let max = self.required(
            "memory.max",
            raw.max,
            "set memory.max, where the kernel OOM-kills, e.g. max: 2G",
            "",
        );
        let swap_max = match raw.swap_max {
            Some(f) => self.take("memory.swap_max", f, "").map(Some),
            None => Some(None),
        };
        let mut zero = false;
        for (key, limit) in [("memory.high", high), ("memory.max", max)] {
            if limit == Some(Limit::Bytes(0)) {
                self.fail(
                    key,
                    "is 0, so no process could run in the group: set the size the workers should \
                     stay under",
                );
                zero = true;
            }
        }
        if zero {
            return (None, max);
        }
        let (Some(high), Some(max)) = (high, max) else {
            return (None, max);
        };
        match (high, max) {
            (Limit::Max, Limit::Max) => {
                self.fail(
                    "memory.max",
                    "memory.high and memory.max are both \"max\", so there is no limit to guard: \
                     set memory.max (and memory.high at or below it)",
                );
                return (None, Some(max));
            }
            (Limit::Max, Limit::Bytes(_)) => {
                self.fail(
                    "memory.high",
                    format!(
                        "memory.high (max) is above memory.max ({max}): lower high or raise max"
                    ),
                );
                return (None, Some(max));
            }
            (Limit::Bytes(h), Limit::Bytes(m)) if h > m => {
                self.fail(
                    "memory.high",
                    format!(
                        "memory.high ({high}) is above memory.max ({max}): lower high or raise max"
                    ),
                );
                return (None, Some(max));
            }
            _ => {}
        }
        let limits = swap_max.map(|swap_max| MemoryLimits {
            high,
            max,
            swap_max,
        });
        (limits, Some(max))
    }

    fn triggers(&mut self, raw: Option<RawTriggers>, max: Option<Limit>) -> Option<Triggers> {
        const NEED_ONE: &str = "set at least one of triggers.pressure (e.g. {some: 150ms, \
                                window: 1s, for: 2s}) or triggers.memory (e.g. {above: 1900M, for: 10s})";
        let Some(raw) = raw else {
            self.fail("triggers", format!("missing: {NEED_ONE}"));
            return None;
        };
        if raw.pressure.is_none() && raw.memory.is_none() {
            self.fail("triggers", format!("is empty: {NEED_ONE}"));
            return None;
        }
        let before = self.errors.len();
        let pressure = raw.pressure.and_then(|p| {
            let some = p
                .some
                .map(|f| (StallKind::Some, "triggers.pressure.some", f));
            let full = p
                .full
                .map(|f| (StallKind::Full, "triggers.pressure.full", f));
            let window = self.required(
                "triggers.pressure.window",
                p.window,
                "set the PSI window, 500ms to 10s, e.g. window: 1s",
                "",
            );
            let sustain =
                self.optional("triggers.pressure.for", p.sustain, Dur(Duration::ZERO), "");
            let window = window.and_then(|w| self.window(w.0));
            let (kind, key, stall) = match (some, full) {
                (Some(_), Some(_)) => {
                    self.fail(
                        "triggers.pressure",
                        "has both `some` and `full`: keep one (some = at least one task stalled \
                         on memory, full = all tasks stalled)",
                    );
                    return None;
                }
                (None, None) => {
                    self.fail(
                        "triggers.pressure",
                        "needs `some:` or `full:`, the stall time per window that fires it, e.g. \
                         some: 150ms",
                    );
                    return None;
                }
                (Some(t), None) | (None, Some(t)) => t,
            };
            let stall = self.take(key, stall, "")?;
            self.pressure(kind, key, stall.0, window?, sustain?.0)
        });
        let memory_trigger = raw.memory.and_then(|m| {
            let above = self.required(
                "triggers.memory.above",
                m.above,
                "set the memory.current level that counts as too much, e.g. above: 1900M",
                "",
            );
            let sustain = self.optional("triggers.memory.for", m.sustain, Dur(Duration::ZERO), "");
            let above = above?.0;
            if above == 0 {
                self.fail(
                    "triggers.memory.above",
                    "is 0, so every instance would be restarted at once: set a level below memory.max",
                );
                return None;
            }
            if let Some(max) = max.and_then(Limit::bytes) {
                if above >= max {
                    self.fail(
                        "triggers.memory.above",
                        format!(
                            "triggers.memory.above ({}) is not below memory.max ({}): the kernel \
                             OOM-kills at memory.max, so oomguard must act before it; lower above \
                             (say, to 90% of max) or raise max",
                            ByteSize(above),
                            ByteSize(max)
                        ),
                    );
                    return None;
                }
            }
            Some(MemoryTrigger {
                above,
                sustain: sustain?.0,
            })
        });
        if self.errors.len() > before {
            return None;
        }
        Some(Triggers {
            pressure,
            memory: memory_trigger,
        })
    }

    /// The kernel's own limits on a PSI trigger, checked here so the daemon never finds out at
    /// write time.
    fn pressure(
        &mut self,
        kind: StallKind,
        key: &str,
        stall: Duration,
        window: Duration,
        sustain: Duration,
    ) -> Option<PressureTrigger> {
        let before = self.errors.len();
        if stall.is_zero() {
            self.fail(
                key,
                "must be above 0: write the stall time that fires the trigger, e.g. 150ms",
            );
        } else if stall >= window {
            self.fail(
                key,
                format!(
                    "{key} ({}) must be below triggers.pressure.window ({}): stall time is \
                     measured within the window; lower it or widen the window",
                    Dur(stall),
                    Dur(window)
                ),
            );
        }
        if stall.subsec_nanos() % 1000 != 0 {
            self.fail(key, sub_microsecond(stall));
        }
        (self.errors.len() == before).then_some(PressureTrigger {
            kind,
            stall,
            window,
            sustain,
        })
    }

    fn window(&mut self, window: Duration) -> Option<Duration> {
        const KEY: &str = "triggers.pressure.window";
        if !(WINDOW_MIN..=WINDOW_MAX).contains(&window) {
            self.fail(
                KEY,
                format!(
                    "{} is outside 500ms to 10s, the range the kernel accepts for PSI triggers: \
                     pick a window in that range (1s is typical)",
                    Dur(window)
                ),
            );
            return None;
        }
        if window.subsec_nanos() % 1000 != 0 {
            self.fail(KEY, sub_microsecond(window));
            return None;
        }
        Some(window)
    }

    fn restart(&mut self, raw: Option<RawRestart>) -> Option<RestartPolicy> {
        let raw = raw.unwrap_or(RawRestart {
            signal: None,
            grace: None,
            backoff: None,
            limit: None,
        });
        let signal = match raw.signal {
            None => Some(libc::SIGTERM),
            Some(f) => self
                .take(
                    "restart.signal",
                    f,
                    "write the signal's name, e.g. SIGTERM (numbers differ between architectures)",
                )
                .and_then(|s| match parse_signal(&s) {
                    Ok(sig) => Some(sig),
                    Err(e) => {
                        self.fail("restart.signal", e);
                        None
                    }
                }),
        };
        let grace = self.optional("restart.grace", raw.grace, Dur(DEFAULT_GRACE), "");
        let grace = self.positive("restart.grace", grace.map(|d| d.0));
        let (initial, max) = match raw.backoff {
            None => (Some(DEFAULT_BACKOFF_INITIAL), Some(DEFAULT_BACKOFF_MAX)),
            Some(b) => {
                let i = self.optional(
                    "restart.backoff.initial",
                    b.initial,
                    Dur(DEFAULT_BACKOFF_INITIAL),
                    "",
                );
                let m = self.optional("restart.backoff.max", b.max, Dur(DEFAULT_BACKOFF_MAX), "");
                (i.map(|d| d.0), m.map(|d| d.0))
            }
        };
        let initial = self.positive("restart.backoff.initial", initial);
        if let (Some(i), Some(m)) = (initial, max) {
            if m < i {
                self.fail(
                    "restart.backoff.max",
                    format!(
                        "restart.backoff.max ({}) is below restart.backoff.initial ({}): raise max \
                         or lower initial",
                        Dur(m),
                        Dur(i)
                    ),
                );
            }
        }
        let max = max.filter(|m| initial.is_some_and(|i| *m >= i));
        let (count, within) = match raw.limit {
            None => (
                Some(i64::from(DEFAULT_LIMIT_COUNT)),
                Some(DEFAULT_LIMIT_WITHIN),
            ),
            Some(l) => {
                let c = self.optional(
                    "restart.limit.count",
                    l.count,
                    i64::from(DEFAULT_LIMIT_COUNT),
                    "write a whole number, 1 or more",
                );
                let w = self.optional(
                    "restart.limit.within",
                    l.within,
                    Dur(DEFAULT_LIMIT_WITHIN),
                    "",
                );
                (c, w.map(|d| d.0))
            }
        };
        let count = count.and_then(|c| match u32::try_from(c) {
            Ok(c) if c >= 1 => Some(c),
            _ => {
                self.fail(
                    "restart.limit.count",
                    format!("{c} is out of range: use 1 or more (up to {})", u32::MAX),
                );
                None
            }
        });
        let within = self.positive("restart.limit.within", within);
        Some(RestartPolicy {
            signal: signal?,
            grace: grace?,
            backoff_initial: initial?,
            backoff_max: max?,
            limit_count: count?,
            limit_within: within?,
        })
    }
}
