//! `restart.overlap` against the limits above the daemon's root: while one instance of a policy
//! overlaps, the policy may need `(run.instances + 1) × memory.max`; a memory.max on the root or
//! an ancestor (a systemd slice's MemoryMax=) below that would OOM-kill in the middle of a
//! restart, so the policy is refused at load with what to change.

use crate::cgroupfs::{CgroupError, Group, MEMORY_MAX};
use crate::policy::Policy;
use crate::units::Limit;

/// Err, saying what to change, when an ancestor's memory.max cannot hold the policy's peak
/// during an overlap. A memory.max that cannot be read (other than absent, as at the top of
/// the hierarchy) refuses too: an unknown limit is not a limit that fits.
pub fn check(policy: &Policy, root: &Group) -> Result<(), String> {
    if policy.restart.overlap.is_none() {
        return Ok(());
    }
    let Some(peak) = crate::policy::overlap_peak(policy.run.instances, policy.memory.max) else {
        return Err("restart.overlap without a sized memory.max (refused at load)".into());
    };
    let mut at = Some(root.clone());
    while let Some(g) = at {
        match g.limit(MEMORY_MAX) {
            Ok(Limit::Bytes(limit)) if limit < peak => {
                return Err(format!(
                    "restart.overlap: while an instance overlaps, policy {} may use up to {} \
                     ((run.instances {} + 1) × memory.max {}), but {} has memory.max {}: raise \
                     that limit, lower memory.max or run.instances, or remove restart.overlap",
                    policy.name,
                    crate::units::human_bytes(peak),
                    policy.run.instances,
                    policy.memory.max,
                    g.path().display(),
                    crate::units::human_bytes(limit)
                ))
            }
            Ok(_) => {}
            Err(CgroupError::Gone { .. }) => {}
            Err(e) => {
                return Err(format!(
                    "restart.overlap: cannot check the limits above: {e}"
                ))
            }
        }
        at = g.parent().filter(|p| p.path() != std::path::Path::new("/"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{accepts, BASE};

    #[test]
    fn an_ancestor_too_small_for_two_generations_refuses_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let slice = Group::new(dir.path().join("slice"));
        let root = slice.child("oomguard");
        std::fs::create_dir_all(root.path()).unwrap();
        std::fs::write(root.file(MEMORY_MAX), "max\n").unwrap();
        // BASE: one instance of memory.max 2G: 4G at the peak.
        std::fs::write(slice.file(MEMORY_MAX), format!("{}\n", 3u64 << 30)).unwrap();
        let plain = accepts(BASE);
        assert_eq!(check(&plain, &root), Ok(()), "no overlap, no check");
        let p = accepts(&format!("{BASE}restart:\n  overlap: true\n"));
        let err = check(&p, &root).unwrap_err();
        assert!(
            err.contains("memory.max 3G") && err.contains("up to 4G"),
            "{err}"
        );
        std::fs::write(slice.file(MEMORY_MAX), format!("{}\n", 4u64 << 30)).unwrap();
        assert_eq!(check(&p, &root), Ok(()));
        std::fs::write(slice.file(MEMORY_MAX), "garbage\n").unwrap();
        assert!(
            check(&p, &root).is_err(),
            "an unreadable limit is not one that fits"
        );
    }
}
