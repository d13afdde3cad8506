//! The instance's offences with `children:` (its boundary, its pressure on the main leaf, its
//! memory trigger), answered child first: the child whose leaf owns the most is recycled through
//! the children's own path, and the whole instance restarts only when that cannot help
//! (`engine::children::Envelope` decides).

use std::time::Instant;

use tracing::{debug, info};

use super::{words, ChildSet};
use crate::engine::children::{EnvelopeCall, Share, Whole};
use crate::engine::Offence;
use crate::units::human_bytes;
use crate::vocabulary::{Mode, Reason};

/// What the instance does after its children were asked.
#[derive(Debug, PartialEq, Eq)]
pub enum AtInstance {
    /// A child is recycling for it (or would, in observe mode; or one already was): the
    /// instance keeps watching, and re-arms at `ChildEvent::Rearm`.
    Handled,
    /// The whole instance restarts (the reason is logged here).
    Restart,
    /// The child's own rules escalated (`scope: instance`, a respawn loop): why, in words.
    Escalate(String),
}

impl ChildSet {
    /// The instance's `offence`: it crossed `line` (bytes) and owns `owned`; `said` is the
    /// offence in the instance's words.
    pub fn at_instance_offence(
        &mut self,
        offence: &Offence,
        line: u64,
        owned: u64,
        said: &str,
        woke: Instant,
    ) -> AtInstance {
        let main = self.main_leaf.memory_reading().map_or(0, |r| r.owned());
        let kids: Vec<Share> = self
            .kids
            .iter()
            .filter(|(_, k)| k.order.is_some())
            .filter_map(|(&pid, k)| {
                let r = k.leaf.memory_reading().ok()?;
                Some(Share {
                    pid,
                    owned: r.owned(),
                })
            })
            .collect();
        let n = kids.len();
        let head = headline(offence.reason);
        let enforce = self.mode == Mode::Enforce;
        let recycling = self.planner.recycling();
        let call = self
            .envelope
            .on_offence(main, &kids, recycling, line, enforce);
        match call {
            EnvelopeCall::Recycle(s) | EnvelopeCall::Report(s) => {
                let Some(kid) = self.kids.get(&s.pid) else {
                    return AtInstance::Restart;
                };
                let what = format!(
                    "{head}: recycling child {} (owns {} of the instance's {}, the biggest of {n} \
                     children; the main leaf owns {}); {said}",
                    s.pid,
                    human_bytes(s.owned),
                    human_bytes(owned),
                    human_bytes(main),
                );
                let d = words::for_instance(&kid.leaf, offence.reason, what);
                let r = self.cfg.restart;
                let decision = self
                    .planner
                    .on_offence(woke, kid.born, false, r.at_once, r.scope, enforce);
                match self.decided(s.pid, offence.clone(), woke, decision, d, true) {
                    Some(why) => AtInstance::Escalate(why),
                    None => AtInstance::Handled,
                }
            }
            EnvelopeCall::Wait => {
                debug!(instance = %self.id, "{head}: {recycling} child(ren) already recycling; looking again when one ends");
                AtInstance::Handled
            }
            EnvelopeCall::Restart(why) => {
                let why = match why {
                    Whole::NoLeaves => "no child has a leaf to recycle".to_string(),
                    Whole::MainBiggest { main, child } => format!(
                        "the main leaf owns {}, not less than the biggest of {n} children ({})",
                        human_bytes(main),
                        human_bytes(child)
                    ),
                    Whole::NotBroughtBack { misses } => format!(
                        "{misses} child recycles in a row at the instance's line ended with it \
                         still over {}",
                        human_bytes(line)
                    ),
                };
                info!(instance = %self.id, reason = offence.reason.as_str(), "{head}: restarting the whole instance: {why} (the instance owns {}); {said}", human_bytes(owned));
                AtInstance::Restart
            }
        }
    }

    /// A child's recycle ended: if the instance waited for it, it re-arms.
    pub(super) fn envelope_recycle_ended(&mut self, pid: u32) {
        // Unreadable: counted as still over (fail closed toward the instance's restart).
        let owned = self.group.memory_reading().map_or(u64::MAX, |r| r.owned());
        if self.envelope.recycle_ended(pid, owned) {
            debug!(instance = %self.id, pid, "a recycle the instance waited for ended: it owns {}", human_bytes(owned));
            self.rearm = true;
        }
    }
}

fn headline(reason: Reason) -> &'static str {
    match reason {
        Reason::Boundary => "instance boundary crossed",
        Reason::Pressure => "instance memory pressure",
        Reason::Memory => "instance memory trigger",
        _ => "instance offence",
    }
}
