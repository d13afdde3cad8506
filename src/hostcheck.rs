//! Start-up checks: the daemon refuses to run where it could not do its job, and says what to do.
//! A guard that starts on a host without the cgroup v2 memory controller would protect nothing.

use std::path::{Path, PathBuf};

use crate::cgroupfs::{Group, CGROUP_CONTROLLERS, MEMORY_PRESSURE};

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "{mount} is not a cgroup v2 (unified) mount{detail}: oomguard needs the cgroup v2 memory controller. \
         Boot with systemd.unified_cgroup_hierarchy=1 \
         (and without cgroup_disable=memory), or run a distribution that defaults to cgroup v2"
    )]
    NotUnified { mount: PathBuf, detail: String },
    #[error(
        "the cgroup v2 memory controller is not available in {path} (cgroup.controllers: {controllers:?}): \
         it is bound to cgroup v1 or disabled. Boot with systemd.unified_cgroup_hierarchy=1 and without \
         cgroup_disable=memory; under systemd, give the unit Delegate=memory pids"
    )]
    NoMemoryController { path: PathBuf, controllers: String },
    #[error(
        "pressure stall information (PSI) is not available: {path} is missing. Boot with psi=1 \
         (kernels built with CONFIG_PSI_DEFAULT_DISABLED) and check that cgroup.pressure is 1"
    )]
    NoPsi { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Checks that `mount` is a cgroup2 filesystem (statfs), then [`check_group`] on `parent`, the
/// group whose children oomguard will create.
pub fn check_host(mount: &Path, parent: &Path) -> Result<(), HostError> {
    let fs = nix::sys::statfs::statfs(mount).map_err(|e| HostError::Read {
        path: mount.into(),
        source: e.into(),
    })?;
    let magic = fs.filesystem_type().0 as i64;
    if magic != CGROUP2_SUPER_MAGIC {
        let detail = if magic == TMPFS_MAGIC {
            let unified = mount.join("unified");
            let ctl = std::fs::read_to_string(unified.join(CGROUP_CONTROLLERS)).unwrap_or_default();
            format!(
                " (a hybrid layout: cgroup v1 controllers with v2 at {} offering only {:?})",
                unified.display(),
                ctl.trim()
            )
        } else {
            format!(" (filesystem magic {magic:#x})")
        };
        return Err(HostError::NotUnified {
            mount: mount.into(),
            detail,
        });
    }
    check_group(parent)
}

/// The filesystem-level part of the checks, rooted at any path so a tempdir can stand in.
pub fn check_group(parent: &Path) -> Result<(), HostError> {
    let group = Group::new(parent);
    let path = group.file(CGROUP_CONTROLLERS);
    let controllers = std::fs::read_to_string(&path).map_err(|source| HostError::Read {
        path: path.clone(),
        source,
    })?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(HostError::NoMemoryController {
            path: parent.into(),
            controllers: controllers.trim().into(),
        });
    }
    let pressure = group.file(MEMORY_PRESSURE);
    if !pressure.exists() {
        return Err(HostError::NoPsi { path: pressure });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_group_without_memory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CGROUP_CONTROLLERS), "cpu io pids\n").unwrap();
        let err = check_group(dir.path()).unwrap_err();
        assert!(matches!(err, HostError::NoMemoryController { .. }));
        assert!(err.to_string().contains("memory controller"), "{err}");
    }

    #[test]
    fn refuses_a_group_without_psi() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CGROUP_CONTROLLERS), "cpu memory pids\n").unwrap();
        assert!(matches!(
            check_group(dir.path()),
            Err(HostError::NoPsi { .. })
        ));
        std::fs::write(
            dir.path().join(MEMORY_PRESSURE),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        check_group(dir.path()).expect("memory and PSI present");
    }

    #[test]
    fn a_tmpfs_is_not_a_cgroup2_mount() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_host(dir.path(), dir.path()).unwrap_err();
        assert!(matches!(err, HostError::NotUnified { .. }), "{err}");
    }
}
