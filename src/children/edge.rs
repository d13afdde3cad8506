//! The memory.high boundary on each child's leaf (`crate::engine::boundary`), when the
//! children have memory.high and no memory trigger: the sentinel written at placement, the
//! decision at each change of the leaf's memory.events. A crossing recycles the child alone.

use tracing::{info, warn};

use crate::units::human_bytes;

use super::ChildSet;
use crate::cgroupfs::Group;
use crate::engine::boundary::Boundary;
use crate::sentinel as edge;

impl ChildSet {
    /// The sentinel on a new child's leaf when the children have memory.high and no memory
    /// trigger; returns the leaf's `high` count at arming. A failure leaves the configured
    /// memory.high (and the PSI trigger, if any) guarding the child.
    pub(super) fn arm_boundary(&self, leaf: &Group, b: &mut Boundary, who: &str) -> Option<u64> {
        if self.cfg.triggers.memory.is_some() || !self.cfg.memory.boundary {
            return None;
        }
        let high = self.cfg.memory.high.bytes()?;
        match edge::arm(leaf, b, high) {
            Ok((seen, _)) => Some(seen),
            Err(e) => {
                warn!(instance = %self.id, "{who}: memory.high boundary not armed: {e}");
                if let Err(e) = leaf.set_high(self.cfg.memory.high) {
                    warn!(instance = %self.id, "{who}: cannot put memory.high back: {e}");
                }
                None
            }
        }
    }

    /// As for an instance (`Instance::pressure_from_page_cache`): a child's PSI offence while
    /// what it owns is under its sentinel is page cache, and does not recycle it.
    pub(super) fn pressure_from_page_cache(&mut self, pid: u32, woke: std::time::Instant) -> bool {
        let Some(kid) = self.kids.get_mut(&pid) else {
            return false;
        };
        let Some(sentinel) = kid.boundary_seen.and(kid.boundary.sentinel()) else {
            return false;
        };
        let Ok(r) = kid.leaf.memory_reading() else {
            return false;
        };
        if r.owned() >= sentinel {
            return false;
        }
        info!(instance = %self.id, pid, "child memory pressure, but not recycled: it owns {} under the boundary's sentinel {}; the rest is page cache ({} file)",
            human_bytes(r.owned()), human_bytes(sentinel), human_bytes(r.file));
        kid.tracker.reported(woke, super::OBSERVE_COOLDOWN);
        true
    }

    /// The leaf's memory.events changed: decide whether its owned memory reached the sentinel;
    /// Some: the instance must be restarted instead (see [`ChildSet::offence`]).
    pub(super) fn on_memory_events(&mut self, pid: u32) -> Option<String> {
        let id = self.id.clone();
        let kid = self.kids.get_mut(&pid)?;
        // Already recycling: its memory.high is lifted.
        kid.order.as_ref()?;
        kid.boundary.sentinel()?;
        let who = format!("{id} child {pid}");
        if !edge::crossed(&kid.leaf, &mut kid.boundary_seen, &who) {
            return None;
        }
        let (figures, woke) = edge::decide(&kid.leaf, &mut kid.boundary, &who)?;
        // The configured high back before the recycle lifts it: never throttled at
        // the sentinel. Observe mode leaves it there for the rest of the child's life.
        if let Err(e) = kid.leaf.set_high(self.cfg.memory.high) {
            warn!(instance = %id, pid, "cannot put the leaf's memory.high back: {e}");
        }
        kid.boundary_seen = None;
        self.offence(pid, edge::offence(figures), woke)
    }
}
