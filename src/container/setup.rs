//! What `oomguard run` does about a container at start: detect it (refusing what cannot be
//! guarded, with the runtime setting to change), then, once the policies are loaded, check that
//! they fit the workers' envelope and prepare the namespace root. On a host nothing happens.

use std::path::{Path, PathBuf};

use super::detect::{can_create_leaf, detect, Container, ContainerError, Probe};
use super::fit;
use super::writable::{prepare, WritableError, DAEMON_LEAF, ENVELOPE};
use crate::cgroupfs::Group;
use crate::policy::Policy;
use crate::protocol::ContainerInfo;
use crate::units::{human_bytes, Limit};

/// The runtime settings that make a container's cgroup mount writable.
pub const WRITABLE_SETTINGS: &str = "Docker: --security-opt writable-cgroups (older Docker: \
     --privileged); containerd 2.1: cgroup_writable = true in the runtime's options; CRI-O: the \
     pod annotation io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw: \"true\"; GKE: writable cgroups";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Detect(#[from] ContainerError),
    #[error(
        "--cgroup-root {0} is not used inside a container: the workers go under the container's \
         own {ENVELOPE} group, whose memory.max keeps them under the container's limit; drop the flag"
    )]
    ExplicitRoot(PathBuf),
    #[error("refusing to start inside the container: {0}")]
    Fit(String),
    #[error(
        "preparing the container's cgroup {root} (every process into {DAEMON_LEAF}, then +memory \
         +pids, then {ENVELOPE}): {source}"
    )]
    Prepare {
        root: PathBuf,
        source: Box<WritableError>,
    },
}

/// Ok(None) on a host; a container (writable or read-only) otherwise. Refuses `--cgroup-root`
/// inside one, before anything is touched.
pub fn detect_here(
    mount: &Path,
    explicit_root: Option<&Path>,
) -> Result<Option<Container>, SetupError> {
    let Some(c) = detect(mount, &Probe::read(mount), can_create_leaf)? else {
        return Ok(None);
    };
    if let Some(root) = explicit_root {
        return Err(SetupError::ExplicitRoot(root.into()));
    }
    Ok(Some(c))
}

/// Checks the policies against the envelope, then prepares the root: the returned group is the
/// fleet's cgroup root. Nothing is moved or enabled when the policies do not fit.
pub fn enter(c: &Container, policies: &[Policy]) -> Result<(Group, ContainerInfo), SetupError> {
    let reserve = fit::DEFAULT_RESERVE;
    let envelope = fit::envelope(c.memory_max, reserve).map_err(SetupError::Fit)?;
    fit::check(policies, envelope, c.memory_max).map_err(SetupError::Fit)?;
    let workers = prepare(&c.root, envelope).map_err(|e| SetupError::Prepare {
        root: c.root.clone(),
        source: Box::new(e),
    })?;
    let info = ContainerInfo {
        mode: "writable".into(),
        memory_max: c.memory_max.bytes(),
        envelope,
        reserve,
        recycle_at: None,
        why: format!(
            "{} is a cgroup namespace root (the container's group) mounted read-write: the daemon \
             runs in {DAEMON_LEAF}, the workers under {}",
            c.root.display(),
            workers.path().display()
        ),
    };
    Ok((workers, info))
}

/// A read-only mount: no groups, signals only (docs/containers.md). The line the biggest
/// offender is recycled at is the limit minus the writable mode's reserve, so both modes stop
/// the workers at the same place.
pub fn read_only(c: &Container) -> ContainerInfo {
    let reserve = fit::DEFAULT_RESERVE;
    let max = c.memory_max.bytes();
    ContainerInfo {
        mode: "read-only".into(),
        memory_max: max,
        envelope: None,
        reserve,
        recycle_at: super::signals::threshold(max, reserve),
        why: format!(
            "{} is a cgroup namespace root (the container's group) mounted read-only: no group \
             can be made, so the workers run in the container's group without limits of their \
             own and the biggest is recycled by signal before the container's memory.max. For \
             per-worker and per-child limits make the mount writable: {WRITABLE_SETTINGS}",
            c.root.display()
        ),
    }
}

/// One line for the log and the status header.
pub fn summary(info: &ContainerInfo) -> String {
    let max = info.memory_max.map_or("max".into(), human_bytes);
    if info.envelope.is_none() && info.mode == "read-only" {
        let at = info
            .recycle_at
            .map_or("never (no limit)".into(), human_bytes);
        return format!(
            "inside a container (read-only cgroups, signals only): container memory.max {max}, \
             the biggest worker or child recycled at {at} (reserve {})",
            human_bytes(info.reserve)
        );
    }
    let envelope = info.envelope.map_or("max".into(), human_bytes);
    format!(
        "inside a container ({} cgroups): container memory.max {max}, workers' envelope {envelope} \
         (reserve {} for oomguard)",
        info.mode,
        human_bytes(info.reserve)
    )
}

/// The fit check a reload repeats against the envelope fixed at start.
pub fn refit(info: &ContainerInfo, policies: &[Policy]) -> Result<(), String> {
    let max = info.memory_max.map_or(Limit::Max, Limit::Bytes);
    fit::check(policies, info.envelope, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{accepts, BASE};

    #[test]
    fn a_policy_above_the_envelope_is_refused_before_the_root_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let c = Container {
            root: dir.path().into(),
            writable: true,
            memory_max: Limit::Bytes(192 << 20),
        };
        // BASE: one instance of memory.max 2G, far above 168M.
        let err = enter(&c, &[accepts(BASE)]).unwrap_err();
        assert!(matches!(err, SetupError::Fit(_)), "{err}");
        assert!(err.to_string().contains("168M"), "{err}");
        assert!(!dir.path().join(DAEMON_LEAF).exists(), "nothing created");
    }

    #[test]
    fn the_summary_names_the_limit_the_envelope_and_the_reserve() {
        let info = ContainerInfo {
            mode: "writable".into(),
            memory_max: Some(192 << 20),
            envelope: Some(168 << 20),
            reserve: 24 << 20,
            recycle_at: None,
            why: String::new(),
        };
        let s = summary(&info);
        assert!(
            s.contains("192M") && s.contains("168M") && s.contains("24M"),
            "{s}"
        );
        assert!(refit(&info, &[accepts(BASE)]).is_err());
    }

    #[test]
    fn a_read_only_container_recycles_at_the_limit_minus_the_reserve_and_says_how_to_get_limits() {
        let c = Container {
            root: "/sys/fs/cgroup".into(),
            writable: false,
            memory_max: Limit::Bytes(192 << 20),
        };
        let info = read_only(&c);
        assert_eq!(info.recycle_at, Some(168 << 20));
        assert!(info.why.contains(WRITABLE_SETTINGS), "{}", info.why);
        let s = summary(&info);
        assert!(
            s.contains("read-only") && s.contains("168M") && s.contains("192M"),
            "{s}"
        );
    }
}
