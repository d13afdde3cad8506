//! While no worker runs: the backoff after an unplanned exit, the failed state past
//! `restart.limit`, and the commands that arrive meanwhile.

use std::time::{Duration, Instant};

use tracing::info;

use super::{Command, Instance};
use crate::engine::AfterExit;
use crate::units::fmt_dur;
use crate::vocabulary::{InstanceState, Reason};

impl Instance {
    /// Backoff or failed after an unplanned exit. Returns false when the task should end.
    pub(super) async fn after_unplanned_exit(
        &mut self,
        ran_for: Duration,
        reason: Reason,
        what: String,
    ) -> bool {
        self.count_restart(reason);
        let after = self
            .tracker
            .on_unplanned_exit(Instant::now(), ran_for, &self.policy.restart);
        // Kept in state.json, so a daemon restart does not give a crash loop a fresh budget.
        self.view.unplanned_exits_ms = self.tracker.exits().map(super::instant_to_wall).collect();
        match after {
            AfterExit::Respawn { after } => {
                info!(instance = %self.id, reason = reason.as_str(), "respawning in {}: {what}", fmt_dur(after));
                self.set_state(InstanceState::Backoff, None);
                let until = tokio::time::Instant::now() + after;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => return true,
                        cmd = self.inbox.recv() => match cmd {
                            // A reload during the backoff does not cut it short.
                            Some(Command::Update(policy, identity, done)) => {
                                self.policy = policy;
                                self.identity = identity;
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
                // State first: the event makes the daemon save state.json, which must say failed.
                self.set_state(InstanceState::Failed, None);
                self.events.push(self.event(reason, "failed", &msg));
                self.wait_while_failed().await
            }
        }
    }

    /// Failed: only reloads are taken in until an operator's restart (or a stop). Returns
    /// whether to start a worker.
    pub(super) async fn wait_while_failed(&mut self) -> bool {
        loop {
            match self.inbox.recv().await {
                Some(Command::Update(policy, identity, done)) => {
                    self.policy = policy;
                    self.identity = identity;
                    let _ = done.send(());
                }
                other => {
                    self.tracker.reset_limit();
                    self.view.unplanned_exits_ms.clear();
                    return self.command_while_down(other);
                }
            }
        }
    }

    /// A command while no worker runs (backoff or failed). Returns whether to start a worker.
    fn command_while_down(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            Some(Command::Restart(reply, ready)) => {
                self.reply_when_ready(reply, ready, format!("{} starting", self.id));
                true
            }
            Some(Command::Stop(reply)) => {
                self.stops.push(reply);
                self.stopped();
                false
            }
            Some(Command::Update(policy, identity, done)) => {
                self.policy = policy;
                self.identity = identity;
                let _ = done.send(());
                true
            }
            None => false,
        }
    }
}
