//! The memory.high boundary: restart a worker just before the kernel would throttle it, without
//! polling. Pure, like the rest of the engine: the supervisor reads the kernel and hands the
//! numbers in.
//!
//! How: with memory.high set and no `triggers.memory`, the instance's kernel memory.high is a
//! *sentinel* a margin under the configured high. The kernel counts `high` in memory.events (and
//! wakes a poller of that file) the moment the group first charges past it; the supervisor then
//! reads memory.stat and decides here. Crossing the sentinel costs the worker ~nothing: the
//! kernel does not sleep for a tiny overage (mem_cgroup_handle_over_high skips penalties under
//! HZ/100), and on a restart the supervisor lifts memory.high back to the configured value first.
//! While memory is flat nothing wakes: no CPU.
//!
//! What counts is what the worker *owns*: memory.current minus the page cache the kernel could
//! drop (`file` − `shmem` of memory.stat), plus swap. When the page cache is what crossed the
//! sentinel, the verdict is to reclaim (memory.reclaim, 5.19+) and look again, never to restart.
//!
//! The margin (see [`margin`]): the worker keeps allocating from the crossing until it has
//! drained and exited, so the sentinel sits `rate × (lead + REACTION)` under the configured high,
//! where `rate` is the growth rate measured over the previous life (bytes/s from the sentinel's
//! arming to its crossing) and `lead` the instance's learned restart time (signal to exit). The
//! margin is never under `high / 64` (a floor against sampling noise) nor over `high / 16`, so a
//! worker that sits at 90 % of its high never crosses. Before the first restart nothing is learned
//! yet and the margin is the ceiling.

use std::time::{Duration, Instant};

/// From the kernel's crossing to the supervisor's decision: memory.events notifications are
/// rate-limited to one per 10 ms (CGROUP_FILE_NOTIFY_MIN_INTV), plus the wake-up and two reads.
pub const REACTION: Duration = Duration::from_millis(50);
/// The margin is at least high / FLOOR_DIV ...
pub const FLOOR_DIV: u64 = 64;
/// ... and at most high / CEILING_DIV: the sentinel stays above 93.75 % of high.
pub const CEILING_DIV: u64 = 16;

/// The margin under the configured `high` for a worker growing at `rate` (bytes/s) whose restarts
/// take `lead`; the ceiling when either is not known yet.
pub fn margin(high: u64, rate: Option<f64>, lead: Option<Duration>) -> u64 {
    let floor = high / FLOOR_DIV;
    let ceiling = high / CEILING_DIV;
    match (rate, lead) {
        (Some(rate), Some(lead)) if rate.is_finite() && rate >= 0.0 => {
            let grow = rate * (lead + REACTION).as_secs_f64();
            // `as` saturates for floats out of range, so a wild rate reads as the ceiling.
            (grow as u64).clamp(floor, ceiling)
        }
        _ => ceiling,
    }
}

/// The numbers read at a crossing: memory.current, memory.stat's `anon`, `file`, `shmem`, and
/// memory.swap.current (0 without swap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    pub current: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub swap: u64,
}

impl Reading {
    /// What reclaim cannot take away without swapping: everything but the droppable page cache
    /// (shmem is counted in `file` but only leaves through swap), plus what is already swapped.
    pub fn owned(&self) -> u64 {
        let droppable = self.file.saturating_sub(self.shmem);
        self.current
            .saturating_sub(droppable)
            .saturating_add(self.swap)
    }
}

/// Everything a restart's event says about the boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    pub reading: Reading,
    pub sentinel: u64,
    pub high: u64,
    /// Growth since the sentinel was armed, bytes/s.
    pub rate: f64,
    /// The memory.reclaim tried before deciding, if any.
    pub reclaimed: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// What the worker owns reached the sentinel: restart it.
    Restart(Figures),
    /// Page cache crossed it: ask the kernel to reclaim this many bytes, then decide again.
    Reclaim { bytes: u64 },
    /// Nothing to do (already back under, or still page cache after a reclaim).
    Stay,
}

#[derive(Clone, Copy, Debug)]
struct Armed {
    at: Instant,
    current: u64,
    sentinel: u64,
    high: u64,
}

/// Per instance (or per child leaf): what was learned about its workers, and the armed sentinel.
#[derive(Debug, Default)]
pub struct Boundary {
    rate: Option<f64>,
    lead: Option<Duration>,
    armed: Option<Armed>,
}

impl Boundary {
    pub fn new() -> Boundary {
        Boundary::default()
    }

    /// Arms the sentinel for a worker whose group holds `current` bytes now; returns the
    /// sentinel to write as the kernel's memory.high.
    pub fn arm(&mut self, now: Instant, current: u64, high: u64) -> u64 {
        let sentinel = high.saturating_sub(margin(high, self.rate, self.lead));
        self.armed = Some(Armed {
            at: now,
            current,
            sentinel,
            high,
        });
        sentinel
    }

    /// No sentinel any more (restarting, reloaded without a boundary, observe mode reported).
    pub fn disarm(&mut self) {
        self.armed = None;
    }

    /// The sentinel in force, if armed.
    pub fn sentinel(&self) -> Option<u64> {
        self.armed.map(|a| a.sentinel)
    }

    /// The kernel counted a `high` event at the sentinel: decide. `reclaimed`: this reading was
    /// taken after a memory.reclaim the previous verdict asked for.
    pub fn on_crossing(&mut self, now: Instant, r: Reading, reclaimed: bool) -> Verdict {
        let Some(a) = self.armed else {
            return Verdict::Stay;
        };
        if r.owned() >= a.sentinel {
            let secs = now.saturating_duration_since(a.at).as_secs_f64();
            let rate = if secs > 0.0 {
                r.current.saturating_sub(a.current) as f64 / secs
            } else {
                0.0
            };
            // Halfway between the last life and the ones before: one odd life moves the margin
            // but does not own it.
            self.rate = Some(self.rate.map_or(rate, |old| (old + rate) / 2.0));
            self.armed = None;
            return Verdict::Restart(Figures {
                reading: r,
                sentinel: a.sentinel,
                high: a.high,
                rate,
                reclaimed,
            });
        }
        if r.current >= a.sentinel && !reclaimed {
            // Back down to a margin under the sentinel, so the stream does not cross it again
            // at once.
            let margin = a.high.saturating_sub(a.sentinel);
            let target = a.sentinel.saturating_sub(margin);
            return Verdict::Reclaim {
                bytes: r.current.saturating_sub(target),
            };
        }
        Verdict::Stay
    }

    /// A restart took `took` from its signal to the worker's exit: learned as the lead.
    pub fn restart_took(&mut self, took: Duration) {
        self.lead = Some(self.lead.map_or(took, |old| (old + took) / 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn margin_table() {
        // (high, rate bytes/s, lead ms, margin)
        let table: &[(u64, Option<f64>, Option<u64>, u64)] = &[
            (64 * M, None, None, 4 * M),       // nothing learned: the ceiling
            (64 * M, Some(5e6), None, 4 * M),  // no lead yet: the ceiling
            (64 * M, Some(0.0), Some(100), M), // flat: the floor (high/64)
            (64 * M, Some(10.0 * M as f64), Some(150), 2 * M), // 10 MB/s × 200 ms
            (64 * M, Some(1e12), Some(100), 4 * M), // wild rate: capped
            (64 * M, Some(f64::NAN), Some(100), 4 * M), // garbage rate: the ceiling
            (0, Some(1e6), Some(100), 0),      // degenerate high: no panic
        ];
        for &(high, rate, lead, want) in table {
            assert_eq!(
                margin(high, rate, lead.map(ms)),
                want,
                "high {high} rate {rate:?} lead {lead:?}"
            );
        }
    }

    #[test]
    fn a_worker_at_90_percent_never_reaches_the_sentinel() {
        for high in [8 * M, 40 * M, 128 * M, 4096 * M] {
            let mut b = Boundary::new();
            let sentinel = b.arm(Instant::now(), 0, high);
            assert!(sentinel > high / 10 * 9, "high {high}: sentinel {sentinel}");
            assert!(sentinel < high);
        }
    }

    #[test]
    fn anon_growth_restarts_and_the_rate_and_lead_are_learned() {
        let t0 = Instant::now();
        let mut b = Boundary::new();
        let high = 40 * M;
        let s = b.arm(t0, 2 * M, high);
        assert_eq!(s, high - high / 16);
        let r = Reading {
            current: s + 4096,
            anon: s - M,
            file: M,
            shmem: M, // tmpfs pages: not droppable
            swap: 0,
        };
        let Verdict::Restart(f) = b.on_crossing(t0 + ms(2000), r, false) else {
            panic!("owned memory crossed the sentinel");
        };
        assert_eq!((f.sentinel, f.high), (s, high));
        assert!((f.rate - (s + 4096 - 2 * M) as f64 / 2.0).abs() < 1.0);
        assert_eq!(b.sentinel(), None, "disarmed by the restart");
        b.restart_took(ms(300));
        // Next life: ~18 MB/s × 350 ms ≈ 6.3 MB, capped at the ceiling of 2.5 MB.
        assert_eq!(b.arm(t0, 0, high), high - high / 16);
        b.restart_took(ms(0));
        b.restart_took(ms(0)); // lead now 75 ms; 18 MB/s × 125 ms ≈ 2.3 MB
        let s2 = b.arm(t0, 0, high);
        assert!(s2 > high - high / 16 && s2 < high - high / 64, "{s2}");
    }

    #[test]
    fn swap_counts_as_owned() {
        let r = Reading {
            current: 10 * M,
            anon: 2 * M,
            file: 8 * M,
            shmem: 0,
            swap: 30 * M,
        };
        assert_eq!(r.owned(), 32 * M);
    }

    #[test]
    fn page_cache_is_reclaimed_never_restarted() {
        let t0 = Instant::now();
        let mut b = Boundary::new();
        let high = 64 * M;
        let s = b.arm(t0, 0, high);
        let cache = Reading {
            current: s + M,
            anon: 3 * M,
            file: s - 2 * M,
            shmem: 0,
            swap: 0,
        };
        assert_eq!(
            b.on_crossing(t0 + ms(10), cache, false),
            Verdict::Reclaim {
                bytes: s + M - (s - high / 16)
            }
        );
        // Still over after the reclaim (the stream refilled it) but still cache: stay.
        assert_eq!(b.on_crossing(t0 + ms(20), cache, true), Verdict::Stay);
        // Already back under (the kernel's own high reclaim got there first): stay.
        let under = Reading {
            current: s - M,
            ..cache
        };
        assert_eq!(b.on_crossing(t0 + ms(30), under, false), Verdict::Stay);
        assert_eq!(b.sentinel(), Some(s), "still armed");
    }

    #[test]
    fn unarmed_crossings_do_nothing() {
        let mut b = Boundary::new();
        let r = Reading {
            current: u64::MAX,
            anon: u64::MAX,
            ..Reading::default()
        };
        assert_eq!(b.on_crossing(Instant::now(), r, false), Verdict::Stay);
        b.arm(Instant::now(), 0, M);
        b.disarm();
        assert_eq!(b.on_crossing(Instant::now(), r, false), Verdict::Stay);
    }
}
