//! A rolling restart's wait for each replacement: the reply to a `Restart` that asks for it comes
//! only once the new worker has run for `restart.ready` without exiting, or says why it did not,
//! so a bad deploy stops the rolling restart at the first instance instead of taking every one
//! down.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{Instance, Worker};
use crate::units::fmt_dur;

/// A restart's reply held until its replacement is ready.
pub(super) struct Awaiting {
    reply: oneshot::Sender<Result<String, String>>,
    ready: Duration,
}

impl Instance {
    /// Replies at once (`ready` None), or once the next worker has run for `ready`.
    pub(super) fn reply_when_ready(
        &mut self,
        reply: oneshot::Sender<Result<String, String>>,
        ready: Option<Duration>,
        now: String,
    ) {
        let Some(ready) = ready else {
            let _ = reply.send(Ok(now));
            return;
        };
        if let Some(old) = self.awaiting.replace(Awaiting { reply, ready }) {
            let _ = old.reply.send(Err(format!(
                "{}: restarted again before the replacement was ready",
                self.id
            )));
        }
    }

    /// When the running worker will have been up long enough for a waiting restart.
    pub(super) fn ready_at(&self, w: &Worker) -> Option<Instant> {
        self.awaiting.as_ref().map(|a| w.started + a.ready)
    }

    pub(super) fn replacement_ready(&mut self, w: &Worker) {
        if let Some(a) = self.awaiting.take() {
            let msg = format!(
                "{} restarted (new worker pid {} up for {})",
                self.id,
                w.main.pid(),
                fmt_dur(a.ready)
            );
            info!(instance = %self.id, "{msg}");
            let _ = a.reply.send(Ok(msg));
        }
    }

    /// The replacement exited, failed to start, or was stopped before it was ready.
    pub(super) fn replacement_failed(&mut self, why: &str) {
        if let Some(a) = self.awaiting.take() {
            let msg = format!(
                "{}: the replacement did not stay up for restart.ready ({}): {why}",
                self.id,
                fmt_dur(a.ready)
            );
            warn!(instance = %self.id, "{msg}");
            let _ = a.reply.send(Err(msg));
        }
    }
}
