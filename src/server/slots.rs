//! Connection slots: who may hold how many of the server's connections and follow streams.
//!
//! One shared pool let any member of the socket's group (or any local user who can connect and
//! then sit on a refused connection) take every slot with `events --follow` streams, and root
//! could then not restart anything. So, decided from the peer's uid as soon as the connection is
//! accepted (SO_PEERCRED, before anything is read):
//! - `admin_reserved` of the `max_connections` slots are only for root and `admin_uids`;
//! - every other uid may hold at most `per_uid` connections, of which at most `follows_per_uid`
//!   may be follow streams.
//!
//! Pure bookkeeping behind a mutex; a slot is given back when its guard drops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The numbers; part of the server's `Limits`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    /// Open connections at once, everyone together.
    pub max_connections: usize,
    /// Of those, how many only root and admins may take.
    pub admin_reserved: usize,
    /// Connections one non-admin uid may hold.
    pub per_uid: usize,
    /// Follow streams one non-admin uid may hold (they count as connections too).
    pub follows_per_uid: usize,
}

/// Why a slot was refused; the text is the `busy` message the peer reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections (limit {max}); try again shortly")]
    Full { max: usize },
    #[error(
        "too many connections (limit {max}; the last {reserved} are kept for root and admins); \
         try again shortly"
    )]
    Reserved { max: usize, reserved: usize },
    #[error(
        "uid {uid} already has {limit} connections open (limit {limit} per uid); close some \
         (e.g. `oomguard events --follow`) and try again"
    )]
    PerUid { uid: u32, limit: usize },
    #[error(
        "uid {uid} already has {limit} `events --follow` streams open (limit {limit} per uid); \
         close one and try again"
    )]
    Follows { uid: u32, limit: usize },
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    /// Non-admin uids only; an entry is removed when it drops to zero.
    per_uid: HashMap<u32, usize>,
    follows: HashMap<u32, usize>,
}

#[derive(Debug)]
pub struct Slots {
    limits: SlotLimits,
    state: Mutex<State>,
}

/// One connection's slot, given back on drop.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Slots>,
    uid: u32,
    admin: bool,
}

/// One follow stream's slot (on top of its connection's), given back on drop.
#[derive(Debug)]
pub struct FollowSlot {
    slots: Arc<Slots>,
    uid: u32,
    admin: bool,
}

impl Slots {
    pub fn new(limits: SlotLimits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    /// The counts stay consistent even if a holder panicked: every change is one statement.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection slot for `uid`; `admin` (root or an admin uid) may use the reserved ones and
    /// has no per-uid cap.
    pub fn connect(self: &Arc<Self>, uid: u32, admin: bool) -> Result<Slot, Refusal> {
        let l = self.limits;
        let mut s = self.state();
        if s.total >= l.max_connections {
            return Err(Refusal::Full {
                max: l.max_connections,
            });
        }
        if !admin {
            if s.total >= l.max_connections.saturating_sub(l.admin_reserved) {
                return Err(Refusal::Reserved {
                    max: l.max_connections,
                    reserved: l.admin_reserved,
                });
            }
            let held = s.per_uid.entry(uid).or_insert(0);
            if *held >= l.per_uid {
                return Err(Refusal::PerUid {
                    uid,
                    limit: l.per_uid,
                });
            }
            *held += 1;
        }
        s.total += 1;
        Ok(Slot {
            slots: Arc::clone(self),
            uid,
            admin,
        })
    }
}

impl Slot {
    /// A follow stream on this connection; capped per uid unless the holder is an admin.
    pub fn follow(&self) -> Result<FollowSlot, Refusal> {
        let (uid, admin) = (self.uid, self.admin);
        if !admin {
            let limit = self.slots.limits.follows_per_uid;
            let mut s = self.slots.state();
            let held = s.follows.entry(uid).or_insert(0);
            if *held >= limit {
                return Err(Refusal::Follows { uid, limit });
            }
            *held += 1;
        }
        Ok(FollowSlot {
            slots: Arc::clone(&self.slots),
            uid,
            admin,
        })
    }
}

fn release(map: &mut HashMap<u32, usize>, uid: u32) {
    if let Some(n) = map.get_mut(&uid) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&uid);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.state();
        s.total = s.total.saturating_sub(1);
        if !self.admin {
            release(&mut s.per_uid, self.uid);
        }
    }
}

impl Drop for FollowSlot {
    fn drop(&mut self) {
        if !self.admin {
            release(&mut self.slots.state().follows, self.uid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SlotLimits = SlotLimits {
        max_connections: 6,
        admin_reserved: 2,
        per_uid: 3,
        follows_per_uid: 2,
    };

    #[test]
    fn readers_never_take_the_reserved_slots() {
        let slots = Slots::new(LIMITS);
        let mut held: Vec<Slot> = (0..3).map(|_| slots.connect(100, false).unwrap()).collect();
        held.push(slots.connect(101, false).unwrap());
        assert_eq!(
            slots.connect(102, false).unwrap_err(),
            Refusal::Reserved {
                max: 6,
                reserved: 2
            }
        );
        held.push(slots.connect(0, true).unwrap());
        held.push(slots.connect(0, true).unwrap());
        assert_eq!(
            slots.connect(0, true).unwrap_err(),
            Refusal::Full { max: 6 }
        );
        held.truncate(3);
        held.push(slots.connect(102, false).unwrap());
    }

    #[test]
    fn one_uid_is_capped_and_gets_its_slots_back() {
        let slots = Slots::new(LIMITS);
        let held: Vec<Slot> = (0..3).map(|_| slots.connect(100, false).unwrap()).collect();
        let err = slots.connect(100, false).unwrap_err();
        assert_eq!(err, Refusal::PerUid { uid: 100, limit: 3 });
        assert!(err.to_string().contains("limit 3 per uid"), "{err}");
        drop(held);
        assert!(slots.state().per_uid.is_empty());
        assert_eq!(slots.state().total, 0);
        slots.connect(100, false).unwrap();
    }

    #[test]
    fn follow_streams_are_capped_per_uid_but_not_for_admins() {
        let slots = Slots::new(SlotLimits {
            per_uid: 10,
            max_connections: 20,
            ..LIMITS
        });
        let conns: Vec<Slot> = (0..3).map(|_| slots.connect(100, false).unwrap()).collect();
        let f1 = conns[0].follow().unwrap();
        let _f2 = conns[1].follow().unwrap();
        assert_eq!(
            conns[2].follow().unwrap_err(),
            Refusal::Follows { uid: 100, limit: 2 }
        );
        drop(f1);
        conns[2].follow().unwrap();
        let root = slots.connect(0, true).unwrap();
        let _many: Vec<FollowSlot> = (0..5).map(|_| root.follow().unwrap()).collect();
    }
}
