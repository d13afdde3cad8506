//! The instance's side of `children:`: adopting a worker with or without the leaves, and
//! publishing its children for status.

use std::time::Instant;

use tracing::{info, warn};

use super::{Instance, Worker};
use crate::children::{AtInstance, ChildEvent, ChildSet};
use crate::describe::describe;
use crate::engine::Offence;
use crate::shutdown::Proc;
use crate::vocabulary::{Mode, Reason};

impl Instance {
    /// Takes over a worker a previous daemon started: same group, same pid, triggers re-armed.
    /// With the `children:` layout (a `main` leaf) the main process is looked for there and its
    /// children's leaves are taken over; a layout that does not match the policy any more (a
    /// reload added or removed `children:`) is adopted as it is and changes at the next start.
    pub(super) fn adopt(&mut self, pid: u32) -> Result<Worker, String> {
        // With the overlap layout the worker is in one of the generation leaves (its `main`
        // leaf with `children:`).
        self.group =
            crate::placement::generation_of(&self.home, pid).unwrap_or_else(|| self.home.clone());
        let layout = crate::placement::has_children(&self.group);
        let home = crate::placement::main_home(&self.group);
        let main = Proc::adopt(pid, &home)?;
        self.apply_limits()?;
        let events_at_start = self.group.memory_events().unwrap_or_default();
        info!(instance = %self.id, pid, "adopted the running worker");
        self.observed.adopted(&self.id, pid, &self.group);
        let children = match (layout, self.policy.children) {
            (true, Some(c)) => Some(c),
            (false, Some(_)) => {
                warn!(instance = %self.id, "the adopted worker was started without children: its children get leaves from its next start");
                None
            }
            (true, None) => {
                warn!(instance = %self.id, "the adopted worker was started with children: its children keep their leaves, unwatched, until its next start");
                None
            }
            (false, None) => None,
        };
        Ok(self.watching(main, events_at_start, children))
    }

    /// The instance's `offence` with `children:`: its children are asked first (the biggest is
    /// recycled, `crate::children::envelope`). None: no children, or an offence they cannot
    /// answer. The line each offence crossed: the boundary's sentinel, the memory trigger's
    /// `above`, and for pressure the configured memory.high (none: the instance restarts).
    pub(super) fn at_children(
        &mut self,
        w: &mut Worker,
        offence: &Offence,
        woke: Instant,
    ) -> Option<AtInstance> {
        let set = w.children.as_mut()?;
        let (line, owned) = match offence.reason {
            Reason::Boundary => {
                let f = offence.boundary?;
                (f.sentinel, f.reading.owned())
            }
            Reason::Memory => (
                self.policy.triggers.memory?.above,
                offence.memory_current.unwrap_or(0),
            ),
            Reason::Pressure => (
                self.policy.memory.high.bytes()?,
                self.group.memory_reading().map_or(0, |r| r.owned()),
            ),
            _ => return None,
        };
        let said = describe(offence, &self.policy.triggers);
        let answer = set.at_instance_offence(offence, line, owned, &said, woke);
        if answer == AtInstance::Handled {
            // The trigger counts anew: a sustained offence fires again only after its `for`.
            match self.policy.mode {
                Mode::Enforce => {
                    self.tracker.started();
                    self.lift_for_drain();
                }
                _ => self.tracker.reported(woke, super::OBSERVE_COOLDOWN),
            }
        }
        Some(answer)
    }

    /// The children and the recycle count into the view.
    pub(super) fn publish_children(&mut self, w: &mut Worker) {
        let Some(set) = w.children.as_ref() else {
            return;
        };
        // Named from the instance's group, as status reads them (`gen-b/child-42` with overlap).
        self.view.children = set.view();
        for c in &mut self.view.children {
            c.leaf = crate::placement::leaf_name(&self.home, &self.group, &c.leaf);
        }
        let (cap, unarmed) = (set.cap_note(), set.unarmed_note());
        match cap {
            Some(e) => self.unarmed(super::UNARMED_CHILD_LEAVES, Reason::Child, e),
            None => self.armed(super::UNARMED_CHILD_LEAVES),
        }
        match unarmed {
            Some(e) => self.unarmed(super::UNARMED_CHILD_WATCHES, Reason::Child, e),
            None => self.armed(super::UNARMED_CHILD_WATCHES),
        }
        self.view.child_recycles += set.recycled.saturating_sub(w.recycles_seen);
        w.recycles_seen = set.recycled;
        self.view_tx.send_replace(self.view.clone());
    }
}

/// While a replacement generation waits beside the old one (`restart.ready`, the old one's
/// drain): its children are placed in their leaves as they are forked, not only once it takes
/// over. What they would ask of the instance meanwhile (an escalation) waits for the watch,
/// which publishes the set first thing.
pub(super) async fn tend_children(set: &mut Option<ChildSet>) {
    loop {
        if let ChildEvent::Escalate(why) = next_child_event(set).await {
            warn!("a child of the replacement asked for an escalation during the overlap (not acted on before it takes over): {why}");
        }
    }
}

pub(super) async fn next_child_event(set: &mut Option<ChildSet>) -> ChildEvent {
    match set {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}
