//! One task per worker instance: it owns the instance's state, spawns the worker in its group,
//! feeds kernel wake-ups to the engine and carries out what the engine decided. The restart
//! itself is `Instance::restart` in `instance/shutdown.rs`; `report` words the decisions and
//! `wait` holds the kernel waits.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tracing::{error, info, warn};

use crate::cgroupfs::{Group, MEMORY_CURRENT, MEMORY_EVENTS, MEMORY_PEAK};
use crate::engine::{AfterExit, Offence, Tracker};
use crate::events::{now_ms, EventLog};
use crate::policy::{Mode, Policy};
use crate::protocol::{Ending, EventRecord, InstanceState, Reason};
use crate::psi::{FileWatch, PsiTrigger};
use crate::spawn::{self, Identity};

mod report;
mod shutdown;
mod wait;

pub use report::fmt_dur;
use report::{delta, describe, exit_signal, fill_numbers, ms, Numbers};
pub use wait::wait_empty;
use wait::{sleep_until_opt, wait_file, wait_main, wait_psi};

/// How long observe mode stays quiet about one instance after reporting it.
const OBSERVE_COOLDOWN: Duration = Duration::from_secs(30);
/// How long to wait for an emptied group after cgroup.kill before saying so.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Requests to an instance task.
#[derive(Debug)]
pub enum Command {
    /// Graceful restart; the reply comes once the new worker runs.
    Restart(oneshot::Sender<Result<String, String>>),
    /// Graceful stop; the task ends after replying.
    Stop(oneshot::Sender<String>),
    /// A reloaded policy: new limits and triggers apply to the running worker; the reply comes
    /// once they are written.
    Update(Arc<Policy>, oneshot::Sender<()>),
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
}

/// A running worker.
struct Worker {
    /// Our child, or None for a worker adopted from a previous daemon (watched through `pidfd`).
    child: Option<tokio::process::Child>,
    pidfd: Option<crate::psi::PidWatch>,
    pid: u32,
    started: Instant,
    psi: Option<PsiTrigger>,
    memory_events: Option<FileWatch>,
    /// memory.events at start, to report deltas and notice OOM kills.
    events_at_start: BTreeMap<String, u64>,
    /// OOM kills already counted for this worker.
    oom_kills_seen: u64,
}

/// Why the watch over a running worker ended.
enum Outcome {
    Offence(Offence, Instant),
    Manual(oneshot::Sender<Result<String, String>>),
    /// None for an adopted worker, whose status went to its new parent.
    Exited(Option<std::process::ExitStatus>),
    Stop(oneshot::Sender<String>),
}

pub struct Instance {
    pub id: String,
    policy: Arc<Policy>,
    group: Group,
    identity: Option<Identity>,
    tracker: Tracker,
    view: View,
    view_tx: watch::Sender<View>,
    commands: mpsc::Receiver<Command>,
    /// One restart at a time per policy.
    restart_lock: Arc<Semaphore>,
    start_gate: Arc<Semaphore>,
    events: Arc<EventLog>,
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
}

/// Instances starting at once. Starting (mkdir, limits, fork and exec) is synchronous work on the
/// daemon's one thread; 1,000 instances started together queued every socket request behind all
/// of them (a status request timed out at 1,000 instances in the VM). The gate keeps the queue
/// short, and a host is not hit by a thousand forks at once.
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
        });
        let (view_tx, view_rx) = watch::channel(view.clone());
        let instance = Instance {
            id: spec.id,
            policy: spec.policy,
            group: spec.group,
            identity: spec.identity,
            tracker: Tracker::new(),
            view,
            view_tx,
            commands,
            restart_lock: spec.restart_lock,
            start_gate: spec.start_gate,
            events: spec.events,
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

    /// The task body: start, watch, restart or respawn, until stopped.
    pub async fn run(mut self, mut adopt: Option<u32>) {
        loop {
            let gate = self.start_gate.clone();
            let permit = gate.acquire().await;
            let started = match adopt.take() {
                Some(pid) => self.adopt(pid).or_else(|e| {
                    warn!(instance = %self.id, "cannot adopt pid {pid}, starting anew: {e}");
                    self.start()
                }),
                None => self.start(),
            };
            drop(permit);
            let worker = match started {
                Ok(w) => w,
                Err(e) => {
                    let what = format!("cannot start the worker: {e}");
                    error!(instance = %self.id, "{what}");
                    self.events
                        .push(self.event(Reason::Exited, "start_failed", &what));
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
            match self.watch(&mut worker).await {
                Outcome::Offence(offence, woke) => {
                    let _permit = self.restart_lock.clone().acquire_owned().await;
                    self.restart(
                        worker,
                        offence.reason,
                        Some(woke),
                        describe(&offence, &self.policy),
                    )
                    .await;
                }
                Outcome::Manual(reply) => {
                    let _permit = self.restart_lock.clone().acquire_owned().await;
                    self.restart(
                        worker,
                        Reason::Manual,
                        None,
                        "requested by an operator".into(),
                    )
                    .await;
                    let _ = reply.send(Ok(format!("{} restarted", self.id)));
                }
                Outcome::Stop(reply) => {
                    self.stop(worker).await;
                    let _ = reply.send(format!("{} stopped", self.id));
                    return;
                }
                Outcome::Exited(status) => {
                    let ran_for = worker.started.elapsed();
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
                        "worker pid {} ended on its own after {} ({how})",
                        worker.pid,
                        fmt_dur(ran_for)
                    );
                    let ev =
                        self.ending_event(&worker, reason, "exit", ending, &self.numbers(), &what);
                    self.events.push(ev);
                    if !self.after_unplanned_exit(ran_for, reason, what).await {
                        return;
                    }
                }
            }
        }
    }

    /// Creates the group, sets and verifies the limits, spawns the worker inside it and arms the
    /// triggers.
    fn start(&mut self) -> Result<Worker, String> {
        self.set_state(InstanceState::Starting, None);
        self.ensure_policy_group()?;
        self.group.create().map_err(|e| e.to_string())?;
        self.apply_limits()?;
        let events_at_start = self.group.memory_events().unwrap_or_default();
        let child = spawn::spawn(
            &self.policy.run,
            self.identity.as_ref(),
            &self.group,
            &self.id,
        )
        .map_err(|e| e.to_string())?;
        let pid = child.id().unwrap_or(0);
        info!(instance = %self.id, pid, "started {:?}", self.policy.run.command);
        Ok(self.watching(Some(child), None, pid, events_at_start))
    }

    /// The policy's group may have been removed from under the daemon (an operator's rmdir, a
    /// cleanup script): recreate it with the controllers its children need, or the instance could
    /// never set its limits again.
    fn ensure_policy_group(&self) -> Result<(), String> {
        let Some(parent) = self.group.parent() else {
            return Ok(());
        };
        if parent.exists() {
            return Ok(());
        }
        parent.create().map_err(|e| e.to_string())?;
        parent
            .enable_controllers(crate::supervisor::CONTROLLERS)
            .map_err(|e| e.to_string())?;
        warn!(instance = %self.id, group = %parent.path().display(), "the policy's group had been removed: recreated it");
        Ok(())
    }

    /// Takes over a worker a previous daemon started: same group, same pid, triggers re-armed.
    fn adopt(&mut self, pid: u32) -> Result<Worker, String> {
        let pidfd =
            crate::psi::PidWatch::open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        self.apply_limits()?;
        let events_at_start = self.group.memory_events().unwrap_or_default();
        info!(instance = %self.id, pid, "adopted the running worker");
        Ok(self.watching(None, Some(pidfd), pid, events_at_start))
    }

    fn apply_limits(&self) -> Result<(), String> {
        let mem = self.policy.memory;
        self.group
            .set_limits(mem.high, mem.max, mem.swap_max)
            .map_err(|e| e.to_string())
    }

    /// A running worker with its triggers armed and memory.events watched.
    fn watching(
        &mut self,
        child: Option<tokio::process::Child>,
        pidfd: Option<crate::psi::PidWatch>,
        pid: u32,
        events_at_start: BTreeMap<String, u64>,
    ) -> Worker {
        let memory_events = FileWatch::open(&self.group.file(MEMORY_EVENTS))
            .map_err(|e| warn!(instance = %self.id, "not watching memory.events: {e}"))
            .ok();
        self.tracker.started();
        self.set_state(InstanceState::Running, Some(pid));
        Worker {
            child,
            pidfd,
            pid,
            started: Instant::now(),
            psi: self.arm_pressure(),
            memory_events,
            events_at_start,
            oom_kills_seen: 0,
        }
    }

    /// The policy's PSI trigger on the group; a failure is logged and the memory trigger (if
    /// any) and memory.events still guard the worker.
    fn arm_pressure(&self) -> Option<PsiTrigger> {
        let t = self.policy.triggers.pressure.as_ref()?;
        PsiTrigger::arm(&self.group.file(crate::cgroupfs::MEMORY_PRESSURE), t)
            .map_err(|e| error!(instance = %self.id, "pressure trigger not armed: {e}"))
            .ok()
    }

    /// Waits for the first thing that ends this worker's run: an offence (enforce mode), an
    /// operator's request, or the worker's own exit.
    async fn watch(&mut self, w: &mut Worker) -> Outcome {
        loop {
            let memory_due = self.memory_sample_due();
            tokio::select! {
                fired = wait_psi(&mut w.psi) => {
                    let woke = Instant::now();
                    if let Err(e) = fired {
                        warn!(instance = %self.id, "pressure trigger stopped: {e}");
                        w.psi = None;
                        continue;
                    }
                    let Some(t) = self.policy.triggers.pressure else { continue };
                    if let Some(offence) = self.tracker.on_pressure(woke, &t) {
                        if let Some(out) = self.offence(offence, woke) {
                            return out;
                        }
                    }
                }
                changed = wait_file(&mut w.memory_events) => {
                    match changed {
                        Ok(text) => self.on_memory_events(w, &text),
                        Err(_) => w.memory_events = None,
                    }
                    if let Some(out) = self.sample_memory() {
                        return out;
                    }
                }
                _ = sleep_until_opt(memory_due) => {
                    if let Some(out) = self.sample_memory() {
                        return out;
                    }
                }
                status = wait_main(&mut w.child, &w.pidfd) => return Outcome::Exited(status),
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Restart(reply)) => return Outcome::Manual(reply),
                    Some(Command::Stop(reply)) => return Outcome::Stop(reply),
                    Some(Command::Update(policy, done)) => {
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
    fn offence(&mut self, offence: Offence, woke: Instant) -> Option<Outcome> {
        if self.policy.mode == Mode::Enforce {
            return Some(Outcome::Offence(offence, woke));
        }
        let what = format!(
            "would restart (observe mode): {}",
            describe(&offence, &self.policy)
        );
        info!(instance = %self.id, reason = offence.reason.as_str(), "{what}");
        let numbers = self.numbers();
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

    fn sample_memory(&mut self) -> Option<Outcome> {
        let t = self.policy.triggers.memory?;
        let current = self.group.number(MEMORY_CURRENT).ok()?;
        let now = Instant::now();
        let offence = self.tracker.on_memory(now, current, &t)?;
        self.offence(offence, now)
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
            warn!(instance = %self.id, "{what}");
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
        let mem = self.policy.memory;
        match self.apply_limits() {
            Ok(()) => {
                info!(instance = %self.id, "limits now memory.high {} memory.max {}", mem.high, mem.max)
            }
            Err(e) => error!(instance = %self.id, "reload: cannot apply limits: {e}"),
        }
        if rearm {
            w.psi = None; // closing the fd removes the old trigger before the new one is armed
            w.psi = self.arm_pressure();
        }
        self.tracker.started();
    }

    /// Backoff or failed after an unplanned exit. Returns false when the task should end.
    async fn after_unplanned_exit(
        &mut self,
        ran_for: Duration,
        reason: Reason,
        what: String,
    ) -> bool {
        self.count_restart(reason);
        match self
            .tracker
            .on_unplanned_exit(Instant::now(), ran_for, &self.policy.restart)
        {
            AfterExit::Respawn { after } => {
                info!(instance = %self.id, reason = reason.as_str(), "respawning in {}: {what}", fmt_dur(after));
                self.set_state(InstanceState::Backoff, None);
                let until = tokio::time::Instant::now() + after;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => return true,
                        cmd = self.commands.recv() => match cmd {
                            // A reload during the backoff does not cut it short.
                            Some(Command::Update(policy, done)) => {
                                self.policy = policy;
                                let _ = done.send(());
                            }
                            other => return self.command_while_down(other),
                        },
                    }
                }
            }
            AfterExit::Fail { exits } => {
                let r = &self.policy.restart;
                let msg = format!(
                    "failed: {exits} unplanned exits within {} (restart.limit {} within {}); left stopped until `oomguard restart {}`",
                    fmt_dur(r.limit_within), r.limit_count, fmt_dur(r.limit_within), self.id
                );
                error!(instance = %self.id, "{msg}");
                self.events.push(self.event(reason, "failed", &msg));
                self.set_state(InstanceState::Failed, None);
                loop {
                    match self.commands.recv().await {
                        Some(Command::Update(policy, done)) => {
                            self.policy = policy;
                            let _ = done.send(());
                        }
                        other => {
                            self.tracker.reset_limit();
                            return self.command_while_down(other);
                        }
                    }
                }
            }
        }
    }

    /// A command while no worker runs (backoff or failed). Returns whether to start a worker.
    fn command_while_down(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            Some(Command::Restart(reply)) => {
                let _ = reply.send(Ok(format!("{} starting", self.id)));
                true
            }
            Some(Command::Stop(reply)) => {
                let _ = self.group.remove();
                self.set_state(InstanceState::Stopped, None);
                let _ = reply.send(format!("{} stopped", self.id));
                false
            }
            Some(Command::Update(policy, done)) => {
                self.policy = policy;
                let _ = done.send(());
                true
            }
            None => false,
        }
    }

    /// The event for a worker's end (an exit, a restart): the numbers, how it ended, and what
    /// memory.events counted during its life.
    fn ending_event(
        &self,
        w: &Worker,
        reason: Reason,
        action: &str,
        ending: Ending,
        numbers: &Numbers,
        what: &str,
    ) -> EventRecord {
        let mut ev = self.event(reason, action, what);
        fill_numbers(&mut ev, numbers);
        ev.ending = Some(ending);
        ev.memory_events_delta = delta(
            &w.events_at_start,
            &self.group.memory_events().unwrap_or_default(),
        );
        ev
    }

    fn event(&self, reason: Reason, action: &str, message: &str) -> EventRecord {
        EventRecord {
            seq: 0,
            time_ms: 0,
            instance: self.id.clone(),
            reason,
            action: action.into(),
            memory_current: None,
            memory_peak: None,
            memory_events_delta: BTreeMap::new(),
            psi_some_avg10: None,
            psi_full_avg10: None,
            ending: None,
            trigger_to_signal_us: None,
            signal_to_exit_ms: None,
            message: message.into(),
        }
    }

    fn numbers(&self) -> Numbers {
        let pressure = self.group.pressure().ok();
        Numbers {
            current: self.group.number(MEMORY_CURRENT).ok(),
            peak: self.group.number(MEMORY_PEAK).ok(),
            some_avg10: pressure.map(|p| p.some_avg10),
            full_avg10: pressure.map(|p| p.full_avg10),
        }
    }
}
