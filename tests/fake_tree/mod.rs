//! The fake cgroup tree the host tests share: a tempdir with the files the kernel would create,
//! and helpers to start a fleet on it and wait for its instances.

#![allow(dead_code)] // each test file uses its own subset

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oomguard::cgroupfs::{Group, CGROUP_PROCS, SUBTREE_CONTROL};
use oomguard::events::EventLog;
use oomguard::policy::{parse, Policy};
use oomguard::protocol::{EventRecord, InstanceStatus};
use oomguard::supervisor::Fleet;

pub fn policy(name: &str, command: &str, extra: &str) -> Policy {
    let text = format!(
        "name: {name}\nrun:\n  command: {command}\n  instances: 1\nmemory:\n  high: 48M\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s}}\n{extra}"
    );
    parse(Path::new("/etc/oomguard/policies.d/test.yaml"), &text)
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// A fake tree: the root and policy groups with the files the kernel would create.
pub fn fleet(dir: &Path, names: &[&str]) -> Arc<Fleet> {
    let root = Group::new(dir.join("oomguard"));
    root.create().unwrap();
    for name in names {
        let g = root.child(name);
        g.create().unwrap();
        g.write(SUBTREE_CONTROL, "").unwrap();
        for index in 0..3 {
            let i = g.child(&index.to_string());
            i.create().unwrap();
            i.write(CGROUP_PROCS, "").unwrap();
        }
    }
    Arc::new(Fleet::new(root, Arc::new(EventLog::new())))
}

pub async fn wait_for(
    fleet: &Fleet,
    id: &str,
    what: &str,
    f: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    // A watchdog, not a timing check: generous for a loaded CI machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = fleet.status(Some(id)).unwrap();
        let st = report.policies[0].instances[0].clone();
        if f(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {id}: {what}; last {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn main_pid(fleet: &Fleet, id: &str) -> Option<u32> {
    let saved = fleet.saved_state();
    saved.get(id).and_then(|v| v.main_pid)
}

pub fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// Whether `pid` has ended (gone, or a zombie its parent has not reaped yet) within 10 s: on a
/// busy machine the kill and the parent's reaping lag behind the event that reports them.
pub async fn ends(pid: u32) -> bool {
    for _ in 0..500 {
        if matches!(oomguard::procfs::state(pid), None | Some('Z' | 'X')) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The latest restart event among the last ten.
pub fn restart_event(fleet: &Fleet) -> EventRecord {
    fleet
        .events()
        .last(10)
        .into_iter()
        .rev()
        .find(|e| e.action == "restart")
        .expect("a restart event")
}

/// The latest event with `action` among the last twenty, waited for.
pub async fn event(fleet: &Fleet, action: &str) -> EventRecord {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(e) = fleet
            .events()
            .last(20)
            .into_iter()
            .rev()
            .find(|e| e.action == action)
        {
            return e;
        }
        assert!(Instant::now() < deadline, "no {action} event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
