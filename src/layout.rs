//! Where oomguard's cgroups live: the cgroup v2 mount, the holder unit's `workers` group, the
//! daemon's root group and this process's own group. Shared by `daemon` and `holder`, so neither
//! imports the other.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// The controllers every group of oomguard enables for its children: memory for the limits and
/// events, pids so a fork bomb in one worker stays in its group.
pub const CONTROLLERS: &[&str] = &["memory", "pids"];

/// Where the holder's subtree is when systemd runs oomguard-workers.service in system.slice.
pub const HOLDER_WORKERS: &str = "/sys/fs/cgroup/system.slice/oomguard-workers.service/workers";

/// The cgroup every policy's group goes under: `--cgroup-root`, else the `workers` group that
/// oomguard-workers.service holds (see `holder`), else /sys/fs/cgroup/oomguard.
pub fn cgroup_root(mount: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.starts_with(mount) || p == mount {
            bail!(
                "--cgroup-root {} must be a group below {}",
                p.display(),
                mount.display()
            );
        }
        return Ok(p.to_path_buf());
    }
    // The holder unit's own group, not its `workers` child: if that child was ever removed, the
    // daemon must still put the workers there (prepare_root recreates it), never fall back to a
    // group outside systemd's delegation.
    let held = Path::new(HOLDER_WORKERS);
    if mount == Path::new(CGROUP_MOUNT) && held.parent().is_some_and(Path::is_dir) {
        return Ok(held.to_path_buf());
    }
    Ok(mount.join("oomguard"))
}

/// This process's cgroup v2 path ("0::/system.slice/oomguard.service").
pub fn own_cgroup() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_cgroup_root_must_be_below_the_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        assert!(cgroup_root(mount, Some(Path::new("/tmp/x"))).is_err());
        assert!(cgroup_root(mount, Some(mount)).is_err());
        let ok = cgroup_root(mount, Some(Path::new("/sys/fs/cgroup/og"))).unwrap();
        assert_eq!(ok, Path::new("/sys/fs/cgroup/og"));
    }
}
