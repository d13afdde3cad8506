//! What the daemon spends on one instance's children is bounded: at most `children.max` get
//! leaves (each holds a pidfd, a PSI trigger, a memory.events watch and a task, and its
//! placement costs the runtime thread a mkdir, limits and a move), and a child's watches are
//! armed only while the descriptor reserve stays free (`crate::fdbudget`). A child that gets no
//! leaf stays in the main leaf under the instance's limits; one whose watches could not be
//! armed keeps its leaf's limits. Either is said in status and in an `unarmed` event, never
//! left silent (fail closed).

use std::collections::BTreeMap;

/// Why a child of the main process has no leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unplaced {
    /// `children.max` children already have leaves.
    Cap,
    /// The descriptor reserve would not stay free.
    Fds,
}

/// The children that are not fully guarded, and why.
#[derive(Debug, Default)]
pub struct Shortfall {
    /// Children left in the main leaf.
    unplaced: BTreeMap<u32, Unplaced>,
    /// Children in their leaves whose trigger or memory.events watch is not armed: why.
    unwatched: BTreeMap<u32, String>,
    /// The last descriptor shortage that kept a child out of a leaf.
    fd_error: Option<String>,
}

impl Shortfall {
    /// `pid` stays in the main leaf; true the first time (a change worth publishing).
    pub fn unplaced(&mut self, pid: u32, why: Unplaced, error: Option<String>) -> bool {
        if let Some(e) = error {
            self.fd_error = Some(e);
        }
        self.unplaced.insert(pid, why) != Some(why)
    }

    /// `pid` has its leaf now, or is no longer a child in main: true if it was unplaced.
    pub fn placed(&mut self, pid: u32) -> bool {
        self.unplaced.remove(&pid).is_some()
    }

    /// After a rescan: only the children still in main stay listed. True if any left.
    pub fn still_in_main(&mut self, in_main: impl Fn(u32) -> bool) -> bool {
        let before = self.unplaced.len();
        self.unplaced.retain(|pid, _| in_main(*pid));
        before != self.unplaced.len()
    }

    /// Whether some child waits for room under `children.max` (a leaf freed: rescan now).
    pub fn waiting_for_room(&self) -> bool {
        self.unplaced.values().any(|w| *w == Unplaced::Cap)
    }

    pub fn unwatched(&mut self, pid: u32, error: String) {
        self.unwatched.entry(pid).or_insert(error);
    }

    /// `pid` is gone: true if it was listed.
    pub fn gone(&mut self, pid: u32) -> bool {
        let a = self.unwatched.remove(&pid).is_some();
        self.placed(pid) || a
    }

    /// The status line while children are left in main for `children.max`; stable while it
    /// holds, so the `unarmed` event is said once.
    pub fn cap_note(&self, max: u32) -> Option<String> {
        self.waiting_for_room().then(|| {
            format!(
                "children.max ({max}) reached: further children of the main process stay in its \
                 leaf, under the instance's limits only, until a leaf is free; raise children.max"
            )
        })
    }

    /// The status line while some child runs without a leaf for lack of descriptors, or
    /// without its watches: the first such child's reason.
    pub fn unarmed_note(&self) -> Option<String> {
        if self.unplaced.values().any(|w| *w == Unplaced::Fds) {
            let e = self.fd_error.as_deref().unwrap_or("file descriptors short");
            return Some(format!(
                "children left in the main leaf without a leaf of their own: {e}"
            ));
        }
        self.unwatched.iter().next().map(|(pid, e)| {
            format!("children in their leaves without their trigger or memory.events watch (child {pid}: {e}); their leaves' memory.max still holds")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_said_once_while_it_holds() {
        let mut s = Shortfall::default();
        assert_eq!(s.cap_note(3), None);
        assert!(s.unplaced(104, Unplaced::Cap, None));
        let note = s.cap_note(3).expect("said");
        assert!(note.contains("children.max (3) reached"), "{note}");
        // The same child seen again by a rescan: no change, the same words.
        assert!(!s.unplaced(104, Unplaced::Cap, None));
        assert!(s.unplaced(105, Unplaced::Cap, None));
        assert_eq!(s.cap_note(3).as_deref(), Some(note.as_str()));
        assert!(s.waiting_for_room());
        // One got a leaf, the other ended: nothing left to say.
        assert!(s.placed(104));
        assert!(s.still_in_main(|pid| pid != 105));
        assert_eq!(s.cap_note(3), None);
        assert!(!s.still_in_main(|_| true));
    }

    #[test]
    fn a_child_without_descriptors_or_watches_is_said() {
        let mut s = Shortfall::default();
        assert_eq!(s.unarmed_note(), None);
        s.unwatched(201, "only 30 file descriptors left".into());
        s.unwatched(202, "other".into());
        let note = s.unarmed_note().expect("said");
        assert!(note.contains("child 201: only 30"), "{note}");
        assert!(s.gone(201));
        assert!(s.unarmed_note().expect("202").contains("child 202: other"));
        assert!(s.unplaced(203, Unplaced::Fds, Some("raise LimitNOFILE=".into())));
        let note = s.unarmed_note().expect("said");
        assert!(
            note.contains("main leaf") && note.contains("raise LimitNOFILE="),
            "{note}"
        );
        // Not a cap: no child waits for room under children.max.
        assert!(!s.waiting_for_room());
        assert!(s.gone(203) && s.gone(202));
        assert_eq!(s.unarmed_note(), None);
    }
}
