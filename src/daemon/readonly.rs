//! `oomguard run` (and `exec`) in a container whose cgroup mount is read-only: no group can be
//! made, so the workers run as plain processes in the container's group. Every [`POLL`] the
//! container's files and /proc are read into a snapshot, `container::signals::decide` picks the
//! biggest offender once usage nears the container's memory.max, and one action at a time is
//! carried out here (`act`). Status is published for the socket (`api`) each poll.

mod act;
mod api;
mod status;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use self::status::Worker;
use super::{lock, Options, EXIT_STOP_TIMED_OUT};
use crate::cgroupfs::Group;
use crate::container::detect::Container;
use crate::container::setup;
use crate::container::signals::read::{self, ProcTable};
use crate::container::signals::{self, Decision, Snapshot, Totals, Unit, COOLDOWN, POLL};
use crate::events::EventLog;
use crate::policy::Policy;
use crate::protocol::{ContainerInfo, EventRecord};
use crate::server::{self, Access};
use crate::units::human_bytes;
use crate::vocabulary::Mode;
use crate::vocabulary::{Ending, InstanceState, Reason};
use crate::watch::PidFd;

/// What an action task hands back when it is done.
enum Done {
    Child { ending: Ending },
    Worker { worker: usize, ending: Ending },
}

struct Runner {
    root: Group,
    info: ContainerInfo,
    events: Arc<EventLog>,
    workers: Vec<Worker>,
    done_tx: mpsc::Sender<Done>,
    /// A recycle is in flight (one at a time).
    busy: bool,
    /// Its event, pushed with the ending once it is done.
    pending: Option<EventRecord>,
    /// Ends its grace at once (the container at its last line); taken when used.
    hurry: Option<tokio::sync::oneshot::Sender<()>>,
    last_end: Option<Instant>,
    /// The container's oom_kill count last seen: a rise is said once.
    oom_kill: Option<u64>,
    /// Above the line with nothing to recycle: said once per crossing.
    said_no_offender: bool,
    /// Observe mode's last would-recycle target, until usage is back under the line.
    reported: Option<(String, Unit)>,
    totals: Totals,
}

pub async fn run(c: Container, policies: Vec<Policy>, opts: &Options) -> anyhow::Result<u8> {
    let info = setup::read_only(&c);
    info!("{}; {}", setup::summary(&info), info.why);
    let root = Group::new(&c.root);
    // One daemon per container: the same lock a host daemon takes on its root.
    let _lock = lock::lock_root(root.path())?;
    let metrics_listener = super::bind_metrics(opts).await?;
    let events = Arc::new(EventLog::new());
    let (done_tx, mut done_rx) = mpsc::channel(8);
    let mut r = Runner {
        root,
        info,
        events: events.clone(),
        workers: Worker::all(&policies)?,
        done_tx,
        busy: false,
        pending: None,
        hurry: None,
        last_end: None,
        oom_kill: None,
        said_no_offender: false,
        reported: None,
        totals: Totals::default(),
    };
    for i in 0..r.workers.len() {
        r.start(i);
    }
    let (status_tx, status_rx) = watch::channel(r.status());
    let listener = server::bind(&opts.socket, opts.socket_group.as_deref())
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    let api = Arc::new(api::ReadOnlyApi {
        status: status_rx,
        events,
    });
    let access = Access::new(opts.socket_group.as_deref(), opts.admin_uids.clone());
    let metrics = metrics_listener.map(|l| super::serve_metrics(l, api.clone()));
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, api, access, async move {
        let _ = server_stopped.await;
    }));
    info!(root = %r.root.path().display(), socket = %opts.socket.display(), mode = %setup::summary(&r.info), "oomguard {} running", env!("CARGO_PKG_VERSION"));
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // Unhandled, either would end the daemon and leave the workers unguarded.
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => r.poll(),
            Some(done) = done_rx.recv() => r.finished(done),
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => warn!("SIGHUP: reload is not available in the read-only mode; the policies stay as they are (restart the container to change them)"),
            _ = usr2.recv() => warn!("SIGUSR2: leaving the workers for a next daemon is not available in the read-only mode (nothing could adopt them); ignored"),
        }
        status_tx.send_replace(r.status());
    }
    info!("shutting down: stopping workers gracefully");
    // An action in flight ends within its grace; the stop waits for it.
    while r.busy {
        if let Some(done) = done_rx.recv().await {
            r.finished(done);
        }
    }
    let budget = opts.stop_timeout.unwrap_or(super::DEFAULT_STOP_TIMEOUT);
    let code = r.stop_all(budget).await;
    status_tx.send_replace(r.status());
    info!("all workers stopped");
    let _ = stop_server.send(());
    if let Some(m) = metrics {
        m.abort();
    }
    let _ = server.await;
    Ok(code)
}

impl Runner {
    fn start(&mut self, i: usize) {
        let w = &mut self.workers[i];
        match w.spawn() {
            Ok(pid) => {
                info!(instance = %w.id, pid, "started (no group of its own: read-only mode)")
            }
            Err(e) => {
                error!(instance = %w.id, "cannot start: {e}");
                w.backoff();
            }
        }
    }

    fn poll(&mut self) {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            if let Some(ending) = self.workers[i].reap() {
                let w = &self.workers[i];
                let mut ev = EventRecord::blank(
                    &w.id,
                    Reason::Exited,
                    "exited",
                    format!(
                        "{} exited on its own ({ending:?}); respawned after its backoff",
                        w.id
                    ),
                );
                ev.ending = Some(ending);
                self.events.push(ev);
                self.workers[i].backoff();
            }
            if self.workers[i].due(now) {
                self.start(i);
            }
        }
        let totals = match read::totals(&self.root) {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot read the container's memory files: {e}");
                return;
            }
        };
        self.totals = totals;
        self.note_oom_kills(&totals);
        let table = ProcTable::read(Path::new("/proc"));
        let samples: Vec<_> = self
            .workers
            .iter_mut()
            .filter_map(|w| w.sample(&table))
            .collect();
        let snapshot = Snapshot {
            totals,
            candidates: signals::candidates(&samples),
            busy: self.busy,
            last_line: signals::last_line(self.info.memory_max, self.info.reserve),
            since_last: self.last_end.map(|t| now - t),
            reported: self.reported.clone(),
        };
        match signals::decide(&snapshot, self.info.recycle_at, COOLDOWN) {
            Decision::Calm => {
                self.said_no_offender = false;
                self.reported = None;
            }
            Decision::Busy | Decision::Cooling { .. } | Decision::Reported => {}
            Decision::Hurry { usage, line } => self.hurry(usage, line),
            Decision::NoOffender { usage, threshold } => {
                if !std::mem::replace(&mut self.said_no_offender, true) {
                    warn!("container memory {usage} bytes reached {threshold} but no worker holds anonymous memory to recycle");
                }
            }
            Decision::Recycle {
                target,
                usage,
                threshold,
            } => {
                let text = signals::describe(&target, usage, threshold, &totals);
                let Some(i) = self.workers.iter().position(|w| w.id == target.instance) else {
                    return;
                };
                self.act(i, target.unit, target.observe, text, &table);
            }
        }
    }

    fn act(&mut self, i: usize, unit: Unit, observe: bool, text: String, table: &ProcTable) {
        let w = &mut self.workers[i];
        let (action, child_pid) = match (unit, observe) {
            (Unit::Child(pid), true) => ("would_recycle", Some(pid)),
            (Unit::Child(pid), false) => ("child_recycle", Some(pid)),
            (Unit::Worker, true) => ("would_restart", None),
            (Unit::Worker, false) => ("restart", None),
        };
        let mut ev = EventRecord::blank(&w.id, Reason::ContainerLimit, action, text);
        ev.memory_current = Some(self.totals.current);
        ev.child_pid = child_pid;
        if observe {
            ev.message.push_str(
                " (observe mode: nothing signalled; said again only if another worker or child \
                 becomes the biggest or usage drops under the line first)",
            );
            self.events.push(ev);
            self.reported = Some((w.id.clone(), unit));
            return;
        }
        let tx = self.done_tx.clone();
        match unit {
            Unit::Child(pid) => {
                let Some(main) = w.main_pid() else { return };
                // Opened first, then checked: the pid is still the worker's child, not a reuse.
                let Ok(fd) = PidFd::open(pid) else { return };
                if crate::procfs::parent_pid(pid) != Some(main)
                    || !table.children(main).contains(&pid)
                {
                    return;
                }
                let restart = w
                    .policy
                    .children
                    .expect("a child unit comes from a children: policy")
                    .restart;
                w.child_recycles += 1;
                let hurry = self.hurry_channel();
                tokio::spawn(async move {
                    let ending = act::recycle_child(fd, restart.signal, restart.grace, hurry).await;
                    let _ = tx.send(Done::Child { ending }).await;
                });
            }
            Unit::Worker => {
                let Some((child, fd)) = w.take_for_restart() else {
                    return;
                };
                let (sig, grace) = (w.policy.restart.signal, w.policy.restart.grace);
                let hurry = self.hurry_channel();
                tokio::spawn(async move {
                    let ending = act::stop_worker(child, fd, sig, grace, hurry).await;
                    let _ = tx.send(Done::Worker { worker: i, ending }).await;
                });
            }
        }
        info!(instance = %ev.instance, "{action}: {}", ev.message);
        self.busy = true;
        self.pending = Some(ev);
    }

    /// A fresh way to end the next action's grace early.
    fn hurry_channel(&mut self) -> act::Hurry {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.hurry = Some(tx);
        rx
    }

    /// The container reached its last line while a recycle drains: its grace ends now (once),
    /// said in the log and in the recycle's event.
    fn hurry(&mut self, usage: u64, line: u64) {
        let Some(tx) = self.hurry.take() else { return };
        let why = format!(
            "container memory {} reached the last line {} (memory.max minus a quarter of the \
             reserve) during the grace: SIGKILL now, before the kernel's OOM kill of the \
             whole container",
            human_bytes(usage),
            human_bytes(line)
        );
        let id = self
            .pending
            .as_ref()
            .map_or("container".into(), |e| e.instance.clone());
        warn!(instance = %id, "{why}");
        if let Some(ev) = &mut self.pending {
            ev.message.push_str(&format!("; {why}"));
        }
        let _ = tx.send(());
    }

    /// The recycle in flight ended: its event goes out with the ending; a restarted worker is
    /// started again at once.
    fn finished(&mut self, done: Done) {
        self.busy = false;
        self.hurry = None;
        self.last_end = Some(Instant::now());
        let ending = match done {
            Done::Child { ending } => ending,
            Done::Worker { worker, ending } => {
                self.workers[worker].restarted();
                self.start(worker);
                ending
            }
        };
        if let Some(mut ev) = self.pending.take() {
            ev.signal_to_exit_ms = match ending {
                Ending::Exited { after_ms, .. } | Ending::KilledAfterGrace { after_ms } => {
                    Some(after_ms)
                }
                Ending::OomKilled => None,
            };
            ev.message.push_str(&format!("; {}", words(&ending)));
            ev.ending = Some(ending);
            self.events.push(ev);
        }
    }

    fn note_oom_kills(&mut self, t: &Totals) {
        if let Some(before) = self.oom_kill.filter(|&b| t.oom_kill > b) {
            let mut ev = EventRecord::blank(
                "container",
                Reason::OomKilled,
                "oom_kill",
                format!(
                    "the kernel OOM-killed {} process(es) in the container (memory.events oom_kill {} -> {})",
                    t.oom_kill - before,
                    before,
                    t.oom_kill
                ),
            );
            ev.memory_current = Some(t.current);
            self.events.push(ev);
        }
        self.oom_kill = Some(t.oom_kill);
    }

    /// Every worker at once, each with its signal and its grace cut to `budget`. Returns
    /// [`EXIT_STOP_TIMED_OUT`] when a worker outlived the budget (it was killed), else 0.
    async fn stop_all(&mut self, budget: Duration) -> u8 {
        let mut set = tokio::task::JoinSet::new();
        for w in &mut self.workers {
            let taken = w.take_for_restart();
            w.state = InstanceState::Stopped;
            let Some((child, fd)) = taken else { continue };
            let (sig, grace) = (w.policy.restart.signal, w.policy.restart.grace.min(budget));
            let cut = w.policy.restart.grace > budget;
            // Never hurried: the stop has its own budget.
            let (_never, hurry) = tokio::sync::oneshot::channel();
            set.spawn(async move { (cut, act::stop_worker(child, fd, sig, grace, hurry).await) });
        }
        let mut code = 0;
        while let Some(Ok((cut, ending))) = set.join_next().await {
            if cut && matches!(ending, Ending::KilledAfterGrace { .. }) {
                code = EXIT_STOP_TIMED_OUT;
            }
        }
        code
    }

    fn status(&self) -> crate::protocol::StatusReport {
        status::report(&self.workers, &self.info, self.root.path())
    }
}

fn words(e: &Ending) -> String {
    match e {
        Ending::Exited { after_ms, .. } => format!("exited {after_ms} ms after its signal"),
        Ending::KilledAfterGrace { after_ms } => {
            format!("SIGKILLed after its grace ({after_ms} ms)")
        }
        Ending::OomKilled => "OOM-killed".into(),
    }
}

/// Observe mode by policy: said once at start, so a quiet log is not mistaken for guarding.
pub fn note_modes(policies: &[Policy]) {
    for p in policies.iter().filter(|p| p.mode == Mode::Observe) {
        info!(policy = %p.name, "observe mode: recycles are reported, never carried out");
    }
}
