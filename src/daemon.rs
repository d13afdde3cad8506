//! `oomguard run`: start-up checks, the cgroup subtree, the fleet, the socket and signals.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::cgroupfs::Group;
use crate::events::EventLog;
use crate::hostcheck;
use crate::policy::{self, Mode};
use crate::supervisor::{Fleet, CONTROLLERS};

pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
pub const DEFAULT_POLICIES: &str = "/etc/oomguard/policies.d";
pub const DEFAULT_SOCKET: &str = "/run/oomguard/oomguard.sock";

#[derive(Clone, Debug)]
pub struct Options {
    pub policies: PathBuf,
    pub socket: PathBuf,
    /// None: a `workers` group inside the daemon's own delegated cgroup, else /sys/fs/cgroup/oomguard.
    pub cgroup_root: Option<PathBuf>,
    /// Every policy in observe mode, whatever its file says.
    pub dry_run: bool,
}

/// Runs the daemon until SIGTERM or SIGINT, then stops the workers gracefully.
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("oomguard run must run as root: it creates cgroups and starts workers as other users");
    }
    let mount = Path::new(CGROUP_MOUNT);
    let root = cgroup_root(mount, opts.cgroup_root.as_deref())?;
    let parent = root.parent().context("the cgroup root has no parent")?;
    hostcheck::check_host(mount, parent)?;

    let mut policies = match policy::load_dir(&opts.policies) {
        Ok(p) => p,
        Err(errors) => {
            for e in &errors {
                error!("{e}");
            }
            bail!(
                "refusing to start: {} problem(s) in {} (run `oomguard check {}`)",
                errors.len(),
                opts.policies.display(),
                opts.policies.display()
            );
        }
    };
    if policies.is_empty() {
        warn!("no policies in {}: nothing to guard until a reload adds one", opts.policies.display());
    }
    if opts.dry_run {
        info!("dry run: every policy runs in observe mode, nothing is signalled");
        for p in &mut policies {
            p.mode = Mode::Observe;
        }
    }

    let root = prepare_root(mount, &root)?;
    let fleet = Arc::new(Fleet::new(root, Arc::new(EventLog::new())));
    for p in policies {
        let name = p.name.clone();
        if let Err(e) = fleet.start_policy(p) {
            error!(policy = %name, "not started: {e}");
        }
    }
    info!(root = %fleet.root().path().display(), socket = %opts.socket.display(), "oomguard {} running", env!("CARGO_PKG_VERSION"));

    wait_for_shutdown().await?;
    info!("shutting down: stopping workers gracefully (a second SIGTERM exits at once)");
    fleet.stop_all().await;
    let _ = fleet.root().remove();
    info!("all workers stopped");
    Ok(())
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // A second SIGTERM or SIGINT while workers are being stopped exits at once, leaving them
    // running; signal-hook's conditional shutdown does exactly that once the flag is set.
    let stopping = Arc::new(AtomicBool::new(true));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stopping.clone()).context("second-signal handler")?;
    }
    stopping.store(true, Ordering::SeqCst);
    Ok(())
}

/// The cgroup every policy's group goes under. Under systemd with `Delegate=`, the daemon's own
/// cgroup is `<...>/oomguard.service`: workers go to `<that>/workers` (the daemon moves itself to
/// `<that>/daemon` in [`prepare_root`]). Elsewhere, /sys/fs/cgroup/oomguard.
pub fn cgroup_root(mount: &Path, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.starts_with(mount) || p == mount {
            bail!("--cgroup-root {} must be a group below {}", p.display(), mount.display());
        }
        return Ok(p.to_path_buf());
    }
    let own = own_cgroup()?;
    if own.ends_with(".service") || own.ends_with("/daemon") {
        let service = own.strip_suffix("/daemon").unwrap_or(&own);
        return Ok(mount.join(service.trim_start_matches('/')).join("workers"));
    }
    Ok(mount.join("oomguard"))
}

/// This process's cgroup v2 path ("0::/system.slice/oomguard.service").
fn own_cgroup() -> anyhow::Result<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    Ok(text.lines().find_map(|l| l.strip_prefix("0::")).unwrap_or("/").to_string())
}

/// Creates the root group with memory and pids enabled from the mount down. A delegated parent
/// that holds the daemon itself cannot enable controllers for children (no internal processes),
/// so the daemon first moves itself into a `daemon` leaf beside `workers`.
fn prepare_root(mount: &Path, root: &Path) -> anyhow::Result<Group> {
    let parent = root.parent().context("the cgroup root has no parent")?;
    let own = mount.join(own_cgroup()?.trim_start_matches('/'));
    if own == parent {
        let leaf = Group::new(parent.join("daemon"));
        leaf.create()?;
        leaf.write(crate::cgroupfs::CGROUP_PROCS, &std::process::id().to_string())
            .context("moving the daemon into its own leaf group")?;
        info!("moved the daemon into {}", leaf.path().display());
    }
    // Enable top-down: every ancestor between the mount and the root must pass memory on.
    let mut ancestors: Vec<&Path> = root.ancestors().skip(1).take_while(|p| p.starts_with(mount)).collect();
    ancestors.reverse();
    for dir in ancestors {
        let g = Group::new(dir);
        g.enable_controllers(CONTROLLERS)
            .with_context(|| format!("enabling {CONTROLLERS:?} in {}", dir.display()))?;
    }
    let group = Group::new(root);
    group.create()?;
    group.enable_controllers(CONTROLLERS)?;
    Ok(group)
}
