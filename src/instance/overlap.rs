//! Make-before-break restarts (`restart.overlap`): the instance's group holds two generation
//! leaves, `gen-a` and `gen-b`; the worker runs in one, its replacement starts in the other
//! before the old worker is signalled, and the old leaf is drained with the normal sequence
//! (signal, grace, cgroup.kill) and removed. The instance group is the envelope: memory.max
//! twice the policy's, each leaf the policy's limits. A daemon that restarts mid-overlap adopts
//! the younger generation and drains the older one (`drain_other_generation`). With `children:`
//! each generation leaf is a prefork server's inner group (its own `main` and `child-<pid>`
//! leaves, its own `ChildSet`): the replacement's children are placed while the old generation
//! still runs (`tend_children`). Which leaf is which: `crate::placement`.

use std::time::Instant;

use tracing::{info, warn};

use super::report::ms;
use super::serve::Served;
use super::{Instance, Worker};
use crate::cgroupfs::Group;
use crate::shutdown::{self, Proc};
use crate::units::Limit;
use crate::vocabulary::{InstanceState, Reason};

use crate::placement::{has_generations, other_generation, GENERATIONS};

/// Makes `home` (empty or already in the layout) an inner group for generations: controllers
/// on, memory.max the envelope, memory.high lifted (each leaf carries the policy's own).
pub fn prepare(home: &Group, envelope: u64) -> Result<(), String> {
    home.create_with_controllers(crate::layout::CONTROLLERS)
        .map_err(|e| e.to_string())?;
    home.set_limits(Limit::Max, Limit::Bytes(envelope), None)
        .map_err(|e| e.to_string())
}

/// Undoes [`prepare`] for a start without overlap (a reload removed it): the empty leaves are
/// removed and the controllers disabled, as `children::flatten` does. `home` is empty here.
pub fn flatten(home: &Group) -> Result<(), String> {
    if !has_generations(home) {
        return Ok(());
    }
    for name in GENERATIONS {
        let leaf = home.child(name);
        if leaf.exists() {
            leaf.remove().map_err(|e| e.to_string())?;
        }
    }
    crate::children::controllers_off(home)
}

/// What a restart with overlap left for its event.
pub(super) struct Overlapped {
    pub replacement: Worker,
    /// When the replacement was exec'd.
    pub exec: Instant,
}

impl Instance {
    /// Whether this restart can overlap: the policy asks for it and the worker runs in a
    /// generation leaf (one started flat, before a reload turned overlap on, is restarted the
    /// plain way once: its group cannot take leaves while it holds processes).
    pub(super) fn can_overlap(&self) -> bool {
        self.policy.restart.overlap.is_some() && self.group != self.home
    }

    /// Starts the replacement in the other generation leaf while `old` keeps running. The
    /// instance's group is the old worker's again on return (its drain uses it). Err: nothing
    /// was started (the caller falls back to a plain restart).
    pub(super) async fn start_beside(
        &mut self,
        old: &Worker,
        reason: Reason,
    ) -> Result<Overlapped, String> {
        let next = other_generation(&self.home, &self.group);
        if !shutdown::emptiness(&next).is_empty() {
            // A generation that could not be seen empty after its drain: never a second worker.
            return Err(format!(
                "{} still holds processes from an earlier generation",
                next.path().display()
            ));
        }
        self.take_in_sent();
        let old_group = std::mem::replace(&mut self.group, next);
        let started = self.start_here().await;
        let next = std::mem::replace(&mut self.group, old_group);
        let replacement = match started {
            Ok(w) => w,
            Err(e) => {
                let _ = next.remove();
                return Err(e);
            }
        };
        let exec = replacement.started;
        let (old_pid, new_pid) = (old.main.pid(), replacement.main.pid());
        self.view.draining_pid = Some(old_pid);
        self.set_state(InstanceState::Restarting, Some(new_pid));
        let what = format!(
            "replacement pid {new_pid} started in {} beside pid {old_pid}, which is drained next",
            next.path().display()
        );
        // The event is the log line (events are logged as they are pushed).
        let mut ev = self.event(reason, "overlap", &what);
        ev.replacement_pid = Some(new_pid);
        self.events.push(ev);
        Ok(Overlapped { replacement, exec })
    }

    /// Waits for `restart.ready` if the policy wrote one (up to an hour), serving commands.
    pub(super) async fn wait_ready(&mut self, o: &mut Overlapped) -> Served<()> {
        let Some(ready) = self.policy.restart.overlap.map(|o| o.ready) else {
            return Served::Done(());
        };
        if ready.is_zero() {
            return Served::Done(());
        }
        let main = &mut o.replacement.main;
        let children = &mut o.replacement.children;
        let pid = main.pid();
        let id = self.id.clone();
        self.serve(async move {
            tokio::select! {
                _ = tokio::time::sleep(ready) => {}
                // Its exit is seen again by the watch once the old one is drained.
                _ = main.wait() => warn!(instance = %id, pid, "the replacement exited before restart.ready; draining the old worker anyway"),
                _ = super::children::tend_children(children) => {}
            }
        })
        .await
    }

    /// After a restart with overlap: the old leaf removed, the replacement's leaf the
    /// instance's group, one pid in the view again.
    pub(super) fn overlap_done(&mut self, o: &Overlapped) {
        let next = other_generation(&self.home, &self.group);
        let old = std::mem::replace(&mut self.group, next);
        if let Err(e) = old.remove() {
            warn!(instance = %self.id, group = %old.path().display(), "cannot remove the drained generation's group (the next start clears it): {e}");
        }
        self.view.draining_pid = None;
        self.set_state(InstanceState::Running, Some(o.replacement.main.pid()));
        info!(instance = %self.id, pid = o.replacement.main.pid(), "overlap over after {} ms", ms(o.exec.elapsed()));
    }

    /// After adopting a worker in a generation leaf: the other generation (a daemon restarted
    /// mid-overlap) is drained with the shutdown sequence and its leaf removed, so the instance
    /// runs one worker again. The adopted one is the younger: see `supervisor::find_main_pid`.
    pub(super) async fn drain_other_generation(&mut self, adopted: u32) {
        if self.group == self.home {
            return;
        }
        let old = other_generation(&self.home, &self.group);
        if !old.exists() {
            return;
        }
        let mut procs = Proc::of_group(&old);
        if !procs.is_empty() || !shutdown::emptiness(&old).is_empty() {
            let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
            warn!(instance = %self.id, ?pids, adopted, "a daemon restart interrupted an overlapping restart: draining the older generation");
            self.view.draining_pid = pids.first().copied();
            self.set_state(InstanceState::Restarting, Some(adopted));
            let mut plan = self.plan();
            plan.group = old.clone();
            let report = self.run_served(plan, &mut procs).await;
            info!(instance = %self.id, ?pids, killed = report.killed, "older generation drained in {} ms", ms(report.took));
            self.view.draining_pid = None;
            self.set_state(InstanceState::Running, Some(adopted));
        }
        if let Err(e) = old.remove() {
            warn!(instance = %self.id, group = %old.path().display(), "cannot remove the older generation's group: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::SUBTREE_CONTROL;

    #[test]
    fn flatten_undoes_the_layout() {
        // Which generation comes next: placement's tests.
        let dir = tempfile::tempdir().unwrap();
        let home = Group::new(dir.path().join("0"));
        home.create().unwrap();
        home.write(SUBTREE_CONTROL, "").unwrap();
        assert!(!has_generations(&home));
        let a = home.child(GENERATIONS[0]);
        a.create().unwrap();
        assert!(has_generations(&home));
        home.write(SUBTREE_CONTROL, "memory pids").unwrap();
        flatten(&home).unwrap();
        assert!(!has_generations(&home) && !a.exists());
        assert_eq!(home.read(SUBTREE_CONTROL).unwrap(), "-memory -pids");
    }
}
