//! One task per worker instance: it owns the instance's state, spawns the worker in its group,
//! feeds kernel wake-ups to the engine and carries out what the engine decided. The restart
//! itself is `Instance::restart` in `instance/shutdown.rs` (over the shared sequence in
//! `crate::shutdown`); `down` is the backoff and failed states, `ready` a rolling restart's wait
//! for the replacement, `report` words the decisions and `wait` holds the kernel waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{error, info, warn};

use crate::cgroupfs::{Group, MEMORY_CURRENT, MEMORY_EVENTS};
use crate::children::{AtInstance, ChildEvent, ChildSet};
use crate::deadline::sleep_until_opt;
use crate::describe::describe;
use crate::engine::{Offence, Tracker};
use crate::events::{now_ms, EventLog};
use crate::policy::{ChildrenPolicy, Policy};
use crate::psi::PsiTrigger;
use crate::shutdown::Proc;
use crate::spawn::Identity;
use crate::units::fmt_dur;
use crate::vocabulary::Mode;
use crate::vocabulary::{Ending, InstanceState, Reason};
use crate::watch::FileWatch;
use children::next_child_event;

pub(crate) mod boundary;
mod children;
mod deadtime;
mod down;
mod hooks;
mod launch;
mod overlap;
mod ready;
mod report;
mod serve;
mod shutdown;
mod unarmed;
mod wait;

pub use boundary::BoundaryView;
use report::{delta, describe_avg10, exit_signal, fill_numbers, ms};
use serve::{Inbox, Served};
use shutdown::{Cause, Handover};
use wait::{wait_file, wait_psi};

/// How long observe mode stays quiet about one instance after reporting it.
const OBSERVE_COOLDOWN: Duration = Duration::from_secs(30);

/// The answer to an operator's restart.
type Reply = oneshot::Sender<Result<String, String>>;

/// Requests to an instance task.
#[derive(Debug)]
pub enum Command {
    /// Graceful restart. With a duration (a rolling restart's `restart.ready`) the reply comes
    /// once the new worker has run that long, or is an error saying why it did not; without,
    /// once the old worker is gone and its replacement was started (or could not be).
    Restart(oneshot::Sender<Result<String, String>>, Option<Duration>),
    /// Graceful stop; the task ends after replying.
    Stop(oneshot::Sender<String>),
    /// A reloaded policy and who its workers run as: new limits and triggers apply to the
    /// running worker; the run section (identity, command, env, workdir) applies at the next
    /// start. The reply comes once the limits are written; during a restart, once the instance
    /// took it in (its replacement starts with it: `serve`).
    Update(Arc<Policy>, Option<Identity>, oneshot::Sender<()>),
}

/// What the instance task publishes for status and metrics.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct View {
    pub state: InstanceState,
    pub main_pid: Option<u32>,
    pub restarts: u32,
    pub restarts_by_reason: BTreeMap<Reason, u32>,
    pub last_restart_reason: Option<Reason>,
    pub last_restart_at: Option<u64>,
    pub oom_kills: u64,
    /// Wall-clock times (ms) of the unplanned exits the restart limit still counts, so a daemon
    /// restart neither revives a failed instance nor gives a crash loop a fresh budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unplanned_exits_ms: Vec<u64>,
    /// With `children:`: the main process's children, each in its leaf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<crate::protocol::ChildStatus>,
    /// Children recycled alone.
    #[serde(default)]
    pub child_recycles: u32,
    /// With `restart.overlap`: the old worker being drained while its replacement runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_pid: Option<u32>,
    /// The memory.high boundary's sentinel while it is the kernel's memory.high.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<BoundaryView>,
    /// What could not be armed on the running worker, and why (`unarmed`): about this worker
    /// only, so never saved.
    #[serde(skip)]
    pub unarmed: BTreeMap<String, String>,
}

/// A running worker.
struct Worker {
    /// The main process: our child, or one adopted from a previous daemon; signalled only
    /// through its pidfd.
    main: Proc,
    started: Instant,
    psi: Option<PsiTrigger>,
    memory_events: Option<FileWatch>,
    /// memory.events at start, to report deltas and notice OOM kills.
    events_at_start: BTreeMap<String, u64>,
    /// OOM kills already counted for this worker.
    oom_kills_seen: u64,
    /// With `children:`: the main process's children in their leaves. Dropped first when the
    /// worker is restarted or stopped (the instance's sequence then covers them all).
    children: Option<ChildSet>,
    /// Recycles counted into the view so far.
    recycles_seen: u32,
    /// The group's own `high` count when the boundary's sentinel was armed (or last seen);
    /// None: no sentinel.
    boundary_seen: Option<u64>,
}

/// The watches an instance says are `unarmed` (status, events) when they could not be armed.
const UNARMED_PRESSURE: &str = "pressure trigger";
const UNARMED_EVENTS: &str = "memory.events watch";
const UNARMED_BOUNDARY: &str = "memory.high boundary";
const UNARMED_CHILD_LEAVES: &str = "leaves beyond children.max";
const UNARMED_CHILD_WATCHES: &str = "child watches";

/// Why the watch over a running worker ended.
enum Outcome {
    Offence(Offence, Instant),
    /// A child's offence restarts the instance: why, and the wake-up that decided it.
    Escalated(String, Instant),
    Manual(oneshot::Sender<Result<String, String>>, Option<Duration>),
    /// None for an adopted worker, whose status went to its new parent.
    Exited(Option<std::process::ExitStatus>),
    Stop(oneshot::Sender<String>),
}

pub struct Instance {
    pub id: String,
    policy: Arc<Policy>,
    /// The instance's own group (`<policy>/<n>`).
    home: Group,
    /// Where the worker runs: `home`, or with `restart.overlap` its generation leaf.
    group: Group,
    identity: Option<Identity>,
    tracker: Tracker,
    /// The memory.high boundary: the sentinel and what it learned about this instance's workers.
    boundary: crate::engine::boundary::Boundary,
    view: View,
    view_tx: watch::Sender<View>,
    inbox: Inbox,
    /// Stop requests taken in during a restart's wait, answered once the stop is done.
    stops: Vec<oneshot::Sender<String>>,
    /// A reload came during a restart: the replacement that takes over gets its limits and
    /// triggers then (it was started before it).
    retune: bool,
    /// One restart at a time per policy.
    restart_lock: Arc<Semaphore>,
    start_gate: Arc<Semaphore>,
    events: Arc<EventLog>,
    /// A rolling restart waiting for this instance's replacement to be ready.
    awaiting: Option<ready::Awaiting>,
    /// The `restart.hooks.after` owed to the replacement of the last restarted worker.
    pending_after: Option<hooks::PendingAfter>,
    /// The `after` hook running, if any: killed when the instance stops or goes away.
    after_task: Option<hooks::AfterTask>,
    /// Lifetime records for `oomguard recommend`, fed at the wake-ups this task already has.
    observed: Arc<crate::observations::Recorder>,
    /// A plain restart's event, held until its replacement is exec'd (exit to exec time).
    pending_restart: Option<deadtime::PendingRestart>,
}

/// What an instance task is given by the fleet.
pub struct Spec {
    pub id: String,
    pub policy: Arc<Policy>,
    pub group: Group,
    pub identity: Option<Identity>,
    /// Shared by the policy's instances: one restart at a time.
    pub restart_lock: Arc<Semaphore>,
    /// Shared by every instance: how many may be starting at once (see [`START_GATE`]).
    pub start_gate: Arc<Semaphore>,
    pub events: Arc<EventLog>,
    pub observed: Arc<crate::observations::Recorder>,
}

/// Instances starting at once. A start (mkdir, limits, fork and exec) runs on tokio's blocking
/// pool (`launch`); the gate keeps a host from being hit by a thousand forks at once, and the
/// pool's threads free for children's placements.
pub const START_GATE: usize = 4;

impl Instance {
    /// `restored`: the counters a previous daemon saved for this instance.
    pub fn new(
        spec: Spec,
        commands: mpsc::Receiver<Command>,
        restored: Option<View>,
    ) -> (Instance, watch::Receiver<View>) {
        let view = restored.unwrap_or(View {
            state: InstanceState::Starting,
            main_pid: None,
            restarts: 0,
            restarts_by_reason: BTreeMap::new(),
            last_restart_reason: None,
            last_restart_at: None,
            oom_kills: 0,
            unplanned_exits_ms: Vec::new(),
            children: Vec::new(),
            child_recycles: 0,
            draining_pid: None,
            boundary: None,
            unarmed: BTreeMap::new(),
        });
        let mut view = view;
        // The children a previous daemon saw are found again from the leaves at adoption, and
        // an overlap it left is resolved then (`drain_other_generation`).
        view.children.clear();
        view.draining_pid = None;
        let mut tracker = Tracker::new();
        tracker.restore_exits(
            view.unplanned_exits_ms
                .iter()
                .filter_map(|&t| wall_to_instant(t)),
        );
        let (view_tx, view_rx) = watch::channel(view.clone());
        let instance = Instance {
            id: spec.id,
            policy: spec.policy,
            home: spec.group.clone(),
            group: spec.group,
            identity: spec.identity,
            tracker,
            boundary: Default::default(),
            view,
            view_tx,
            inbox: Inbox::new(commands),
            stops: Vec::new(),
            retune: false,
            restart_lock: spec.restart_lock,
            start_gate: spec.start_gate,
            events: spec.events,
            awaiting: None,
            pending_after: None,
            after_task: None,
            observed: spec.observed,
            pending_restart: None,
        };
        (instance, view_rx)
    }

    fn set_state(&mut self, state: InstanceState, pid: Option<u32>) {
        self.view.state = state;
        self.view.main_pid = pid;
        self.view_tx.send_replace(self.view.clone());
    }

    fn count_restart(&mut self, reason: Reason) {
        self.view.restarts += 1;
        *self.view.restarts_by_reason.entry(reason).or_default() += 1;
        self.view.last_restart_reason = Some(reason);
        self.view.last_restart_at = Some(now_ms() / 1000);
        self.view_tx.send_replace(self.view.clone());
    }

    /// The task body: start, watch, restart or respawn, until stopped. An instance a previous
    /// daemon left failed (and with no worker to adopt) stays failed until `oomguard restart`.
    pub async fn run(mut self, mut adopt: Option<u32>) {
        if adopt.is_none() && self.view.state == InstanceState::Failed {
            warn!(instance = %self.id, "failed before the daemon restarted: left stopped until `oomguard restart {}`", self.id);
            self.set_state(InstanceState::Failed, None);
            if !self.wait_while_failed().await {
                return;
            }
        }
        // A restart with overlap hands over its replacement, already running.
        let mut next: Option<Worker> = None;
        // An operator's restart is answered once its replacement runs (or could not start), so
        // the restart event, sent at the replacement's exec, is out before the answer.
        let mut owed: Option<(Reply, Option<Duration>)> = None;
        loop {
            let started = match next.take() {
                Some(w) => Ok(w),
                None => self.next_worker(adopt.take()).await,
            };
            if !self.stops.is_empty() {
                // Stopped while clearing leftovers or draining an older generation.
                if let Some((reply, _)) = owed.take() {
                    let _ = reply.send(Err(format!("{}: stopped before it started", self.id)));
                }
                if let Ok(w) = started {
                    self.stop(w).await;
                }
                self.stopped();
                return;
            }
            if let Some((reply, ready)) = owed.take() {
                self.reply_when_ready(reply, ready, format!("{} restarted", self.id));
            }
            let worker = match started {
                Ok(w) => w,
                Err(e) => {
                    self.flush_restart_event(None);
                    let what = format!("cannot start the worker: {e}");
                    self.events
                        .push(self.event(Reason::Exited, "start_failed", &what));
                    self.replacement_failed(&what);
                    if self
                        .after_unplanned_exit(Duration::ZERO, Reason::Exited, what)
                        .await
                    {
                        continue;
                    }
                    return;
                }
            };
            let mut worker = worker;
            let handover = match self.watch(&mut worker).await {
                Outcome::Offence(offence, woke) => {
                    let Some(_permit) = self.restart_permit().await else {
                        self.stop(worker).await;
                        self.stopped();
                        return;
                    };
                    let began = Instant::now();
                    let h = self
                        .restart(worker, offence.reason, Some(woke), Cause::Offence(offence))
                        .await;
                    // The boundary's margin covers the growth during a restart.
                    self.boundary.restart_took(began.elapsed());
                    h
                }
                Outcome::Escalated(why, woke) => {
                    let Some(_permit) = self.restart_permit().await else {
                        self.stop(worker).await;
                        self.stopped();
                        return;
                    };
                    self.restart(worker, Reason::Child, Some(woke), Cause::Escalation(why))
                        .await
                }
                Outcome::Manual(reply, ready) => {
                    let Some(_permit) = self.restart_permit().await else {
                        let _ = reply.send(Err(format!("{}: stopped before its restart", self.id)));
                        self.stop(worker).await;
                        self.stopped();
                        return;
                    };
                    // No offence: an operator's request.
                    let h = self
                        .restart(worker, Reason::Manual, None, Cause::Operator)
                        .await;
                    if let Handover::Stopped = h {
                        let _ = reply.send(Err(format!(
                            "{}: stopped before its restart finished",
                            self.id
                        )));
                    } else {
                        owed = Some((reply, ready));
                    }
                    h
                }
                Outcome::Stop(reply) => {
                    self.stops.push(reply);
                    self.stop(worker).await;
                    self.stopped();
                    return;
                }
                Outcome::Exited(status) => {
                    let ran_for = worker.started.elapsed();
                    let pid = worker.main.pid();
                    let oom = self.finish_group(&mut worker).await;
                    let reason = if oom {
                        Reason::OomKilled
                    } else {
                        Reason::Exited
                    };
                    let ending = if oom {
                        Ending::OomKilled
                    } else {
                        Ending::Exited {
                            code: status.and_then(|s| s.code()),
                            signal: status.as_ref().and_then(exit_signal),
                            after_ms: ms(ran_for),
                        }
                    };
                    let how =
                        status.map_or("exit status unknown: adopted".into(), |s| s.to_string());
                    let what = format!(
                        "worker pid {pid} ended on its own after {} ({how})",
                        fmt_dur(ran_for)
                    );
                    let ev =
                        self.ending_event(&worker, reason, "exit", ending, &self.numbers(), &what);
                    let kills = worker.oom_kills_seen;
                    self.observed
                        .ended(&self.id, reason.as_str(), kills, &self.group);
                    self.events.push(ev);
                    // Done with before the backoff: its children's tasks and fork subscription
                    // (the pid may be another instance's main by then), pidfd and triggers.
                    drop(worker);
                    self.view.children = Vec::new();
                    self.view_tx.send_replace(self.view.clone());
                    self.replacement_failed(&what);
                    if !self.after_unplanned_exit(ran_for, reason, what).await {
                        return;
                    }
                    Handover::Respawn
                }
            };
            match handover {
                Handover::Replacement(mut w) => {
                    if self.retune {
                        self.retune(&mut w);
                    }
                    // Its children were placed during the overlap (`tend_children`), where
                    // their changes were not published: status shows them from here on.
                    self.publish_children(&mut w);
                    next = Some(*w);
                }
                Handover::Respawn => {}
                Handover::Stopped => {
                    self.stopped();
                    return;
                }
            }
        }
    }

    /// The policy's restart lock (one restart at a time), waited for while serving commands:
    /// another instance may hold it through its `restart.ready`. None: stopped meanwhile.
    async fn restart_permit(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let lock = self.restart_lock.clone();
        match self.serve(lock.acquire_owned()).await {
            Served::Done(permit) => permit.ok(),
            Served::Stopped => None,
        }
    }

    /// The end of a stop: the groups removed, the state Stopped, every stop request answered.
    fn stopped(&mut self) {
        self.replacement_failed("the instance was stopped");
        self.end_after_hook();
        self.remove_groups();
        self.set_state(InstanceState::Stopped, None);
        for reply in self.stops.drain(..) {
            let _ = reply.send(format!("{} stopped", self.id));
        }
    }

    /// The worker to watch next: the adopted one, or a new one once the group is seen empty
    /// (whatever is left in it is stopped first: a group never runs two workers).
    async fn next_worker(&mut self, adopt: Option<u32>) -> Result<Worker, String> {
        let why = match adopt {
            Some(pid) => {
                let gate = self.start_gate.clone();
                let _permit = gate.acquire().await;
                match self.adopt(pid) {
                    Ok(w) => {
                        drop(_permit);
                        self.drain_other_generation(pid).await;
                        return Ok(w);
                    }
                    Err(e) => {
                        warn!(instance = %self.id, "cannot adopt pid {pid}: {e}");
                        format!("its worker (pid {pid}) could not be adopted: {e}")
                    }
                }
            }
            None => "what is in it could not be adopted (no worker of a previous daemon)".into(),
        };
        // The whole instance group, generation leaves included, is cleared before a start.
        self.group = self.home.clone();
        self.clear_leftovers(&why).await?;
        if !self.stops.is_empty() {
            return Err("stopped while clearing the group".into());
        }
        let gate = self.start_gate.clone();
        let _permit = gate.acquire().await;
        self.start().await
    }

    /// Creates the group, sets and verifies the limits, spawns the worker inside it and arms the
    /// triggers.
    async fn start(&mut self) -> Result<Worker, String> {
        self.take_in_sent();
        self.set_state(InstanceState::Starting, None);
        self.ensure_policy_group()?;
        self.home.create().map_err(|e| e.to_string())?;
        // The group is empty here (leftovers were cleared): its layout follows the policy.
        match self.policy.restart.overlap {
            Some(_) => {
                let envelope = crate::policy::overlap_envelope(self.policy.memory.max)
                    .ok_or("restart.overlap without a sized memory.max (refused at load)")?;
                // A flat `children:` layout a reload turned into overlap: its empty leaves go
                // (each generation gets its own, inside its leaf).
                crate::children::flatten(&self.home)?;
                overlap::prepare(&self.home, envelope)?;
                self.group = crate::placement::other_generation(&self.home, &self.home);
                // An empty leaf a drain could not remove: the next overlap's place.
                let _ = crate::placement::other_generation(&self.home, &self.group).remove();
            }
            None => {
                overlap::flatten(&self.home)?;
                self.group = self.home.clone();
            }
        }
        self.start_here().await
    }

    /// Starts the worker in `self.group`: created, limits set and verified, then spawned, off
    /// the runtime thread (`launch`).
    async fn start_here(&mut self) -> Result<Worker, String> {
        // Whatever a reload brought until now, this worker starts with it.
        self.retune = false;
        let launched = launch::Launch {
            id: self.id.clone(),
            policy: self.policy.clone(),
            identity: self.identity.clone(),
            group: self.group.clone(),
        }
        .run()
        .await?;
        let pid = launched.pidfd.pid();
        info!(instance = %self.id, pid, "started {:?}", self.policy.run.command);
        self.observed.started(&self.id, pid, &self.group);
        self.flush_restart_event(Some(pid));
        self.after_hook(pid);
        let main = Proc {
            pidfd: launched.pidfd,
            child: Some(launched.child),
        };
        let children = self.policy.children;
        Ok(self.watching(main, launched.events_at_start, children))
    }

    /// The policy's group may have been removed from under the daemon (an operator's rmdir, a
    /// cleanup script): recreate it with the controllers its children need, or the instance could
    /// never set its limits again.
    fn ensure_policy_group(&self) -> Result<(), String> {
        let Some(parent) = self.home.parent() else {
            return Ok(());
        };
        if parent.exists() {
            return Ok(());
        }
        parent
            .create_with_controllers(crate::layout::CONTROLLERS)
            .map_err(|e| e.to_string())?;
        warn!(instance = %self.id, group = %parent.path().display(), "the policy's group had been removed: recreated it");
        Ok(())
    }

    fn apply_limits(&self) -> Result<(), String> {
        launch::set_limits(&self.group, &self.policy)
    }

    /// A running worker with its triggers armed and memory.events watched.
    fn watching(
        &mut self,
        main: Proc,
        events_at_start: BTreeMap<String, u64>,
        children: Option<ChildrenPolicy>,
    ) -> Worker {
        self.view.unarmed.clear();
        let memory_events = crate::fdbudget::check_own()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                FileWatch::open(&self.group.file(MEMORY_EVENTS)).map_err(|e| e.to_string())
            });
        let memory_events = match memory_events {
            Ok(watch) => Some(watch),
            Err(e) => {
                self.unarmed(UNARMED_EVENTS, Reason::Boundary, e);
                None
            }
        };
        self.tracker.started();
        let children = children.map(|c| {
            ChildSet::new(
                &self.id,
                c,
                self.policy.mode,
                &self.group,
                main.pid(),
                self.events.clone(),
            )
        });
        let with_children = children.is_some();
        self.view.children = Vec::new();
        self.set_state(InstanceState::Running, Some(main.pid()));
        // No sentinel without the wake-up that reads it: the kernel would throttle at it.
        let boundary_seen = match memory_events {
            Some(_) => self.arm_boundary(),
            None => None,
        };
        Worker {
            boundary_seen,
            children,
            recycles_seen: 0,
            main,
            started: Instant::now(),
            psi: self.arm_pressure(with_children),
            memory_events,
            events_at_start,
            oom_kills_seen: 0,
        }
    }

    /// The policy's PSI trigger on the group; a failure is logged and the memory trigger (if
    /// any) and memory.events still guard the worker.
    ///
    /// With `children:` it is armed on the `main` leaf: PSI adds every descendant's stalls to a
    /// group, so on the instance's group a child throttled at its own memory.high (which its
    /// own trigger recycles) would restart the whole server. Pressure from the envelope reaches
    /// the children's leaves too, and recycles them.
    fn arm_pressure(&mut self, with_children: bool) -> Option<PsiTrigger> {
        let Some(t) = self.policy.triggers.pressure else {
            self.armed(UNARMED_PRESSURE);
            return None;
        };
        let home = if with_children {
            self.group.child(crate::placement::MAIN_LEAF)
        } else {
            self.group.clone()
        };
        let armed = crate::fdbudget::check_own()
            .map_err(|e| e.to_string())
            .and_then(|()| {
                PsiTrigger::arm(&home.file(crate::cgroupfs::MEMORY_PRESSURE), &t)
                    .map_err(|e| e.to_string())
            });
        match armed {
            Ok(trigger) => {
                self.armed(UNARMED_PRESSURE);
                Some(trigger)
            }
            Err(e) => {
                self.unarmed(UNARMED_PRESSURE, Reason::Pressure, e);
                None
            }
        }
    }

    /// Waits for the first thing that ends this worker's run: an offence (enforce mode), an
    /// operator's request, or the worker's own exit.
    async fn watch(&mut self, w: &mut Worker) -> Outcome {
        loop {
            // Every wake-up of this loop is one the task had anyway (rate-limited inside).
            self.observed.sample(&self.id, &self.group, false);
            let memory_due = self.memory_sample_due();
            let ready_at = self.ready_at(w);
            tokio::select! {
                _ = sleep_until_opt(ready_at) => self.replacement_ready(w),
                fired = wait_psi(&mut w.psi) => {
                    let woke = Instant::now();
                    if let Err(e) = fired {
                        warn!(instance = %self.id, "pressure trigger stopped: {e}");
                        w.psi = None;
                        continue;
                    }
                    let Some(t) = self.policy.triggers.pressure else { continue };
                    let offence = self.tracker.on_pressure(woke, &t);
                    // memory.pressure is read at every event, so the next one measures from
                    // here; but a restart's own reading waits until its signal is out.
                    // With children the offence may recycle a child instead (`envelope`).
                    let restarts = offence.is_some()
                        && self.policy.mode == Mode::Enforce
                        && w.children.is_none();
                    let stall = if restarts { None } else { w.psi.as_mut().and_then(|p| p.measure(woke)) };
                    if offence.is_some() && self.pressure_from_page_cache(woke) {
                        continue;
                    }
                    if let Some(mut offence) = offence {
                        offence.stall = stall;
                        if let Some(out) = self.offence(w, offence, woke) {
                            return out;
                        }
                    }
                }
                changed = wait_file(&mut w.memory_events) => {
                    match changed {
                        Ok(text) => self.on_memory_events(w, &text),
                        Err(_) => {
                            w.memory_events = None;
                            // Nothing would see the sentinel crossed any more.
                            w.boundary_seen = None;
                            self.lift_to_configured();
                        }
                    }
                    if let Some(out) = self.on_boundary(w) {
                        return out;
                    }
                    if let Some(out) = self.sample_memory(w) {
                        return out;
                    }
                }
                _ = sleep_until_opt(memory_due) => {
                    if let Some(out) = self.sample_memory(w) {
                        return out;
                    }
                }
                status = w.main.wait() => return Outcome::Exited(status),
                ev = next_child_event(&mut w.children) => match ev {
                    ChildEvent::Changed => self.publish_children(w),
                    ChildEvent::Rearm => {
                        self.rearm_boundary(w);
                        self.publish_children(w);
                    }
                    ChildEvent::Escalate(why) => {
                        self.publish_children(w);
                        return Outcome::Escalated(why, Instant::now());
                    }
                },
                cmd = self.inbox.recv() => match cmd {
                    Some(Command::Restart(reply, ready)) => return Outcome::Manual(reply, ready),
                    Some(Command::Stop(reply)) => return Outcome::Stop(reply),
                    Some(Command::Update(policy, identity, done)) => {
                        self.identity = identity;
                        self.update(policy, w);
                        let _ = done.send(());
                    }
                    // The supervisor is gone: the daemon is exiting without stopping workers.
                    None => std::future::pending::<()>().await,
                },
            }
        }
    }

    /// In enforce mode an offence ends the watch; in observe mode it is reported and ignored.
    /// With `children:` the biggest child is recycled first (`at_children`).
    fn offence(&mut self, w: &mut Worker, offence: Offence, woke: Instant) -> Option<Outcome> {
        match self.at_children(w, &offence, woke) {
            Some(AtInstance::Handled) => return None,
            Some(AtInstance::Escalate(why)) => return Some(Outcome::Escalated(why, woke)),
            Some(AtInstance::Restart) | None => {}
        }
        if self.policy.mode == Mode::Enforce {
            return Some(Outcome::Offence(offence, woke));
        }
        let numbers = self.numbers();
        let what = format!(
            "would restart (observe mode): {}; {}",
            describe(&offence, &self.policy.triggers),
            describe_avg10(numbers.some_avg10)
        );
        let mut ev = self.event(offence.reason, "would_restart", &what);
        fill_numbers(&mut ev, &numbers);
        self.events.push(ev);
        self.tracker.reported(woke, OBSERVE_COOLDOWN);
        None
    }

    /// When the memory trigger next needs a sample. No kernel notification exists for an
    /// arbitrary threshold, so with a memory trigger memory.current is also read once a second
    /// (and on every memory.events change); without one, never.
    fn memory_sample_due(&self) -> Option<Instant> {
        let t = self.policy.triggers.memory.as_ref()?;
        let tick = Instant::now() + Duration::from_secs(1);
        Some(
            self.tracker
                .memory_deadline(t)
                .map_or(tick, |d| d.min(tick)),
        )
    }

    fn sample_memory(&mut self, w: &mut Worker) -> Option<Outcome> {
        let t = self.policy.triggers.memory?;
        let current = self.group.number(MEMORY_CURRENT).ok()?;
        let now = Instant::now();
        let offence = self.tracker.on_memory(now, current, &t)?;
        self.offence(w, offence, now)
    }

    /// Counts kernel OOM kills as they happen (the worker may survive one that hit a child).
    fn on_memory_events(&mut self, w: &mut Worker, text: &str) {
        let now = crate::cgroupfs::parse_keyed(text);
        let kills = now
            .get("oom_kill")
            .copied()
            .unwrap_or(0)
            .saturating_sub(w.events_at_start.get("oom_kill").copied().unwrap_or(0));
        if kills > w.oom_kills_seen {
            let new = kills - w.oom_kills_seen;
            w.oom_kills_seen = kills;
            self.view.oom_kills += new;
            self.view_tx.send_replace(self.view.clone());
            let what = format!(
                "the kernel OOM killer killed {new} process(es) in the group (memory.max {})",
                self.policy.memory.max
            );
            let numbers = self.numbers();
            let mut ev = self.event(Reason::OomKilled, "oom_kill", &what);
            fill_numbers(&mut ev, &numbers);
            ev.memory_events_delta = delta(&w.events_at_start, &now);
            self.events.push(ev);
        }
    }

    /// Applies a reloaded policy to the running worker: limits at once, the trigger re-armed.
    fn update(&mut self, policy: Arc<Policy>, w: &mut Worker) {
        let rearm = policy.triggers.pressure != self.policy.triggers.pressure;
        self.policy = policy;
        self.apply_to(w, rearm);
    }

    /// A replacement started before a reload that came during its restart: the reloaded
    /// limits and triggers, now that it takes over.
    fn retune(&mut self, w: &mut Worker) {
        self.retune = false;
        self.apply_to(w, true);
    }

    fn apply_to(&mut self, w: &mut Worker, rearm: bool) {
        let mem = self.policy.memory;
        match self.apply_limits() {
            Ok(()) => {
                info!(instance = %self.id, "limits now memory.high {} memory.max {}", mem.high, mem.max)
            }
            Err(e) => error!(instance = %self.id, "reload: cannot apply limits: {e}"),
        }
        if w.memory_events.is_some() {
            w.boundary_seen = self.arm_boundary();
        }
        if rearm {
            w.psi = None; // closing the fd removes the old trigger before the new one is armed
            w.psi = self.arm_pressure(w.children.is_some());
        }
        self.tracker.started();
    }
}

/// An `Instant` as wall-clock ms, for state.json (Instants do not survive the process).
fn instant_to_wall(t: Instant) -> u64 {
    now_ms().saturating_sub(ms(t.elapsed()))
}

/// The inverse of [`instant_to_wall`]; None for a time before this host's monotonic clock began
/// (such an old exit no longer counts anyway).
fn wall_to_instant(wall_ms: u64) -> Option<Instant> {
    let ago = Duration::from_millis(now_ms().saturating_sub(wall_ms));
    Instant::now().checked_sub(ago)
}
