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

use crate::cgroupfs::Group;
use crate::events::EventLog;
use crate::instance::{Command, Instance, Spec, View};
use crate::layout::CONTROLLERS;
use crate::policy::Policy;
use crate::procfs::{parent_pid, start_ticks};
use crate::protocol::{DaemonInfo, InstanceStatus, PolicyStatus, ReloadReport, StatusReport};
use crate::sampler::{Sample, Samples};
use crate::spawn::{self, Identity};

pub(crate) mod envelope;
mod observed;
mod strays;

/// Controllers every level of oomguard's subtree enables for the next.
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
    task: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
}

/// Policies and the handles of their selected instances.
type Selection = Vec<(Arc<Policy>, Vec<Handle>)>;

/// Persisted across daemon restarts (state.json): each instance's counters and main pid.
pub type SavedState = BTreeMap<String, View>;

struct PolicyRun {
    policy: Arc<Policy>,
    /// One restart at a time per policy, shared by its instance tasks.
    lock: Arc<Semaphore>,
    identity: Option<Identity>,
    instances: Vec<Handle>,
}

pub struct Fleet {
    root: Group,
    events: Arc<EventLog>,
    policies: RwLock<BTreeMap<String, PolicyRun>>,
    started: Instant,
    /// Numbers for status and metrics, read at most every couple of seconds.
    samples: Arc<Samples>,
    /// How many instances may be starting at once, across the fleet.
    start_gate: Arc<Semaphore>,
    /// Valid policies that failed to start (e.g. a user lookup failed for a moment): their
    /// groups may hold live workers, so stray reaping leaves them alone (fail closed).
    unstarted: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Worker lifetimes for `oomguard recommend` (saved in the state directory by the daemon).
    observed: Arc<crate::observations::Recorder>,
    /// Inside a container: the envelope every policy set must fit, shown in status.
    container: Option<crate::protocol::ContainerInfo>,
}

impl Fleet {
    pub fn new(root: Group, events: Arc<EventLog>) -> Fleet {
        Fleet {
            root,
            events,
            policies: RwLock::new(BTreeMap::new()),
            started: Instant::now(),
            samples: Arc::new(Samples::default()),
            start_gate: Arc::new(Semaphore::new(crate::instance::START_GATE)),
            unstarted: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            observed: Arc::default(),
            container: None,
        }
    }

    /// A fleet inside a container's workers' envelope: reloads must fit it too.
    pub fn in_container(mut self, info: crate::protocol::ContainerInfo) -> Fleet {
        self.container = Some(info);
        self
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    pub fn observed(&self) -> &Arc<crate::observations::Recorder> {
        &self.observed
    }

    pub fn root(&self) -> &Group {
        &self.root
    }

    /// Starts every instance of `policy`, adopting workers a previous daemon left running (found
    /// in `saved` and still in their group). Fails, starting nothing, when the policy's group
    /// cannot be prepared, its user does not exist, or a policy of that name already runs (its
    /// tasks would go on supervising, unseen, beside the new ones).
    pub fn start_policy(&self, policy: Policy, saved: &SavedState) -> Result<(), FleetError> {
        // Reloads run one at a time (daemon/reload.rs), so nothing starts the name between this
        // check and the insert in try_start_policy. Checked before the bookkeeping below: a
        // running policy is not one that failed to start.
        if self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&policy.name)
        {
            return Err(FleetError::Failed(format!(
                "policy {} is already running",
                policy.name
            )));
        }
        let name = policy.name.clone();
        let started = self.try_start_policy(policy, saved);
        let mut unstarted = self.unstarted.lock().unwrap_or_else(|e| e.into_inner());
        match started {
            Ok(()) => unstarted.remove(&name),
            Err(_) => unstarted.insert(name),
        };
        started
    }

    fn try_start_policy(&self, policy: Policy, saved: &SavedState) -> Result<(), FleetError> {
        envelope::check(&policy, &self.root).map_err(FleetError::Failed)?;
        let policy = Arc::new(policy);
        let group = self.root.child(&policy.name);
        group
            .create_with_controllers(CONTROLLERS)
            .map_err(|e| FleetError::Failed(e.to_string()))?;
        let identity =
            spawn::resolve_identity(&policy.run).map_err(|e| FleetError::Failed(e.to_string()))?;
        let mut run = PolicyRun {
            policy: policy.clone(),
            lock: Arc::new(Semaphore::new(1)),
            identity,
            instances: Vec::new(),
        };
        for index in 0..policy.run.instances {
            let handle = self.spawn_instance(&run, index, saved);
            run.instances.push(handle);
        }
        info!(policy = %policy.name, mode = ?policy.mode, instances = policy.run.instances, "policy started from {}", policy.source.display());
        self.policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(policy.name.clone(), run);
        Ok(())
    }

    fn spawn_instance(&self, run: &PolicyRun, index: u32, saved: &SavedState) -> Handle {
        let id = format!("{}/{index}", run.policy.name);
        let group = self.root.child(&run.policy.name).child(&index.to_string());
        let restored = saved.get(&id).cloned();
        let adopt = find_main_pid(&group, restored.as_ref().and_then(|v| v.main_pid));
        let (tx, rx) = mpsc::channel(8);
        let spec = Spec {
            id: id.clone(),
            policy: run.policy.clone(),
            group: group.clone(),
            identity: run.identity.clone(),
            restart_lock: run.lock.clone(),
            start_gate: self.start_gate.clone(),
            events: self.events.clone(),
            observed: self.observed.clone(),
        };
        let (instance, view) = Instance::new(spec, rx, restored);
        let task = tokio::spawn(instance.run(adopt));
        Handle {
            id,
            group,
            commands: tx,
            view,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        }
    }

    /// Every instance's counters and main pid, for state.json.
    pub fn saved_state(&self) -> SavedState {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        policies
            .values()
            .flat_map(|r| r.instances.iter())
            .map(|h| (h.id.clone(), h.view.borrow().clone()))
            .collect()
    }

    /// Applies a new set of validated policies: new ones start, removed ones stop gracefully,
    /// changed ones get their limits and triggers live and start or stop instances to match the
    /// new count. A changed `run` section (user, group, command, env, workdir) takes effect at
    /// each instance's next start; the report says so. Every user and group is resolved first:
    /// if one cannot be, the reload is refused whole and nothing changes (a worker is never left
    /// running as root by a reload that meant to drop it).
    pub async fn reload(&self, new: Vec<Policy>) -> Result<ReloadReport, Vec<String>> {
        if let Some(info) = &self.container {
            crate::container::setup::refit(info, &new).map_err(|e| vec![e])?;
        }
        let mut summary = ReloadReport::default();
        let current: BTreeMap<String, Arc<Policy>> = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, r)| (k.clone(), r.policy.clone()))
            .collect();
        let identities = resolve_all(&new, &current)?;
        let new_names: Vec<String> = new.iter().map(|p| p.name.clone()).collect();
        // A policy that failed to start and is now gone from the files: its groups are strays
        // for the next daemon start.
        self.unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|n| new_names.contains(n));
        for name in current.keys().filter(|n| !new_names.contains(n)) {
            info!(policy = %name, "reload: policy removed, stopping its instances");
            self.stop_policy(name.clone()).await;
            summary.removed.push(name.clone());
        }
        for policy in new {
            let name = policy.name.clone();
            match current.get(&name) {
                None => match self.start_policy(policy, &SavedState::new()) {
                    Ok(()) => summary.added.push(name),
                    Err(e) => error!(policy = %name, "reload: not started: {e}"),
                },
                Some(old) if **old == policy => summary.unchanged.push(name),
                Some(old) => {
                    if run_changed(old, &policy) {
                        let note = format!(
                            "{name}: run section changed; applies at each instance's next start"
                        );
                        info!(policy = %name, "reload: {note}");
                        summary.next_start.push(note);
                    }
                    if old.children != policy.children {
                        // A running worker keeps its layout and its children's limits and
                        // triggers: moving live processes between layouts would break the
                        // envelope or strand children; the next start applies the new section.
                        let note = format!(
                            "{name}: children section changed; applies at each instance's next start"
                        );
                        info!(policy = %name, "reload: {note}");
                        summary.next_start.push(note);
                    }
                    let identity = identities.get(&name).cloned().flatten();
                    self.change_policy(policy, identity).await;
                    summary.changed.push(name);
                }
            }
        }
        Ok(summary)
    }

    async fn change_policy(&self, policy: Policy, identity: Option<Identity>) {
        let policy = Arc::new(policy);
        let (to_update, to_stop) = {
            let mut policies = self.policies.write().unwrap_or_else(|e| e.into_inner());
            let Some(run) = policies.get_mut(&policy.name) else {
                return;
            };
            run.policy = policy.clone();
            run.identity = identity.clone();
            let keep = policy.run.instances as usize;
            let to_stop: Vec<Handle> = if run.instances.len() > keep {
                run.instances.split_off(keep)
            } else {
                Vec::new()
            };
            let to_update = run.instances.clone();
            for index in run.instances.len()..keep {
                let handle = self.spawn_instance(run, index as u32, &SavedState::new());
                run.instances.push(handle);
            }
            (to_update, to_stop)
        };
        info!(policy = %policy.name, instances = policy.run.instances, "reload: policy changed");
        // Sent to every instance before waiting for any: an instance about to start a worker
        // takes in what was sent first (`Instance::take_in_sent`), so none starts one with the
        // old run section while the reload waits for another instance. Reply once every
        // running instance has the new limits, so a reload that returned has taken effect.
        let mut applied = Vec::new();
        for h in to_update {
            let (done, rx) = oneshot::channel();
            if h.commands
                .send(Command::Update(policy.clone(), identity.clone(), done))
                .await
                .is_ok()
            {
                applied.push(rx);
            }
        }
        join_all(applied).await;
        join_all(to_stop.iter().map(stop_instance)).await;
    }

    fn handles(&self, target: Option<&str>) -> Result<Selection, FleetError> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        let Some(target) = target else {
            return Ok(policies
                .values()
                .map(|r| (r.policy.clone(), r.instances.clone()))
                .collect());
        };
        let (name, index) = match target.split_once('/') {
            Some((n, i)) => (n, Some(i)),
            None => (target, None),
        };
        let run = policies
            .get(name)
            .ok_or_else(|| FleetError::NotFound(target.into()))?;
        let instances: Vec<Handle> = match index {
            None => run.instances.clone(),
            Some(_) => run
                .instances
                .iter()
                .filter(|h| h.id == target)
                .cloned()
                .collect(),
        };
        if instances.is_empty() {
            return Err(FleetError::NotFound(target.into()));
        }
        Ok(vec![(run.policy.clone(), instances)])
    }

    /// Status of everything, one policy, or one instance, with live numbers from the cgroups.
    pub fn status(&self, target: Option<&str>) -> Result<StatusReport, FleetError> {
        let selected = self.handles(target)?;
        let samples = self.samples.get(|| self.all_groups());
        let policies = selected
            .into_iter()
            .map(|(policy, handles)| PolicyStatus {
                name: policy.name.clone(),
                mode: policy.mode,
                instances: handles
                    .iter()
                    .map(|h| instance_status(h, &samples))
                    .collect(),
            })
            .collect();
        Ok(StatusReport {
            daemon: DaemonInfo {
                version: env!("CARGO_PKG_VERSION").into(),
                pid: std::process::id(),
                uptime_seconds: self.started.elapsed().as_secs(),
                cgroup_root: self.root.path().display().to_string(),
                log_dropped: crate::logging::dropped_total(),
                container: self.container.clone(),
            },
            policies,
        })
    }

    fn all_groups(&self) -> Vec<Group> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        // With `children:`, each child's leaf too (its own numbers in status).
        policies
            .values()
            .flat_map(|r| r.instances.iter())
            .flat_map(|h| {
                let leaves: Vec<Group> = h
                    .view
                    .borrow()
                    .children
                    .iter()
                    .map(|c| h.group.child(&c.leaf))
                    .collect();
                std::iter::once(h.group.clone()).chain(leaves)
            })
            .collect()
    }

    /// The instance groups alone (stray reaping compares against them).
    fn instance_groups(&self) -> Vec<Group> {
        let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
        policies
            .values()
            .flat_map(|r| r.instances.iter().map(|h| h.group.clone()))
            .collect()
    }

    /// Graceful restart of one instance, or a rolling restart of a policy: one instance after
    /// the other, each only once the previous replacement has run for `restart.ready` without
    /// exiting. A replacement that does not stops the rolling restart; the error names it and
    /// the instances left on their old workers.
    pub async fn restart(&self, target: &str) -> Result<String, FleetError> {
        let selected = self.handles(Some(target))?;
        let rolling = !target.contains('/');
        let mut handles: Vec<(Handle, Option<std::time::Duration>)> = Vec::new();
        for (policy, hs) in selected {
            let ready = rolling.then_some(policy.restart.ready);
            handles.extend(hs.into_iter().map(|h| (h, ready)));
        }
        let mut done = Vec::new();
        for (i, (h, ready)) in handles.iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            h.commands
                .send(Command::Restart(tx, *ready))
                .await
                .map_err(|_| FleetError::Failed(format!("{} is stopped", h.id)))?;
            let reply = rx
                .await
                .map_err(|_| format!("{} stopped during the restart", h.id))
                .and_then(|r| r);
            match reply {
                Ok(msg) => done.push(msg),
                Err(e) => {
                    let left: Vec<&str> = handles[i + 1..]
                        .iter()
                        .map(|(h, _)| h.id.as_str())
                        .collect();
                    let mut msg = e;
                    if !left.is_empty() {
                        msg.push_str(&format!(
                            "; rolling restart stopped: {} not restarted (still on their old workers)",
                            left.join(", ")
                        ));
                    }
                    if !done.is_empty() {
                        msg.push_str(&format!("; done before: {}", done.join("; ")));
                    }
                    error!("{msg}");
                    return Err(FleetError::Failed(msg));
                }
            }
        }
        Ok(done.join("; "))
    }

    /// Stops every instance of every policy gracefully, all policies at once.
    pub async fn stop_all(&self) {
        let names: Vec<String> = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        let stops = names.into_iter().map(|name| self.stop_policy(name));
        join_all(stops).await;
    }

    /// Stops a policy's instances gracefully (in parallel) and removes its groups.
    pub async fn stop_policy(&self, name: String) {
        let run = self
            .policies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&name);
        let Some(run) = run else { return };
        join_all(run.instances.iter().map(stop_instance)).await;
        if let Err(e) = self.root.child(&name).remove() {
            error!(policy = %name, "cannot remove the policy's group: {e}");
        }
    }
}

/// The identity of every new or changed policy, or every user and group that cannot be resolved.
fn resolve_all(
    new: &[Policy],
    current: &BTreeMap<String, Arc<Policy>>,
) -> Result<BTreeMap<String, Option<Identity>>, Vec<String>> {
    let mut identities = BTreeMap::new();
    let mut errors = Vec::new();
    for p in new {
        if current.get(&p.name).is_some_and(|old| **old == *p) {
            continue;
        }
        match spawn::resolve_identity(&p.run) {
            Ok(id) => {
                identities.insert(p.name.clone(), id);
            }
            Err(e) => errors.push(format!("{}: run.user/run.group: {e}", p.source.display())),
        }
    }
    if errors.is_empty() {
        Ok(identities)
    } else {
        Err(errors)
    }
}

/// Whether what a worker is started with changed (the instance count is applied live).
fn run_changed(old: &Policy, new: &Policy) -> bool {
    let (a, b) = (&old.run, &new.run);
    a.command != b.command
        || a.user != b.user
        || a.group != b.group
        || a.workdir != b.workdir
        || a.env != b.env
}

/// Graceful stop of one instance; returns once its task ended and its group is removed.
async fn stop_instance(h: &Handle) {
    let (tx, rx) = oneshot::channel();
    if h.commands.send(Command::Stop(tx)).await.is_ok() {
        let _ = rx.await;
    }
    let task = h.task.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(task) = task {
        let _ = task.await;
    }
}

/// The worker a previous daemon left in `group`: the saved pid if it is still there, else the
/// process whose parent is outside the group (the workers' own children have parents inside).
/// With the `children:` layout the main process is the one in the `main` leaf.
fn find_main_pid(group: &Group, saved: Option<u32>) -> Option<u32> {
    // An unreadable cgroup.events goes on to cgroup.procs: a worker is never overlooked, and a
    // group that cannot be read at all is cleared before a start (`Instance::clear_leftovers`).
    if crate::shutdown::emptiness(group).is_empty() {
        return None;
    }
    if crate::placement::has_generations(group) {
        return youngest_generation(group, saved);
    }
    main_of(&crate::placement::main_home(group), saved)
}

/// A daemon restarted mid-overlap finds a worker in each generation leaf: the younger one (the
/// replacement) is adopted, and the instance drains the other (`drain_other_generation`), so
/// the worker is neither lost nor doubled. Started-at comes from /proc (field 22), not from
/// state.json, which may predate the replacement. A generation of a prefork server
/// (`children:`) has its main process in its own `main` leaf.
fn youngest_generation(group: &Group, saved: Option<u32>) -> Option<u32> {
    crate::placement::generations(group)
        .iter()
        .filter_map(|g| main_of(&crate::placement::main_home(g), saved))
        .max_by_key(|pid| start_ticks(*pid).unwrap_or(0))
}

/// The main process of one group: the saved pid if it is there, else the process whose parent
/// is outside the group.
fn main_of(home: &Group, saved: Option<u32>) -> Option<u32> {
    let procs = home.procs().ok()?;
    if let Some(pid) = saved.filter(|p| procs.contains(p)) {
        return Some(pid);
    }
    procs
        .iter()
        .copied()
        .find(|pid| parent_pid(*pid).is_some_and(|ppid| !procs.contains(&ppid)))
}

/// State and counters come live from the instance task; the numbers from the last sample. The
/// main pid is always the live one; the group's other pids are added when the sample is of the
/// same worker.
fn instance_status(
    h: &Handle,
    samples: &std::collections::HashMap<std::path::PathBuf, Sample>,
) -> InstanceStatus {
    let view = h.view.borrow().clone();
    let empty = Sample::default();
    let s = samples.get(h.group.path()).unwrap_or(&empty);
    let children = view
        .children
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let leaf = h.group.child(&c.leaf);
            // A child placed after the last sample (a recycled worker's replacement) is read
            // now: the sample is as old as the previous request, and children of a leaking
            // server come and go faster than a script polls, so waiting for the next sample
            // showed no figures at all for them.
            let fresh;
            // A sample without figures for it (taken as the leaf was made) is no sample either.
            let n = match samples.get(leaf.path()).filter(|n| n.current.is_some()) {
                Some(n) => Some(n),
                None => {
                    fresh = crate::sampler::sample(&leaf);
                    fresh.current.map(|_| &fresh)
                }
            };
            if let Some(n) = n {
                c.memory_current = n.current;
                // The configured memory.high, not the boundary's sentinel (see ChildSet::view).
                let sentinel = c
                    .boundary
                    .is_some_and(|b| n.high.is_some_and(|h| h / 4096 == b / 4096));
                if !sentinel {
                    c.memory_high = n.high;
                }
                c.memory_max = n.max;
                c.psi_some_avg10 = n.pressure.map(|p| p.some_avg10);
            }
            c
        })
        .collect();
    let mut pids: Vec<u32> = view.main_pid.into_iter().collect();
    if view.main_pid.is_some_and(|p| s.pids.contains(&p)) {
        pids.extend(s.pids.iter().filter(|p| Some(**p) != view.main_pid));
    }
    // During an overlapping restart: the old worker too, after the replacement.
    pids.extend(view.draining_pid.filter(|p| !pids.contains(p)));
    InstanceStatus {
        id: h.id.clone(),
        state: view.state,
        pids,
        memory_current: s.current,
        // The configured memory.high, not the boundary's sentinel the kernel holds meanwhile.
        memory_high: match view.boundary {
            Some(b) if s.high.is_some_and(|h| h / 4096 == b.sentinel / 4096) => Some(b.high),
            _ => s.high,
        },
        boundary: view.boundary.map(|b| b.sentinel),
        memory_max: s.max,
        memory_peak: s.peak,
        psi_some_avg10: s.pressure.map(|p| p.some_avg10),
        psi_full_avg10: s.pressure.map(|p| p.full_avg10),
        psi_some_total_us: s.pressure.map(|p| p.some_total_us),
        psi_full_total_us: s.pressure.map(|p| p.full_total_us),
        restarts: view.restarts,
        restarts_by_reason: view.restarts_by_reason,
        last_restart_reason: view.last_restart_reason,
        last_restart_at: view.last_restart_at,
        oom_kills: view.oom_kills,
        children,
        child_recycles: view.child_recycles,
        draining_pid: view.draining_pid,
        unarmed: view
            .unarmed
            .iter()
            .map(|(what, why)| format!("{what}: {why}"))
            .collect(),
    }
}
