//! `restart.hooks` around an instance's restart: `before` awaited ahead of the signal (bounded by
//! its timeout), `after` started once the replacement runs, on a task of its own so the new
//! worker's watch does not wait for it. That task is the instance's ([`AfterTask`]): bounded by
//! the same timeout, one at a time, and killed with its process group when the instance stops.

use tracing::{info, warn};

use super::serve::Served;
use super::{Instance, Worker};
use crate::cgroupfs::MEMORY_CURRENT;
use crate::hooks::{self, Context, When};
use crate::protocol::HookRecord;
use crate::vocabulary::Reason;

/// The running `after` hook: aborted when dropped (the instance stopped or went away), which
/// kills the hook with its process group (`crate::hooks`).
pub(super) struct AfterTask(Option<tokio::task::JoinHandle<()>>);

impl AfterTask {
    /// Waits for it (at most the hook's timeout: `hooks::run` is bounded).
    async fn finish(mut self) {
        if let Some(h) = self.0.as_mut() {
            let _ = h.await;
        }
    }
}

impl Drop for AfterTask {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

/// An `after` hook owed to the next replacement that starts.
pub(super) struct PendingAfter {
    reason: Reason,
    ctx: Context,
}

impl Instance {
    /// What the hooks are told about this restart; None when the policy has no hooks (so a
    /// restart without them reads nothing before its signal).
    pub(super) fn hook_context(&self, w: &Worker, reason: Reason) -> Option<Context> {
        let h = &self.policy.restart.hooks;
        if h.before.is_none() && h.after.is_none() {
            return None;
        }
        Some(Context {
            instance: self.id.clone(),
            reason: reason.as_str().to_string(),
            pid: w.main.pid(),
            new_pid: None,
            current: self.group.number(MEMORY_CURRENT).ok(),
            high: self.policy.memory.high,
            max: self.policy.memory.max,
            cgroup: self.group.path().display().to_string(),
            secrets: hooks::secret_values(
                self.policy
                    .run
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            ),
        })
    }

    /// Runs the `before` hook, if any, and remembers the `after` hook for the replacement.
    /// Whatever the hook does (fails, hangs until killed), the restart goes on; a stop
    /// meanwhile kills it (up to `hooks.timeout` is too long to hold a stop).
    pub(super) async fn before_hook(
        &mut self,
        ctx: Option<Context>,
        reason: Reason,
    ) -> Served<Option<HookRecord>> {
        let Some(ctx) = ctx else {
            return Served::Done(None);
        };
        let hooks = self.policy.restart.hooks.clone();
        if hooks.after.is_some() {
            self.pending_after = Some(PendingAfter {
                reason,
                ctx: ctx.clone(),
            });
        }
        let Some(argv) = hooks.before else {
            return Served::Done(None);
        };
        let r = match self
            .serve(hooks::run(When::Before, &argv, &ctx, hooks.timeout))
            .await
        {
            Served::Done(r) => r,
            Served::Stopped => {
                warn!(instance = %self.id, "stopped during the before hook: the hook was killed");
                return Served::Stopped;
            }
        };
        log(&self.id, &r);
        Served::Done(Some(r))
    }

    /// Starts the `after` hook owed by the last restart, now that `new_pid` runs. Its outcome
    /// is an `after_hook` event of its own: the restart's event went out before the respawn.
    pub(super) fn after_hook(&mut self, new_pid: u32) {
        let Some(PendingAfter { reason, mut ctx }) = self.pending_after.take() else {
            return;
        };
        let hooks = self.policy.restart.hooks.clone();
        // A reload may have removed it since the restart.
        let Some(argv) = hooks.after else {
            return;
        };
        ctx.new_pid = Some(new_pid);
        let events = self.events.clone();
        let id = self.id.clone();
        // The previous restart's after hook, if still running, finishes first: one at a time.
        let previous = self.after_task.take();
        let task = tokio::spawn(async move {
            if let Some(p) = previous {
                p.finish().await;
            }
            let r = hooks::run(When::After, &argv, &ctx, hooks.timeout).await;
            log(&id, &r);
            let what = format!(
                "{} (replacement pid {new_pid} of pid {})",
                hooks::describe(&r),
                ctx.pid
            );
            let mut ev = crate::protocol::EventRecord::blank(&id, reason, "after_hook", what);
            ev.hooks = vec![r];
            events.push(ev);
        });
        self.after_task = Some(AfterTask(Some(task)));
    }

    /// At a stop: an `after` hook still running is killed (the worker it was for is gone).
    pub(super) fn end_after_hook(&mut self) {
        if let Some(t) = self.after_task.take() {
            if t.0.as_ref().is_some_and(|h| !h.is_finished()) {
                info!(instance = %self.id, "after hook still running at the stop: killed");
            }
        }
    }
}

/// The outcome and its output in the daemon's log (the event keeps the same bounded output).
fn log(id: &str, r: &HookRecord) {
    let ok = r.exit == Some(0);
    if ok {
        info!(instance = %id, output = %r.output, "{}", hooks::describe(r));
    } else {
        warn!(instance = %id, output = %r.output, "{}", hooks::describe(r));
    }
}
