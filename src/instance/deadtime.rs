//! Where a restart's time goes: a plain restart's event waits for its replacement's exec, so
//! that it carries exit to exec and the dead time (the instance had no running worker).

use std::time::Instant;

use super::report::ms;
use super::Instance;
use crate::protocol::EventRecord;

/// A restart event held until the replacement runs.
pub(super) struct PendingRestart {
    pub event: EventRecord,
    /// When the old worker's group was seen empty.
    pub exited: Instant,
}

impl Instance {
    /// Pushes the held restart event: with the replacement's pid when one was exec'd just now,
    /// or without exit to exec when none could be started (a `start_failed` event follows).
    pub(super) fn flush_restart_event(&mut self, replacement: Option<u32>) {
        let Some(PendingRestart { mut event, exited }) = self.pending_restart.take() else {
            return;
        };
        if let Some(pid) = replacement {
            fill_plain(&mut event, exited, Instant::now(), pid);
        }
        self.events.push(event);
    }
}

/// A plain restart's breakdown: the dead time is from the exit to the replacement's exec.
pub(super) fn fill_plain(ev: &mut EventRecord, exited: Instant, exec: Instant, pid: u32) {
    let gap = ms(exec.saturating_duration_since(exited));
    ev.exit_to_exec_ms = Some(gap);
    ev.dead_time_ms = Some(gap);
    ev.replacement_pid = Some(pid);
}

/// An overlapping restart's breakdown: the replacement ran from `exec` until the old worker
/// exited; no dead time.
pub(super) fn fill_overlap(ev: &mut EventRecord, exec: Instant, exited: Instant, pid: u32) {
    ev.overlap_ms = Some(ms(exited.saturating_duration_since(exec)));
    ev.dead_time_ms = Some(0);
    ev.replacement_pid = Some(pid);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::vocabulary::Reason;

    #[test]
    fn plain_dead_time_is_exit_to_exec_and_overlap_has_none() {
        let t0 = Instant::now();
        let mut ev = EventRecord::blank("p/0", Reason::Memory, "restart", String::new());
        fill_plain(&mut ev, t0, t0 + Duration::from_millis(42), 7);
        assert_eq!(
            (ev.exit_to_exec_ms, ev.dead_time_ms, ev.overlap_ms),
            (Some(42), Some(42), None)
        );
        let mut ev = EventRecord::blank("p/0", Reason::Memory, "restart", String::new());
        fill_overlap(&mut ev, t0, t0 + Duration::from_millis(900), 8);
        assert_eq!(
            (
                ev.exit_to_exec_ms,
                ev.dead_time_ms,
                ev.overlap_ms,
                ev.replacement_pid
            ),
            (None, Some(0), Some(900), Some(8))
        );
    }
}
