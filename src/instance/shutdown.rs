//! Carrying out a restart or a stop: the worker's own signal, memory.high lifted, the grace
//! period, cgroup.kill, the limits restored.

use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{error, info, warn};

use super::report::{describe_ending, exit_signal, ms};
use super::wait::{wait_empty, wait_worker};
use super::{Instance, Worker, KILL_WAIT};
use crate::cgroupfs::{CgroupError, MEMORY_EVENTS};
use crate::protocol::{Ending, InstanceState, Reason};
use crate::units::human_bytes;

impl Instance {
    /// The graceful restart: the worker's own shutdown signal, memory.high lifted so a throttled
    /// worker can finish its job, up to the grace period for the group to empty, then
    /// cgroup.kill; the limits restored. The caller respawns at once.
    pub(super) async fn restart(
        &mut self,
        mut w: Worker,
        reason: Reason,
        woke: Option<Instant>,
        why: String,
    ) {
        // The signal goes first: everything else (numbers, bookkeeping, dropping the PSI trigger,
        // whose close waits for an RCU grace period) would only delay it.
        let (signalled, to_signal) = self.signal(&mut w, woke);
        let numbers = self.numbers();
        self.count_restart(reason);
        self.set_state(InstanceState::Restarting, Some(w.pid));
        let (ending, to_exit) = self.await_exit(&mut w, signalled).await;
        let how = describe_ending(&ending, self.policy.restart.signal);
        let what = format!(
            "restart ({}): {why}; memory {} (high {}, max {}), psi some avg10 {:.1}%; {how}",
            reason.as_str(),
            numbers.current.map_or("?".into(), human_bytes),
            self.policy.memory.high,
            self.policy.memory.max,
            numbers.some_avg10.unwrap_or(0.0),
        );
        info!(instance = %self.id, reason = reason.as_str(), pid = w.pid, "{what}");
        let mut ev = self.ending_event(&w, reason, "restart", ending, &numbers, &what);
        ev.trigger_to_signal_us = to_signal.map(|d| d.as_micros() as u64);
        ev.signal_to_exit_ms = Some(ms(to_exit));
        self.events.push(ev);
    }

    pub(super) async fn stop(&mut self, mut w: Worker) {
        self.set_state(InstanceState::Restarting, Some(w.pid));
        let (signalled, _) = self.signal(&mut w, None);
        let (ending, _) = self.await_exit(&mut w, signalled).await;
        info!(instance = %self.id, pid = w.pid, "stopped: {}", describe_ending(&ending, self.policy.restart.signal));
        let _ = self.group.remove();
        self.set_state(InstanceState::Stopped, None);
    }

    /// Sends the worker its shutdown signal, then lifts memory.high so a throttled worker can
    /// finish its job and exit quickly, and drops the PSI trigger (no more events about a worker
    /// on its way out). Returns when the signal went out and how long after the wake-up.
    pub(super) fn signal(
        &mut self,
        w: &mut Worker,
        woke: Option<Instant>,
    ) -> (Instant, Option<Duration>) {
        let signal = Signal::try_from(self.policy.restart.signal).unwrap_or(Signal::SIGTERM);
        let sent = kill(Pid::from_raw(w.pid as i32), signal);
        let signalled = Instant::now();
        if let Err(e) = sent {
            warn!(instance = %self.id, pid = w.pid, "cannot send {signal}: {e}");
        }
        if let Err(e) = self.group.set_high(crate::units::Limit::Max) {
            warn!(instance = %self.id, "cannot lift memory.high for the grace period: {e}");
        }
        w.psi = None;
        (signalled, woke.map(|t| signalled.duration_since(t)))
    }

    /// Waits up to the grace period for the group to empty, then cgroup.kill; restores
    /// memory.high. Returns how the worker ended and how long after the signal.
    pub(super) async fn await_exit(
        &mut self,
        w: &mut Worker,
        signalled: Instant,
    ) -> (Ending, Duration) {
        let grace = self.policy.restart.grace;
        let exited = tokio::time::timeout(grace, async {
            let status = wait_worker(w).await;
            wait_empty(&self.group, grace).await;
            status
        })
        .await;
        let ending = match exited {
            Ok(status) if !self.group.populated().unwrap_or(false) => Ending::Exited {
                code: status.and_then(|s| s.code()),
                signal: status.as_ref().and_then(exit_signal),
                after_ms: ms(signalled.elapsed()),
            },
            _ => {
                self.kill_group().await;
                let _ = wait_worker(w).await;
                Ending::KilledAfterGrace {
                    after_ms: ms(signalled.elapsed()),
                }
            }
        };
        let to_exit = signalled.elapsed();
        let ending = if self.oom_killed_since_start(w) {
            Ending::OomKilled
        } else {
            ending
        };
        if let Err(e) = self.group.set_high(self.policy.memory.high) {
            warn!(instance = %self.id, "cannot restore memory.high: {e}");
        }
        (ending, to_exit)
    }

    /// cgroup.kill, repeated until the group is empty.
    pub(super) async fn kill_group(&self) {
        let deadline = Instant::now() + KILL_WAIT;
        while Instant::now() < deadline {
            match self.group.kill() {
                Ok(()) | Err(CgroupError::Gone { .. }) => {}
                Err(e) => warn!(instance = %self.id, "cgroup.kill: {e}"),
            }
            if wait_empty(&self.group, Duration::from_secs(1)).await {
                return;
            }
        }
        error!(instance = %self.id, "group still has processes {:?} {}s after cgroup.kill", self.group.procs().unwrap_or_default(), KILL_WAIT.as_secs());
    }

    /// After the main process exited on its own: kill what it left behind in the group, and say
    /// whether the kernel OOM killer was involved.
    pub(super) async fn finish_group(&mut self, w: &mut Worker) -> bool {
        if self.group.populated().unwrap_or(false) {
            self.kill_group().await;
        }
        self.oom_killed_since_start(w)
    }

    pub(super) fn oom_killed_since_start(&mut self, w: &mut Worker) -> bool {
        if let Ok(text) = self.group.read(MEMORY_EVENTS) {
            self.on_memory_events(w, &text);
        }
        w.oom_kills_seen > 0
    }
}
