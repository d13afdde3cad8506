//! Writable mode: make the container's namespace root usable as a host's delegated subtree.
//! cgroup v2's no-internal-process rule forbids enabling controllers in a group that holds
//! processes, so every process of the root (the daemon, and any other process of the container)
//! moves into the leaf `oomguard` first; then `+memory +pids`, then the workers' envelope group
//! whose memory.max keeps the container's own OOM (and its memory.oom.group kill) from firing.

use std::path::Path;

use crate::cgroupfs::{CgroupError, Group, CGROUP_PROCS, MEMORY_MAX};
use crate::layout::CONTROLLERS;
use crate::units::Limit;

/// The daemon's leaf and the workers' envelope, under the namespace root.
pub const DAEMON_LEAF: &str = "oomguard";
pub const ENVELOPE: &str = "workers";
/// Processes may fork while being moved: a few passes empty the root.
const MOVE_PASSES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum WritableError {
    #[error("moving the container's processes out of {root} into {leaf}: {source}")]
    Move {
        root: String,
        leaf: String,
        source: Box<CgroupError>,
    },
    #[error("{root} still holds processes {pids:?} after {MOVE_PASSES} passes: cgroup v2 allows no controllers in a group with processes")]
    StillBusy { root: String, pids: Vec<u32> },
    #[error("{path}/memory.max reads {read} after writing {wanted}")]
    NotApplied {
        path: String,
        wanted: u64,
        read: Limit,
    },
    #[error(transparent)]
    Cgroup(Box<CgroupError>),
}

impl From<CgroupError> for WritableError {
    fn from(e: CgroupError) -> Self {
        WritableError::Cgroup(Box::new(e))
    }
}

/// Moves every process of `root` into `root/oomguard`, enables the controllers in `root`, and
/// creates `root/workers` with memory.max = `envelope` (read back). Returns the envelope group:
/// the cgroup root the fleet then runs under, as on a host.
pub fn prepare(root: &Path, envelope: Option<u64>) -> Result<Group, WritableError> {
    let top = Group::new(root);
    let leaf = top.child(DAEMON_LEAF);
    leaf.create()?;
    let shown = |g: &Group| g.path().display().to_string();
    let mut left = top.procs()?;
    for _ in 0..MOVE_PASSES {
        if left.is_empty() {
            break;
        }
        for pid in &left {
            match leaf.write(CGROUP_PROCS, &pid.to_string()) {
                Ok(()) => {}
                // Exited meanwhile (ESRCH): nothing to move.
                Err(CgroupError::Write { ref source, .. })
                    if source.raw_os_error() == Some(libc::ESRCH) => {}
                Err(source) => {
                    return Err(WritableError::Move {
                        root: shown(&top),
                        leaf: shown(&leaf),
                        source: Box::new(source),
                    })
                }
            }
        }
        left = top.procs()?;
    }
    if !left.is_empty() {
        return Err(WritableError::StillBusy {
            root: shown(&top),
            pids: left,
        });
    }
    top.enable_controllers(CONTROLLERS)?;
    let workers = top.child(ENVELOPE);
    workers.create_with_controllers(CONTROLLERS)?;
    if let Some(bytes) = envelope {
        workers.write(MEMORY_MAX, &bytes.to_string())?;
        // A limit that silently failed to apply is worse than none: read it back.
        let read = workers.limit(MEMORY_MAX)?;
        if read != Limit::Bytes(bytes) {
            return Err(WritableError::NotApplied {
                path: shown(&workers),
                wanted: bytes,
                read,
            });
        }
    }
    Ok(workers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::SUBTREE_CONTROL;

    fn fake_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path().join(ENVELOPE);
        std::fs::create_dir(&w).unwrap();
        for d in [dir.path(), w.as_path()] {
            std::fs::write(d.join(SUBTREE_CONTROL), "").unwrap();
        }
        std::fs::write(w.join(MEMORY_MAX), "max\n").unwrap();
        dir
    }

    #[test]
    fn an_empty_root_gets_controllers_and_the_envelope_limit() {
        let dir = fake_root();
        std::fs::write(dir.path().join(CGROUP_PROCS), "").unwrap();
        let workers = prepare(dir.path(), Some(168 << 20)).unwrap();
        assert_eq!(workers.limit(MEMORY_MAX).unwrap(), Limit::Bytes(168 << 20));
        let enabled = std::fs::read_to_string(dir.path().join(SUBTREE_CONTROL)).unwrap();
        assert!(enabled.contains("+memory"), "{enabled}");
        assert!(dir.path().join(DAEMON_LEAF).is_dir());
    }

    #[test]
    fn a_root_that_keeps_its_processes_is_refused_before_any_controller_is_enabled() {
        let dir = fake_root();
        // A plain file keeps its pids whatever is written to the leaf: as if they never moved.
        std::fs::write(dir.path().join(CGROUP_PROCS), "1\n42\n").unwrap();
        let err = prepare(dir.path(), None).unwrap_err();
        assert!(
            matches!(err, WritableError::StillBusy { ref pids, .. } if pids == &[1, 42]),
            "{err}"
        );
        let enabled = std::fs::read_to_string(dir.path().join(SUBTREE_CONTROL)).unwrap();
        assert_eq!(enabled, "", "nothing enabled half-way");
    }
}
