//! Container or host: a cgroup2 mount whose /proc/self/cgroup line is `0::/` while we are not in
//! the host's initial cgroup namespace. The inputs are passed in, so tests need no container.

use std::path::{Path, PathBuf};

use crate::units::Limit;

/// What the runtime gave us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The namespace root (the container's group), normally /sys/fs/cgroup.
    pub root: PathBuf,
    /// The mount is read-write and a leaf could be created: per-worker groups are possible.
    pub writable: bool,
    /// The container's memory.max (its limit).
    pub memory_max: Limit,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error(
        "inside a container with cgroup v1 (or no cgroup v2 mount at {0}): oomguard needs cgroup v2 \
         with a cgroup namespace. Run the container on a cgroup v2 host with a private cgroup \
         namespace (Docker: --cgroupns=private, the default on cgroup v2 hosts; Kubernetes: nodes \
         on cgroup v2)"
    )]
    NotV2(PathBuf),
    #[error(
        "the container's cgroup {path} offers no memory controller (cgroup.controllers: {controllers:?}): \
         give the container a memory limit (Docker: --memory; Kubernetes: resources.limits.memory) \
         on a cgroup v2 host"
    )]
    NoMemory { path: PathBuf, controllers: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// The facts detection looks at, read by [`Probe::read`] or written by a test.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// statfs(mount) is CGROUP2_SUPER_MAGIC.
    pub cgroup2: bool,
    /// The text of /proc/self/cgroup.
    pub self_cgroup: String,
    /// readlink /proc/self/ns/cgroup and /proc/1/ns/cgroup (None when unreadable).
    pub own_ns: Option<String>,
    pub init_ns: Option<String>,
    /// /proc/1/comm: under a runtime PID 1 is us or an init like tini, not systemd.
    pub init_comm: String,
    /// statvfs(mount) has ST_RDONLY.
    pub read_only: bool,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

impl Probe {
    pub fn read(mount: &Path) -> Probe {
        let link = |p: &str| {
            std::fs::read_link(p)
                .ok()
                .map(|l| l.to_string_lossy().into_owned())
        };
        Probe {
            cgroup2: nix::sys::statfs::statfs(mount)
                .is_ok_and(|fs| fs.filesystem_type().0 == CGROUP2_SUPER_MAGIC),
            self_cgroup: std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default(),
            own_ns: link("/proc/self/ns/cgroup"),
            init_ns: link("/proc/1/ns/cgroup"),
            init_comm: std::fs::read_to_string("/proc/1/comm")
                .unwrap_or_default()
                .trim()
                .into(),
            read_only: nix::sys::statvfs::statvfs(mount)
                .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY)),
        }
    }

    /// In a cgroup namespace of our own, or (where /proc/1's namespace cannot be read) under a
    /// PID 1 that is not systemd.
    fn namespaced(&self) -> bool {
        match (&self.own_ns, &self.init_ns) {
            (Some(own), Some(init)) => own != init || self.init_comm != "systemd",
            _ => self.init_comm != "systemd",
        }
    }
}

/// Ok(None) on a host; Ok(Some) in a container; Err where a container cannot be guarded.
/// `probe_leaf` tries to create (and remove) a group under the root: a read-write mount can
/// still refuse (an unprivileged runtime), and only the kernel knows.
pub fn detect(
    mount: &Path,
    probe: &Probe,
    probe_leaf: impl FnOnce(&Path) -> bool,
) -> Result<Option<Container>, ContainerError> {
    let v2_line = probe
        .self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"));
    let v1_lines = probe.self_cgroup.lines().any(|l| !l.starts_with("0::"));
    if !probe.namespaced() {
        return Ok(None);
    }
    if !probe.cgroup2 || v2_line.is_none() {
        // PID 1 is not systemd and there is no unified hierarchy: a v1 container.
        return if v1_lines || !probe.cgroup2 {
            Err(ContainerError::NotV2(mount.into()))
        } else {
            Ok(None)
        };
    }
    if v2_line != Some("/") {
        // Not at a namespace root: a host (or a container sharing the host's namespace).
        return Ok(None);
    }
    let controllers_path = mount.join("cgroup.controllers");
    let controllers =
        std::fs::read_to_string(&controllers_path).map_err(|e| ContainerError::Read {
            path: controllers_path.clone(),
            message: e.to_string(),
        })?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(ContainerError::NoMemory {
            path: mount.into(),
            controllers: controllers.trim().into(),
        });
    }
    let max_path = mount.join("memory.max");
    // The real root of the hierarchy has no memory.max (a host whose PID 1 is not systemd, as
    // the test VM's /init); a namespace root is a non-root group and always has one.
    let memory_max = match std::fs::read_to_string(&max_path) {
        Ok(text) => text.trim().parse().map_err(|e| ContainerError::Read {
            path: max_path.clone(),
            message: format!("{e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ContainerError::Read {
                path: max_path,
                message: e.to_string(),
            })
        }
    };
    let writable = !probe.read_only && probe_leaf(mount);
    Ok(Some(Container {
        root: mount.into(),
        writable,
        memory_max,
    }))
}

/// The default leaf probe: mkdir and rmdir of a group under the root.
pub fn can_create_leaf(root: &Path) -> bool {
    let leaf = root.join(".oomguard-probe");
    let made = std::fs::create_dir(&leaf).is_ok();
    if made {
        let _ = std::fs::remove_dir(&leaf);
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container_probe() -> Probe {
        Probe {
            cgroup2: true,
            self_cgroup: "0::/\n".into(),
            own_ns: Some("cgroup:[4026532300]".into()),
            init_ns: Some("cgroup:[4026532300]".into()),
            init_comm: "oomguard".into(),
            read_only: false,
        }
    }

    fn mount(controllers: &str, max: Option<&str>) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), controllers).unwrap();
        if let Some(m) = max {
            std::fs::write(dir.path().join("memory.max"), m).unwrap();
        }
        dir
    }

    #[test]
    fn a_namespace_root_is_a_container_and_its_limit_is_read() {
        let m = mount("cpu memory pids\n", Some("201326592\n"));
        let c = detect(m.path(), &container_probe(), |_| true)
            .unwrap()
            .unwrap();
        assert!(c.writable);
        assert_eq!(c.memory_max, Limit::Bytes(192 << 20));
        let mut ro = container_probe();
        ro.read_only = true;
        let c = detect(m.path(), &ro, |_| true).unwrap().unwrap();
        assert!(!c.writable, "a read-only mount is read-only");
        let c = detect(m.path(), &container_probe(), |_| false)
            .unwrap()
            .unwrap();
        assert!(!c.writable, "a refused mkdir is read-only");
    }

    #[test]
    fn a_host_is_not_a_container() {
        let m = mount("cpu memory pids\n", Some("max\n"));
        let mut host = container_probe();
        host.init_comm = "systemd".into();
        host.self_cgroup = "0::/system.slice/oomguard.service\n".into();
        assert_eq!(detect(m.path(), &host, |_| true), Ok(None));
        // systemd in its own init namespace at the root (the VM's /init is not systemd, but a
        // host's PID 1 in the same namespace is): not a container either.
        host.self_cgroup = "0::/\n".into();
        assert_eq!(detect(m.path(), &host, |_| true), Ok(None));
        // A container that shares the host's namespace sees a deep path: treated as a host.
        let mut shared = container_probe();
        shared.own_ns = Some("cgroup:[1]".into());
        shared.init_ns = Some("cgroup:[2]".into());
        shared.self_cgroup = "0::/kubepods/pod1/abc\n".into();
        assert_eq!(detect(m.path(), &shared, |_| true), Ok(None));
        // The hierarchy's real root (no memory.max) under a busybox /init: a host.
        let top = mount("cpu memory pids\n", None);
        assert_eq!(detect(top.path(), &container_probe(), |_| true), Ok(None));
    }

    #[test]
    fn cgroup_v1_or_no_memory_controller_is_refused_with_the_runtime_setting() {
        let m = mount("cpu pids\n", Some("max\n"));
        let err = detect(m.path(), &container_probe(), |_| true).unwrap_err();
        assert!(matches!(err, ContainerError::NoMemory { .. }), "{err}");
        assert!(err.to_string().contains("resources.limits.memory"), "{err}");
        let mut v1 = container_probe();
        v1.cgroup2 = false;
        v1.self_cgroup = "12:memory:/docker/abc\n11:pids:/docker/abc\n".into();
        let err = detect(m.path(), &v1, |_| true).unwrap_err();
        assert!(err.to_string().contains("--cgroupns=private"), "{err}");
    }
}
