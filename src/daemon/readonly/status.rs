//! One worker instance of the read-only mode (a plain process, no group) and the status report
//! built from the workers and the container's last totals.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::container::signals::read::{self, ProcTable};
use crate::container::signals::InstanceSample;
use crate::events::now_ms;
use crate::policy::Policy;
use crate::protocol::{
    ChildStatus, ContainerInfo, DaemonInfo, InstanceStatus, PolicyStatus, StatusReport,
};
use crate::spawn::{resolve_identity, spawn, Identity};
use crate::vocabulary::Mode;
use crate::vocabulary::{ChildState, Ending, InstanceState, Reason};
use crate::watch::PidFd;

pub struct Worker {
    /// "policy/N".
    pub id: String,
    pub policy: Arc<Policy>,
    identity: Option<Identity>,
    /// Our child, reaped here; None while a restart's task holds it, or in backoff.
    child: Option<tokio::process::Child>,
    pub state: InstanceState,
    respawn_at: Option<Instant>,
    pub restarts: u32,
    pub child_recycles: u32,
    last_restart_at: Option<u64>,
    /// The last poll's figures, for status.
    last: Option<InstanceSample>,
}

impl Worker {
    pub fn all(policies: &[Policy]) -> anyhow::Result<Vec<Worker>> {
        let mut out = Vec::new();
        for p in policies {
            let identity = resolve_identity(&p.run)?;
            let policy = Arc::new(p.clone());
            for n in 0..p.run.instances {
                out.push(Worker {
                    id: format!("{}/{n}", p.name),
                    policy: policy.clone(),
                    identity: identity.clone(),
                    child: None,
                    state: InstanceState::Starting,
                    respawn_at: None,
                    restarts: 0,
                    child_recycles: 0,
                    last_restart_at: None,
                    last: None,
                });
            }
        }
        Ok(out)
    }

    /// Starts the worker in the daemon's own group (there is no other).
    pub fn spawn(&mut self) -> Result<u32, String> {
        let child = spawn(&self.policy.run, self.identity.as_ref(), None, &self.id)
            .map_err(|e| e.to_string())?;
        let pid = child.id().ok_or("the new worker ended at once")?;
        self.child = Some(child);
        self.state = InstanceState::Running;
        self.respawn_at = None;
        Ok(pid)
    }

    /// Exited by itself, or could not start: respawned after `restart.backoff.initial`.
    pub fn backoff(&mut self) {
        self.child = None;
        self.last = None;
        self.state = InstanceState::Backoff;
        self.respawn_at = Some(Instant::now() + self.policy.restart.backoff_initial);
    }

    pub fn due(&self, now: Instant) -> bool {
        self.state == InstanceState::Backoff && self.respawn_at.is_some_and(|t| t <= now)
    }

    /// The main process's exit, when it exited by itself since the last poll.
    pub fn reap(&mut self) -> Option<Ending> {
        use std::os::unix::process::ExitStatusExt;
        let st = self.child.as_mut()?.try_wait().ok()??;
        Some(Ending::Exited {
            code: st.code(),
            signal: st.signal(),
            after_ms: 0,
        })
    }

    pub fn main_pid(&self) -> Option<u32> {
        self.child.as_ref()?.id()
    }

    pub fn sample(&mut self, table: &ProcTable) -> Option<InstanceSample> {
        let main = self.main_pid()?;
        let s = read::sample(
            Path::new("/proc"),
            table,
            &self.id,
            main,
            self.policy.children.is_some(),
            self.policy.mode == Mode::Observe,
        );
        self.last = Some(s.clone());
        Some(s)
    }

    /// Hands the main process to a restart (or the stop): its pidfd is opened while it is our
    /// unreaped child, so it names this process.
    pub fn take_for_restart(&mut self) -> Option<(tokio::process::Child, PidFd)> {
        let pid = self.main_pid()?;
        let fd = PidFd::open(pid).ok()?;
        self.state = InstanceState::Restarting;
        self.last = None;
        Some((self.child.take()?, fd))
    }

    pub fn restarted(&mut self) {
        self.restarts += 1;
        self.last_restart_at = Some(now_ms() / 1000);
    }

    fn status(&self) -> InstanceStatus {
        let last = self.last.as_ref();
        let mut pids: Vec<u32> = self.main_pid().into_iter().collect();
        let children = last.map_or(Vec::new(), |s| {
            s.children
                .iter()
                .map(|&(pid, anon)| ChildStatus {
                    pid,
                    leaf: String::new(),
                    state: ChildState::Running,
                    memory_current: Some(anon),
                    memory_high: None,
                    boundary: None,
                    memory_max: None,
                    psi_some_avg10: None,
                    recycles: 0,
                })
                .collect()
        });
        pids.extend(children.iter().map(|c| c.pid));
        let mut by_reason = BTreeMap::new();
        if self.restarts > 0 {
            by_reason.insert(Reason::ContainerLimit, self.restarts);
        }
        InstanceStatus {
            id: self.id.clone(),
            state: self.state,
            pids,
            // No group: what its processes hold in anonymous memory (Pss), from /proc.
            memory_current: last.map(|s| s.tree_anon),
            memory_high: None,
            boundary: None,
            memory_max: None,
            memory_peak: None,
            psi_some_avg10: None,
            psi_full_avg10: None,
            psi_some_total_us: None,
            psi_full_total_us: None,
            restarts: self.restarts,
            restarts_by_reason: by_reason,
            last_restart_reason: (self.restarts > 0).then_some(Reason::ContainerLimit),
            last_restart_at: self.last_restart_at,
            oom_kills: 0,
            children,
            child_recycles: self.child_recycles,
            draining_pid: None,
            unarmed: Vec::new(),
        }
    }
}

/// The whole status: the workers by policy, and the container's mode.
pub fn report(workers: &[Worker], info: &ContainerInfo, root: &Path) -> StatusReport {
    let mut policies: Vec<PolicyStatus> = Vec::new();
    for w in workers {
        let st = w.status();
        match policies.iter_mut().find(|p| p.name == w.policy.name) {
            Some(p) => p.instances.push(st),
            None => policies.push(PolicyStatus {
                name: w.policy.name.clone(),
                mode: w.policy.mode,
                instances: vec![st],
            }),
        }
    }
    StatusReport {
        daemon: DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_seconds: started().elapsed().as_secs(),
            cgroup_root: root.display().to_string(),
            log_dropped: crate::logging::dropped_total(),
            container: Some(info.clone()),
        },
        policies,
    }
}

fn started() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}
