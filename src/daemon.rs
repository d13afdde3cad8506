//! `oomguard run`: start-up checks, the cgroup subtree, the fleet, the socket, signals, reloads,
//! the systemd watchdog and the state kept across daemon restarts.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::cgroupfs::Group;
use crate::events::EventLog;
use crate::hostcheck;
use crate::policy::{self, Mode};
use crate::protocol::{ApiError, EventRecord, ReloadReport, StatusReport};
use crate::server::{self, Access, Api};
use crate::supervisor::{Fleet, FleetError, SavedState, CONTROLLERS};

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
    /// Members of this group may read status, events and metrics (default `oomguard`).
    pub socket_group: Option<String>,
    /// Non-root uids that may also restart and reload.
    pub admin_uids: Vec<u32>,
}

/// Runs the daemon until SIGTERM/SIGINT (stop the workers gracefully) or SIGUSR2 (leave them
/// running for the next daemon to adopt).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "oomguard run must run as root: it creates cgroups and starts workers as other users"
        );
    }
    let mount = Path::new(CGROUP_MOUNT);
    let root = cgroup_root(mount, opts.cgroup_root.as_deref())?;
    let parent = root.parent().context("the cgroup root has no parent")?;
    hostcheck::check_host(mount, parent)?;
    let policies = match load_policies(&opts) {
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
        warn!(
            "no policies in {}: nothing to guard until a reload adds one",
            opts.policies.display()
        );
    }

    let instances: u64 = policies.iter().map(|p| u64::from(p.run.instances)).sum();
    match crate::spawn::raise_nofile_limit() {
        Ok((_, limit)) if limit < instances * 2 + 64 => warn!(
            "open-files limit {limit} is too low for {instances} instances (two fds each): \
             raise LimitNOFILE= (the unit sets 65536)"
        ),
        Ok(_) => {}
        Err(e) => warn!("cannot raise the open-files limit: {e}"),
    }
    let root = prepare_root(mount, &root)?;
    let state_file = state_path(&opts.socket);
    let saved = load_state(&state_file);
    let fleet = Arc::new(Fleet::new(root, Arc::new(EventLog::new())));
    for p in policies {
        let name = p.name.clone();
        if let Err(e) = fleet.start_policy(p, &saved) {
            error!(policy = %name, "not started: {e}");
        }
    }
    let strays = fleet.reap_strays();
    if !strays.is_empty() {
        info!(
            "{} group(s) under the root belong to no policy: stopping their workers",
            strays.len()
        );
    }
    let listener = server::bind(&opts.socket, opts.socket_group.as_deref())
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    let api = Arc::new(DaemonApi {
        fleet: fleet.clone(),
        opts: opts.clone(),
    });
    let access = Access::new(opts.socket_group.as_deref(), opts.admin_uids.clone());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, api, access, async move {
        let _ = server_stopped.await;
    }));
    info!(root = %fleet.root().path().display(), socket = %opts.socket.display(), "oomguard {} running", env!("CARGO_PKG_VERSION"));
    notify(&[NotifyState::Ready, NotifyState::Status("guarding")]);

    let exit = main_loop(&fleet, &opts, &state_file).await?;
    notify(&[NotifyState::Stopping]);
    // Status stays available while workers are being stopped; the socket goes last.
    let stop_socket = || {
        let _ = stop_server.send(());
    };
    match exit {
        Exit::Stop => {
            info!("shutting down: stopping workers gracefully (a second SIGTERM exits at once)");
            arm_second_signal()?;
            fleet.stop_all().await;
            // The (empty) root stays: under systemd it is oomguard-workers.service's `workers`
            // group, which the next start must find again.
            let _ = std::fs::remove_file(&state_file);
            info!("all workers stopped");
        }
        Exit::Detach => {
            save_state(&state_file, &fleet);
            info!(
                "exiting on SIGUSR2, leaving workers running for the next daemon to adopt ({})",
                state_file.display()
            );
        }
    }
    stop_socket();
    let _ = server.await;
    Ok(())
}

/// The socket server's view of the daemon.
struct DaemonApi {
    fleet: Arc<Fleet>,
    opts: Options,
}

fn api_error(e: FleetError) -> ApiError {
    match e {
        FleetError::NotFound(_) => ApiError::not_found(e.to_string()),
        FleetError::Failed(_) => ApiError::failed(e.to_string()),
    }
}

impl Api for DaemonApi {
    fn status(&self, target: Option<&str>) -> Result<StatusReport, ApiError> {
        self.fleet.status(target).map_err(api_error)
    }

    fn events(&self, last: usize) -> Vec<EventRecord> {
        self.fleet.events().last(last)
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<EventRecord> {
        self.fleet.events().subscribe()
    }

    // Cancel-safe: the instance task owns the restart; dropping this future only drops the reply.
    async fn restart(&self, target: &str) -> Result<String, ApiError> {
        info!(target, "restart requested over the socket");
        self.fleet.restart(target).await.map_err(api_error)
    }

    async fn reload(&self) -> Result<ReloadReport, ApiError> {
        reload(&self.fleet, &self.opts).await.map_err(|errors| {
            ApiError::failed_with(
                format!(
                    "reload refused, nothing changed: {} problem(s)",
                    errors.len()
                ),
                errors,
            )
        })
    }
}

/// Loads and validates the policy directory; `--dry-run` turns every policy to observe mode.
fn load_policies(opts: &Options) -> Result<Vec<policy::Policy>, Vec<String>> {
    let mut policies = policy::load_dir(&opts.policies)
        .map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    if opts.dry_run {
        info!("dry run: every policy runs in observe mode, nothing is signalled");
        policies.iter_mut().for_each(|p| p.mode = Mode::Observe);
    }
    Ok(policies)
}

enum Exit {
    /// SIGTERM / SIGINT: stop every worker gracefully, then exit.
    Stop,
    /// SIGUSR2 (systemd's RestartKillSignal): exit and leave the workers running.
    Detach,
}

/// Signals, reloads, the watchdog and state saving, until it is time to exit.
async fn main_loop(fleet: &Arc<Fleet>, opts: &Options, state_file: &Path) -> anyhow::Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut events = fleet.events().subscribe();
    // Half the watchdog interval, as sd_watchdog_enabled(3) advises; a day when there is none.
    let period = sd_notify::watchdog_enabled().map_or(Duration::from_secs(86_400), |d| d / 2);
    let mut watchdog = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Exit::Stop),
            _ = int.recv() => return Ok(Exit::Stop),
            _ = usr2.recv() => return Ok(Exit::Detach),
            _ = hup.recv() => {
                // Errors are logged by reload() itself.
                let _ = reload(fleet, opts).await;
            }
            // Every decision changes counters worth keeping across a daemon restart.
            _ = events.recv() => save_state(state_file, fleet),
            _ = watchdog.tick() => notify(&[NotifyState::Watchdog]),
        }
    }
}

/// Re-reads and validates every policy first; only a fully valid set is applied, so a bad file
/// changes nothing.
pub async fn reload(fleet: &Fleet, opts: &Options) -> Result<ReloadReport, Vec<String>> {
    let mut reloading = vec![NotifyState::Reloading];
    // systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload).
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        reloading.push(now);
    }
    notify(&reloading);
    let result = match load_policies(opts) {
        Err(errors) => {
            for e in &errors {
                error!("reload refused, nothing changed: {e}");
            }
            Err(errors)
        }
        Ok(policies) => match fleet.reload(policies).await {
            Ok(summary) => {
                info!(added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed, "reloaded {}", opts.policies.display());
                Ok(summary)
            }
            Err(errors) => {
                for e in &errors {
                    error!("reload refused, nothing changed: {e}");
                }
                Err(errors)
            }
        },
    };
    notify(&[NotifyState::Ready]);
    result
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("sd_notify: {e}");
    }
}

fn arm_second_signal() -> anyhow::Result<()> {
    // A second SIGTERM or SIGINT while workers are being stopped exits at once, leaving them
    // running; signal-hook's conditional shutdown does exactly that once the flag is set.
    let stopping = Arc::new(AtomicBool::new(true));
    for sig in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register_conditional_shutdown(sig, 1, stopping.clone())
            .context("second-signal handler")?;
    }
    stopping.store(true, Ordering::SeqCst);
    Ok(())
}

/// state.json lives beside the socket (RuntimeDirectory= under systemd).
pub fn state_path(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or(Path::new("/run"))
        .join("state.json")
}

fn load_state(path: &Path) -> SavedState {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            warn!("ignoring unreadable {}: {e}", path.display());
            SavedState::new()
        }),
        Err(_) => SavedState::new(),
    }
}

/// Written to a temporary file and renamed, so a crash never leaves half a file.
fn save_state(path: &Path, fleet: &Fleet) {
    let tmp = path.with_extension("json.tmp");
    let result = serde_json::to_vec(&fleet.saved_state())
        .map_err(std::io::Error::other)
        .and_then(|bytes| std::fs::write(&tmp, bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        warn!("cannot save {}: {e}", path.display());
    }
}

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
    let held = Path::new(crate::holder::HOLDER_WORKERS);
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

/// Creates the root group with memory and pids enabled from the mount down. A delegated parent
/// that holds the daemon itself cannot enable controllers for children (no internal processes),
/// so the daemon first moves itself into a `daemon` leaf beside `workers`.
fn prepare_root(mount: &Path, root: &Path) -> anyhow::Result<Group> {
    let parent = root.parent().context("the cgroup root has no parent")?;
    let own = mount.join(own_cgroup()?.trim_start_matches('/'));
    // The root cgroup is exempt from the no-internal-processes rule: nothing to move there.
    if own == parent && own != mount {
        let leaf = Group::new(parent.join("daemon"));
        leaf.create()?;
        leaf.write(
            crate::cgroupfs::CGROUP_PROCS,
            &std::process::id().to_string(),
        )
        .context("moving the daemon into its own leaf group")?;
        info!("moved the daemon into {}", leaf.path().display());
    }
    // Enable top-down: every ancestor between the mount and the root must pass memory on.
    let mut ancestors: Vec<&Path> = root
        .ancestors()
        .skip(1)
        .take_while(|p| p.starts_with(mount))
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, dry_run: bool) -> Options {
        Options {
            policies: dir.to_path_buf(),
            socket: dir.join("oomguard.sock"),
            cgroup_root: None,
            dry_run,
            socket_group: None,
            admin_uids: vec![],
        }
    }

    #[test]
    fn dry_run_turns_every_policy_to_observe() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = "run:\n  command: [\"/bin/sleep\", \"1\"]\nmemory:\n  high: 48M\n  max: 96M\n\
                    triggers:\n  pressure: {some: 100ms, window: 1s}\n";
        std::fs::write(dir.path().join("web.yaml"), yaml).unwrap();
        let enforced = load_policies(&opts(dir.path(), false)).unwrap();
        assert_eq!(enforced[0].mode, Mode::Enforce);
        let dry = load_policies(&opts(dir.path(), true)).unwrap();
        assert_eq!(dry[0].mode, Mode::Observe);
    }

    #[test]
    fn a_bad_policy_dir_is_refused_with_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), "nonsense: 1\n").unwrap();
        std::fs::write(dir.path().join("b.yaml"), "also: 2\n").unwrap();
        let errors = load_policies(&opts(dir.path(), false)).unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0].contains("a.yaml") && errors[1].contains("b.yaml"),
            "{errors:?}"
        );
    }

    #[test]
    fn an_explicit_cgroup_root_must_be_below_the_mount() {
        let mount = Path::new("/sys/fs/cgroup");
        assert!(cgroup_root(mount, Some(Path::new("/tmp/x"))).is_err());
        assert!(cgroup_root(mount, Some(mount)).is_err());
        let ok = cgroup_root(mount, Some(Path::new("/sys/fs/cgroup/og"))).unwrap();
        assert_eq!(ok, Path::new("/sys/fs/cgroup/og"));
    }

    #[test]
    fn state_lives_beside_the_socket() {
        assert_eq!(
            state_path(Path::new("/run/oomguard/oomguard.sock")),
            Path::new("/run/oomguard/state.json")
        );
    }
}
