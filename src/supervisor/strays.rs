//! Groups under the root that no policy owns any more, found at start-up and stopped with the
//! shutdown sequence.

use std::collections::BTreeMap;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tracing::{info, warn};

use super::Fleet;
use crate::cgroupfs::Group;
use crate::policy::Policy;
use crate::shutdown::{Proc, Sequence};

impl Fleet {
    /// Groups under the root that no policy owns any more (a policy removed or shrunk while no
    /// daemon ran): their workers are stopped with the shutdown sequence (the policy's own signal
    /// and grace when the policy still exists, e.g. an instance index past its new count;
    /// otherwise SIGTERM and `STRAY_GRACE`), and the groups are removed. The groups of a valid
    /// policy that failed to start are not strays: it may start on the next reload and adopt
    /// them. `dry_run`: only report what would be stopped, never signal. Runs in the background;
    /// returns the groups it found.
    pub fn reap_strays(&self, dry_run: bool) -> Vec<Group> {
        let managed: Vec<Group> = self.instance_groups();
        let known: BTreeMap<String, Arc<Policy>> = self
            .policies
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, run)| (name.clone(), run.policy.clone()))
            .collect();
        let unstarted = self
            .unstarted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut strays = Vec::new();
        for policy_dir in subdirs(self.root.path()) {
            let name = file_name(&policy_dir);
            if unstarted.contains(&name) {
                warn!(policy = %name, "the policy did not start: its groups are left as they are, not reaped");
                continue;
            }
            let instances = subdirs(&policy_dir);
            let policy = known.get(&name).cloned();
            if instances.is_empty() && policy.is_none() && !dry_run {
                // An empty group of a policy that is gone (a known one's instances may just not
                // be created yet).
                let _ = Group::new(&policy_dir).remove();
            }
            strays.extend(
                instances
                    .into_iter()
                    .map(Group::new)
                    .filter(|g| !managed.contains(g))
                    .map(|g| (g, policy.clone())),
            );
        }
        if dry_run {
            for (g, _) in &strays {
                let procs = g.procs().unwrap_or_default();
                warn!(group = %g.path().display(), ?procs, "dry run: would stop the workers of this group (no policy owns it); nothing signalled");
            }
            return strays.into_iter().map(|(g, _)| g).collect();
        }
        for (g, policy) in &strays {
            let (g, policy) = (g.clone(), policy.clone());
            tokio::spawn(async move { reap_stray(g, policy).await });
        }
        strays.into_iter().map(|(g, _)| g).collect()
    }
}

/// How long a stray worker of a policy that is gone gets between SIGTERM and cgroup.kill.
const STRAY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// Stops whatever runs in a stray group with the shutdown sequence, then removes the group.
async fn reap_stray(g: Group, policy: Option<Arc<Policy>>) {
    let who = g.path().display().to_string();
    if !crate::shutdown::emptiness(&g).is_empty() {
        let mut procs = Proc::of_group(&g);
        let pids: Vec<u32> = procs.iter().map(Proc::pid).collect();
        let (signal, grace) = match &policy {
            Some(p) => (
                Signal::try_from(p.restart.signal).unwrap_or(Signal::SIGTERM),
                p.restart.grace,
            ),
            None => (Signal::SIGTERM, STRAY_GRACE),
        };
        warn!(group = %who, ?pids, "no policy owns this group any more: stopping its workers with {signal}");
        let seq = Sequence {
            who: &who,
            group: &g,
            signal,
            grace,
            high: None,
        };
        let report = seq.run(&mut procs).await;
        info!(group = %who, killed = report.killed, notes = ?report.notes, "stray workers stopped in {}", crate::units::fmt_dur(report.took));
    }
    if let Err(e) = g.remove() {
        warn!(group = %who, "cannot remove the stray group: {e}");
    }
    if let Some(parent) = g.path().parent() {
        // Only succeeds once the policy's group is empty, which is what we want.
        let _ = std::fs::remove_dir(parent);
    }
}

fn subdirs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<_> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn file_name(p: &std::path::Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
