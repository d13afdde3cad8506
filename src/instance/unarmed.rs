//! Fail closed: a watch that could not be armed on the running worker (the PSI trigger, the
//! memory.events watch, the memory.high boundary) is said in status, in an event and in the log,
//! never left to guard silently without it. The next restart or reload tries again.

use tracing::debug;

use super::Instance;
use crate::vocabulary::Reason;

impl Instance {
    /// `what` could not be armed on the running worker: an `unarmed` event the first time (or
    /// when the error changes), and the status lists it until it is armed again.
    pub(super) fn unarmed(&mut self, what: &'static str, reason: Reason, error: String) {
        if self.view.unarmed.get(what) == Some(&error) {
            return;
        }
        let message = format!(
            "{what} not armed: {error}; this worker runs without it (memory.max still holds) \
             until its next restart or a reload arms it"
        );
        self.view.unarmed.insert(what.into(), error);
        self.view_tx.send_replace(self.view.clone());
        let mut ev = self.event(reason, "unarmed", &message);
        super::fill_numbers(&mut ev, &self.numbers());
        self.events.push(ev);
    }

    /// `what` is armed (again).
    pub(super) fn armed(&mut self, what: &'static str) {
        if self.view.unarmed.remove(what).is_some() {
            debug!(instance = %self.id, "{what} armed again");
            self.view_tx.send_replace(self.view.clone());
        }
    }
}
