//! A worker's start, off the runtime thread: its group made and limited, the `children:`
//! layout, the fork and exec, its pidfd.
//!
//! The fork waits until the child has moved itself into its group and exec'd (spawn's pre_exec
//! writes cgroup.procs): that move takes the kernel's cgroup_threadgroup_rwsem for writing,
//! behind every other move and fork on the host. In the VM with 200 instances x 8 children the
//! runtime thread sat a quarter of the start-up in that wait (kernel stacks sampled by
//! tests/vm/stacks.rs), so status, PSI and the watchdog waited with it. On tokio's blocking
//! pool the wait is a thread's, and the instance task only awaits its result.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cgroupfs::Group;
use crate::policy::Policy;
use crate::spawn::{self, Identity};
use crate::watch::PidFd;

/// What a start needs, owned (it runs on another thread).
pub(super) struct Launch {
    pub id: String,
    pub policy: Arc<Policy>,
    pub identity: Option<Identity>,
    /// Where the worker runs (the instance's group, or its generation leaf with overlap).
    pub group: Group,
}

/// A started worker: our unreaped child and its pidfd.
pub(super) struct Launched {
    pub child: tokio::process::Child,
    pub pidfd: PidFd,
    /// memory.events before the worker ran, for the deltas its events report.
    pub events_at_start: BTreeMap<String, u64>,
}

impl Launch {
    /// Runs the start on tokio's blocking pool and waits for it without holding the thread.
    pub async fn run(self) -> Result<Launched, String> {
        tokio::task::spawn_blocking(move || self.now())
            .await
            .map_err(|e| format!("the start's thread ended: {e}"))?
    }

    /// The start itself (blocking): group, limits, layout, spawn, pidfd.
    fn now(self) -> Result<Launched, String> {
        let group = &self.group;
        group.create().map_err(|e| e.to_string())?;
        set_limits(group, &self.policy)?;
        // With `children:` the group holds leaves: the worker starts in `main`.
        let place = match self.policy.children {
            Some(_) => crate::children::prepare(group)?,
            None => {
                crate::children::flatten(group)?;
                group.clone()
            }
        };
        let events_at_start = group.memory_events().unwrap_or_default();
        let mut child = spawn::spawn(
            &self.policy.run,
            self.identity.as_ref(),
            Some(&place),
            &self.id,
        )
        .map_err(|e| e.to_string())?;
        // Not reaped yet, so the pid is still this child's: the pidfd cannot name another process.
        let pid = child
            .id()
            .ok_or("the new worker ended before it could be watched")?;
        match PidFd::open(pid) {
            Ok(pidfd) => Ok(Launched {
                child,
                pidfd,
                events_at_start,
            }),
            Err(e) => {
                // Without a pidfd it could not be signalled safely: kill it (our unreaped child).
                let _ = child.start_kill();
                Err(format!(
                    "cannot open a pidfd for the new worker pid {pid}: {e}; killed it"
                ))
            }
        }
    }
}

/// The policy's memory.high, memory.max and memory.swap.max on `group`: at a start (here) and
/// when a worker is adopted or a reload retunes it (`Instance::apply_limits`).
pub(super) fn set_limits(group: &Group, policy: &Policy) -> Result<(), String> {
    let mem = policy.memory;
    group
        .set_limits(mem.high, mem.max, mem.swap_max)
        .map_err(|e| e.to_string())
}
