//! `oomguard hold`: keeps the workers' cgroup subtree alive in its own systemd unit
//! (oomguard-workers.service, `Delegate=memory pids`), so that the daemon's unit can be restarted
//! while workers run.
//!
//! Why a second unit: cgroup v2 forbids processes in a group that enables controllers for its
//! children. If the workers lived below oomguard.service, its group would have `memory pids` in
//! cgroup.subtree_control, and systemd < 254 (no `DelegateSubgroup=`) could not place the next
//! daemon's process there: every restart after a crash or `systemctl restart` failed with
//! 219/CGROUP (seen in a systemd 252 VM). The holder never restarts; it moves itself into a
//! `holder` leaf, enables the controllers, creates `workers` and waits.

use std::path::Path;

use anyhow::{bail, Context};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::cgroupfs::{Group, CGROUP_PROCS};
use crate::layout::CONTROLLERS;
use crate::layout::{own_cgroup, CGROUP_MOUNT};

pub async fn hold() -> anyhow::Result<()> {
    let own = own_cgroup()?;
    let unit = own.strip_suffix("/holder").unwrap_or(&own);
    if unit == "/" {
        bail!("`oomguard hold` belongs in oomguard-workers.service (Delegate=memory pids), not in the root cgroup");
    }
    let unit = Group::new(Path::new(CGROUP_MOUNT).join(unit.trim_start_matches('/')));
    let leaf = unit.child("holder");
    leaf.create()?;
    leaf.write(CGROUP_PROCS, &std::process::id().to_string())
        .context("moving into the holder leaf")?;
    unit.enable_controllers(CONTROLLERS)
        .with_context(|| format!("enabling {CONTROLLERS:?} in {}", unit.path().display()))?;
    let workers = unit.child("workers");
    workers.create()?;
    workers.enable_controllers(CONTROLLERS)?;
    info!(
        "holding {} for oomguard's workers",
        workers.path().display()
    );
    let _ = sd_notify::notify(&[
        NotifyState::Ready,
        NotifyState::Status("holding the workers' cgroups"),
    ]);
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
