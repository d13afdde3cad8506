//! Rules for `memory:` and `triggers:`: the limits must leave oomguard room to act before the
//! kernel does, and a PSI trigger must be one the kernel will accept.

use std::time::Duration;

use super::bounds;
use super::raw::{RawMemory, RawTriggers};
use super::validate::Check;
use crate::policy::{MemoryLimits, MemoryTrigger, PressureTrigger, StallKind, Triggers};
use crate::units::{ByteSize, Dur, Limit};

/// The PSI trigger window range the kernel accepts (kernel/sched/psi.c: WINDOW_MIN_US..WINDOW_MAX_US).
const WINDOW_MIN: Duration = Duration::from_millis(500);
const WINDOW_MAX: Duration = Duration::from_secs(10);

fn sub_microsecond(d: Duration) -> String {
    format!(
        "{} is finer than a microsecond, the unit the kernel takes: round it",
        Dur(d)
    )
}

impl Check<'_> {
    /// Also returns memory.max on its own, so triggers.memory.above is checked against it even
    /// when memory.high is wrong.
    pub(super) fn memory(
        &mut self,
        raw: Option<RawMemory>,
    ) -> (Option<MemoryLimits>, Option<Limit>) {
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
        let boundary = match raw.boundary {
            Some(f) => self.take("memory.boundary", f, "write true or false"),
            None => Some(true),
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
            // An invalid value was reported above; the policy is refused anyway.
            boundary: boundary.unwrap_or(true),
        });
        (limits, Some(max))
    }

    pub(super) fn triggers(
        &mut self,
        raw: Option<RawTriggers>,
        max: Option<Limit>,
    ) -> Option<Triggers> {
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
            let sustain = self.bounded(
                "triggers.pressure.for",
                sustain.map(|d| d.0),
                bounds::SUSTAIN,
            );
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
            self.pressure(kind, key, stall.0, window?, sustain?)
        });
        let memory_trigger = raw.memory.and_then(|m| {
            let above = self.required(
                "triggers.memory.above",
                m.above,
                "set the memory.current level that counts as too much, e.g. above: 1900M",
                "",
            );
            let sustain = self.optional("triggers.memory.for", m.sustain, Dur(Duration::ZERO), "");
            let sustain =
                self.bounded("triggers.memory.for", sustain.map(|d| d.0), bounds::SUSTAIN);
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
                sustain: sustain?,
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
        if !stall.subsec_nanos().is_multiple_of(1000) {
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
        if !window.subsec_nanos().is_multiple_of(1000) {
            self.fail(KEY, sub_microsecond(window));
            return None;
        }
        Some(window)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::testutil::{accepts, base_with, errors, rejects};
    use crate::policy::{MemoryTrigger, StallKind};
    use crate::units::Limit;

    const LIMITS: &str = "  high: 1536M\n  max: 2G";
    const PRESSURE: &str = "  pressure: {some: 150ms, window: 1s}";

    fn limits(text: &str) -> String {
        base_with(LIMITS, text)
    }

    fn triggers(text: &str) -> String {
        base_with(PRESSURE, text)
    }

    #[test]
    fn high_must_not_be_above_max() {
        rejects(
            &limits("  high: 3G\n  max: 2G"),
            "memory.high",
            "memory.high (3G) is above memory.max (2G): lower high or raise max",
        );
        rejects(
            &limits("  high: max\n  max: 2G"),
            "memory.high",
            "(max) is above",
        );
        rejects(
            &limits("  high: max\n  max: max"),
            "memory.max",
            "both \"max\"",
        );
        let p = accepts(&limits("  high: 2G\n  max: 2G"));
        assert_eq!(p.memory.high, p.memory.max);
        let p = accepts(&limits("  high: 1G\n  max: max"));
        assert_eq!(p.memory.max, Limit::Max);
    }

    #[test]
    fn limits_are_required_nonzero_sizes() {
        rejects(&limits("  max: 2G"), "memory.high", "missing");
        rejects(&limits("  high: 1G"), "memory.max", "missing");
        rejects(&limits("  high: 0\n  max: 2G"), "memory.high", "is 0");
        rejects(&limits("  high: 1G\n  max: 0"), "memory.max", "is 0");
        rejects(
            &limits("  high: 1.5G\n  max: 2G"),
            "memory.high",
            "fractional",
        );
        rejects(
            &limits("  high: 1G\n  max: 2GB"),
            "memory.max",
            "unknown suffix",
        );
        rejects(&limits("  high: -1G\n  max: 2G"), "memory.high", "negative");
        rejects(&limits("  high: 1G\n  max: \"\""), "memory.max", "empty");
        rejects(
            &base_with("memory:\n", "memoryy:\n"),
            "memoryy",
            "unknown key",
        );
    }

    #[test]
    fn swap_max_takes_integers_sizes_and_max() {
        for (text, want) in [
            ("0", Limit::Bytes(0)),
            ("512M", Limit::Bytes(512 << 20)),
            ("max", Limit::Max),
        ] {
            let p = accepts(&limits(&format!("{LIMITS}\n  swap_max: {text}")));
            assert_eq!(p.memory.swap_max, Some(want));
        }
        rejects(
            &limits(&format!("{LIMITS}\n  swap_max: lots")),
            "memory.swap_max",
            "not a byte size",
        );
    }

    #[test]
    fn at_least_one_trigger() {
        rejects(
            &base_with(&format!("triggers:\n{PRESSURE}\n"), ""),
            "triggers",
            "missing",
        );
        rejects(
            &base_with(&format!("triggers:\n{PRESSURE}\n"), "triggers: {}\n"),
            "triggers",
            "is empty",
        );
    }

    #[test]
    fn pressure_needs_exactly_one_of_some_and_full() {
        rejects(
            &triggers("  pressure: {some: 1ms, full: 1ms, window: 1s}"),
            "triggers.pressure",
            "keep one",
        );
        rejects(
            &triggers("  pressure: {window: 1s}"),
            "triggers.pressure",
            "needs `some:` or `full:`",
        );
        let t = accepts(&triggers("  pressure: {full: 100ms, window: 2s, for: 5s}"))
            .triggers
            .pressure
            .unwrap();
        assert_eq!(
            (t.kind, t.stall, t.window, t.sustain),
            (
                StallKind::Full,
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(5)
            )
        );
    }

    #[test]
    fn pressure_window_and_stall_are_what_the_kernel_accepts() {
        let key = "triggers.pressure.window";
        rejects(&triggers("  pressure: {some: 10ms}"), key, "missing");
        rejects(
            &triggers("  pressure: {some: 10ms, window: 499ms}"),
            key,
            "outside 500ms to 10s",
        );
        rejects(
            &triggers("  pressure: {some: 10ms, window: 11s}"),
            key,
            "outside 500ms to 10s",
        );
        rejects(
            &triggers("  pressure: {some: 10ms, window: 1000000500ns}"),
            key,
            "finer than a microsecond",
        );
        accepts(&triggers("  pressure: {some: 10ms, window: 500ms}"));
        accepts(&triggers("  pressure: {some: 10ms, window: 10s}"));
        let key = "triggers.pressure.some";
        rejects(
            &triggers("  pressure: {some: 0s, window: 1s}"),
            key,
            "must be above 0",
        );
        rejects(
            &triggers("  pressure: {some: 1s, window: 1s}"),
            key,
            "must be below triggers.pressure.window",
        );
        rejects(
            &triggers("  pressure: {some: 1500ns, window: 1s}"),
            key,
            "finer than a microsecond",
        );
        rejects(
            &triggers("  pressure: {full: soon, window: 1s}"),
            "triggers.pressure.full",
            "not a duration",
        );
        rejects(
            &triggers("  pressure: {some: 1ms, window: 1s, for: 2}"),
            "triggers.pressure.for",
            "no unit",
        );
    }

    #[test]
    fn memory_trigger_must_fire_below_memory_max() {
        let p = accepts(&triggers("  memory: {above: 1900M}"));
        assert_eq!(
            p.triggers.memory,
            Some(MemoryTrigger {
                above: 1900 << 20,
                sustain: Duration::ZERO
            })
        );
        assert_eq!(p.triggers.pressure, None);
        rejects(
            &triggers("  memory: {above: 2G}"),
            "triggers.memory.above",
            "is not below memory.max (2G)",
        );
        rejects(
            &triggers("  memory: {above: 0}"),
            "triggers.memory.above",
            "is 0",
        );
        rejects(
            &triggers("  memory: {for: 1s}"),
            "triggers.memory.above",
            "missing",
        );
        rejects(
            &triggers("  memory: {above: 1G, for: -1s}"),
            "triggers.memory.for",
            "not a duration",
        );
        // Checked against max even when high is wrong, so both are reported in one pass.
        let text = triggers("  memory: {above: 3G}").replacen("high: 1536M", "high: 4G", 1);
        let keys: Vec<String> = errors(&text).into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["memory.high", "triggers.memory.above"]);
        // With max = "max" the kernel never OOM-kills on the limit, so any level is fine.
        accepts(&triggers("  memory: {above: 100G}").replacen("max: 2G", "max: max", 1));
    }
}
