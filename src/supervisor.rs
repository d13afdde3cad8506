//! The fleet: every policy's instances, their tasks, and the operations on them (status, restart,
//! reload, stop). Each instance task owns its own state (see `instance`); the fleet map itself is
//! behind an RwLock that is only held to copy handles out, never across an await.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::cgroupfs::{Group, MEMORY_CURRENT, MEMORY_HIGH, MEMORY_MAX, MEMORY_PEAK};
use crate::events::EventLog;
use crate::instance::{Command, Instance, View};
use crate::policy::Policy;
use crate::protocol::{DaemonInfo, InstanceStatus, PolicyStatus, StatusReport};
use crate::spawn;

/// Controllers every level of oomguard's subtree enables for the next.
pub const CONTROLLERS: &[&str] = &["memory", "pids"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetError {
    #[error("no policy or instance named {0:?}; `oomguard status` lists them")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

#[derive(Clone)]
struct Handle {
    id: String,
    group: Group,
    commands: mpsc::Sender<Command>,
    view: watch::Receiver<View>,
}

struct PolicyRun {
    policy: Arc<Policy>,
    instances: Vec<Handle>,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Fleet {
    root: Group,
    events: Arc<EventLog>,
    policies: RwLock<BTreeMap<String, PolicyRun>>,
    started: Instant,
}

impl Fleet {
    pub fn new(root: Group, events: Arc<EventLog>) -> Fleet {
        Fleet { root, events, policies: RwLock::new(BTreeMap::new()), started: Instant::now() }
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    pub fn root(&self) -> &Group {
        &self.root
    }

    /// Starts every instance of `policy`. Fails (starting nothing) when the policy's group cannot
    /// be prepared or its user does not exist.
    pub fn start_policy(&self, policy: Policy) -> Result<(), FleetError> {
        let policy = Arc::new(policy);
        let group = self.root.child(&policy.name);
        group.create().map_err(|e| FleetError::Failed(e.to_string()))?;
        group.enable_controllers(CONTROLLERS).map_err(|e| FleetError::Failed(e.to_string()))?;
        let identity = spawn::resolve_identity(&policy.run).map_err(|e| FleetError::Failed(e.to_string()))?;
        let lock = Arc::new(Semaphore::new(1));
        let mut run = PolicyRun { policy: policy.clone(), instances: Vec::new(), tasks: Vec::new() };
        for index in 0..policy.run.instances {
            let id = format!("{}/{index}", policy.name);
            let igroup = group.child(&index.to_string());
            let (tx, rx) = mpsc::channel(8);
            let (instance, view) =
                Instance::new(id.clone(), policy.clone(), igroup.clone(), identity.clone(), rx, lock.clone(), self.events.clone());
            run.tasks.push(tokio::spawn(instance.run()));
            run.instances.push(Handle { id, group: igroup, commands: tx, view });
        }
        info!(policy = %policy.name, mode = ?policy.mode, instances = policy.run.instances, "policy started from {}", policy.source.display());
        self.policies.write().unwrap_or_else(|e| e.into_inner()).insert(policy.name.clone(), run);
        Ok(())
    }

    fn handles(&self, target: Option<&str>) -> Result<Vec<(Arc<Policy>, Vec<Handle>)>, FleetError> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let Some(target) = target else {
            return Ok(policies.values().map(|r| (r.policy.clone(), r.instances.clone())).collect());
        };
        let (name, index) = match target.split_once('/') {
            Some((n, i)) => (n, Some(i)),
            None => (target, None),
        };
        let run = policies.get(name).ok_or_else(|| FleetError::NotFound(target.into()))?;
        let instances: Vec<Handle> = match index {
            None => run.instances.clone(),
            Some(_) => run.instances.iter().filter(|h| h.id == target).cloned().collect(),
        };
        if instances.is_empty() {
            return Err(FleetError::NotFound(target.into()));
        }
        Ok(vec![(run.policy.clone(), instances)])
    }

    /// Status of everything, one policy, or one instance, with live numbers from the cgroups.
    pub fn status(&self, target: Option<&str>) -> Result<StatusReport, FleetError> {
        let policies = self
            .handles(target)?
            .into_iter()
            .map(|(policy, handles)| PolicyStatus {
                name: policy.name.clone(),
                mode: policy.mode,
                instances: handles.iter().map(instance_status).collect(),
            })
            .collect();
        Ok(StatusReport {
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                uptime_seconds: self.started.elapsed().as_secs(),
                cgroup_root: self.root.path().display().to_string(),
            },
            policies,
        })
    }

    /// Graceful restart of one instance, or a rolling restart of a policy (one after the other;
    /// each reply arrives once its new worker runs).
    pub async fn restart(&self, target: &str) -> Result<String, FleetError> {
        let handles: Vec<Handle> = self.handles(Some(target))?.into_iter().flat_map(|(_, h)| h).collect();
        let mut done = Vec::new();
        for h in handles {
            let (tx, rx) = oneshot::channel();
            h.commands.send(Command::Restart(tx)).await.map_err(|_| FleetError::Failed(format!("{} is stopped", h.id)))?;
            let msg = rx.await.map_err(|_| FleetError::Failed(format!("{} stopped during the restart", h.id)))?;
            done.push(msg.map_err(FleetError::Failed)?);
        }
        Ok(done.join("; "))
    }

    /// Stops every instance of every policy gracefully, all policies at once.
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.policies.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        let stops = names.into_iter().map(|name| self.stop_policy(name));
        join_all(stops).await;
    }

    /// Stops a policy's instances gracefully (in parallel) and removes its groups.
    pub async fn stop_policy(&self, name: String) {
        let run = self.policies.write().unwrap_or_else(|e| e.into_inner()).remove(&name);
        let Some(run) = run else { return };
        let stops = run.instances.iter().map(|h| async move {
            let (tx, rx) = oneshot::channel();
            if h.commands.send(Command::Stop(tx)).await.is_ok() {
                let _ = rx.await;
            }
        });
        join_all(stops).await;
        for task in run.tasks {
            let _ = task.await;
        }
        if let Err(e) = self.root.child(&name).remove() {
            error!(policy = %name, "cannot remove the policy's group: {e}");
        }
    }
}

fn instance_status(h: &Handle) -> InstanceStatus {
    let view = h.view.borrow().clone();
    let g = &h.group;
    let limit = |file| g.limit(file).ok().and_then(|l| l.bytes());
    let pressure = g.pressure().ok();
    InstanceStatus {
        id: h.id.clone(),
        state: view.state,
        pids: g.procs().unwrap_or_default(),
        memory_current: g.number(MEMORY_CURRENT).ok(),
        memory_high: limit(MEMORY_HIGH),
        memory_max: limit(MEMORY_MAX),
        memory_peak: g.number(MEMORY_PEAK).ok(),
        psi_some_avg10: pressure.map(|p| p.some_avg10),
        psi_full_avg10: pressure.map(|p| p.full_avg10),
        psi_some_total_us: pressure.map(|p| p.some_total_us),
        psi_full_total_us: pressure.map(|p| p.full_total_us),
        restarts: view.restarts,
        restarts_by_reason: view.restarts_by_reason,
        last_restart_reason: view.last_restart_reason,
        last_restart_at: view.last_restart_at,
        oom_kills: view.oom_kills,
    }
}
