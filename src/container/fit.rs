//! The workers' envelope inside a container: the container's memory.max minus a reserve for the
//! daemon, so the container's own OOM (and the kubelet's memory.oom.group kill of everything)
//! never fires while oomguard runs. A policy that could use more than that is refused.

use crate::policy::Policy;
use crate::units::{human_bytes, Limit};

/// The daemon's own share of the container's limit. Measured RSS of the daemon is about 6-7 MB
/// (issue 20's first attempt); 24M leaves room for the page cache of its state files, a burst of
/// socket clients and the kernel's per-cgroup overhead.
pub const DEFAULT_RESERVE: u64 = 24 << 20;

/// envelope = container memory.max - reserve; None when the container has no limit.
pub fn envelope(container_max: Limit, reserve: u64) -> Result<Option<u64>, String> {
    let Some(max) = container_max.bytes() else {
        return Ok(None);
    };
    if max <= reserve * 2 {
        return Err(format!(
            "the container's memory.max {} leaves no room for workers after oomguard's reserve of \
             {}: give the container more memory (resources.limits.memory, docker --memory)",
            human_bytes(max),
            human_bytes(reserve)
        ));
    }
    Ok(Some(max - reserve))
}

/// The most a policy's workers may hold at once: run.instances × memory.max, one more
/// generation while `restart.overlap` runs; None when unbounded ("max").
pub fn policy_peak(p: &Policy) -> Option<u64> {
    if p.restart.overlap.is_some() {
        crate::policy::overlap_peak(p.run.instances, p.memory.max)
    } else {
        p.memory
            .max
            .bytes()?
            .checked_mul(u64::from(p.run.instances))
    }
}

/// Err, with the numbers and what to change, when the policies together exceed the envelope.
/// An unbounded memory.max is refused too: it would leave the container's limit as the only one.
pub fn check(
    policies: &[Policy],
    envelope: Option<u64>,
    container_max: Limit,
) -> Result<(), String> {
    let Some(envelope) = envelope else {
        return Ok(());
    };
    let mut total: u64 = 0;
    for p in policies {
        let Some(peak) = policy_peak(p) else {
            return Err(format!(
                "policy {}: memory.max is unbounded inside a container whose memory.max is {}: \
                 set memory.max (at most the envelope {})",
                p.name,
                container_max,
                human_bytes(envelope)
            ));
        };
        total = total.saturating_add(peak);
    }
    if total > envelope {
        return Err(format!(
            "the policies may use up to {} (run.instances × memory.max, ×2 for restart.overlap), \
             above the workers' envelope {} (the container's memory.max {} minus oomguard's \
             reserve {}): lower memory.max or run.instances, or raise the container's limit",
            human_bytes(total),
            human_bytes(envelope),
            container_max,
            human_bytes(container_max.bytes().unwrap_or(0).saturating_sub(envelope))
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{accepts, BASE};

    #[test]
    fn the_envelope_is_the_limit_minus_the_reserve() {
        assert_eq!(envelope(Limit::Max, DEFAULT_RESERVE), Ok(None));
        assert_eq!(
            envelope(Limit::Bytes(192 << 20), DEFAULT_RESERVE),
            Ok(Some(168 << 20))
        );
        let err = envelope(Limit::Bytes(40 << 20), DEFAULT_RESERVE).unwrap_err();
        assert!(err.contains("give the container more memory"), "{err}");
    }

    #[test]
    fn policies_above_the_envelope_are_refused_with_the_numbers() {
        // BASE: one instance of memory.max 2G.
        let p = accepts(BASE);
        let limit = Limit::Bytes(3 << 30);
        let env = envelope(limit, DEFAULT_RESERVE).unwrap();
        assert_eq!(check(std::slice::from_ref(&p), env, limit), Ok(()));
        let overlap = accepts(&format!("{BASE}restart:\n  overlap: true\n"));
        let err = check(&[overlap], env, limit).unwrap_err();
        assert!(
            err.contains("up to 4G") && err.contains("envelope"),
            "{err}"
        );
        let err = check(&[p.clone(), p], env, limit).unwrap_err();
        assert!(err.contains("up to 4G"), "{err}");
    }
}
