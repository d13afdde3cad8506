//! The cgroup v2 filesystem, rooted at any path so that a tempdir can stand in for /sys/fs/cgroup in
//! unit tests. Every read and write of a cgroup file goes through here.
//!
//! Limits are written with cgroups-rs (`MemController::set_mem`, `set_memswap_limit`: the calls of
//! that crate that report errors) and always read back: a guardrail that silently failed to set
//! memory.max is worse than none. Everything cgroups-rs does not parse (memory.events,
//! memory.pressure, cgroup.events) is read directly. A cgroup that vanished reads as
//! [`CgroupError::Gone`], a normal event rather than a failure.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use cgroups_rs::fs::memory::{MemController, SetMemory};
use cgroups_rs::fs::MaxValue;

use crate::units::Limit;

mod kill;
mod stat;

pub use stat::{MEMORY_EVENTS_LOCAL, MEMORY_RECLAIM, MEMORY_STAT, MEMORY_SWAP_CURRENT};

pub const MEMORY_CURRENT: &str = "memory.current";
pub const MEMORY_PEAK: &str = "memory.peak";
pub const MEMORY_HIGH: &str = "memory.high";
pub const MEMORY_MAX: &str = "memory.max";
pub const MEMORY_SWAP_MAX: &str = "memory.swap.max";
pub const MEMORY_EVENTS: &str = "memory.events";
pub const MEMORY_PRESSURE: &str = "memory.pressure";
pub const CGROUP_PROCS: &str = "cgroup.procs";
pub const CGROUP_EVENTS: &str = "cgroup.events";
pub const CGROUP_KILL: &str = "cgroup.kill";
pub const CGROUP_FREEZE: &str = "cgroup.freeze";
pub const CGROUP_CONTROLLERS: &str = "cgroup.controllers";
pub const SUBTREE_CONTROL: &str = "cgroup.subtree_control";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path} is gone")]
    Gone { path: PathBuf },
    #[error("failed to read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("failed to set {file} of {path} to {value}: {message}")]
    SetLimit {
        path: PathBuf,
        file: &'static str,
        value: String,
        message: String,
    },
    #[error("wrote {wanted} to {path} but it reads back {got:?}: refusing to run with a limit the kernel did not take")]
    Readback {
        path: PathBuf,
        wanted: String,
        got: String,
    },
    #[error("failed to create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: PathBuf, content: String },
}

pub type Result<T> = std::result::Result<T, CgroupError>;

/// PSI numbers of one memory.pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub some_avg10: f64,
    pub full_avg10: f64,
    /// Microseconds of stall since the group was created.
    pub some_total_us: u64,
    pub full_total_us: u64,
}

/// One cgroup directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Group {
    path: PathBuf,
}

impl Group {
    pub fn new(path: impl Into<PathBuf>) -> Group {
        Group { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn child(&self, name: &str) -> Group {
        Group::new(self.path.join(name))
    }

    /// The enclosing group (the policy's group for an instance).
    pub fn parent(&self) -> Option<Group> {
        self.path.parent().map(Group::new)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// mkdir; an existing group is fine (adoption after a daemon restart relies on it).
    pub fn create(&self) -> Result<()> {
        match std::fs::create_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(source) => Err(CgroupError::Create {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// rmdir of the group and of the groups a worker made below it (deepest first); only
    /// succeeds when the whole subtree is empty. A group already gone is fine.
    pub fn remove(&self) -> Result<()> {
        let mut groups = Vec::new();
        for group in self.subtree() {
            match group {
                Ok(g) => groups.push(g),
                Err(CgroupError::Gone { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // subtree() lists parents before their children.
        for group in groups.iter().rev() {
            match std::fs::remove_dir(&group.path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CgroupError::Write {
                        path: group.path.clone(),
                        value: "rmdir".into(),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    pub fn read(&self, name: &str) -> Result<String> {
        let path = self.file(name);
        std::fs::read_to_string(&path).map_err(|source| gone_or(path, source))
    }

    pub fn write(&self, name: &str, value: &str) -> Result<()> {
        let path = self.file(name);
        std::fs::write(&path, value).map_err(|source| {
            if is_gone(&source) {
                CgroupError::Gone {
                    path: self.path.clone(),
                }
            } else {
                CgroupError::Write {
                    path,
                    value: value.to_string(),
                    source,
                }
            }
        })
    }

    /// mkdir (an existing group is fine) and enable `controllers` for its children: a group that
    /// holds other groups, such as the root or a policy's group.
    pub fn create_with_controllers(&self, controllers: &[&str]) -> Result<()> {
        self.create()?;
        self.enable_controllers(controllers)
    }

    /// Controllers this group may hand to its children (cgroup.controllers).
    pub fn controllers(&self) -> Result<Vec<String>> {
        Ok(self
            .read(CGROUP_CONTROLLERS)?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Enables controllers for the children of this group, unless already enabled.
    pub fn enable_controllers(&self, controllers: &[&str]) -> Result<()> {
        let enabled = self.read(SUBTREE_CONTROL)?;
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let missing: Vec<String> = controllers
            .iter()
            .filter(|c| !enabled.contains(c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.write(SUBTREE_CONTROL, &missing.join(" "))
    }

    /// Sets memory.high, memory.max and (when given) memory.swap.max, then reads each back.
    pub fn set_limits(&self, high: Limit, max: Limit, swap_max: Option<Limit>) -> Result<()> {
        // Lower max before high would make the kernel reclaim twice; the order does not change the
        // outcome, so write high first, as cgroups-rs does.
        let mem = MemController::new(self.path.clone(), self.path.clone(), true);
        let set = SetMemory {
            high: Some(max_value(high)),
            max: Some(max_value(max)),
            low: None,
            min: None,
        };
        mem.set_mem(set).map_err(|e| {
            self.set_error("memory.high/memory.max", format!("{high:?}/{max:?}"), e)
        })?;
        if let Some(swap) = swap_max {
            let raw = swap
                .bytes()
                .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX));
            mem.set_memswap_limit(raw)
                .map_err(|e| self.set_error(MEMORY_SWAP_MAX, swap.to_kernel(), e))?;
            self.expect_limit(MEMORY_SWAP_MAX, swap)?;
        }
        self.expect_limit(MEMORY_HIGH, high)?;
        self.expect_limit(MEMORY_MAX, max)
    }

    /// Sets memory.high alone (lifted during a grace period, restored after).
    pub fn set_high(&self, high: Limit) -> Result<()> {
        let mem = MemController::new(self.path.clone(), self.path.clone(), true);
        let set = SetMemory {
            high: Some(max_value(high)),
            max: None,
            low: None,
            min: None,
        };
        mem.set_mem(set)
            .map_err(|e| self.set_error(MEMORY_HIGH, high.to_kernel(), e))?;
        self.expect_limit(MEMORY_HIGH, high)
    }

    fn set_error(
        &self,
        file: &'static str,
        value: String,
        e: cgroups_rs::fs::error::Error,
    ) -> CgroupError {
        if !self.exists() {
            return CgroupError::Gone {
                path: self.path.clone(),
            };
        }
        let message = match std::error::Error::source(&e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        };
        CgroupError::SetLimit {
            path: self.path.clone(),
            file,
            value,
            message,
        }
    }

    /// The kernel rounds limits down to whole pages, so compare at page granularity.
    fn expect_limit(&self, file: &str, wanted: Limit) -> Result<()> {
        let got = self.read(file)?;
        let ok = match (wanted, parse_limit(&got)) {
            (Limit::Max, Some(Limit::Max)) => true,
            (Limit::Bytes(w), Some(Limit::Bytes(g))) => w / 4096 == g / 4096,
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(CgroupError::Readback {
                path: self.file(file),
                wanted: wanted.to_kernel(),
                got: got.trim().to_string(),
            })
        }
    }

    pub fn limit(&self, file: &str) -> Result<Limit> {
        let text = self.read(file)?;
        parse_limit(&text).ok_or_else(|| CgroupError::Parse {
            path: self.file(file),
            content: text,
        })
    }

    /// A single-number file such as memory.current or memory.peak.
    pub fn number(&self, file: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.trim().parse().map_err(|_| CgroupError::Parse {
            path: self.file(file),
            content: text,
        })
    }

    pub fn memory_events(&self) -> Result<BTreeMap<String, u64>> {
        Ok(parse_keyed(&self.read(MEMORY_EVENTS)?))
    }

    pub fn pressure(&self) -> Result<Pressure> {
        let text = self.read(MEMORY_PRESSURE)?;
        parse_pressure(&text).ok_or_else(|| CgroupError::Parse {
            path: self.file(MEMORY_PRESSURE),
            content: text,
        })
    }

    pub fn procs(&self) -> Result<Vec<u32>> {
        Ok(self
            .read(CGROUP_PROCS)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// This group and every group below it, parents first. A directory that cannot be listed is
    /// an error in its place (a group that vanished meanwhile reads as Gone).
    pub fn subtree(&self) -> Vec<Result<Group>> {
        let mut out = Vec::new();
        let mut todo = vec![self.clone()];
        while let Some(group) = todo.pop() {
            match std::fs::read_dir(&group.path) {
                Ok(entries) => {
                    for entry in entries {
                        match entry {
                            Ok(e) if e.file_type().is_ok_and(|t| t.is_dir()) => {
                                todo.push(Group::new(e.path()))
                            }
                            Ok(_) => {}
                            Err(source) => out.push(Err(dir_error(&group.path, source))),
                        }
                    }
                    out.push(Ok(group));
                }
                Err(source) => out.push(Err(dir_error(&group.path, source))),
            }
        }
        out
    }
}

fn max_value(limit: Limit) -> MaxValue {
    match limit {
        Limit::Max => MaxValue::Max,
        Limit::Bytes(b) => MaxValue::Value(i64::try_from(b).unwrap_or(i64::MAX)),
    }
}

fn is_gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
}

/// An error listing a group's directory.
fn dir_error(dir: &Path, source: std::io::Error) -> CgroupError {
    if is_gone(&source) {
        CgroupError::Gone { path: dir.into() }
    } else {
        CgroupError::Read {
            path: dir.into(),
            source,
        }
    }
}

fn gone_or(path: PathBuf, source: std::io::Error) -> CgroupError {
    if is_gone(&source) {
        CgroupError::Gone {
            path: path.parent().map(Path::to_path_buf).unwrap_or(path),
        }
    } else {
        CgroupError::Read { path, source }
    }
}

/// "max" or a byte count, as in memory.high / memory.max / memory.swap.max.
pub fn parse_limit(text: &str) -> Option<Limit> {
    match text.trim() {
        "max" => Some(Limit::Max),
        n => n.parse().ok().map(Limit::Bytes),
    }
}

/// "key value" lines, as in memory.events and cgroup.events.
pub fn parse_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key.to_string(), value))
        })
        .collect()
}

/// memory.pressure: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` and a `full` line.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut p = Pressure::default();
    let mut seen_some = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next()?;
        let mut avg10 = None;
        let mut total = None;
        for field in parts {
            match field.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse::<f64>().ok(),
                Some(("total", v)) => total = v.parse::<u64>().ok(),
                _ => {}
            }
        }
        match kind {
            "some" => {
                p.some_avg10 = avg10?;
                p.some_total_us = total?;
                seen_some = true;
            }
            "full" => {
                p.full_avg10 = avg10?;
                p.full_total_us = total?;
            }
            _ => {}
        }
    }
    seen_some.then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn fake_group() -> (tempfile::TempDir, Group) {
        let dir = tempfile::tempdir().expect("tempdir");
        let group = Group::new(dir.path().join("g"));
        group.create().expect("create");
        (dir, group)
    }

    #[test]
    fn parses_pressure_file() {
        let text = "some avg10=65.12 avg60=20.00 avg300=5.00 total=123456\nfull avg10=1.50 avg60=0.00 avg300=0.00 total=789\n";
        let p = parse_pressure(text).expect("parses");
        assert_eq!(p.some_avg10, 65.12);
        assert_eq!(p.full_avg10, 1.5);
        assert_eq!(p.some_total_us, 123456);
        assert_eq!(p.full_total_us, 789);
        assert_eq!(parse_pressure("garbage"), None);
    }

    #[test]
    fn parses_memory_events_and_limits() {
        let ev = parse_keyed("low 0\nhigh 17\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(ev["high"], 17);
        assert_eq!(ev["oom_kill"], 1);
        assert_eq!(parse_limit("max\n"), Some(Limit::Max));
        assert_eq!(parse_limit("4096\n"), Some(Limit::Bytes(4096)));
        assert_eq!(parse_limit("x"), None);
    }

    #[test]
    fn limits_are_written_and_read_back() {
        let (_dir, g) = fake_group();
        g.set_limits(
            Limit::Bytes(40 << 20),
            Limit::Bytes(80 << 20),
            Some(Limit::Bytes(0)),
        )
        .expect("set");
        assert_eq!(g.limit(MEMORY_HIGH).unwrap(), Limit::Bytes(40 << 20));
        assert_eq!(g.limit(MEMORY_MAX).unwrap(), Limit::Bytes(80 << 20));
        assert_eq!(g.read(MEMORY_SWAP_MAX).unwrap(), "0");
        g.set_high(Limit::Max).expect("lift");
        assert_eq!(g.limit(MEMORY_HIGH).unwrap(), Limit::Max);
    }

    #[test]
    fn a_limit_the_kernel_did_not_take_is_an_error() {
        let (_dir, g) = fake_group();
        // A directory where the file should be: cgroups-rs cannot write it, and says so.
        std::fs::create_dir(g.file(MEMORY_MAX)).unwrap();
        let err = g
            .set_limits(Limit::Bytes(1 << 20), Limit::Bytes(2 << 20), None)
            .unwrap_err();
        assert!(matches!(err, CgroupError::SetLimit { .. }), "{err}");
    }

    #[test]
    fn readback_mismatch_is_refused() {
        let (_dir, g) = fake_group();
        g.write(MEMORY_HIGH, "12345").unwrap();
        let err = g
            .expect_limit(MEMORY_HIGH, Limit::Bytes(1 << 30))
            .unwrap_err();
        assert!(err.to_string().contains("reads back"), "{err}");
    }

    #[test]
    fn a_vanished_group_reads_as_gone() {
        let (_dir, g) = fake_group();
        g.remove().unwrap();
        assert!(matches!(
            g.number(MEMORY_CURRENT),
            Err(CgroupError::Gone { .. })
        ));
        assert!(matches!(
            g.read(CGROUP_EVENTS),
            Err(CgroupError::Gone { .. })
        ));
        // Whether a group is empty is read through shutdown::emptiness, which fails closed.
        assert_eq!(
            crate::shutdown::emptiness(&g),
            crate::shutdown::Emptiness::Empty
        );
        g.remove().expect("removing a gone group is fine");
    }

    #[test]
    fn enables_only_missing_controllers() {
        let (_dir, g) = fake_group();
        g.write(SUBTREE_CONTROL, "memory").unwrap();
        g.enable_controllers(&["memory", "pids"]).unwrap();
        assert_eq!(g.read(SUBTREE_CONTROL).unwrap(), "+pids");
    }

    #[test]
    fn populated_and_procs() {
        let (_dir, g) = fake_group();
        g.write(CGROUP_EVENTS, "populated 1\nfrozen 0\n").unwrap();
        g.write(CGROUP_PROCS, "12\n34\n").unwrap();
        assert_eq!(
            crate::shutdown::emptiness(&g),
            crate::shutdown::Emptiness::Populated
        );
        assert_eq!(g.procs().unwrap(), vec![12, 34]);
    }

    #[test]
    fn remove_takes_empty_descendant_groups_along() {
        let (_dir, g) = fake_group();
        g.child("a").create().unwrap();
        g.child("a").child("b").create().unwrap();
        g.remove().expect("remove");
        assert!(!g.exists());
        g.remove().expect("removing a gone group is fine");
    }
}
