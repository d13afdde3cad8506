//! `children:`: every child of a worker's main process in a leaf group of its own, with its own
//! limits and triggers, and the offender recycled alone.
//!
//! Layout: the instance's group `<n>/` becomes an inner group holding the envelope limits (the
//! policy's `memory:`); the main process lives in `<n>/main` (cgroup v2 allows no processes in an
//! inner group); each direct child of the main process is moved into `<n>/child-<pid>` as soon as
//! it is seen: fork events from the proc connector (`connector`), and a rescan of `main`'s
//! cgroup.procs at start, after adoption, after lost events and on a timer (the only way when the
//! connector is unavailable). Grandchildren forked after the move are born in their parent's
//! leaf; those forked before it follow their ancestor. oomguard never forks children: the main
//! process respawns them.
//!
//! One [`ChildSet`] per running worker, owned by the instance task. Each child has a small task
//! (`kid`) that waits for its PSI trigger, its exit, or the order to recycle it; the decisions
//! are the engine's ([`crate::engine::children`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cgroupfs::{Group, CGROUP_PROCS, MEMORY_CURRENT, MEMORY_PEAK, MEMORY_PRESSURE};
use crate::engine::boundary::Boundary;
use crate::engine::children::{
    born_big, placements, ChildDecision, ChildPlanner, Envelope, Escalation, EARLY, YOUNG,
};
use crate::engine::{Offence, Tracker};
use crate::events::EventLog;
use crate::policy::ChildrenPolicy;
use crate::protocol::ChildStatus;
use crate::psi::PsiTrigger;
use crate::vocabulary::Mode;
use crate::vocabulary::{ChildState, Reason};
use crate::watch::PidFd;

pub mod connector;
mod edge;
mod envelope;
mod kid;
mod layout;
mod limits;
mod placing;
mod verify;
mod words;

pub use envelope::AtInstance;
use layout::{child_leaves, sweep};
pub use layout::{controllers_off, flatten, prepare};

use kid::{KidNote, Order};
use limits::{Shortfall, Unplaced};

/// Child leaves are named `child-<pid>`.
pub const LEAF_PREFIX: &str = "child-";
/// How often `main` is rescanned while fork events come (a safety net: an event the kernel did
/// not send, a subscription made after the fork).
const RESCAN_WITH_EVENTS: Duration = Duration::from_secs(2);
/// How often without the connector: the fork-to-leaf delay is half of this on average; one
/// cgroup.procs read per instance each time.
const RESCAN_WITHOUT_EVENTS: Duration = Duration::from_millis(50);
/// How long observe mode stays quiet about one child after reporting it.
const OBSERVE_COOLDOWN: Duration = Duration::from_secs(30);

/// What the instance task has to act on.
pub enum ChildEvent {
    /// The set of children or their states changed: publish it.
    Changed,
    /// Restart the instance instead (the `child_escalation` event is recorded): why, in words.
    Escalate(String),
    /// A recycle the instance waited for at its own offence ended: re-arm its sentinel.
    Rearm,
}

struct Kid {
    leaf: Group,
    born: Instant,
    tracker: Tracker,
    /// Taken when the recycle is ordered.
    order: Option<oneshot::Sender<Order>>,
    task: tokio::task::JoinHandle<()>,
    recycles: u32,
    /// The decision's words and numbers, for the event when the recycle ends.
    recycle: Option<words::Decision>,
    /// The memory.high boundary on this leaf (no memory trigger for the children).
    boundary: Boundary,
    /// The leaf's own `high` count at arming; None: no sentinel.
    boundary_seen: Option<u64>,
    /// Its leaf's memory.current `EARLY` after placement (its size at birth), once read.
    early: Option<u64>,
    /// The offence it was told to wait with (`at_once`), decided again when a slot frees.
    waiting: Option<Offence>,
}

/// The children of one running worker.
pub struct ChildSet {
    id: String,
    cfg: ChildrenPolicy,
    mode: Mode,
    group: Group,
    main_leaf: Group,
    main_pid: u32,
    kids: BTreeMap<u32, Kid>,
    forks: Option<connector::Subscription>,
    tx: mpsc::UnboundedSender<KidNote>,
    rx: mpsc::UnboundedReceiver<KidNote>,
    planner: ChildPlanner,
    /// The instance's offences, answered child first (`envelope`).
    envelope: Envelope,
    /// A recycle the envelope waited for ended: the instance re-arms (`ChildEvent::Rearm`).
    rearm: bool,
    next_rescan: Instant,
    next_memory: Option<Instant>,
    events: Arc<EventLog>,
    changed: bool,
    /// Children without a leaf (children.max, descriptors) or without their watches.
    shortfall: Shortfall,
    /// Children recycled, for the instance's counter.
    pub recycled: u32,
    /// Children being moved to their leaves, off the runtime thread.
    placer: placing::Placer,
    /// A rescan found a grandchild whose parent was still being placed: rescan once it is.
    rescan_when_placed: bool,
}

impl Drop for ChildSet {
    fn drop(&mut self) {
        for kid in self.kids.values() {
            kid.task.abort();
        }
    }
}

impl ChildSet {
    /// Starts watching the children of `main_pid`: the leaves a previous daemon made are taken
    /// over (re-adoption), and `main` is rescanned for children not yet placed.
    pub fn new(
        id: &str,
        cfg: ChildrenPolicy,
        mode: Mode,
        group: &Group,
        main_pid: u32,
        events: Arc<EventLog>,
    ) -> ChildSet {
        let (tx, rx) = mpsc::unbounded_channel();
        let forks = connector::subscribe(main_pid);
        let mut set = ChildSet {
            id: id.to_string(),
            cfg,
            mode,
            group: group.clone(),
            main_leaf: group.child(crate::placement::MAIN_LEAF),
            main_pid,
            kids: BTreeMap::new(),
            forks,
            tx,
            rx,
            planner: ChildPlanner::new(),
            envelope: Envelope::new(),
            rearm: false,
            next_rescan: Instant::now(),
            next_memory: None,
            events,
            changed: true,
            shortfall: Shortfall::default(),
            recycled: 0,
            placer: placing::Placer::new(),
            rescan_when_placed: false,
        };
        set.readopt();
        set.rescan();
        set
    }

    /// Children as status shows them (numbers are filled in from the samples).
    pub fn view(&self) -> Vec<ChildStatus> {
        self.kids
            .iter()
            .map(|(pid, k)| ChildStatus {
                pid: *pid,
                leaf: format!("{LEAF_PREFIX}{pid}"),
                state: if k.order.is_some() {
                    ChildState::Running
                } else {
                    ChildState::Recycling
                },
                memory_current: None,
                // The configured high while the sentinel is the kernel's; status fills in the
                // kernel's value otherwise.
                memory_high: k.boundary_seen.and(self.cfg.memory.high.bytes()),
                boundary: k.boundary_seen.and(k.boundary.sentinel()),
                memory_max: None,
                psi_some_avg10: None,
                recycles: k.recycles,
            })
            .collect()
    }

    /// While children are left in the main leaf because of `children.max`: the status line.
    pub fn cap_note(&self) -> Option<String> {
        self.shortfall.cap_note(self.cfg.max)
    }

    /// While some child runs without a leaf or without its watches: the status line.
    pub fn unarmed_note(&self) -> Option<String> {
        self.shortfall.unarmed_note()
    }

    /// Takes over the leaves of a previous daemon: a leaf whose child is still in it is tracked
    /// again (by a pidfd checked against the leaf); an empty one is removed.
    fn readopt(&mut self) {
        for (pid, leaf) in child_leaves(&self.group) {
            match crate::shutdown::Proc::adopt(pid, &leaf) {
                Ok(p) => {
                    info!(instance = %self.id, pid, "re-adopted the child in its leaf");
                    self.track(pid, leaf, p.pidfd);
                }
                Err(_) => {
                    if crate::shutdown::emptiness(&leaf).is_empty() {
                        let _ = leaf.remove();
                    }
                }
            }
        }
    }

    /// Waits for the next thing the instance must act on. Cancel-safe: every await is a channel
    /// or a timer, and state changes only after one returned.
    pub async fn next(&mut self) -> ChildEvent {
        loop {
            if std::mem::take(&mut self.rearm) {
                return ChildEvent::Rearm;
            }
            if std::mem::take(&mut self.changed) {
                return ChildEvent::Changed;
            }
            let memory_at = self.memory_due();
            let early_at = self.early_due();
            tokio::select! {
                note = recv_note(&mut self.forks) => match note {
                    Some(connector::Note::Forked { child, at }) => self.place(child, Some(at)),
                    Some(connector::Note::Rescan) => self.rescan(),
                    None => self.forks = None,
                },
                Some(done) = self.placer.rx.recv() => self.placed(done),
                Some(note) = self.rx.recv() => {
                    if let Some(why) = self.on_note(note) {
                        return ChildEvent::Escalate(why);
                    }
                }
                _ = tokio::time::sleep_until(self.next_rescan.into()) => self.rescan(),
                _ = crate::deadline::sleep_until_opt(memory_at) => {
                    if let Some(why) = self.sample_memory() {
                        return ChildEvent::Escalate(why);
                    }
                }
                _ = crate::deadline::sleep_until_opt(early_at) => self.sample_early(),
            }
        }
    }

    /// Every direct child of the main process in `main` gets its leaf; a grandchild goes where
    /// its ancestor is. Empty leaves of children that are gone are removed.
    fn rescan(&mut self) {
        let interval = if self.forks.is_some() {
            RESCAN_WITH_EVENTS
        } else {
            RESCAN_WITHOUT_EVENTS
        };
        self.next_rescan = Instant::now() + interval;
        let procs = match self.main_leaf.procs() {
            Ok(p) => p,
            Err(e) => {
                warn!(instance = %self.id, "cannot rescan the main leaf for children: {e}");
                return;
            }
        };
        if self.shortfall.still_in_main(|pid| procs.contains(&pid)) {
            self.changed = true;
        }
        for (pid, owner) in placements(self.main_pid, &procs, crate::procfs::parent_pid) {
            if pid == owner {
                self.place(pid, None);
            } else {
                if !self.kids.contains_key(&owner) {
                    self.place(owner, None);
                }
                let Some(k) = self.kids.get(&owner) else {
                    self.rescan_when_placed |= self.placer.has(owner);
                    continue;
                };
                // Read by number from cgroup.procs: still the same process, still under its
                // ancestor, when the pidfd says so after the check.
                let want = verify::Want::Under(owner);
                if verify::movable(&verify::Procs, pid, self.main_pid, want).is_none() {
                    debug!(instance = %self.id, pid, "not moving a grandchild: gone, or no longer under child {owner}");
                    continue;
                }
                if let Err(e) = k.leaf.write(CGROUP_PROCS, &pid.to_string()) {
                    debug!(instance = %self.id, pid, "cannot move a grandchild to its parent's leaf: {e}");
                }
            }
        }
        // A leaf being made is empty until its child moves in: not one to sweep.
        let placing: Vec<u32> = self.placer.pids().collect();
        sweep(&self.group, |pid| {
            self.kids.contains_key(&pid) || placing.contains(&pid)
        });
    }

    /// Queues a new child of the main process for a leaf of its own (`placing`). `forked`: when
    /// its fork event was read. A process that is gone, or not the main process's child (a pid
    /// reused since the event or the rescan), is left alone (`verify`).
    fn place(&mut self, pid: u32, forked: Option<Instant>) {
        if self.kids.contains_key(&pid) || self.placer.has(pid) {
            return;
        }
        if self.kids.len() + self.placer.len() >= self.cfg.max as usize {
            return self.leave_in_main(pid, Unplaced::Cap, None);
        }
        // Its pidfd, then the leaf's watches: only while the reserve stays free.
        if let Err(e) = crate::fdbudget::check_own() {
            return self.leave_in_main(pid, Unplaced::Fds, Some(e.to_string()));
        }
        let Some(pidfd) = verify::movable(&verify::Procs, pid, self.main_pid, verify::Want::Child)
        else {
            self.changed |= self.shortfall.placed(pid);
            return;
        };
        let leaf = self.group.child(&format!("{LEAF_PREFIX}{pid}"));
        self.placer.push(placing::Job {
            pid,
            leaf,
            pidfd,
            memory: self.cfg.memory,
            forked,
        });
    }

    /// A placement came back from the blocking pool.
    fn placed(&mut self, done: placing::Done) {
        self.placer.finished();
        let placing::Job {
            pid, leaf, pidfd, ..
        } = done.job;
        match done.outcome {
            placing::Outcome::Placed => {
                self.changed |= self.shortfall.placed(pid);
                self.track(pid, leaf, pidfd);
                if std::mem::take(&mut self.rescan_when_placed) {
                    self.next_rescan = Instant::now();
                }
            }
            placing::Outcome::Gone => {}
            placing::Outcome::Failed(e) => {
                warn!(instance = %self.id, pid, "cannot place the child in its leaf {}: {e}", leaf.path().display());
            }
        }
    }

    /// `pid` gets no leaf: said once (a warning, then the status line via `cap_note` and
    /// `unarmed_note`); a rescan places it when there is room again.
    fn leave_in_main(&mut self, pid: u32, why: Unplaced, error: Option<String>) {
        let first = !self.shortfall.waiting_for_room() && self.shortfall.unarmed_note().is_none();
        if !self.shortfall.unplaced(pid, why, error.clone()) {
            return;
        }
        self.changed = true;
        match (first, why) {
            (true, Unplaced::Cap) => {
                warn!(instance = %self.id, pid, "children.max ({}) reached: child left in the main leaf", self.cfg.max)
            }
            (true, Unplaced::Fds) => {
                warn!(instance = %self.id, pid, "child left in the main leaf: {}", error.unwrap_or_default())
            }
            _ => debug!(instance = %self.id, pid, "child left in the main leaf ({why:?})"),
        }
    }

    fn track(&mut self, pid: u32, leaf: Group, pidfd: PidFd) {
        let psi = self.cfg.triggers.pressure.and_then(|t| {
            let armed = crate::fdbudget::check_own()
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    PsiTrigger::arm(&leaf.file(MEMORY_PRESSURE), &t).map_err(|e| e.to_string())
                });
            armed
                .map_err(|e| {
                    warn!(instance = %self.id, pid, "child pressure trigger not armed: {e}");
                    self.shortfall
                        .unwatched(pid, format!("pressure trigger: {e}"));
                })
                .ok()
        });
        let who = format!("{} child {pid}", self.id);
        let mut boundary = Boundary::new();
        let boundary_seen = self.arm_boundary(&leaf, &mut boundary, &who);
        let mut boundary_seen = boundary_seen;
        let events = boundary_seen.and_then(|_| {
            crate::fdbudget::check_own()
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    crate::watch::FileWatch::open(&leaf.file(crate::cgroupfs::MEMORY_EVENTS))
                        .map_err(|e| e.to_string())
                })
                .map_err(|e| {
                    warn!(instance = %self.id, pid, "not watching the leaf's memory.events: {e}");
                    self.shortfall
                        .unwatched(pid, format!("memory.events watch: {e}"));
                })
                .ok()
        });
        if events.is_none() && boundary_seen.take().is_some() {
            // Nothing would see the sentinel crossed: the configured high back.
            if let Err(e) = leaf.set_high(self.cfg.memory.high) {
                warn!(instance = %self.id, pid, "cannot put the leaf's memory.high back: {e}");
            }
        }
        let (order_tx, order_rx) = oneshot::channel();
        let task = tokio::spawn(kid::watch(
            who,
            leaf.clone(),
            pidfd,
            psi,
            events,
            self.tx.clone(),
            order_rx,
        ));
        self.kids.insert(
            pid,
            Kid {
                leaf,
                born: Instant::now(),
                tracker: Tracker::new(),
                order: Some(order_tx),
                task,
                recycles: 0,
                recycle: None,
                boundary,
                boundary_seen,
                early: None,
                waiting: None,
            },
        );
        self.changed = true;
    }

    fn on_note(&mut self, note: KidNote) -> Option<String> {
        match note {
            KidNote::Pressure(pid, woke, stall) => {
                let t = self.cfg.triggers.pressure?;
                let kid = self.kids.get_mut(&pid)?;
                let mut offence = kid.tracker.on_pressure(woke, &t)?;
                offence.stall = stall;
                if self.pressure_from_page_cache(pid, woke) {
                    return None;
                }
                self.offence(pid, offence, woke)
            }
            KidNote::MemoryEvents(pid) => self.on_memory_events(pid),
            KidNote::PsiStopped(pid, why) => {
                debug!(instance = %self.id, pid, "child pressure trigger stopped: {why}");
                None
            }
            KidNote::Exited(pid) => {
                self.left(pid);
                self.planner.forget(pid);
                let kid = self.kids.remove(&pid)?;
                if crate::shutdown::emptiness(&kid.leaf).is_empty() {
                    let _ = kid.leaf.remove();
                }
                self.changed = true;
                if kid.order.is_some() {
                    return None;
                }
                // It ended by itself just as its recycle was ordered: the order was never
                // carried out, but it held an `at_once` slot.
                self.planner.recycle_ended();
                self.envelope_recycle_ended(pid);
                self.retry_waiting()
            }
            KidNote::Recycled(pid, report) => {
                self.left(pid);
                self.planner.recycle_ended();
                let kid = self.kids.remove(&pid)?;
                if let Err(e) = kid.leaf.remove() {
                    warn!(instance = %self.id, pid, "cannot remove the recycled child's leaf: {e}");
                }
                self.recycled += 1;
                self.changed = true;
                let ev = words::recycled(&self.id, pid, kid.recycle, &report, &self.cfg);
                self.events.push(ev);
                self.envelope_recycle_ended(pid);
                self.retry_waiting()
            }
        }
    }

    /// A child's leaf is free: a child left in main for `children.max` gets it at once.
    fn left(&mut self, pid: u32) {
        self.changed |= self.shortfall.gone(pid);
        if self.shortfall.waiting_for_room() {
            self.next_rescan = Instant::now();
        }
    }

    /// When the next child not yet read at birth is `EARLY` old.
    fn early_due(&self) -> Option<Instant> {
        self.kids
            .values()
            .filter(|k| k.early.is_none())
            .map(|k| k.born + EARLY)
            .min()
    }

    /// Reads the leaves of the children that are `EARLY` old: their size at birth, which tells
    /// a respawn loop from a fast leak (engine::children::born_big). An unreadable leaf reads as
    /// 0 (born small): a doubt never restarts the whole instance.
    fn sample_early(&mut self) {
        let now = Instant::now();
        for kid in self.kids.values_mut() {
            if kid.early.is_none() && now >= kid.born + EARLY {
                kid.early = Some(kid.leaf.number(MEMORY_CURRENT).unwrap_or(0));
            }
        }
    }

    /// The memory line a child trips at: the memory trigger's `above`, else its memory.high.
    fn trip_line(&self) -> Option<u64> {
        self.cfg
            .triggers
            .memory
            .map(|m| m.above)
            .or_else(|| self.cfg.memory.high.bytes())
    }

    /// When the children's memory.current is next read: once a second with a memory trigger.
    fn memory_due(&mut self) -> Option<Instant> {
        self.cfg.triggers.memory?;
        if self.kids.is_empty() {
            self.next_memory = None;
            return None;
        }
        Some(
            *self
                .next_memory
                .get_or_insert_with(|| Instant::now() + Duration::from_secs(1)),
        )
    }

    fn sample_memory(&mut self) -> Option<String> {
        self.next_memory = None;
        let t = self.cfg.triggers.memory?;
        let now = Instant::now();
        let mut offenders = Vec::new();
        for (pid, kid) in self.kids.iter_mut().filter(|(_, k)| k.order.is_some()) {
            let Ok(current) = kid.leaf.number(MEMORY_CURRENT) else {
                continue;
            };
            if let Some(o) = kid.tracker.on_memory(now, current, &t) {
                offenders.push((*pid, o));
            }
        }
        for (pid, offence) in offenders {
            if let Some(why) = self.offence(pid, offence, now) {
                return Some(why);
            }
        }
        None
    }

    /// A recycle ended: the child that waited longest is decided again with the offence it
    /// waited with.
    fn retry_waiting(&mut self) -> Option<String> {
        while let Some(pid) = self.planner.next_waiting() {
            if let Some(offence) = self.kids.get_mut(&pid).and_then(|k| k.waiting.take()) {
                return self.offence(pid, offence, Instant::now());
            }
        }
        None
    }

    /// A child tripped its triggers: recycle it, wait (at_once), report it (observe), or
    /// escalate to an instance restart.
    fn offence(&mut self, pid: u32, offence: Offence, woke: Instant) -> Option<String> {
        let kid = self.kids.get(&pid)?;
        // No order left to give: it is already recycling.
        kid.order.as_ref()?;
        let r = self.cfg.restart;
        let big = born_big(woke, kid.born, kid.early, self.trip_line());
        let decision = self.planner.on_offence(
            woke,
            kid.born,
            big,
            r.at_once,
            r.scope,
            self.mode == Mode::Enforce,
        );
        let d = words::decision(pid, &kid.leaf, kid.born, &offence, &self.cfg);
        self.decided(pid, offence, woke, decision, d, false)
    }

    /// Carries out the planner's `decision` about `pid`, said with `d`; `for_instance`: ordered
    /// at the instance's offence (`envelope`), whose words `d` already are.
    fn decided(
        &mut self,
        pid: u32,
        offence: Offence,
        woke: Instant,
        decision: ChildDecision,
        d: words::Decision,
        for_instance: bool,
    ) -> Option<String> {
        let r = self.cfg.restart;
        match decision {
            ChildDecision::Recycle => {
                let kid = self.kids.get_mut(&pid)?;
                if for_instance {
                    info!(instance = %self.id, pid, reason = offence.reason.as_str(), "{}", d.what);
                } else {
                    info!(instance = %self.id, pid, reason = offence.reason.as_str(), "recycling child: {}", d.what);
                }
                let order = kid.order.take()?;
                kid.waiting = None;
                self.planner.forget(pid);
                let sent = order.send(Order {
                    signal: r.signal,
                    grace: r.grace,
                    woke,
                });
                if sent.is_err() {
                    // Its task already saw it end: the Exited note follows.
                    self.planner.recycle_ended();
                    return None;
                }
                kid.recycles += 1;
                kid.recycle = Some(d);
                self.changed = true;
                None
            }
            ChildDecision::Wait { recycling } => {
                debug!(instance = %self.id, pid, "child over its triggers, waiting: {recycling} already recycling (at_once {})", r.at_once);
                if let Some(kid) = self.kids.get_mut(&pid) {
                    kid.waiting = Some(offence);
                    self.planner.wait(pid);
                }
                None
            }
            ChildDecision::Report => {
                let what = format!("would recycle (observe mode): {}", d.what);
                info!(instance = %self.id, pid, "{what}");
                self.events.push(words::event(
                    &self.id,
                    offence.reason,
                    "would_recycle",
                    pid,
                    &d,
                    what,
                ));
                if let Some(kid) = self.kids.get_mut(&pid) {
                    kid.tracker.reported(woke, OBSERVE_COOLDOWN);
                }
                None
            }
            ChildDecision::Escalate(e) => {
                let why = match e {
                    Escalation::Scope => format!(
                        "{}; children.restart.scope is instance: restarting the instance",
                        d.what
                    ),
                    Escalation::RespawnLoop { young } => format!(
                        "{}; a respawn loop: {young} children in a row were at half their line \
                         or more {} after they started and tripped their triggers less than {} \
                         after it, so recycling one alone does not help: restarting the instance",
                        d.what,
                        crate::units::fmt_dur(EARLY),
                        crate::units::fmt_dur(YOUNG)
                    ),
                };
                warn!(instance = %self.id, pid, "child escalation: {why}");
                self.events.push(words::event(
                    &self.id,
                    Reason::Child,
                    "child_escalation",
                    pid,
                    &d,
                    why.clone(),
                ));
                Some(why)
            }
        }
    }
}

async fn recv_note(sub: &mut Option<connector::Subscription>) -> Option<connector::Note> {
    match sub {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// memory.current and memory.peak of a leaf, for the words of a decision.
fn leaf_numbers(leaf: &Group) -> (Option<u64>, Option<u64>, Option<f64>) {
    (
        leaf.number(MEMORY_CURRENT).ok(),
        leaf.number(MEMORY_PEAK).ok(),
        leaf.pressure().ok().map(|p| p.some_avg10),
    )
}
