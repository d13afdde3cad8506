//! Read-only (signals-only) mode, the pure part: a poll's snapshot of the container's totals
//! and of what each worker's processes hold in, one whole decision out. No groups can be made
//! on a read-only mount, so nothing the kernel enforces stands between a leaking child and the
//! container's memory.max (and its memory.oom.group kill): oomguard must recycle first.
//! `read` gathers the snapshot (cgroup files and /proc); the daemon carries the decision out.

pub mod read;

use std::time::Duration;

use crate::units::human_bytes;

/// How often the container is read: a PSI trigger needs a writable pressure file, and the
/// kernel sends no wake-up for memory.current on a read-only mount.
pub const POLL: Duration = Duration::from_millis(250);
/// After a recycle ends, this long before the next decision: the kernel flushes memory.stat
/// (whose page cache the usage subtracts) at least every 2 s, so a shorter wait could still see
/// the freed memory as used and recycle a second, innocent child.
pub const COOLDOWN: Duration = Duration::from_secs(2);

/// The container's own files, read each poll.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// memory.current.
    pub current: u64,
    /// memory.max; None when "max".
    pub max: Option<u64>,
    /// memory.stat `file` and `shmem`: page cache, of which shmem cannot be dropped.
    pub file: u64,
    pub shmem: u64,
    /// memory.events `oom_kill`.
    pub oom_kill: u64,
    /// memory.pressure `some total=` in microseconds.
    pub psi_some_total_us: u64,
}

impl Totals {
    /// What the kernel cannot reclaim before it OOM-kills: memory.current less the page cache
    /// it can drop. A page-cache reader near the limit is no reason to recycle anyone.
    pub fn usage(&self) -> u64 {
        let droppable = self.file.saturating_sub(self.shmem);
        self.current.saturating_sub(droppable)
    }
}

/// The line above which the biggest offender is recycled: the container's memory.max minus the
/// same reserve the writable mode leaves between its workers' envelope and the limit, so both
/// modes stop the workers at the same place. None without a limit (nothing to protect).
pub fn threshold(max: Option<u64>, reserve: u64) -> Option<u64> {
    max.map(|m| m.saturating_sub(reserve))
}

/// The last line, a quarter of the reserve under memory.max: reached while a recycle is in
/// flight, that recycle's grace ends at once (SIGKILL), and reached in a cooldown, the cooldown
/// ends. A draining child still holds its memory, and at a fast leak the others fill the
/// reserve before it exits (bench_runc at ~96 MB/s: 1-10 container OOM kills a round, each a
/// couple of seconds after a recycle began). On a host the child's own memory.max would kill it
/// alone; here oomguard must, or the container's oom.group kill takes every worker.
pub fn last_line(max: Option<u64>, reserve: u64) -> Option<u64> {
    max.map(|m| m.saturating_sub(reserve / 4))
}

/// What one worker instance's processes hold, from /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSample {
    /// "policy/N".
    pub id: String,
    /// The policy has `children:`: its children are recycled one by one.
    pub children_policy: bool,
    /// Observe mode: decide and report, never signal.
    pub observe: bool,
    /// The main process alone.
    pub main_anon: u64,
    /// Each direct child of the main process: (pid, anon of the child and its descendants).
    pub children: Vec<(u32, u64)>,
    /// The main process and every descendant.
    pub tree_anon: u64,
}

/// What can be recycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// One child of a `children:` worker: its signal, then SIGKILL after the child grace; the
    /// main process forks its replacement.
    Child(u32),
    /// The whole worker: its shutdown signal, the grace, SIGKILL of its tree, a respawn.
    Worker,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub instance: String,
    pub unit: Unit,
    pub anon: u64,
    pub observe: bool,
}

/// A `children:` worker offers each child and its main process alone (a growing main needs the
/// whole worker restarted); any other worker offers itself, whole.
pub fn candidates(instances: &[InstanceSample]) -> Vec<Candidate> {
    let mut out = Vec::new();
    for i in instances {
        let whole = |anon| Candidate {
            instance: i.id.clone(),
            unit: Unit::Worker,
            anon,
            observe: i.observe,
        };
        if i.children_policy {
            out.push(whole(i.main_anon));
            out.extend(i.children.iter().map(|&(pid, anon)| Candidate {
                instance: i.id.clone(),
                unit: Unit::Child(pid),
                anon,
                observe: i.observe,
            }));
        } else {
            out.push(whole(i.tree_anon));
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub totals: Totals,
    pub candidates: Vec<Candidate>,
    /// A recycle is in flight: one action at a time.
    pub busy: bool,
    /// [`last_line`]: None without a limit.
    pub last_line: Option<u64>,
    /// Since the last recycle ended; None: never.
    pub since_last: Option<Duration>,
    /// The target of the last would-recycle report (observe mode) while usage stays above the
    /// line: said once per episode, not at every poll after the cooldown (the daemon clears it
    /// once usage is back under the line).
    pub reported: Option<(String, Unit)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Under the line, or no limit.
    Calm,
    /// Above the line, but a recycle is in flight.
    Busy,
    /// At the last line with a recycle in flight: end its grace now.
    Hurry { usage: u64, line: u64 },
    /// Above the line, within the cooldown of the last recycle.
    Cooling { left: Duration },
    /// Above the line and nothing that could be recycled holds any anonymous memory.
    NoOffender { usage: u64, threshold: u64 },
    /// Observe mode: the biggest offender is the one already reported in this episode.
    Reported,
    /// Recycle this one (or, in observe mode, report that it would be).
    Recycle {
        target: Candidate,
        usage: u64,
        threshold: u64,
    },
}

/// Above the line, the candidate holding the most anonymous memory; ties go to the first
/// listed (stable across polls).
pub fn decide(s: &Snapshot, threshold: Option<u64>, cooldown: Duration) -> Decision {
    let usage = s.totals.usage();
    let Some(threshold) = threshold.filter(|&t| usage >= t) else {
        return Decision::Calm;
    };
    let at_last = s.last_line.filter(|&l| usage >= l);
    if s.busy {
        return match at_last {
            Some(line) => Decision::Hurry { usage, line },
            None => Decision::Busy,
        };
    }
    if let Some(since) = s.since_last.filter(|&d| d < cooldown && at_last.is_none()) {
        return Decision::Cooling {
            left: cooldown - since,
        };
    }
    let best = s
        .candidates
        .iter()
        .filter(|c| c.anon > 0)
        .fold(None::<&Candidate>, |best, c| match best {
            Some(b) if b.anon >= c.anon => Some(b),
            _ => Some(c),
        });
    match best {
        Some(c) if c.observe && s.reported.as_ref() == Some(&(c.instance.clone(), c.unit)) => {
            Decision::Reported
        }
        Some(c) => Decision::Recycle {
            target: c.clone(),
            usage,
            threshold,
        },
        None => Decision::NoOffender { usage, threshold },
    }
}

/// The numbers of a recycle, in words, for the event and the log line.
pub fn describe(target: &Candidate, usage: u64, threshold: u64, t: &Totals) -> String {
    let max = t.max.map_or("max".into(), human_bytes);
    let what = match target.unit {
        Unit::Child(pid) => format!("child {pid}"),
        Unit::Worker => "the worker".into(),
    };
    format!(
        "container memory {} (memory.current {}, page cache {} of which shmem {}) reached {} \
         (memory.max {max} minus the reserve); {what} of {} holds the most anonymous memory, {}",
        human_bytes(usage),
        human_bytes(t.current),
        human_bytes(t.file),
        human_bytes(t.shmem),
        human_bytes(threshold),
        target.instance,
        human_bytes(target.anon)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn totals(current: u64, file: u64) -> Totals {
        Totals {
            current,
            max: Some(192 * M),
            file,
            shmem: 0,
            oom_kill: 0,
            psi_some_total_us: 0,
        }
    }

    fn pf(observe: bool) -> InstanceSample {
        InstanceSample {
            id: "pf/0".into(),
            children_policy: true,
            observe,
            main_anon: 5 * M,
            children: vec![(11, 20 * M), (12, 90 * M), (13, 30 * M)],
            tree_anon: 145 * M,
        }
    }

    fn plain(id: &str, anon: u64) -> InstanceSample {
        InstanceSample {
            id: id.into(),
            children_policy: false,
            observe: false,
            main_anon: anon,
            children: vec![],
            tree_anon: anon,
        }
    }

    fn snap(current: u64, file: u64, inst: &[InstanceSample]) -> Snapshot {
        Snapshot {
            totals: totals(current, file),
            candidates: candidates(inst),
            busy: false,
            last_line: last_line(Some(192 * M), 24 * M),
            since_last: None,
            reported: None,
        }
    }

    fn line() -> Option<u64> {
        threshold(Some(192 * M), 24 * M)
    }

    #[test]
    fn the_line_is_the_limit_minus_the_reserve_and_none_without_a_limit() {
        assert_eq!(line(), Some(168 * M));
        assert_eq!(threshold(None, 24 * M), None);
        let s = snap(191 * M, 0, &[pf(false)]);
        assert_eq!(decide(&s, None, COOLDOWN), Decision::Calm);
    }

    #[test]
    fn decisions_table() {
        let pick = |s: &Snapshot| match decide(s, line(), COOLDOWN) {
            Decision::Recycle { target, .. } => Some((target.instance, target.unit)),
            _ => None,
        };
        // Under the line: nothing.
        assert_eq!(
            decide(&snap(160 * M, 0, &[pf(false)]), line(), COOLDOWN),
            Decision::Calm
        );
        // At the line: the child holding the most, not the whole worker.
        assert_eq!(
            pick(&snap(168 * M, 0, &[pf(false)])),
            Some(("pf/0".into(), Unit::Child(12)))
        );
        // Page cache the kernel can drop is not usage...
        assert_eq!(
            decide(&snap(180 * M, 40 * M, &[pf(false)]), line(), COOLDOWN),
            Decision::Calm
        );
        // ...but shmem is.
        let mut s = snap(180 * M, 40 * M, &[pf(false)]);
        s.totals.shmem = 30 * M;
        assert_eq!(s.totals.usage(), 170 * M);
        assert!(pick(&s).is_some());
        // A plain worker bigger than any child is restarted whole.
        let s = snap(170 * M, 0, &[pf(false), plain("big/0", 100 * M)]);
        assert_eq!(pick(&s), Some(("big/0".into(), Unit::Worker)));
        // A growing main process of a children: worker: the whole worker.
        let mut grown = pf(false);
        grown.main_anon = 120 * M;
        assert_eq!(
            pick(&snap(170 * M, 0, &[grown])),
            Some(("pf/0".into(), Unit::Worker))
        );
        // Equal anon: the first listed, so the choice does not flap between polls.
        let s = snap(170 * M, 0, &[plain("a/0", 50 * M), plain("b/0", 50 * M)]);
        assert_eq!(pick(&s), Some(("a/0".into(), Unit::Worker)));
    }

    #[test]
    fn one_action_at_a_time_then_a_cooldown() {
        let mut s = snap(170 * M, 0, &[pf(false)]);
        s.busy = true;
        assert_eq!(decide(&s, line(), COOLDOWN), Decision::Busy);
        s.busy = false;
        s.since_last = Some(Duration::from_millis(500));
        assert_eq!(
            decide(&s, line(), COOLDOWN),
            Decision::Cooling {
                left: Duration::from_millis(1500)
            }
        );
        s.since_last = Some(COOLDOWN);
        assert!(matches!(
            decide(&s, line(), COOLDOWN),
            Decision::Recycle { .. }
        ));
    }

    #[test]
    fn at_the_last_line_a_grace_ends_and_a_cooldown_is_skipped() {
        // 192M less a quarter of the 24M reserve.
        assert_eq!(last_line(Some(192 * M), 24 * M), Some(186 * M));
        assert_eq!(last_line(None, 24 * M), None);
        let mut s = snap(186 * M, 0, &[pf(false)]);
        s.busy = true;
        assert_eq!(
            decide(&s, line(), COOLDOWN),
            Decision::Hurry {
                usage: 186 * M,
                line: 186 * M
            }
        );
        // Under it, the recycle in flight keeps its grace.
        s.totals = totals(185 * M, 0);
        assert_eq!(decide(&s, line(), COOLDOWN), Decision::Busy);
        // In a cooldown: under the last line it holds, at it the biggest is recycled now.
        s.busy = false;
        s.since_last = Some(Duration::from_millis(100));
        assert!(matches!(
            decide(&s, line(), COOLDOWN),
            Decision::Cooling { .. }
        ));
        s.totals = totals(187 * M, 0);
        assert!(matches!(
            decide(&s, line(), COOLDOWN),
            Decision::Recycle { .. }
        ));
    }

    #[test]
    fn nothing_to_recycle_is_said_and_observe_is_carried_to_the_target() {
        let s = snap(170 * M, 0, &[]);
        assert_eq!(
            decide(&s, line(), COOLDOWN),
            Decision::NoOffender {
                usage: 170 * M,
                threshold: 168 * M
            }
        );
        match decide(&snap(170 * M, 0, &[pf(true)]), line(), COOLDOWN) {
            Decision::Recycle {
                target,
                usage,
                threshold,
            } => {
                assert!(target.observe);
                let text = describe(&target, usage, threshold, &totals(170 * M, 0));
                assert!(text.contains("child 12") && text.contains("90M"), "{text}");
                assert!(text.contains("168M") && text.contains("192M"), "{text}");
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn observe_mode_reports_an_offender_once_per_episode() {
        let mut s = snap(170 * M, 0, &[pf(true)]);
        let Decision::Recycle { target, .. } = decide(&s, line(), COOLDOWN) else {
            panic!("no report")
        };
        s.reported = Some((target.instance.clone(), target.unit));
        // Still above the line, long after any cooldown: nothing new to say.
        s.since_last = Some(Duration::from_secs(3600));
        assert_eq!(decide(&s, line(), COOLDOWN), Decision::Reported);
        // Another offender grows bigger: that one is reported.
        let mut other = pf(true);
        other.id = "other/0".into();
        other.children = vec![(40, 120 * M)];
        s.candidates = candidates(&[pf(true), other]);
        match decide(&s, line(), COOLDOWN) {
            Decision::Recycle { target, .. } => assert_eq!(target.unit, Unit::Child(40)),
            d => panic!("{d:?}"),
        }
        // An enforcing policy is never silenced by a report.
        s.candidates = candidates(&[pf(false)]);
        s.reported = Some(("pf/0".into(), Unit::Child(12)));
        assert!(matches!(
            decide(&s, line(), COOLDOWN),
            Decision::Recycle { .. }
        ));
    }
}
