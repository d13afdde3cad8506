//! Per-child decisions: recycle the child that tripped, wait while `at_once` children are already
//! recycling, or restart the whole instance (`scope: instance`, or a respawn loop). Pure like the
//! rest of the engine: the times come in as arguments.
//!
//! A respawn loop: replacing the offender does not help when every replacement starts near its
//! limit (a big import at start, a cache warmed at fork, a limit set too low). oomguard calls it
//! one when [`LOOP_RECYCLES`] children of an instance in a row each tripped their triggers less
//! than [`YOUNG`] after being placed in their leaf **and** were born big ([`born_big`]: half their
//! line or more [`EARLY`] after placement); the instance is then restarted gracefully, as if
//! `scope: instance` were set, and the `child_escalation` event says so. Any other offender
//! starts the count over. Youth alone is not enough: a worker that leaks fast under load also
//! trips young, and restarting its whole server for that refuses connections and fixes nothing
//! (the new server's workers leak as fast).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::policy::ChildScope;

/// A child that trips within this of its birth counts toward a respawn loop.
pub const YOUNG: Duration = Duration::from_secs(5);
/// This many young offenders in a row are a respawn loop.
pub const LOOP_RECYCLES: u32 = 3;
/// A child's leaf is read this long after its placement: its size at birth, for [`born_big`].
pub const EARLY: Duration = Duration::from_millis(500);

/// Whether a child that tripped at `now` came into the world near its limit: its leaf held half
/// its trip `line` (the memory trigger's `above`, else its memory.high) or more [`EARLY`] after
/// it was placed at `born`. A child that tripped before it was read (`early` None) was big from
/// the start if it tripped within twice [`EARLY`]; with no sized line, youth alone decides.
pub fn born_big(now: Instant, born: Instant, early: Option<u64>, line: Option<u64>) -> bool {
    match (early, line) {
        (Some(e), Some(line)) => e >= line / 2,
        (Some(_), None) => true,
        (None, _) => now.saturating_duration_since(born) < EARLY * 2,
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChildDecision {
    /// Recycle this child; it now counts against `at_once` until [`ChildPlanner::recycle_ended`].
    Recycle,
    /// `at_once` children are already recycling: nothing now; the child's trigger fires again
    /// while it stays over, and is decided then.
    Wait { recycling: u32 },
    /// Restart the instance instead.
    Escalate(Escalation),
    /// Observe mode: report what would be done.
    Report,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// `children.restart.scope: instance`.
    Scope,
    /// `young` offenders in a row, each within [`YOUNG`] of its birth.
    RespawnLoop { young: u32 },
}

/// One per running worker with `children:`.
#[derive(Debug, Default)]
pub struct ChildPlanner {
    recycling: u32,
    young_in_a_row: u32,
    /// Children told to [`ChildDecision::Wait`], first come first: decided again when a
    /// recycle ends. A boundary crossing is said once, so without this a waiting child sits
    /// throttled at its memory.high until its PSI trigger fires.
    waiting: VecDeque<u32>,
}

impl ChildPlanner {
    pub fn new() -> ChildPlanner {
        ChildPlanner::default()
    }

    /// A child tripped its triggers at `now`; it was placed in its leaf at `born`; `big`: it was
    /// [`born_big`].
    pub fn on_offence(
        &mut self,
        now: Instant,
        born: Instant,
        big: bool,
        at_once: u32,
        scope: ChildScope,
        enforce: bool,
    ) -> ChildDecision {
        if !enforce {
            return ChildDecision::Report;
        }
        if scope == ChildScope::Instance {
            return ChildDecision::Escalate(Escalation::Scope);
        }
        // Checked before the youth is counted: a waiting child fires again and must not count
        // twice.
        if self.recycling >= at_once {
            return ChildDecision::Wait {
                recycling: self.recycling,
            };
        }
        if big && now.saturating_duration_since(born) < YOUNG {
            self.young_in_a_row += 1;
        } else {
            self.young_in_a_row = 0;
        }
        if self.young_in_a_row >= LOOP_RECYCLES {
            let young = self.young_in_a_row;
            self.young_in_a_row = 0;
            return ChildDecision::Escalate(Escalation::RespawnLoop { young });
        }
        self.recycling += 1;
        ChildDecision::Recycle
    }

    /// A recycle finished (the leaf emptied or was killed).
    pub fn recycle_ended(&mut self) {
        self.recycling = self.recycling.saturating_sub(1);
    }

    pub fn recycling(&self) -> u32 {
        self.recycling
    }

    /// `pid` was told to wait: it is decided again after a recycle ends ([`Self::next_waiting`]).
    pub fn wait(&mut self, pid: u32) {
        if !self.waiting.contains(&pid) {
            self.waiting.push_back(pid);
        }
    }

    /// `pid` no longer waits: recycled after all, or gone.
    pub fn forget(&mut self, pid: u32) {
        self.waiting.retain(|&p| p != pid);
    }

    /// The child that has waited longest, to decide again now that a slot is free.
    pub fn next_waiting(&mut self) -> Option<u32> {
        self.waiting.pop_front()
    }
}

/// Where each process found in the main process's leaf belongs: `(pid, owner)` where `owner` is
/// the direct child of `main` whose leaf it goes to (itself for a direct child, its ancestor for a
/// grandchild that was forked before its parent was moved). Processes that do not descend from
/// `main` (an orphan re-parented to init) stay where they are. `ppid` reads a parent pid (None:
/// the process is gone).
pub fn placements(main: u32, procs: &[u32], ppid: impl Fn(u32) -> Option<u32>) -> Vec<(u32, u32)> {
    /// Deeper than this is not a prefork tree; the walk is bounded so a pid cycle read from a
    /// racing /proc cannot loop.
    const MAX_DEPTH: usize = 64;
    let mut out = Vec::new();
    for &pid in procs.iter().filter(|&&p| p != main) {
        let mut cur = pid;
        for _ in 0..MAX_DEPTH {
            match ppid(cur) {
                Some(p) if p == main => {
                    out.push((pid, cur));
                    break;
                }
                Some(p) if p > 1 => cur = p,
                _ => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn at_once_caps_recycles_in_flight() {
        let t0 = Instant::now();
        let born = t0;
        let now = t0 + ms(60_000);
        let mut p = ChildPlanner::new();
        assert_eq!(
            p.on_offence(now, born, true, 2, ChildScope::Child, true),
            ChildDecision::Recycle
        );
        assert_eq!(
            p.on_offence(now, born, true, 2, ChildScope::Child, true),
            ChildDecision::Recycle
        );
        assert_eq!(
            p.on_offence(now, born, true, 2, ChildScope::Child, true),
            ChildDecision::Wait { recycling: 2 }
        );
        p.recycle_ended();
        assert_eq!(
            p.on_offence(now, born, true, 2, ChildScope::Child, true),
            ChildDecision::Recycle
        );
        assert_eq!(p.recycling(), 2);
    }

    #[test]
    fn a_child_that_waited_is_decided_again_when_a_slot_frees() {
        let t0 = Instant::now();
        let now = t0 + ms(60_000);
        let mut p = ChildPlanner::new();
        let offence =
            |p: &mut ChildPlanner| p.on_offence(now, t0, false, 1, ChildScope::Child, true);
        assert_eq!(offence(&mut p), ChildDecision::Recycle);
        // Two wait behind it; one of them is said twice (its PSI trigger fired again).
        assert_eq!(offence(&mut p), ChildDecision::Wait { recycling: 1 });
        p.wait(11);
        p.wait(12);
        p.wait(11);
        assert_eq!(p.next_waiting(), Some(11), "the first to wait comes first");
        p.recycle_ended();
        assert_eq!(offence(&mut p), ChildDecision::Recycle);
        // 12 ended by itself meanwhile: nobody is left to decide.
        p.forget(12);
        assert_eq!(p.next_waiting(), None);
    }

    #[test]
    fn three_young_offenders_in_a_row_are_a_respawn_loop() {
        let t0 = Instant::now();
        let mut p = ChildPlanner::new();
        // (born ms, offence ms, expected)
        let young = |p: &mut ChildPlanner, born: u64, at: u64| {
            let d = p.on_offence(t0 + ms(at), t0 + ms(born), true, 1, ChildScope::Child, true);
            if d == ChildDecision::Recycle {
                p.recycle_ended();
            }
            d
        };
        assert_eq!(young(&mut p, 0, 1000), ChildDecision::Recycle);
        assert_eq!(young(&mut p, 2000, 3000), ChildDecision::Recycle);
        // An old offender starts the count over.
        assert_eq!(young(&mut p, 3000, 30_000), ChildDecision::Recycle);
        assert_eq!(young(&mut p, 31_000, 32_000), ChildDecision::Recycle);
        assert_eq!(young(&mut p, 33_000, 34_000), ChildDecision::Recycle);
        assert_eq!(
            young(&mut p, 35_000, 35_500),
            ChildDecision::Escalate(Escalation::RespawnLoop { young: 3 })
        );
        // The count starts over after an escalation.
        assert_eq!(young(&mut p, 40_000, 40_500), ChildDecision::Recycle);
    }

    #[test]
    fn fast_leakers_are_young_but_not_a_respawn_loop() {
        let t0 = Instant::now();
        let m = 1u64 << 20;
        // Born small (12M of an 80M line at 0.5 s), tripping 3 s later: a fast leak, recycled
        // one by one however many in a row.
        assert!(!born_big(t0 + ms(3000), t0, Some(12 * m), Some(80 * m)));
        let mut p = ChildPlanner::new();
        for i in 0..10 {
            let born = t0 + ms(i * 3000);
            let big = born_big(born + ms(3000), born, Some(12 * m), Some(80 * m));
            let d = p.on_offence(born + ms(3000), born, big, 1, ChildScope::Child, true);
            assert_eq!(d, ChildDecision::Recycle, "offender {i}");
            p.recycle_ended();
        }
        // Born big: 44M of a 48M line at 0.5 s.
        assert!(born_big(t0 + ms(900), t0, Some(44 * m), Some(48 * m)));
        // Tripped before the early reading: big if within twice EARLY, unknown (not big) after.
        assert!(born_big(t0 + ms(300), t0, None, Some(48 * m)));
        assert!(!born_big(t0 + ms(2000), t0, None, Some(48 * m)));
        // No sized line: youth alone, as before.
        assert!(born_big(t0 + ms(3000), t0, Some(m), None));
    }

    #[test]
    fn a_waiting_offender_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut p = ChildPlanner::new();
        assert_eq!(
            p.on_offence(t0, t0, true, 1, ChildScope::Child, true),
            ChildDecision::Recycle
        );
        for i in 1..10 {
            assert_eq!(
                p.on_offence(t0 + ms(i), t0, true, 1, ChildScope::Child, true),
                ChildDecision::Wait { recycling: 1 }
            );
        }
        p.recycle_ended();
        assert_eq!(
            p.on_offence(t0 + ms(20), t0, true, 1, ChildScope::Child, true),
            ChildDecision::Recycle
        );
    }

    #[test]
    fn scope_instance_and_observe_mode() {
        let t0 = Instant::now();
        let mut p = ChildPlanner::new();
        assert_eq!(
            p.on_offence(t0, t0, true, 1, ChildScope::Instance, true),
            ChildDecision::Escalate(Escalation::Scope)
        );
        assert_eq!(
            p.on_offence(t0, t0, true, 1, ChildScope::Child, false),
            ChildDecision::Report
        );
        assert_eq!(
            p.on_offence(t0, t0, true, 1, ChildScope::Instance, false),
            ChildDecision::Report
        );
        assert_eq!(p.recycling(), 0);
    }

    #[test]
    fn placements_follow_the_tree_to_the_main_process() {
        // main 10; children 11, 12; 13 is 11's child; 20 was re-parented to init; 14 is gone.
        let parents = [(11, 10), (12, 10), (13, 11), (20, 1), (15, 13)];
        let ppid = |p: u32| parents.iter().find(|(c, _)| *c == p).map(|(_, pp)| *pp);
        assert_eq!(
            placements(10, &[10, 11, 12, 13, 14, 20, 15], ppid),
            vec![(11, 11), (12, 12), (13, 11), (15, 11)]
        );
        // A cycle (a racing read of /proc) ends at the depth bound.
        let cyc = |p: u32| Some(if p == 30 { 31 } else { 30 });
        assert!(placements(10, &[30], cyc).is_empty());
    }
}
