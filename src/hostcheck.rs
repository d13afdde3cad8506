//! Start-up checks: the daemon refuses to run where it could not do its job, and says what to do.
//! A guard that starts on a host without the cgroup v2 memory controller would protect nothing.
//!
//! Kernel: **Linux 5.3 or newer** is required (PSI 4.20, cgroup.freeze 5.2, pidfd_open 5.3, each
//! probed as a feature, not by version number, so backports count); **5.10 is the oldest tested**
//! (Debian bullseye, in the VM kernel matrix). Below 5.14 groups are killed by the freeze fallback
//! instead of cgroup.kill, below 5.19 there is no memory.peak; [`check_host`] logs both once.

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
    #[error(
        "pidfd_open is not available ({source}): oomguard needs Linux >= {MIN_KERNEL} \
         (the oldest tested is {OLDEST_TESTED})"
    )]
    NoPidfd { source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The oldest kernel oomguard can run on: pidfd_open (5.3) watches adopted workers, and the kill
/// fallback freezes groups (cgroup.freeze, 5.2).
pub const MIN_KERNEL: &str = "5.3";
/// The oldest kernel the VM suite runs on (`tests/vm/run.sh --kernel 5.10`).
pub const OLDEST_TESTED: &str = "5.10";

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
    check_group(parent)?;
    probe_pidfd()?;
    for note in degraded_features(&crate::procfs::kernel_release()) {
        tracing::warn!("{note}");
    }
    Ok(())
}

/// pidfd_open on our own pid: ENOSYS on kernels before 5.3.
fn probe_pidfd() -> Result<(), HostError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
    if raw < 0 {
        return Err(HostError::NoPidfd {
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: the fd was just returned to us and nothing else owns it.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as i32) });
    Ok(())
}

/// What works differently on this kernel release ("5.10.0-46-cloud-amd64"), one sentence each;
/// nothing for a release it cannot parse. The root cgroup has neither cgroup.kill nor
/// memory.peak to probe, so this goes by version; the code paths themselves probe the files.
pub fn degraded_features(release: &str) -> Vec<String> {
    let Some(v) = kernel_version(release) else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    if v < (5, 10) {
        notes.push(format!(
            "kernel {release} is older than {OLDEST_TESTED}, the oldest oomguard is tested on"
        ));
    }
    if v < (5, 14) {
        notes.push(format!(
            "kernel {release} has no cgroup.kill (5.14): groups are killed by freezing them and \
             SIGKILLing every pid, repeated until empty"
        ));
    }
    if v < (5, 19) {
        notes.push(format!(
            "kernel {release} has no memory.peak (5.19): status, events and metrics show no peak"
        ));
    }
    notes
}

/// (major, minor) of a kernel release string ("6.1.0-56-cloud-amd64" -> (6, 1)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// For policies with `children:`: each child is moved into its leaf by a write to cgroup.procs,
/// and since 6.0 that write waits for an RCU grace period unless the cgroup2 hierarchy favours
/// dynamic changes (the `favordynmods` mount option). One sentence saying so and how to turn it
/// on, when `mount` in `mountinfo` (/proc/self/mountinfo) lacks it on such a kernel; None
/// otherwise. oomguard does not remount by itself: the option is machine-wide (it makes every
/// fork and exit a little dearer), so it is the operator's call.
pub fn favordynmods_note(mountinfo: &str, mount: &Path, release: &str) -> Option<String> {
    if kernel_version(release)? < (6, 0) {
        return None;
    }
    let mount = mount.to_str()?;
    let super_options = mountinfo.lines().find_map(|line| {
        // id parent major:minor root mountpoint options [optional fields] - fstype source super
        let (left, right) = line.split_once(" - ")?;
        let mut right = right.split_whitespace();
        let is_cgroup2 = right.next() == Some("cgroup2");
        let point = left.split_whitespace().nth(4)?;
        (is_cgroup2 && point == mount).then(|| right.nth(1).unwrap_or("").to_string())
    })?;
    if super_options.split(',').any(|o| o == "favordynmods") {
        return None;
    }
    Some(format!(
        "children: {mount} is mounted without favordynmods, so each child's move into its leaf \
         waits for an RCU grace period (the VM suite's bench_fork_to_leaf on 6.1: median about \
         25 ms, 13 ms with it). To turn it on until the next boot: \
         mount -o remount,{super_options},favordynmods none {mount} (kernels 6.7 and later also \
         take the boot parameter cgroup_favordynmods=true); it makes every fork and exit on the \
         machine a little dearer"
    ))
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

    #[test]
    fn says_what_degrades_on_older_kernels() {
        assert!(degraded_features("6.1.0-56-cloud-amd64").is_empty());
        assert!(degraded_features("6.12.118+deb13-cloud-amd64").is_empty());
        assert!(degraded_features("garbage").is_empty());
        let notes = degraded_features("5.10.0-46-cloud-amd64").join("\n");
        assert!(
            notes.contains("no cgroup.kill") && notes.contains("no memory.peak"),
            "{notes}"
        );
        assert!(!notes.contains("older than"), "{notes}");
        let notes = degraded_features("5.15.0").join("\n");
        assert!(
            !notes.contains("cgroup.kill") && notes.contains("memory.peak"),
            "{notes}"
        );
        assert!(degraded_features("5.4.0")
            .join(" ")
            .contains("older than 5.10"));
    }

    #[test]
    fn this_kernel_has_pidfd_open() {
        probe_pidfd().expect("the host runs a kernel >= 5.3");
    }

    #[test]
    fn favordynmods_is_suggested_only_where_it_is_missing_and_matters() {
        let systemd = "33 24 0:28 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let mount = Path::new("/sys/fs/cgroup");
        let note = favordynmods_note(systemd, mount, "6.1.0-56-cloud-amd64").unwrap();
        assert!(
            note.contains("mount -o remount,rw,nsdelegate,memory_recursiveprot,favordynmods none /sys/fs/cgroup"),
            "{note}"
        );
        // Before 6.0 the migration takes no grace period (and the option does not exist).
        assert_eq!(
            favordynmods_note(systemd, mount, "5.10.0-46-cloud-amd64"),
            None
        );
        let on = systemd.replace("memory_recursiveprot", "memory_recursiveprot,favordynmods");
        assert_eq!(favordynmods_note(&on, mount, "6.1.0"), None);
        // No cgroup2 at that mount point (a hybrid host): nothing to say here.
        let hybrid = "30 24 0:26 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n";
        assert_eq!(favordynmods_note(hybrid, mount, "6.1.0"), None);
    }
}
