//! Carrying out a restart or a stop with the shutdown sequence (`crate::shutdown`), and putting
//! how it went into an ending and an event.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::report::{describe_avg10, describe_ending, exit_signal, ms};
use super::serve::Served;
use super::{Instance, Worker};
use crate::cgroupfs::{Group, MEMORY_EVENTS};
use crate::describe::describe;
use crate::engine::{Offence, Stall};
use crate::shutdown::{self, Emptiness, Proc, Report, Sequence};
use crate::units::{human_bytes, Limit};
use crate::vocabulary::{Ending, InstanceState, Reason};

/// What a restart leaves for the instance's task.
pub(super) enum Handover {
    /// With `restart.overlap`: the replacement, already running.
    Replacement(Box<Worker>),
    /// Start the next worker now.
    Respawn,
    /// A stop came during the restart: what ran is stopped; the task ends.
    Stopped,
}

/// The policy's shutdown sequence for one group, owned: a wait over it can be served
/// (`Instance::serve` needs the instance mutably, and a reload may replace its policy).
pub(super) struct Plan {
    who: String,
    pub group: Group,
    signal: Signal,
    grace: Duration,
    high: Option<Limit>,
}

impl Plan {
    pub(super) fn sequence(&self) -> Sequence<'_> {
        Sequence {
            who: &self.who,
            group: &self.group,
            signal: self.signal,
            grace: self.grace,
            high: self.high,
        }
    }
}

/// Why an instance is restarted, for its event.
pub(super) enum Cause {
    /// `oomguard restart`.
    Operator,
    /// Its own triggers.
    Offence(Offence),
    /// A child's offence made into a restart of the instance (`children.restart.scope: instance`
    /// or a respawn loop), in words.
    Escalation(String),
}

impl Instance {
    /// The policy's shutdown sequence for this instance's group.
    pub(super) fn sequence(&self) -> Sequence<'_> {
        Sequence {
            who: &self.id,
            group: &self.group,
            signal: Signal::try_from(self.policy.restart.signal).unwrap_or(Signal::SIGTERM),
            grace: self.policy.restart.grace,
            high: Some(self.policy.memory.high),
        }
    }

    /// [`Instance::sequence`], owned.
    pub(super) fn plan(&self) -> Plan {
        let s = self.sequence();
        Plan {
            who: self.id.clone(),
            group: self.group.clone(),
            signal: s.signal,
            grace: s.grace,
            high: s.high,
        }
    }

    /// The graceful restart: the worker's own shutdown signal, memory.high lifted so a throttled
    /// worker can finish its job, up to the grace period for the group to empty, then
    /// cgroup.kill; the limits restored. The caller respawns at once, or, with
    /// `restart.overlap`, gets the replacement that was started before the signal. Its waits
    /// (the hook, `restart.ready`, the grace) serve commands: a stop stops both generations.
    pub(super) async fn restart(
        &mut self,
        mut w: Worker,
        reason: Reason,
        woke: Option<Instant>,
        cause: Cause,
    ) -> Handover {
        // Only the operator's `restart.hooks.before` may come ahead of the signal (bounded by
        // its timeout; docs/policy.md says a memory trigger's margin must cover it). Then the
        // signal goes first: everything else (numbers, bookkeeping, the PSI trigger's reading
        // and drop, whose close waits for an RCU grace period) would only delay it.
        let ctx = self.hook_context(&w, reason);
        let before = match self.before_hook(ctx, reason).await {
            Served::Done(r) => r,
            Served::Stopped => {
                self.pending_after = None;
                self.stop(w).await;
                return Handover::Stopped;
            }
        };
        // With overlap the replacement comes first, after the `before` hook (so the hooks keep
        // their order: before, then the signal to the old worker; after once the new one runs).
        let mut overlapped = if self.can_overlap() {
            match self.start_beside(&w, reason).await {
                Ok(o) => Some(o),
                Err(e) => {
                    warn!(instance = %self.id, "cannot start the replacement beside the worker ({e}): restarting without overlap");
                    None
                }
            }
        } else {
            None
        };
        if let Some(o) = overlapped.as_mut() {
            if let Served::Stopped = self.wait_ready(o).await {
                self.stop_generations(&mut w, None, &mut o.replacement)
                    .await;
                return Handover::Stopped;
            }
        }
        let (signalled, to_signal, stall) = self.signal(&mut w, woke);
        let why = match cause {
            Cause::Operator => "requested by an operator".to_string(),
            Cause::Escalation(why) => why,
            Cause::Offence(mut o) => {
                if o.reason == Reason::Pressure {
                    o.stall = stall;
                }
                describe(&o, &self.policy.triggers)
            }
        };
        let numbers = self.numbers();
        let (high, max) = (self.policy.memory.high, self.policy.memory.max);
        let signal_name = self.policy.restart.signal;
        // Read now, while the worker still holds its memory.
        let kills = w.oom_kills_seen;
        self.observed
            .ended(&self.id, reason.as_str(), kills, &self.group);
        self.count_restart(reason);
        if overlapped.is_none() {
            self.set_state(InstanceState::Restarting, Some(w.main.pid()));
        }
        let plan = self.plan();
        let seq = plan.sequence();
        let finish = seq.finish(std::slice::from_mut(&mut w.main), signalled);
        // A replacement's children get their leaves while the old generation drains.
        let tend = async {
            match overlapped.as_mut() {
                Some(o) => super::children::tend_children(&mut o.replacement.children).await,
                None => std::future::pending().await,
            }
        };
        let exit = self
            .serve(async {
                tokio::select! {
                    report = finish => report,
                    _ = tend => unreachable!("tending children never ends"),
                }
            })
            .await;
        let report = match exit {
            Served::Done(report) => report,
            Served::Stopped => {
                match overlapped.as_mut() {
                    Some(o) => {
                        self.stop_generations(&mut w, Some(signalled), &mut o.replacement)
                            .await
                    }
                    // The old worker keeps its grace; no replacement starts. Said like any
                    // stop: without it a stop that met a restart left no line for the worker.
                    None => {
                        let seq = plan.sequence();
                        let report = seq
                            .finish(std::slice::from_mut(&mut w.main), signalled)
                            .await;
                        let ending = self.ending_of(&mut w, &report);
                        let during = format!("during a restart ({}), ", reason.as_str());
                        self.say_stopped(&w, &during, &ending, &report);
                    }
                }
                return Handover::Stopped;
            }
        };
        let ending = self.ending_of(&mut w, &report);
        let exited = Instant::now();
        let how = describe_ending(&ending, signal_name);
        let mut notes: String = report.notes.iter().map(|n| format!("; {n}")).collect();
        if let Some(r) = &before {
            notes.push_str(&format!("; {}", crate::hooks::describe(r)));
        }
        let what = format!(
            "restart ({}): {why}; memory {} (high {}, max {}), {}; {how}{notes}",
            reason.as_str(),
            numbers.current.map_or("?".into(), human_bytes),
            high,
            max,
            describe_avg10(numbers.some_avg10),
        );
        let mut ev = self.ending_event(&w, reason, "restart", ending, &numbers, &what);
        ev.trigger_to_signal_us = to_signal.map(|d| d.as_micros() as u64);
        ev.signal_to_exit_ms = Some(ms(report.took));
        ev.hooks = before.into_iter().collect();
        match overlapped {
            Some(o) => {
                super::deadtime::fill_overlap(&mut ev, o.exec, exited, o.replacement.main.pid());
                self.overlap_done(&o);
                self.events.push(ev);
                Handover::Replacement(Box::new(o.replacement))
            }
            None => {
                self.pending_restart = Some(super::deadtime::PendingRestart { event: ev, exited });
                Handover::Respawn
            }
        }
    }

    pub(super) async fn stop(&mut self, mut w: Worker) {
        self.set_state(InstanceState::Restarting, Some(w.main.pid()));
        let (signalled, _, _) = self.signal(&mut w, None);
        let kills = w.oom_kills_seen;
        self.observed.ended(&self.id, "stopped", kills, &self.group);
        let (ending, report) = self.await_exit(&mut w, signalled).await;
        self.say_stopped(&w, "", &ending, &report);
    }

    /// The one line an operator reads for a worker that a stop ended, however the stop met it.
    fn say_stopped(&self, w: &Worker, during: &str, ending: &Ending, report: &Report) {
        let notes: String = report.notes.iter().map(|n| format!("; {n}")).collect();
        let how = describe_ending(ending, self.policy.restart.signal);
        info!(instance = %self.id, pid = w.main.pid(), "stopped: {during}{how}{notes}");
    }

    /// A stop during an overlapping restart: both generations get their signal (the old one
    /// unless it already has it, at `old_signalled`) and their grace, at the same time, so the
    /// stop takes one grace, not two.
    pub(super) async fn stop_generations(
        &mut self,
        old: &mut Worker,
        old_signalled: Option<Instant>,
        new: &mut Worker,
    ) {
        self.set_state(InstanceState::Restarting, Some(new.main.pid()));
        let old_at = match old_signalled {
            Some(at) => at,
            None => self.signal(old, None).0,
        };
        let old_plan = self.plan();
        let mut new_plan = self.plan();
        new_plan.group = crate::placement::other_generation(&self.home, &self.group);
        new.psi = None;
        new.children = None;
        let new_at = new_plan.sequence().begin(std::slice::from_ref(&new.main));
        let (a, b) = (old_plan.sequence(), new_plan.sequence());
        let (old_report, new_report) = tokio::join!(
            a.finish(std::slice::from_mut(&mut old.main), old_at),
            b.finish(std::slice::from_mut(&mut new.main), new_at),
        );
        for (w, r) in [(&*old, old_report), (&*new, new_report)] {
            info!(instance = %self.id, pid = w.main.pid(), killed = r.killed, "stopped during an overlapping restart after {} ms", ms(r.took));
        }
    }

    /// After a stop: the worker's group, the generation leaves, then the instance's group.
    pub(super) fn remove_groups(&self) {
        let _ = self.group.remove();
        for leaf in crate::placement::generations(&self.home) {
            let _ = leaf.remove();
        }
        let _ = self.home.remove();
    }

    /// Sends the worker its shutdown signal (through its pidfd) and lifts memory.high, then drops
    /// the PSI trigger (no more events about a worker on its way out). Returns when the signal
    /// went out, how long after the wake-up, and the stall since the trigger's last event (what
    /// a restart on pressure reports; read here so that it does not delay the signal).
    pub(super) fn signal(
        &mut self,
        w: &mut Worker,
        woke: Option<Instant>,
    ) -> (Instant, Option<Duration>, Option<Stall>) {
        let signalled = self.sequence().begin(std::slice::from_ref(&w.main));
        let stall = w.psi.take().and_then(|mut p| p.measure(Instant::now()));
        // The children's tasks end here: no recycle races the instance's own sequence, which
        // lifted every leaf's memory.high and kills the whole subtree after the grace.
        w.children = None;
        self.view.children = Vec::new();
        (signalled, woke.map(|t| signalled.duration_since(t)), stall)
    }

    /// The rest of the sequence: grace, cgroup.kill, SIGKILL through the pidfd for a main process
    /// that left its group, memory.high restored. Returns how the worker ended.
    pub(super) async fn await_exit(
        &mut self,
        w: &mut Worker,
        signalled: Instant,
    ) -> (Ending, Report) {
        let report = self
            .sequence()
            .finish(std::slice::from_mut(&mut w.main), signalled)
            .await;
        let ending = self.ending_of(w, &report);
        (ending, report)
    }

    /// How the worker ended, from its sequence's report.
    fn ending_of(&mut self, w: &mut Worker, report: &Report) -> Ending {
        let after_ms = ms(report.took);
        if self.oom_killed_since_start(w) {
            Ending::OomKilled
        } else if report.killed {
            Ending::KilledAfterGrace { after_ms }
        } else {
            Ending::Exited {
                code: report.status.and_then(|s| s.code()),
                signal: report.status.as_ref().and_then(exit_signal),
                after_ms,
            }
        }
    }

    /// Before a start: a group that still holds processes (left by a worker that could not be
    /// adopted, or not seen to empty after a kill) is cleared with the shutdown sequence first,
    /// so a group never runs two workers. Fails when it cannot be seen empty afterwards.
    pub(super) async fn clear_leftovers(&mut self, why: &str) -> Result<(), String> {
        let state = shutdown::emptiness(&self.group);
        if state.is_empty() {
            return Ok(());
        }
        let mut procs = Proc::of_group(&self.group);
        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        warn!(instance = %self.id, ?pids, "the group is not empty ({state:?}) and {why}: stopping what is in it before starting a worker");
        let report = self.run_served(self.plan(), &mut procs).await;
        let after = shutdown::emptiness(&self.group);
        let outcome = format!(
            "leftover processes {pids:?} stopped in {} ({}){}",
            crate::units::fmt_dur(report.took),
            if report.killed { "killed" } else { "exited" },
            report
                .notes
                .iter()
                .map(|n| format!("; {n}"))
                .collect::<String>()
        );
        info!(instance = %self.id, "{outcome}");
        match after {
            Emptiness::Empty => Ok(()),
            other => Err(format!(
                "the group is still not empty after stopping its leftovers ({other:?}): not starting a second worker there"
            )),
        }
    }

    /// The whole sequence over `procs`, serving commands; a stop meanwhile lets it finish (the
    /// processes keep their grace) and is answered by the caller.
    pub(super) async fn run_served(&mut self, plan: Plan, procs: &mut [Proc]) -> Report {
        let seq = plan.sequence();
        let at = seq.begin(procs);
        match self.serve(seq.finish(procs, at)).await {
            Served::Done(report) => report,
            Served::Stopped => seq.finish(procs, at).await,
        }
    }

    /// After the main process exited on its own: kill what it left behind in the group (also
    /// when the group's state cannot be read), and say whether the kernel OOM killer was
    /// involved.
    pub(super) async fn finish_group(&mut self, w: &mut Worker) -> bool {
        let state = shutdown::emptiness(&self.group);
        if !state.is_empty() {
            if let Emptiness::Unknown(why) = &state {
                warn!(instance = %self.id, "cannot tell whether the worker left processes behind ({why}): killing the group");
            }
            shutdown::kill_group(&self.id, &self.group).await;
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
