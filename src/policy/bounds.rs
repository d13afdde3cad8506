//! The allowed range of every duration in a policy, and the check that enforces it.
//!
//! Why bounds at all: a duration the parser accepts is later added to an `Instant`, doubled for
//! backoff or handed to a timer. `for: 300000000000y` used to pass `oomguard check` and then
//! overflowed `Instant` arithmetic in the instance task (a panic that ends supervision of that
//! worker), and `backoff: {initial: 1ns}` made a crashing worker respawn in a busy loop. Every
//! duration key therefore has a documented range (docs/policy.md's key reference lists the
//! numbers), checked at validation so the daemon never meets one outside
//! it. The PSI `window` and stall keep their own, kernel-given, range in `limits`.

use std::time::Duration;

use super::validate::Check;
use crate::units::Dur;

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// An inclusive range for one duration key, with the reason for it (shown in the message).
#[derive(Clone, Copy, Debug)]
pub(super) struct Bounds {
    pub min: Duration,
    pub max: Duration,
    pub why: &'static str,
}

/// `triggers.pressure.for` and `triggers.memory.for`: 0 (act on the first sign) up to an hour. A
/// condition that must hold longer than an hour before oomguard acts is not a guard in front of
/// the OOM killer any more, and the bound keeps `since + for` far from `Instant`'s limits.
pub(super) const SUSTAIN: Bounds = Bounds {
    min: Duration::ZERO,
    max: secs(3600),
    why: "longer than an hour is no longer acting before the kernel does",
};

/// `restart.grace`: at least 100ms, so the worker's own signal handler can run at all (0 would be
/// a plain SIGKILL, which `restart.signal` exists to avoid); at most an hour, because the restart
/// (and, for a rolling restart, the whole policy) waits this long for a worker that hangs.
pub(super) const GRACE: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: secs(3600),
    why: "the restart waits this long for a hung worker",
};

/// `restart.ready`: 0 (only wait for the replacement to start) up to an hour, because a rolling
/// restart waits this long per instance and `start + ready` must stay far from `Instant`'s limits.
pub(super) const READY: Bounds = Bounds {
    min: Duration::ZERO,
    max: secs(3600),
    why: "a rolling restart waits this long for each instance",
};

/// `restart.backoff.initial`: at least 100ms, so a worker that exits at once is respawned at most
/// ten times a second instead of in a busy loop (`1ns` did exactly that); at most an hour, like
/// `backoff.max`, which it must not exceed.
pub(super) const BACKOFF_INITIAL: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: secs(3600),
    why: "below 100ms a crashing worker respawns in a busy loop",
};

/// `restart.backoff.max`: at least 100ms (and at least `initial`), at most an hour: a worker left
/// down for longer than that by a backoff is an outage nobody asked for; use `limit` to give up.
pub(super) const BACKOFF_MAX: Bounds = Bounds {
    min: Duration::from_millis(100),
    max: secs(3600),
    why: "a longer wait is an outage; restart.limit is the way to give up",
};

/// `restart.limit.within`: at least a second (the window counts exits, which need time between
/// them to mean anything), at most a week: past that the count is a lifetime total, which
/// `oomguard restart` resets anyway.
pub(super) const LIMIT_WITHIN: Bounds = Bounds {
    min: secs(1),
    max: secs(7 * 24 * 3600),
    why: "the window counts recent exits, not a lifetime total",
};

impl Bounds {
    /// `Err(message)` naming the key, the value and the range when `d` is outside it.
    pub(super) fn check(&self, key: &str, d: Duration) -> Result<Duration, String> {
        if (self.min..=self.max).contains(&d) {
            return Ok(d);
        }
        let side = if d < self.min { "below" } else { "above" };
        Err(format!(
            "{key} ({}) is {side} the allowed range {} to {} ({}): pick a value in that range",
            Dur(d),
            Dur(self.min),
            Dur(self.max),
            self.why
        ))
    }
}

impl Check<'_> {
    /// The value if it is inside `bounds`; otherwise `None` and an error at `key`.
    pub(super) fn bounded(
        &mut self,
        key: &str,
        d: Option<Duration>,
        bounds: Bounds,
    ) -> Option<Duration> {
        match bounds.check(key, d?) {
            Ok(d) => Some(d),
            Err(message) => {
                self.fail(key, message);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::testutil::{accepts, base_with, rejects, BASE};

    fn restart(section: &str) -> String {
        format!("{BASE}restart:\n{section}\n")
    }

    fn pressure_for(value: &str) -> String {
        base_with(
            "{some: 150ms, window: 1s}",
            &format!("{{some: 150ms, window: 1s, for: {value}}}"),
        )
    }

    fn memory_for(value: &str) -> String {
        format!("{BASE}  memory: {{above: 1G, for: {value}}}\n")
    }

    /// (policy text, key, text the message must contain): each one refused with that message.
    #[test]
    fn absurd_durations_are_refused_with_key_value_and_range() {
        let table: Vec<(String, &str, &str)> = vec![
            (
                pressure_for("300000000000y"),
                "triggers.pressure.for",
                "is above the allowed range 0s to 1h",
            ),
            (
                pressure_for("61m"),
                "triggers.pressure.for",
                "triggers.pressure.for (1h 1m) is above the allowed range 0s to 1h",
            ),
            (
                memory_for("300000000000y"),
                "triggers.memory.for",
                "is above the allowed range 0s to 1h",
            ),
            (
                memory_for("2h"),
                "triggers.memory.for",
                "triggers.memory.for (2h) is above",
            ),
            (
                restart("  grace: 1ns"),
                "restart.grace",
                "restart.grace (1ns) is below the allowed range 100ms to 1h",
            ),
            (
                restart("  grace: 0s"),
                "restart.grace",
                "(0s) is below the allowed range 100ms to 1h",
            ),
            (
                restart("  grace: 300000000000y"),
                "restart.grace",
                "is above the allowed range 100ms to 1h",
            ),
            (
                restart("  backoff: {initial: 1ns}"),
                "restart.backoff.initial",
                "restart.backoff.initial (1ns) is below the allowed range 100ms to 1h (below \
                 100ms a crashing worker respawns in a busy loop)",
            ),
            (
                restart("  backoff: {initial: 99ms, max: 1s}"),
                "restart.backoff.initial",
                "is below the allowed range 100ms to 1h",
            ),
            (
                restart("  backoff: {initial: 1s, max: 300000000000y}"),
                "restart.backoff.max",
                "is above the allowed range 100ms to 1h",
            ),
            (
                restart("  backoff: {initial: 2h, max: 2h}"),
                "restart.backoff.initial",
                "restart.backoff.initial (2h) is above",
            ),
            (
                restart("  limit: {within: 300000000000y}"),
                "restart.limit.within",
                "is above the allowed range 1s to 7days",
            ),
            (
                restart("  limit: {within: 8days}"),
                "restart.limit.within",
                "restart.limit.within (8days) is above",
            ),
            (
                restart("  limit: {within: 500ms}"),
                "restart.limit.within",
                "is below the allowed range 1s to 7days",
            ),
            (
                restart("  limit: {within: 0s}"),
                "restart.limit.within",
                "is below",
            ),
        ];
        for (text, key, needle) in &table {
            rejects(text, key, needle);
        }
    }

    #[test]
    fn the_bounds_themselves_are_accepted() {
        assert_eq!(
            accepts(&pressure_for("1h"))
                .triggers
                .pressure
                .unwrap()
                .sustain,
            super::SUSTAIN.max
        );
        accepts(&pressure_for("0"));
        accepts(&memory_for("1h"));
        let r = accepts(&restart(
            "  grace: 100ms\n  backoff: {initial: 100ms, max: 1h}\n  limit: {within: 7days}",
        ))
        .restart;
        assert_eq!(r.grace, super::GRACE.min);
        assert_eq!(r.backoff_initial, super::BACKOFF_INITIAL.min);
        assert_eq!(r.backoff_max, super::BACKOFF_MAX.max);
        assert_eq!(r.limit_within, super::LIMIT_WITHIN.max);
        accepts(&restart("  grace: 1h\n  limit: {within: 1s}"));
    }
}
