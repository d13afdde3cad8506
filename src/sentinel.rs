//! The memory.high boundary's sentinel on one group (an instance's, or one child's leaf): arm
//! it, see whether the kernel counted a crossing, and read the group to decide (asking the kernel
//! to reclaim page cache first). The decision itself is `engine::boundary`; this is its I/O.

use std::time::Instant;

use tracing::{debug, warn};

use crate::cgroupfs::{CgroupError, Group};
use crate::engine::boundary::{Boundary, Figures, Reading, Verdict};
use crate::engine::Offence;
use crate::units::{human_bytes, Limit};
use crate::vocabulary::Reason;

/// The offence a boundary crossing makes.
pub fn offence(figures: Figures) -> Offence {
    Offence {
        reason: Reason::Boundary,
        held_for: std::time::Duration::ZERO,
        memory_current: Some(figures.reading.current),
        stall: None,
        boundary: Some(figures),
    }
}

/// Arms `b` for `group` with the configured `high` and writes the sentinel as the kernel's
/// memory.high; returns the group's own `high` count at arming and the sentinel.
pub fn arm(group: &Group, b: &mut Boundary, high: u64) -> Result<(u64, u64), CgroupError> {
    let seen = group.high_events()?;
    let current = group.number(crate::cgroupfs::MEMORY_CURRENT)?;
    let sentinel = b.arm(Instant::now(), current, high);
    group.set_high(Limit::Bytes(sentinel))?;
    Ok((seen, sentinel))
}

/// Whether the group's own `high` count moved past `seen` (None: nothing armed), which is
/// updated. An unreadable count reads as a crossing (fail closed: the reading decides).
pub fn crossed(group: &Group, seen: &mut Option<u64>, who: &str) -> bool {
    let Some(before) = *seen else {
        return false;
    };
    let now = match group.high_events() {
        Ok(n) => n,
        Err(e) => {
            warn!(who, "cannot read the high count: {e}");
            before.saturating_add(1)
        }
    };
    *seen = Some(now.max(before));
    now > before
}

/// Reads the group and decides; when page cache crossed, asks the kernel to reclaim it and
/// decides again. Some: restart (the figures and when they were read).
pub fn decide(group: &Group, b: &mut Boundary, who: &str) -> Option<(Figures, Instant)> {
    let mut reclaimed = false;
    loop {
        let woke = Instant::now();
        let reading = match group.memory_reading() {
            Ok(r) => r,
            Err(e) => {
                // Fail closed: count all of memory.current as the worker's.
                warn!(
                    who,
                    "cannot split memory.current (counting all of it as the worker's): {e}"
                );
                let current = group.number(crate::cgroupfs::MEMORY_CURRENT).ok()?;
                Reading {
                    current,
                    anon: current,
                    ..Default::default()
                }
            }
        };
        match b.on_crossing(woke, reading, reclaimed) {
            Verdict::Stay => return None,
            Verdict::Restart(figures) => return Some((figures, woke)),
            Verdict::Reclaim { bytes } => {
                reclaimed = true;
                if !group.can_reclaim() {
                    // < 5.19: the kernel's own high reclaim at the sentinel drops the cache.
                    debug!(
                        who,
                        "page cache crossed the boundary; no memory.reclaim on this kernel"
                    );
                    return None;
                }
                match group.reclaim(bytes) {
                    Ok(()) => debug!(
                        who,
                        "page cache crossed the boundary: reclaimed {}",
                        human_bytes(bytes)
                    ),
                    Err(e) => debug!(
                        who,
                        "page cache crossed the boundary: reclaim of {} fell short: {e}",
                        human_bytes(bytes)
                    ),
                }
            }
        }
    }
}
