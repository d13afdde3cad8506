//! Rules for `memory:` and `triggers:`: the limits must leave oomguard room to act before the
//! kernel does, and a PSI trigger must be one the kernel will accept.

use std::time::Duration;

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
}
