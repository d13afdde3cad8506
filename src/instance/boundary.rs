//! The instance's side of the memory.high boundary (`crate::engine::boundary`): the sentinel
//! written as the kernel's memory.high while a worker runs, and the decision at each `high`
//! event. Used when the policy sets memory.high and no `triggers.memory` (an explicit memory
//! trigger keeps its own behaviour).

use std::time::Instant;

use tracing::{debug, info, warn};

use super::{Instance, Outcome, Worker};
use crate::describe::describe_boundary;
use crate::sentinel::{arm, crossed, decide, offence};
use crate::units::human_bytes;

/// What status shows while a sentinel is the kernel's memory.high.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BoundaryView {
    /// The sentinel written as the kernel's memory.high.
    pub sentinel: u64,
    /// The policy's memory.high, which status keeps showing as `memory_high`.
    pub high: u64,
}

impl Instance {
    /// The configured memory.high when the boundary applies to this policy.
    fn boundary_high(&self) -> Option<u64> {
        if self.policy.triggers.memory.is_some() || !self.policy.memory.boundary {
            return None;
        }
        self.policy.memory.high.bytes()
    }

    /// Writes the sentinel for the running worker (after the configured limits were applied);
    /// returns the group's `high` count at arming, which later counts tell a crossing by. A
    /// failure leaves the configured memory.high in force (the PSI trigger, if any, still
    /// guards the worker) and says so.
    pub(super) fn arm_boundary(&mut self) -> Option<u64> {
        self.boundary.disarm();
        self.set_boundary_view(None);
        let Some(high) = self.boundary_high() else {
            self.armed(super::UNARMED_BOUNDARY);
            return None;
        };
        match arm(&self.group, &mut self.boundary, high) {
            Ok((seen, sentinel)) => {
                self.armed(super::UNARMED_BOUNDARY);
                debug!(instance = %self.id, "memory.high boundary armed: sentinel {} under memory.high {}", human_bytes(sentinel), human_bytes(high));
                self.set_boundary_view(Some(BoundaryView { sentinel, high }));
                Some(seen)
            }
            Err(e) => {
                let e = format!("{e} (memory.high stays {})", human_bytes(high));
                self.unarmed(
                    super::UNARMED_BOUNDARY,
                    crate::vocabulary::Reason::Boundary,
                    e,
                );
                self.boundary.disarm();
                self.lift_to_configured();
                None
            }
        }
    }

    fn set_boundary_view(&mut self, b: Option<BoundaryView>) {
        if self.view.boundary != b {
            self.view.boundary = b;
            self.view_tx.send_replace(self.view.clone());
        }
    }

    /// The configured memory.high back in the kernel: before a restart, so the worker drains
    /// unthrottled up to the line the operator chose.
    pub(super) fn lift_to_configured(&mut self) {
        if let Err(e) = self.group.set_high(self.policy.memory.high) {
            warn!(instance = %self.id, "cannot put memory.high back to {}: {e}", self.policy.memory.high);
        }
        self.boundary.disarm();
        self.set_boundary_view(None);
    }

    /// With the boundary armed, a PSI offence while what the worker owns is still under the
    /// sentinel is page-cache churn (or pressure from outside the group): a restart would not
    /// help, the new worker would stream the same files. Not acted on; said once per episode
    /// (the observe cooldown), and a failed reading acts (fail closed).
    pub(super) fn pressure_from_page_cache(&mut self, woke: Instant) -> bool {
        let Some(sentinel) = self.boundary.sentinel() else {
            return false;
        };
        let Ok(r) = self.group.memory_reading() else {
            return false;
        };
        if r.owned() >= sentinel {
            return false;
        }
        info!(
            instance = %self.id,
            "memory pressure, but not restarted: the worker owns {} (anon {}, swap {}) under the boundary's sentinel {}; the rest is page cache ({} file), which a restart would not free",
            human_bytes(r.owned()),
            human_bytes(r.anon),
            human_bytes(r.swap),
            human_bytes(sentinel),
            human_bytes(r.file),
        );
        self.tracker.reported(woke, super::OBSERVE_COOLDOWN);
        true
    }

    /// A memory.events change: if the group's own `high` count moved since the sentinel was
    /// armed, decide (reclaiming page cache first when that is what crossed).
    pub(super) fn on_boundary(&mut self, w: &mut Worker) -> Option<Outcome> {
        self.boundary.sentinel()?;
        if !crossed(&self.group, &mut w.boundary_seen, &self.id) {
            return None;
        }
        let (figures, woke) = decide(&self.group, &mut self.boundary, &self.id)?;
        // First the configured high back: the worker must not be throttled at the sentinel
        // while it drains (the restart lifts it further).
        self.lift_to_configured();
        debug!(instance = %self.id, "{}", describe_boundary(&figures));
        // Observe mode reports once and leaves the configured memory.high for the rest of
        // this worker's life.
        self.offence(w, offence(figures), woke)
    }

    /// A child recycles for the instance's offence: the instance's memory.high lifted while it
    /// drains, as for the instance's own restart. Held at the instance's high, the draining
    /// child and its siblings were all throttled (in bench_runc a gunicorn worker took up to
    /// 9.8 s to exit after its SIGTERM, against 0.5 s for one recycled at its own line). The
    /// instance's memory.max still bounds them, below the container's.
    pub(super) fn lift_for_drain(&mut self) {
        if let Err(e) = self.group.set_high(crate::units::Limit::Max) {
            warn!(instance = %self.id, "cannot lift memory.high while a child drains: {e}");
        }
        self.boundary.disarm();
        self.set_boundary_view(None);
    }

    /// The recycle the instance waited for has ended: the configured memory.high back, and the
    /// sentinel armed again where the boundary applies.
    pub(super) fn rearm_boundary(&mut self, w: &mut Worker) {
        self.lift_to_configured();
        if w.memory_events.is_some() {
            w.boundary_seen = self.arm_boundary();
        }
    }
}
