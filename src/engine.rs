//! The decision core: when is an instance an offender, and what happens after a worker exits.
//!
//! Pure: it takes the policy, the time and the numbers the supervisor read, and returns decisions
//! as data. It never touches the filesystem or the clock, so every rule here is tested with plain
//! tables below.

pub mod boundary;
pub mod children;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::policy::{MemoryTrigger, PressureTrigger, RestartPolicy};
use crate::vocabulary::Reason;

/// Why an instance should be restarted, with the numbers that crossed the line.
#[derive(Clone, Debug, PartialEq)]
pub struct Offence {
    pub reason: Reason,
    /// How long the condition has held when the decision was made.
    pub held_for: Duration,
    /// memory.current at the decision, for the memory trigger.
    pub memory_current: Option<u64>,
    /// What the PSI trigger itself measured, for the pressure trigger. avg10 lags the trigger by
    /// seconds (it can still read 0.0 % when the trigger fires), so the log needs this figure to
    /// show why the instance was restarted. Filled in by the caller, which reads the kernel.
    pub stall: Option<Stall>,
    /// What the boundary read and decided from, for the memory.high boundary.
    pub boundary: Option<boundary::Figures>,
}

/// A stall measured from memory.pressure's `total=` (microseconds, of the trigger's kind: `some`
/// or `full`): `stalled` out of the last `over`, between two readings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stall {
    pub stalled: Duration,
    pub over: Duration,
}

impl Stall {
    /// The stall between two readings `(when, total_us)`. Saturating: a counter that went
    /// backwards (a new group under the same path) reads as no stall, not as a panic.
    pub fn between(earlier: (Instant, u64), later: (Instant, u64)) -> Stall {
        Stall {
            stalled: Duration::from_micros(later.1.saturating_sub(earlier.1)),
            over: later.0.saturating_duration_since(earlier.0),
        }
    }
}

/// What to do after a worker ended without oomguard asking it to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterExit {
    /// Respawn after this delay.
    Respawn { after: Duration },
    /// `exits` unplanned exits within the limit window: leave it stopped in state failed.
    Fail { exits: u32 },
}

/// Per-instance decision state. One lives in each instance task.
#[derive(Debug, Default)]
pub struct Tracker {
    /// First PSI event of the current run of events.
    pressure_since: Option<Instant>,
    last_pressure: Option<Instant>,
    /// When memory.current was first seen above the memory trigger's threshold.
    above_since: Option<Instant>,
    /// Times of unplanned exits, for the restart limit.
    exits: VecDeque<Instant>,
    /// Delay before the next respawn after an unplanned exit.
    backoff: Option<Duration>,
    /// No offence is reported before this (observe mode reports once per episode, not per window).
    quiet_until: Option<Instant>,
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
    }

    /// A fresh worker starts with a clean slate for the triggers (not for the restart limit).
    pub fn started(&mut self) {
        self.pressure_since = None;
        self.last_pressure = None;
        self.above_since = None;
        self.quiet_until = None;
    }

    /// After an offence was reported but not acted on (observe mode, or a restart already in
    /// flight), stay quiet for `cooldown` and start counting the condition anew.
    pub fn reported(&mut self, now: Instant, cooldown: Duration) {
        self.started();
        // Saturating: validation bounds every policy duration, but a panic here would end the
        // instance's supervision, so no arithmetic in the engine may overflow `Instant`.
        self.quiet_until = Some(now.checked_add(cooldown).unwrap_or(now));
    }

    /// A PSI trigger event. The kernel sends at most one per window while the stall stays above
    /// the threshold, and window boundaries need not line up with our wake-ups, so a run of events
    /// continues while they come less than two windows apart.
    pub fn on_pressure(&mut self, now: Instant, t: &PressureTrigger) -> Option<Offence> {
        let continues = self
            .last_pressure
            .is_some_and(|last| now.saturating_duration_since(last) <= t.window.saturating_mul(2));
        if !continues {
            self.pressure_since = Some(now);
        }
        self.last_pressure = Some(now);
        let since = self.pressure_since.expect("set above");
        let held_for = now.saturating_duration_since(since);
        (held_for >= t.sustain && !self.quiet(now)).then_some(Offence {
            reason: Reason::Pressure,
            held_for,
            memory_current: None,
            stall: None,
            boundary: None,
        })
    }

    /// A memory.current sample.
    pub fn on_memory(&mut self, now: Instant, current: u64, t: &MemoryTrigger) -> Option<Offence> {
        if current <= t.above {
            self.above_since = None;
            return None;
        }
        let since = *self.above_since.get_or_insert(now);
        let held_for = now.saturating_duration_since(since);
        (held_for >= t.sustain && !self.quiet(now)).then_some(Offence {
            reason: Reason::Memory,
            held_for,
            memory_current: Some(current),
            stall: None,
            boundary: None,
        })
    }

    /// When the memory trigger would fire if memory stays above the threshold; the supervisor
    /// samples again then rather than on a fast timer.
    pub fn memory_deadline(&self, t: &MemoryTrigger) -> Option<Instant> {
        // None (no timer) rather than a panic if the sum left `Instant`'s range; memory.events
        // wake-ups still re-sample.
        self.above_since
            .and_then(|since| since.checked_add(t.sustain))
    }

    fn quiet(&self, now: Instant) -> bool {
        self.quiet_until.is_some_and(|until| now < until)
    }

    /// The worker ended on its own (crash, exit, kernel OOM kill) after running for `ran_for`.
    /// Backoff doubles with each quick exit and resets once a worker stayed up for `backoff.max`;
    /// more than `limit.count` such exits within `limit.within` leave the instance failed.
    pub fn on_unplanned_exit(
        &mut self,
        now: Instant,
        ran_for: Duration,
        r: &RestartPolicy,
    ) -> AfterExit {
        while self
            .exits
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > r.limit_within)
        {
            self.exits.pop_front();
        }
        self.exits.push_back(now);
        let exits = u32::try_from(self.exits.len()).unwrap_or(u32::MAX);
        if exits > r.limit_count {
            return AfterExit::Fail { exits };
        }
        let after = match self.backoff {
            Some(prev) if ran_for < r.backoff_max => prev.saturating_mul(2).min(r.backoff_max),
            _ => r.backoff_initial,
        };
        self.backoff = Some(after);
        AfterExit::Respawn { after }
    }

    /// An operator restart of a failed instance starts the limit anew.
    pub fn reset_limit(&mut self) {
        self.exits.clear();
        self.backoff = None;
    }

    /// The unplanned exits the restart limit still counts, oldest first: kept across a daemon
    /// restart, or a crash loop would be revived with a fresh budget.
    pub fn exits(&self) -> impl Iterator<Item = Instant> + '_ {
        self.exits.iter().copied()
    }

    /// Counts exits a previous daemon saw (see [`Tracker::exits`]).
    pub fn restore_exits(&mut self, exits: impl IntoIterator<Item = Instant>) {
        self.exits.extend(exits);
        self.exits.make_contiguous().sort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::StallKind;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pressure(sustain: u64) -> PressureTrigger {
        PressureTrigger {
            kind: StallKind::Some,
            stall: ms(100),
            window: ms(1000),
            sustain: ms(sustain),
        }
    }

    fn restart_policy() -> RestartPolicy {
        RestartPolicy {
            signal: libc::SIGTERM,
            grace: ms(30_000),
            ready: ms(5000),
            backoff_initial: ms(1000),
            backoff_max: ms(8000),
            limit_count: 3,
            limit_within: ms(60_000),
            hooks: Default::default(),
            overlap: None,
        }
    }

    /// Feeds PSI events at the given offsets (ms) and returns the offsets at which an offence fired.
    fn fire_at(sustain: u64, events: &[u64]) -> Vec<u64> {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        events
            .iter()
            .copied()
            .filter(|&at| tr.on_pressure(t0 + ms(at), &pressure(sustain)).is_some())
            .collect()
    }

    #[test]
    fn pressure_table() {
        // (sustain ms, event offsets ms, offsets where an offence is reported)
        let table: &[(u64, &[u64], &[u64])] = &[
            (0, &[0], &[0]),                     // no `for`: the first event is enough
            (2000, &[0, 1080, 2160], &[2160]),   // a run of events held for 2 s
            (2000, &[0, 1080, 4000, 5080], &[]), // a gap of > 2 windows starts over
            (2000, &[0, 1900, 3800], &[3800]),   // gaps under 2 windows continue the run
            (1000, &[0, 500], &[]),              // not held long enough
        ];
        for (sustain, events, want) in table {
            assert_eq!(
                fire_at(*sustain, events),
                *want,
                "sustain {sustain} events {events:?}"
            );
        }
    }

    #[test]
    fn reported_offences_stay_quiet_for_the_cooldown() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let t = pressure(0);
        assert!(tr.on_pressure(t0, &t).is_some());
        tr.reported(t0, ms(30_000));
        assert!(tr.on_pressure(t0 + ms(1000), &t).is_none());
        assert!(tr.on_pressure(t0 + ms(31_000), &t).is_some());
    }

    #[test]
    fn memory_trigger_needs_the_threshold_held() {
        let t0 = Instant::now();
        let mut tr = Tracker::new();
        let t = MemoryTrigger {
            above: 100,
            sustain: ms(10_000),
        };
        assert!(tr.on_memory(t0, 150, &t).is_none());
        assert_eq!(tr.memory_deadline(&t), Some(t0 + ms(10_000)));
        assert!(
            tr.on_memory(t0 + ms(5000), 90, &t).is_none(),
            "dropped below: starts over"
        );
        assert_eq!(tr.memory_deadline(&t), None);
        assert!(tr.on_memory(t0 + ms(6000), 150, &t).is_none());
        let off = tr.on_memory(t0 + ms(16_000), 151, &t).expect("held 10 s");
        assert_eq!(off.reason, Reason::Memory);
        assert_eq!(off.held_for, ms(10_000));
        assert_eq!(off.memory_current, Some(151));
    }

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let t0 = Instant::now();
        let r = RestartPolicy {
            limit_count: 100,
            ..restart_policy()
        };
        let mut tr = Tracker::new();
        let delays: Vec<_> = (0..6)
            .map(
                |i| match tr.on_unplanned_exit(t0 + ms(i * 100), ms(10), &r) {
                    AfterExit::Respawn { after } => after.as_millis() as u64,
                    AfterExit::Fail { .. } => panic!("limit is 100"),
                },
            )
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 8000, 8000, 8000]);
        // A worker that stayed up for backoff.max starts again from the initial delay.
        assert_eq!(
            tr.on_unplanned_exit(t0 + ms(700), ms(8000), &r),
            AfterExit::Respawn { after: ms(1000) }
        );
    }

    #[test]
    fn crash_loop_ends_failed_and_old_exits_expire() {
        let t0 = Instant::now();
        let r = restart_policy(); // 3 within 60 s
        let mut tr = Tracker::new();
        for i in 0..3 {
            assert!(matches!(
                tr.on_unplanned_exit(t0 + ms(i), ms(1), &r),
                AfterExit::Respawn { .. }
            ));
        }
        assert_eq!(
            tr.on_unplanned_exit(t0 + ms(3), ms(1), &r),
            AfterExit::Fail { exits: 4 }
        );

        let mut tr = Tracker::new();
        for i in 0..3 {
            tr.on_unplanned_exit(t0 + ms(i * 1000), ms(1), &r);
        }
        // The first exits fell out of the 60 s window.
        assert!(matches!(
            tr.on_unplanned_exit(t0 + ms(61_500), ms(1), &r),
            AfterExit::Respawn { .. }
        ));
        tr.reset_limit();
        assert_eq!(
            tr.on_unplanned_exit(t0 + ms(62_000), ms(1), &r),
            AfterExit::Respawn { after: ms(1000) }
        );
    }

    /// Durations outside validation's bounds (a Policy built by hand, a future key) must not
    /// panic the instance task: the arithmetic saturates instead.
    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let t0 = Instant::now();
        let huge = Duration::MAX;
        let mut tr = Tracker::new();
        let t = MemoryTrigger {
            above: 100,
            sustain: huge,
        };
        assert_eq!(tr.on_memory(t0, 200, &t), None);
        assert_eq!(
            tr.memory_deadline(&t),
            None,
            "no deadline past Instant's range"
        );
        tr.reported(t0, huge);
        let p = PressureTrigger {
            window: huge,
            ..pressure(0)
        };
        tr.on_pressure(t0, &p);
        tr.on_pressure(t0 + ms(1), &p);
        let r = RestartPolicy {
            backoff_initial: huge,
            backoff_max: huge,
            limit_count: 100,
            ..restart_policy()
        };
        let mut tr = Tracker::new();
        tr.on_unplanned_exit(t0, ms(1), &r);
        assert_eq!(
            tr.on_unplanned_exit(t0 + ms(1), ms(1), &r),
            AfterExit::Respawn { after: huge }
        );
    }
}
