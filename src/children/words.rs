//! Children's decisions and recycles in words and event records: which child, its leaf, its
//! memory figures and the trigger it tripped.

use std::time::Instant;

use super::kid::Recycle;
use super::{leaf_numbers, LEAF_PREFIX};
use crate::cgroupfs::Group;
use crate::describe::describe;
use crate::engine::Offence;
use crate::policy::ChildrenPolicy;
use crate::protocol::EventRecord;
use crate::units::fmt_dur;
use crate::units::human_bytes;
use crate::vocabulary::{Ending, Reason};

/// A decision about one child, with the numbers read when it was made.
pub(super) struct Decision {
    pub what: String,
    pub reason: Reason,
    current: Option<u64>,
    peak: Option<u64>,
    some_avg10: Option<f64>,
}

pub(super) fn decision(
    pid: u32,
    leaf: &Group,
    born: Instant,
    offence: &Offence,
    cfg: &ChildrenPolicy,
) -> Decision {
    let (read_now, peak, some_avg10) = leaf_numbers(leaf);
    // The figure decided on where the trigger read one (memory, boundary): read again here, a
    // child let go of its sentinel has grown on (a busy host showed 37.6M decided, 40.3M here).
    let current = offence.memory_current.or(read_now);
    let what = format!(
        "child pid {pid} (leaf {LEAF_PREFIX}{pid}, {} old): {}; memory {} (high {}, max {}), psi some avg10 {:.1}%",
        fmt_dur(born.elapsed()),
        describe(offence, &cfg.triggers),
        current.map_or("?".into(), human_bytes),
        cfg.memory.high,
        cfg.memory.max,
        some_avg10.unwrap_or(0.0),
    );
    Decision {
        what,
        reason: offence.reason,
        current,
        peak,
        some_avg10,
    }
}

/// A recycle ordered at the instance's offence (`envelope`): `what` is already in the
/// instance's words; the numbers are the child's leaf's.
pub(super) fn for_instance(leaf: &Group, reason: Reason, what: String) -> Decision {
    let (current, peak, some_avg10) = leaf_numbers(leaf);
    Decision {
        what,
        reason,
        current,
        peak,
        some_avg10,
    }
}

pub(super) fn event(
    id: &str,
    reason: Reason,
    action: &str,
    pid: u32,
    d: &Decision,
    message: String,
) -> EventRecord {
    let mut ev = EventRecord::blank(id, reason, action, message);
    ev.memory_current = d.current;
    ev.memory_peak = d.peak;
    ev.psi_some_avg10 = d.some_avg10;
    ev.child_pid = Some(pid);
    ev.child_leaf = Some(format!("{LEAF_PREFIX}{pid}"));
    ev
}

/// The `child_recycle` event once the child's leaf is empty (or was killed).
pub(super) fn recycled(
    id: &str,
    pid: u32,
    d: Option<Decision>,
    r: &Recycle,
    cfg: &ChildrenPolicy,
) -> EventRecord {
    let after_ms = u64::try_from(r.report.took.as_millis()).unwrap_or(u64::MAX);
    let (ending, how) = if r.oom_killed {
        (
            Ending::OomKilled,
            format!(
                "OOM-killed by the kernel during the grace period (its memory.high lifted, it \
                 reached children.memory.max {})",
                cfg.memory.max
            ),
        )
    } else if r.report.killed {
        (
            Ending::KilledAfterGrace { after_ms },
            format!(
                "still there after the grace period ({}): its leaf was killed",
                fmt_dur(cfg.restart.grace)
            ),
        )
    } else {
        let asked = match cfg.restart.signal {
            Some(s) => format!(
                "after {}",
                nix::sys::signal::Signal::try_from(s).map_or("its signal", |s| s.as_str())
            ),
            None => "with its memory.high lifted (signal: none)".into(),
        };
        (
            Ending::Exited {
                code: None,
                signal: None,
                after_ms,
            },
            format!("exited by itself {} {asked}", fmt_dur(r.report.took)),
        )
    };
    let notes: String = r.report.notes.iter().map(|n| format!("; {n}")).collect();
    let (what, reason) = match &d {
        Some(d) => (d.what.clone(), d.reason),
        None => (format!("child pid {pid}"), Reason::Memory),
    };
    let message = format!("child recycled: {what}; {how}{notes}");
    tracing::info!(instance = %id, pid, "{message}");
    let mut ev = match &d {
        Some(d) => event(id, reason, "child_recycle", pid, d, message),
        None => {
            let mut ev = EventRecord::blank(id, reason, "child_recycle", message);
            ev.child_pid = Some(pid);
            ev.child_leaf = Some(format!("{LEAF_PREFIX}{pid}"));
            ev
        }
    };
    ev.ending = Some(ending);
    ev.trigger_to_signal_us =
        Some(u64::try_from(r.trigger_to_signal.as_micros()).unwrap_or(u64::MAX));
    ev.signal_to_exit_ms = Some(after_ms);
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{accepts, BASE};

    #[test]
    fn a_decision_reports_the_figure_it_was_decided_on() {
        let policy = accepts(&format!(
            "{BASE}children:\n  memory: {{high: 40M, max: 80M}}\n  triggers:\n    memory: {{above: 30M}}\n    pressure: {{some: 100ms, window: 1s}}\n"
        ));
        let cfg = policy.children.expect("children");
        let dir = tempfile::tempdir().unwrap();
        // The leaf has grown on since the trigger read it.
        std::fs::write(dir.path().join("memory.current"), format!("{}\n", 42 << 20)).unwrap();
        let leaf = Group::new(dir.path().to_path_buf());
        let offence = Offence {
            reason: Reason::Memory,
            held_for: std::time::Duration::ZERO,
            memory_current: Some(37 << 20),
            stall: None,
            boundary: None,
        };
        let d = decision(7, &leaf, Instant::now(), &offence, &cfg);
        assert_eq!(d.current, Some(37 << 20));
        assert!(d.what.contains("memory 37M (high 40M"), "{}", d.what);
        // A trigger without a reading of its own (pressure) reports the leaf as read now.
        let pressure = Offence {
            reason: Reason::Pressure,
            memory_current: None,
            ..offence
        };
        let d = decision(7, &leaf, Instant::now(), &pressure, &cfg);
        assert_eq!(d.current, Some(42 << 20));
    }
}
