//! The one shutdown sequence, used by a restart, a stop, a group found populated before a start,
//! and stray reaping: the worker's own signal through its pidfd, memory.high lifted so a
//! throttled worker can finish its job, a bounded wait for the processes to end and the group to
//! empty, cgroup.kill, a bounded wait, SIGKILL through the pidfd for a process that left its group,
//! a bounded wait, memory.high restored. Every wait has a bound and every outcome is logged; a
//! group whose state cannot be read counts as populated (it is killed, never assumed empty).

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::time::timeout_at;
use tracing::{error, info, warn};

use crate::cgroupfs::{CgroupError, Group, CGROUP_EVENTS};
use crate::units::Limit;
use crate::watch::{FileWatch, PidFd, WatchError};

/// How long cgroup.kill is repeated until the group is empty.
pub const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a process that survived cgroup.kill (it left its group, or sits in D state) gets to
/// end after SIGKILL through its pidfd before oomguard gives up on it.
pub const MAIN_KILL_WAIT: Duration = Duration::from_secs(10);
/// After cgroup.kill emptied the group: how long a killed process may take to be reaped before
/// it counts as one that escaped the kill.
const SETTLE: Duration = Duration::from_secs(1);
/// How often a cgroup.events that cannot be read is tried again within a wait.
const RETRY: Duration = Duration::from_millis(100);

/// A process to stop: our child (whose exit status we collect) or an adopted one, always with a
/// pidfd, the only handle oomguard signals through.
pub struct Proc {
    pub pidfd: PidFd,
    pub child: Option<tokio::process::Child>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pidfd.pid()
    }

    /// Waits for the process to end; the exit status only for our own child.
    pub async fn wait(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            return child.wait().await.ok();
        }
        self.pidfd.exited().await;
        None
    }

    /// Opens a pidfd for `pid` and checks that it is still in `group` afterwards: a pid read from
    /// cgroup.procs may have ended and been reused before the pidfd was opened.
    pub fn adopt(pid: u32, group: &Group) -> Result<Proc, String> {
        let pidfd = PidFd::open(pid).map_err(|e| format!("pidfd_open({pid}): {e}"))?;
        let procs = group
            .procs()
            .map_err(|e| format!("cannot check that pid {pid} is still in its group: {e}"))?;
        if !procs.contains(&pid) {
            return Err(format!(
                "pid {pid} is no longer in {} (it ended, or the pid was reused)",
                group.path().display()
            ));
        }
        Ok(Proc { pidfd, child: None })
    }

    /// Every process in the group and the groups below it (`children:` leaves, groups a worker
    /// made), each by a pidfd checked against its group; a pid that cannot be opened is left to
    /// cgroup.kill.
    pub fn of_group(group: &Group) -> Vec<Proc> {
        group
            .subtree()
            .into_iter()
            .filter_map(Result::ok)
            .flat_map(|g| {
                let pids = g.procs().unwrap_or_default();
                pids.into_iter()
                    .filter_map(move |pid| Proc::adopt(pid, &g).ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// What cgroup.events says, failing closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Emptiness {
    /// `populated 0`, or the group is gone.
    Empty,
    Populated,
    /// cgroup.events could not be read (e.g. no fd left): to be treated as populated.
    Unknown(String),
}

impl Emptiness {
    pub fn is_empty(&self) -> bool {
        *self == Emptiness::Empty
    }

    fn of(text: &str, path: &std::path::Path) -> Emptiness {
        match crate::cgroupfs::parse_keyed(text).get("populated") {
            Some(0) => Emptiness::Empty,
            Some(_) => Emptiness::Populated,
            None => Emptiness::Unknown(format!("no `populated` line in {}", path.display())),
        }
    }
}

/// Waits until cgroup.events says the group is empty, woken by the kernel, at most `limit`. An
/// error (cgroup.events cannot be opened or read) is retried until the limit and then reported
/// as `Unknown`; only `populated 0` or a vanished group is `Empty`.
pub async fn wait_empty(group: &Group, limit: Duration) -> Emptiness {
    let deadline = Instant::now() + limit;
    let path = group.file(CGROUP_EVENTS);
    loop {
        let state = match FileWatch::open(&path) {
            Err(e) => from_error(e),
            Ok(mut watch) => watch_until_empty(&mut watch, &path, deadline).await,
        };
        if state.is_empty() || Instant::now() >= deadline {
            return state;
        }
        if let Emptiness::Unknown(_) = state {
            let pause = RETRY.min(deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
    }
}

fn from_error(e: WatchError) -> Emptiness {
    if e.is_gone() {
        Emptiness::Empty
    } else {
        Emptiness::Unknown(e.to_string())
    }
}

async fn watch_until_empty(
    watch: &mut FileWatch,
    path: &std::path::Path,
    deadline: Instant,
) -> Emptiness {
    let mut state = match watch.read() {
        Ok(text) => Emptiness::of(&text, path),
        Err(e) => return from_error(e),
    };
    while state == Emptiness::Populated {
        match timeout_at(deadline.into(), watch.changed()).await {
            Err(_) => return Emptiness::Populated,
            Ok(Ok(text)) => state = Emptiness::of(&text, path),
            Ok(Err(e)) => return from_error(e),
        }
    }
    state
}

/// Whether a group is populated, right now, failing closed: only `populated 0` or a vanished
/// group is empty.
pub fn emptiness(group: &Group) -> Emptiness {
    match group.read(CGROUP_EVENTS) {
        Ok(text) => Emptiness::of(&text, &group.file(CGROUP_EVENTS)),
        Err(CgroupError::Gone { .. }) => Emptiness::Empty,
        Err(e) => Emptiness::Unknown(e.to_string()),
    }
}

/// cgroup.kill, repeated until the group is empty, at most [`KILL_WAIT`]. Returns the last state.
pub async fn kill_group(who: &str, group: &Group) -> Emptiness {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        match group.kill() {
            Ok(()) | Err(CgroupError::Gone { .. }) => {}
            Err(e) => warn!(instance = %who, "cgroup.kill: {e}"),
        }
        let state = wait_empty(group, Duration::from_secs(1)).await;
        if state.is_empty() {
            return state;
        }
        if Instant::now() >= deadline {
            error!(
                instance = %who,
                "group still has processes {:?} {}s after cgroup.kill ({state:?}); giving up on them",
                group.procs().unwrap_or_default(),
                KILL_WAIT.as_secs()
            );
            return state;
        }
    }
}

/// One shutdown: whom, how, and what to restore.
pub struct Sequence<'a> {
    /// The instance id (or the group's path for a stray), for the logs.
    pub who: &'a str,
    pub group: &'a Group,
    pub signal: Signal,
    pub grace: Duration,
    /// memory.high to restore at the end; None for a group that is removed afterwards.
    pub high: Option<Limit>,
}

/// How a shutdown went.
#[derive(Debug)]
pub struct Report {
    /// The first process's exit status, when it ended by itself within the grace period (our
    /// child only).
    pub status: Option<ExitStatus>,
    /// The grace period ran out (or the group's state could not be read): cgroup.kill was used.
    pub killed: bool,
    /// What happened beyond the usual, in words for the event (a process that left its group).
    pub notes: Vec<String>,
    /// From the signal to the end of the sequence.
    pub took: Duration,
}

impl Sequence<'_> {
    /// The graceful signal through each pidfd, then memory.high lifted so a throttled worker can
    /// finish its job. Returns when the signal went out.
    pub fn begin(&self, procs: &[Proc]) -> Instant {
        for p in procs {
            if let Err(e) = p.pidfd.signal(self.signal) {
                warn!(instance = %self.who, pid = p.pid(), "cannot send {}: {e}", self.signal);
            }
        }
        let signalled = Instant::now();
        // The group's and every leaf's below it (`children:`): a child throttled at its own
        // memory.high must be able to finish its job too.
        for group in self.group.subtree().into_iter().filter_map(Result::ok) {
            match group.set_high(Limit::Max) {
                Ok(()) | Err(CgroupError::Gone { .. }) => {}
                Err(e) => {
                    warn!(instance = %self.who, group = %group.path().display(), "cannot lift memory.high for the grace period: {e}")
                }
            }
        }
        signalled
    }

    /// Everything after the signal: the grace period, cgroup.kill, SIGKILL for what escaped,
    /// memory.high restored.
    pub async fn finish(&self, procs: &mut [Proc], signalled: Instant) -> Report {
        let deadline = signalled + self.grace;
        let mut ended = vec![false; procs.len()];
        let mut status = None;
        let all_ended = timeout_at(deadline.into(), async {
            for (i, p) in procs.iter_mut().enumerate() {
                let s = p.wait().await;
                if i == 0 {
                    status = s;
                }
                ended[i] = true;
            }
        })
        .await
        .is_ok();
        let state = if all_ended {
            wait_empty(
                self.group,
                deadline.saturating_duration_since(Instant::now()),
            )
            .await
        } else {
            Emptiness::Populated
        };
        let mut report = Report {
            status,
            killed: !(all_ended && state.is_empty()),
            notes: Vec::new(),
            took: Duration::ZERO,
        };
        if report.killed {
            if let Emptiness::Unknown(why) = &state {
                warn!(instance = %self.who, "cannot tell whether the group emptied ({why}): killing it");
            }
            let after_kill = kill_group(self.who, self.group).await;
            if !after_kill.is_empty() {
                report.notes.push(format!(
                    "the group was not seen empty after cgroup.kill ({after_kill:?})"
                ));
            }
            self.kill_survivors(procs, &mut ended, &mut report).await;
        }
        if let Some(high) = self.high {
            if let Err(e) = self.group.set_high(high) {
                warn!(instance = %self.who, "cannot restore memory.high: {e}");
            }
        }
        report.took = signalled.elapsed();
        report
    }

    /// Processes that cgroup.kill did not end: they left the group (a root worker can move
    /// itself) or are stuck in the kernel. SIGKILL through the pidfd, then a bounded wait.
    async fn kill_survivors(&self, procs: &mut [Proc], ended: &mut [bool], report: &mut Report) {
        for (i, p) in procs.iter_mut().enumerate() {
            if ended[i] {
                continue;
            }
            let pid = p.pid();
            let who = if i == 0 { "main pid" } else { "pid" };
            if timeout_at((Instant::now() + SETTLE).into(), p.wait())
                .await
                .is_ok()
            {
                continue;
            }
            let where_ = match self.group.procs() {
                Ok(pids) if !pids.contains(&pid) => "left its group",
                Ok(_) => "survived cgroup.kill",
                Err(_) => "was not seen to end after cgroup.kill",
            };
            if let Err(e) = p.pidfd.signal(Signal::SIGKILL) {
                warn!(instance = %self.who, pid, "cannot send SIGKILL through the pidfd: {e}");
            }
            let waited = timeout_at((Instant::now() + MAIN_KILL_WAIT).into(), p.wait()).await;
            let note = if waited.is_ok() {
                let note = format!("{who} {pid} {where_}: killed it through its pidfd");
                info!(instance = %self.who, pid, "{note}");
                note
            } else {
                let note = format!(
                    "{who} {pid} {where_} and did not exit within {} s after SIGKILL; giving up on it",
                    MAIN_KILL_WAIT.as_secs()
                );
                error!(instance = %self.who, pid, "{note}");
                note
            };
            report.notes.push(note);
        }
    }

    pub async fn run(&self, procs: &mut [Proc]) -> Report {
        let signalled = self.begin(procs);
        self.finish(procs, signalled).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn adoption_checks_the_pid_against_the_group_after_opening_the_pidfd() {
        let dir = tempfile::tempdir().unwrap();
        let g = Group::new(dir.path().join("g"));
        g.create().unwrap();
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Not (or no longer) in the group, e.g. the pid was reused by another process.
        g.write(crate::cgroupfs::CGROUP_PROCS, "1\n").unwrap();
        let err = Proc::adopt(pid, &g).err().expect("not in the group");
        assert!(err.contains("no longer in"), "{err}");
        g.write(crate::cgroupfs::CGROUP_PROCS, &format!("1\n{pid}\n"))
            .unwrap();
        let p = Proc::adopt(pid, &g).expect("in the group");
        assert_eq!(p.pid(), pid);
        let pids: Vec<u32> = Proc::of_group(&g).iter().map(Proc::pid).collect();
        assert!(pids.contains(&pid), "{pids:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn only_populated_0_is_empty() {
        let path = std::path::Path::new("cgroup.events");
        assert_eq!(
            Emptiness::of("populated 0\nfrozen 0\n", path),
            Emptiness::Empty
        );
        assert_eq!(Emptiness::of("populated 1\n", path), Emptiness::Populated);
        assert!(matches!(Emptiness::of("", path), Emptiness::Unknown(_)));
    }
}
