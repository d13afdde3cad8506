//! `oomguard run`: start-up checks, the cgroup subtree and its lock, the fleet, the socket,
//! signals, the systemd watchdog and the state kept across daemon restarts. Reloads run in their
//! own task (`reload`); the runtime directory and state.json are `runtime`.

mod coalesce;
mod lock;
mod observed;
mod readonly;
mod reload;
mod runtime;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use sd_notify::NotifyState;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{error, info, warn};

use self::reload::{ReloadError, Reloads};
pub use self::runtime::{RuntimeDir, RuntimeDirError};
use crate::cgroupfs::Group;
use crate::container::setup;
use crate::container::writable::ENVELOPE;
use crate::events::EventLog;
use crate::hostcheck;
use crate::layout::CONTROLLERS;
use crate::layout::{cgroup_root, own_cgroup, CGROUP_MOUNT};
use crate::policy;
use crate::protocol::{ApiError, ErrorCode, EventRecord, ReloadReport, StatusReport};
use crate::server::{self, Access, Api};
use crate::supervisor::{Fleet, FleetError};
use crate::vocabulary::Mode;

pub const DEFAULT_POLICIES: &str = "/etc/oomguard/policies.d";
pub const DEFAULT_SOCKET: &str = "/run/oomguard/oomguard.sock";
/// Kept across reboots (StateDirectory=oomguard): the observations `recommend` reads.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/oomguard";

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
    /// Where observations.json lives (worker lifetimes for `oomguard recommend`).
    pub state_dir: PathBuf,
    /// Serve `oomguard metrics`' text over HTTP here (`GET /metrics`); None: no TCP at all.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The whole stop's budget (`--stop-timeout`); None: [`DEFAULT_STOP_TIMEOUT`] in a
    /// container, unbounded on a host (systemd's TimeoutStopSec bounds it there).
    pub stop_timeout: Option<Duration>,
}

/// Inside a container a stop must end before the runtime's SIGKILL: Kubernetes'
/// terminationGracePeriodSeconds is 30 s by default, Docker's `stop --time` 10 s.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(25);

/// The exit status of a stop that ran out of `--stop-timeout`: the workers left were killed.
pub const EXIT_STOP_TIMED_OUT: u8 = 4;

/// Runs the daemon until SIGTERM/SIGINT (stop the workers gracefully) or SIGUSR2 (leave them
/// running for the next daemon to adopt). Ok(0) on a clean stop, Ok([`EXIT_STOP_TIMED_OUT`])
/// when the stop's budget ran out and the workers left were killed.
pub async fn run(opts: Options) -> anyhow::Result<u8> {
    require_root()?;
    let mount = Path::new(CGROUP_MOUNT);
    // First: inside a container the host's advice (boot options, Delegate=) would be wrong.
    let container = setup::detect_here(mount, opts.cgroup_root.as_deref())?;
    let root = match &container {
        Some(c) => c.root.join(ENVELOPE),
        None => cgroup_root(mount, opts.cgroup_root.as_deref())?,
    };
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

    if policies.iter().any(|p| p.children.is_some()) {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let release = crate::procfs::kernel_release();
        if let Some(note) = hostcheck::favordynmods_note(&mountinfo, mount, &release) {
            info!("{note}");
        }
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
    let stop_timeout = opts
        .stop_timeout
        .or(container.as_ref().map(|_| DEFAULT_STOP_TIMEOUT));
    if let Some(budget) = stop_timeout {
        warn_graces_beyond(&policies, budget);
    }
    let runtime_dir = opts.socket.parent().unwrap_or(Path::new("/run"));
    let runtime = RuntimeDir::open(runtime_dir)?;
    if let Some(c) = container.as_ref().filter(|c| !c.writable) {
        readonly::note_modes(&policies);
        let opts = Options {
            stop_timeout,
            ..opts
        };
        return readonly::run(c.clone(), policies, &opts).await;
    }
    let (root, container) = match container {
        None => (prepare_root(mount, &root)?, None),
        Some(c) => {
            let (workers, info) = setup::enter(&c, &policies)?;
            info!("{}; {}", setup::summary(&info), info.why);
            (workers, Some(info))
        }
    };
    // Before anything under the root is adopted, reaped or started: another daemon's workers
    // are not ours to touch.
    let _root_lock = lock::lock_root(root.path())?;
    // Before any worker starts: a port that cannot be had refuses the start, not half of it.
    let metrics_listener = bind_metrics(&opts).await?;
    let saved = runtime.load_state();
    let mut fleet = Fleet::new(root, Arc::new(EventLog::new()));
    if let Some(info) = &container {
        fleet = fleet.in_container(info.clone());
    }
    let fleet = Arc::new(fleet);
    // Without it the daemon still guards; `recommend` then only sees this daemon's lifetimes.
    let state_dir = RuntimeDir::open(&opts.state_dir)
        .map_err(|e| error!("observations are not kept across restarts: {e}"))
        .ok();
    if let Some(dir) = &state_dir {
        // Before any instance starts: an adopted worker continues its saved lifetime.
        fleet.observed().restore(observed::load(dir));
    }
    for p in policies {
        let name = p.name.clone();
        // The fleet remembers it: reap_strays leaves its groups alone.
        if let Err(e) = fleet.start_policy(p, &saved) {
            error!(policy = %name, "not started: {e}");
        }
    }
    fleet.reap_strays(opts.dry_run);
    let listener = server::bind(&opts.socket, opts.socket_group.as_deref())
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    // Set once shutdown starts: reloads and restarts are refused from then on.
    let (closing_tx, closing) = watch::channel(false);
    let reload_owner = Arc::new(tokio::sync::Mutex::new(()));
    let reloads = Reloads::spawn(
        fleet.clone(),
        opts.clone(),
        reload_owner.clone(),
        closing.clone(),
    );
    let api = Arc::new(DaemonApi {
        fleet: fleet.clone(),
        reloads: reloads.clone(),
        closing,
        dry_run: opts.dry_run,
    });
    let access = Access::new(opts.socket_group.as_deref(), opts.admin_uids.clone());
    let metrics_server = metrics_listener.map(|l| serve_metrics(l, api.clone()));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, api, access, async move {
        let _ = server_stopped.await;
    }));
    let mode = container
        .as_ref()
        .map_or_else(|| "host".to_string(), setup::summary);
    info!(root = %fleet.root().path().display(), socket = %opts.socket.display(), mode = %mode, "oomguard {} running", env!("CARGO_PKG_VERSION"));
    notify(&[NotifyState::Ready, NotifyState::Status("guarding")]);

    let mut exit = main_loop(&fleet, &reloads, &runtime, state_dir.as_ref()).await?;
    if opts.dry_run && matches!(exit, Exit::Stop) {
        // Stopping a worker means signalling it, and a dry run signals nothing: the workers
        // stay, and the next daemon adopts them as after a SIGUSR2.
        info!("dry run: leaving every worker running (nothing is signalled)");
        exit = Exit::Detach;
    }
    notify(&[NotifyState::Stopping]);
    closing_tx.send_replace(true);
    let mut code = 0;
    // Status stays available while workers are being stopped; the socket goes last.
    let stop_socket = || {
        let _ = stop_server.send(());
    };
    match exit {
        Exit::Stop => {
            info!("shutting down: stopping workers gracefully (a second SIGTERM exits at once)");
            arm_second_signal()?;
            // A reload in flight finishes first (it may be starting a policy); none starts after.
            let _no_reload = with_watchdog(reload_owner.lock()).await;
            if !with_watchdog(stop_within(&fleet, stop_timeout)).await {
                code = EXIT_STOP_TIMED_OUT;
            }
            // The (empty) root stays: under systemd it is oomguard-workers.service's `workers`
            // group, which the next start must find again.
            runtime.remove_state();
            save_observations(state_dir.as_ref(), &fleet);
            info!("all workers stopped");
        }
        Exit::Detach => {
            let _no_reload = with_watchdog(reload_owner.lock()).await;
            save_state(&runtime, &fleet);
            save_observations(state_dir.as_ref(), &fleet);
            info!(
                "exiting (SIGUSR2, or the end of a dry run), leaving workers running for the next daemon to adopt ({})",
                runtime.state_path().display()
            );
        }
    }
    stop_socket();
    if let Some(m) = metrics_server {
        // Nothing to flush: a scrape in flight is simply cut.
        m.abort();
    }
    let _ = server.await;
    Ok(code)
}

/// Before any worker starts: a port that cannot be had refuses the start, not half of it.
async fn bind_metrics(opts: &Options) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = opts.metrics_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("--metrics-listen {addr}: cannot listen there (a port in use, or an address this host does not have): pick another or drop the flag")
    })?;
    Ok(Some(listener))
}

/// `oomguard metrics`' text over HTTP, from the socket API's status.
fn serve_metrics<A: Api>(
    listener: tokio::net::TcpListener,
    api: Arc<A>,
) -> tokio::task::JoinHandle<()> {
    let addr = listener
        .local_addr()
        .map_or_else(|e| e.to_string(), |a| a.to_string());
    info!(listen = %addr, "metrics over HTTP: GET http://{addr}/metrics");
    let render = move || {
        api.status(None)
            .map(|s| crate::metrics::render(&s))
            .map_err(|e| e.message)
    };
    tokio::spawn(server::serve_metrics(
        listener,
        render,
        server::HttpLimits::default(),
        std::future::pending(),
    ))
}

/// `run` and `exec` create cgroups and start workers as other users.
pub fn require_root() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "oomguard must run as root here: it creates cgroups and starts workers as other users"
        );
    }
    Ok(())
}

/// Stops every worker gracefully (each policy's signal and grace, all at once). When `budget`
/// runs out first, whatever is left under the root is killed (cgroup.kill) and the stop
/// sequences, which then find their groups empty, end; returns false then.
async fn stop_within(fleet: &Fleet, budget: Option<Duration>) -> bool {
    let stop = fleet.stop_all();
    tokio::pin!(stop);
    let Some(budget) = budget else {
        stop.await;
        return true;
    };
    if tokio::time::timeout(budget, &mut stop).await.is_ok() {
        return true;
    }
    let root = fleet.root();
    warn!(
        "--stop-timeout {} ran out with workers still stopping: killing what is left under {}",
        crate::units::Dur(budget),
        root.path().display()
    );
    if let Err(e) = root.kill() {
        error!("cannot kill {}: {e}", root.path().display());
    }
    stop.await;
    false
}

/// A grace longer than the stop's budget is cut short on a stop: said at start.
fn warn_graces_beyond(policies: &[policy::Policy], budget: Duration) {
    for p in policies {
        // A stop signals the whole instance and waits the instance's grace (a child's own
        // grace is for recycling it alone).
        let grace = p.restart.grace;
        if grace > budget {
            warn!(policy = %p.name, "restart.grace {} is longer than the stop timeout {}: on a stop (the container's SIGTERM) its workers get {} before they are killed; lower the grace or raise --stop-timeout (and the runtime's own: terminationGracePeriodSeconds, docker stop --time)",
                crate::units::Dur(grace), crate::units::Dur(budget), crate::units::Dur(budget));
        }
    }
}

/// The socket server's view of the daemon.
struct DaemonApi {
    fleet: Arc<Fleet>,
    reloads: Reloads,
    /// True once shutdown started.
    closing: watch::Receiver<bool>,
    /// A restart signals the worker: refused in a dry run.
    dry_run: bool,
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

    fn observations(
        &self,
        policy: &str,
    ) -> Result<crate::observations::PolicyObservations, ApiError> {
        self.fleet.observations(policy).ok_or_else(|| {
            ApiError::not_found(format!(
                "policy {policy} is not running and has no recorded lifetimes"
            ))
        })
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
        if !self.accepting_changes() {
            return Err(shutting_down());
        }
        if self.dry_run {
            return Err(ApiError::failed(
                "dry run: restarts are refused (a dry run signals nothing)",
            ));
        }
        self.fleet.restart(target).await.map_err(api_error)
    }

    async fn reload(&self) -> Result<ReloadReport, ApiError> {
        self.reloads.request().await.map_err(|e| match e {
            ReloadError::Invalid(errors) => ApiError::failed_with(
                format!(
                    "reload refused, nothing changed: {} problem(s)",
                    errors.len()
                ),
                errors,
            ),
            ReloadError::ShuttingDown => shutting_down(),
            ReloadError::Gone => {
                ApiError::failed("reload failed: the reload task ended (see the log)")
            }
        })
    }

    fn accepting_changes(&self) -> bool {
        !*self.closing.borrow()
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        ErrorCode::ShuttingDown,
        "the daemon is shutting down: no restart or reload any more",
    )
}

/// Loads and validates the policy directory (or one file: `oomguard exec --policy FILE`);
/// `--dry-run` turns every policy to observe mode.
fn load_policies(opts: &Options) -> Result<Vec<policy::Policy>, Vec<String>> {
    let loaded = if opts.policies.is_file() {
        policy::load_file(&opts.policies).map(|p| vec![p])
    } else {
        policy::load_dir(&opts.policies)
    };
    let mut policies = loaded.map_err(|e| e.iter().map(ToString::to_string).collect::<Vec<_>>())?;
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

/// Signals, the watchdog and state saving, until it is time to exit. Nothing here may wait for
/// long: a reload runs in its own task (see `reload`), or a slow one would starve the watchdog
/// and systemd would SIGABRT the daemon.
async fn main_loop(
    fleet: &Arc<Fleet>,
    reloads: &Reloads,
    runtime: &RuntimeDir,
    state_dir: Option<&RuntimeDir>,
) -> anyhow::Result<Exit> {
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut events = fleet.events().subscribe();
    let mut watchdog = watchdog_interval();
    let mut state = coalesce::Coalescer::default();
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(Exit::Stop),
            _ = int.recv() => return Ok(Exit::Stop),
            // Detach saves the state itself, pending changes included.
            _ = usr2.recv() => return Ok(Exit::Detach),
            _ = hup.recv() => reloads.signal(),
            // Every decision changes counters worth keeping across a daemon restart.
            _ = state.next_write(&mut events) => {
                save_state(runtime, fleet);
                save_observations(state_dir, fleet);
                state.written(tokio::time::Instant::now());
            }
            _ = watchdog.tick() => {
                notify(&[NotifyState::Watchdog]);
                // A wake-up that exists anyway: running lifetimes survive a crash up to here.
                save_observations(state_dir, fleet);
            }
        }
    }
}

/// Half the watchdog interval, as sd_watchdog_enabled(3) advises; a day when there is none.
fn watchdog_interval() -> tokio::time::Interval {
    let period = sd_notify::watchdog_enabled().map_or(Duration::from_secs(86_400), |d| d / 2);
    tokio::time::interval(period)
}

/// Runs `work` while pinging the watchdog: stopping the workers takes up to their grace.
async fn with_watchdog<T>(work: impl std::future::Future<Output = T>) -> T {
    let mut watchdog = watchdog_interval();
    tokio::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = watchdog.tick() => notify(&[NotifyState::Watchdog]),
        }
    }
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

fn save_observations(dir: Option<&RuntimeDir>, fleet: &Fleet) {
    if let Some(dir) = dir {
        observed::save(dir, fleet.observed());
    }
}

fn save_state(runtime: &RuntimeDir, fleet: &Fleet) {
    if let Err(e) = runtime.save_state(&fleet.saved_state()) {
        warn!("cannot save {}: {e}", runtime.state_path().display());
    }
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
    group.create_with_controllers(CONTROLLERS)?;
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
            state_dir: PathBuf::from("/nonexistent"),
            metrics_listen: None,
            stop_timeout: None,
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
}
