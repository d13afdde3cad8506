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

/// How many child recycles ordered at an instance's offence may end in a row with the instance
/// still over its line before the whole instance is restarted. One such recycle is honest: the
/// biggest child went, and the rest of the overage sits in the next child, which the next crossing
/// recycles. Two in a row mean the memory is where recycling a child does not reach (the main
/// process grew meanwhile, page cache reparented from removed leaves to the instance's group,
/// replacements born big): the instance's restart is then the only way back.
pub const ENVELOPE_MISSES: u32 = 2;

/// What one child's leaf owns (`Reading::owned`: anon and shmem plus swap) at an instance's
/// offence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    pub pid: u32,
    pub owned: u64,
}

/// The answer to an instance's offence (its boundary, its pressure on the main leaf, its memory
/// trigger) with `children:`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeCall {
    /// Recycle this child, the biggest, gracefully; the instance's sentinel is re-armed when the
    /// recycle ends.
    Recycle(Share),
    /// Observe mode: this child would be recycled.
    Report(Share),
    /// A child is already recycling: its end frees memory; the instance looks again then.
    Wait,
    /// Restart the whole instance.
    Restart(Whole),
}

/// Why the whole instance, not a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Whole {
    /// No child has a leaf: nothing smaller to recycle.
    NoLeaves,
    /// The main leaf owns at least as much as the biggest child: it is the one growing.
    MainBiggest { main: u64, child: u64 },
    /// [`ENVELOPE_MISSES`] child recycles in a row ended with the instance still over its line.
    NotBroughtBack { misses: u32 },
}

#[derive(Clone, Copy, Debug)]
struct Await {
    /// What the instance must own less than for a recycle to have brought it back.
    line: u64,
    /// The child recycled for the instance (None: it waits for another child's recycle).
    ordered: Option<u32>,
}

/// One per running worker with `children:`: the instance's offences answered child first.
#[derive(Debug, Default)]
pub struct Envelope {
    awaiting: Option<Await>,
    misses: u32,
}

impl Envelope {
    pub fn new() -> Envelope {
        Envelope::default()
    }

    /// The instance crossed `line` (its boundary's sentinel, its memory trigger's `above`, its
    /// memory.high for pressure); `main` is what the main leaf owns, `kids` the children with a
    /// leaf that are not recycling, `recycling` how many are.
    pub fn on_offence(
        &mut self,
        main: u64,
        kids: &[Share],
        recycling: u32,
        line: u64,
        enforce: bool,
    ) -> EnvelopeCall {
        if self.misses >= ENVELOPE_MISSES {
            let misses = std::mem::take(&mut self.misses);
            self.awaiting = None;
            return EnvelopeCall::Restart(Whole::NotBroughtBack { misses });
        }
        // Before the main leaf is weighed: the child recycling may be the biggest of all (its
        // memory.high lifted while it drains) and its replacement still small, so the main
        // leaf would look the biggest for as long as the drain lasts.
        if recycling > 0 && enforce {
            return self.wait(line);
        }
        // The oldest (lowest pid) of equals: it has had the longest to leak.
        let biggest = kids
            .iter()
            .copied()
            .max_by(|a, b| a.owned.cmp(&b.owned).then(b.pid.cmp(&a.pid)));
        let Some(biggest) = biggest else {
            return EnvelopeCall::Restart(Whole::NoLeaves);
        };
        if main >= biggest.owned {
            return EnvelopeCall::Restart(Whole::MainBiggest {
                main,
                child: biggest.owned,
            });
        }
        if !enforce {
            return EnvelopeCall::Report(biggest);
        }
        self.awaiting = Some(Await {
            line,
            ordered: Some(biggest.pid),
        });
        EnvelopeCall::Recycle(biggest)
    }

    fn wait(&mut self, line: u64) -> EnvelopeCall {
        self.awaiting.get_or_insert(Await {
            line,
            ordered: None,
        });
        EnvelopeCall::Wait
    }

    /// A child's recycle ended (`pid`, any reason) with the instance owning `owned`. True: the
    /// instance was waiting for it, and re-arms its sentinel. Only the recycle the instance
    /// ordered counts toward [`ENVELOPE_MISSES`].
    pub fn recycle_ended(&mut self, pid: u32, owned: u64) -> bool {
        let Some(a) = self.awaiting.take() else {
            return false;
        };
        if a.ordered == Some(pid) {
            if owned >= a.line {
                self.misses += 1;
            } else {
                self.misses = 0;
            }
        }
        true
    }

    /// Recycles in a row that did not bring the instance back.
    pub fn misses(&self) -> u32 {
        self.misses
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

    fn share(pid: u32, owned: u64) -> Share {
        Share { pid, owned }
    }

    #[test]
    fn the_instance_line_recycles_the_biggest_child_first() {
        const M: u64 = 1 << 20;
        // (main, children (pid, owned), recycling, enforce, expected)
        type Row = (u64, &'static [(u32, u64)], u32, bool, EnvelopeCall);
        let table: &[Row] = &[
            // Two gunicorn workers leaking together, a 30M arbiter: the bigger worker goes.
            (
                30 * M,
                &[(11, 48 * M), (12, 50 * M)],
                0,
                true,
                EnvelopeCall::Recycle(share(12, 50 * M)),
            ),
            // Equals: the older (lower pid).
            (
                30 * M,
                &[(12, 40 * M), (11, 40 * M)],
                0,
                true,
                EnvelopeCall::Recycle(share(11, 40 * M)),
            ),
            // The main process is the one growing.
            (
                90 * M,
                &[(11, 20 * M), (12, 20 * M)],
                0,
                true,
                EnvelopeCall::Restart(Whole::MainBiggest {
                    main: 90 * M,
                    child: 20 * M,
                }),
            ),
            (
                20 * M,
                &[(11, 20 * M)],
                0,
                true,
                EnvelopeCall::Restart(Whole::MainBiggest {
                    main: 20 * M,
                    child: 20 * M,
                }),
            ),
            // No child has a leaf.
            (90 * M, &[], 0, true, EnvelopeCall::Restart(Whole::NoLeaves)),
            (
                90 * M,
                &[],
                0,
                false,
                EnvelopeCall::Restart(Whole::NoLeaves),
            ),
            // A child recycling already: its end frees memory, even where its replacement is
            // still smaller than the main leaf.
            (30 * M, &[(11, 48 * M)], 1, true, EnvelopeCall::Wait),
            (30 * M, &[(13, 16 * M)], 1, true, EnvelopeCall::Wait),
            (30 * M, &[], 1, true, EnvelopeCall::Wait),
            // Observe mode reports the child it would recycle; the main-biggest restart is the
            // instance's own would_restart.
            (
                30 * M,
                &[(11, 48 * M), (12, 50 * M)],
                0,
                false,
                EnvelopeCall::Report(share(12, 50 * M)),
            ),
            (
                90 * M,
                &[(11, 20 * M)],
                0,
                false,
                EnvelopeCall::Restart(Whole::MainBiggest {
                    main: 90 * M,
                    child: 20 * M,
                }),
            ),
        ];
        for (i, &(main, kids, recycling, enforce, want)) in table.iter().enumerate() {
            let kids: Vec<Share> = kids.iter().map(|&(p, o)| share(p, o)).collect();
            let got = Envelope::new().on_offence(main, &kids, recycling, 126 * M, enforce);
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn recycles_that_do_not_bring_the_instance_back_restart_it() {
        let line = 100;
        let kids = [share(11, 60), share(12, 30)];
        let mut e = Envelope::new();
        assert_eq!(
            e.on_offence(10, &kids, 0, line, true),
            EnvelopeCall::Recycle(kids[0])
        );
        // Another child's recycle ending re-arms, but is not the instance's to count.
        assert!(e.recycle_ended(12, 150));
        assert_eq!(e.misses(), 0);
        assert!(!e.recycle_ended(12, 150), "nothing awaited any more");
        // Brought back under: the count stays at 0.
        assert_eq!(
            e.on_offence(10, &kids, 0, line, true),
            EnvelopeCall::Recycle(kids[0])
        );
        assert!(e.recycle_ended(11, 70));
        assert_eq!(e.misses(), 0);
        // Twice still over.
        for misses in 1..=ENVELOPE_MISSES {
            assert_eq!(
                e.on_offence(10, &kids, 0, line, true),
                EnvelopeCall::Recycle(kids[0])
            );
            assert!(e.recycle_ended(11, 120));
            assert_eq!(e.misses(), misses);
        }
        assert_eq!(
            e.on_offence(10, &kids, 0, line, true),
            EnvelopeCall::Restart(Whole::NotBroughtBack {
                misses: ENVELOPE_MISSES
            })
        );
        // The restarted instance starts over.
        assert_eq!(
            e.on_offence(10, &kids, 0, line, true),
            EnvelopeCall::Recycle(kids[0])
        );
        // One that comes back under in between starts the count over.
        assert!(e.recycle_ended(11, 120));
        assert_eq!(
            e.on_offence(10, &kids, 0, line, true),
            EnvelopeCall::Recycle(kids[0])
        );
        assert!(e.recycle_ended(11, 99));
        assert_eq!(e.misses(), 0);
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
