//! What the read-only mode does to processes, each through a pidfd: recycling one child of a
//! `children:` worker (its signal, SIGKILL after the child grace), and stopping a whole worker
//! (its shutdown signal, the grace, SIGKILL of its tree). No cgroup.kill: there is no group.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::container::signals::read::ProcTable;
use crate::shutdown::{KILL_WAIT, MAIN_KILL_WAIT};
use crate::vocabulary::Ending;
use crate::watch::PidFd;

fn signal_of(raw: i32) -> Signal {
    // Validated policies only hold real signals; SIGTERM is the safe reading of anything else.
    Signal::try_from(raw).unwrap_or(Signal::SIGTERM)
}

/// Ends a grace early when the daemon sends on it (the container at its last line); a sender
/// that is dropped without sending leaves the grace alone.
pub type Hurry = tokio::sync::oneshot::Receiver<()>;

/// The grace: true when the process exited within it, false at its end or when hurried.
async fn grace_wait(pidfd: &PidFd, grace: Duration, hurry: Hurry) -> bool {
    let hurried = async {
        if hurry.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        waited = tokio::time::timeout(grace, pidfd.exited()) => waited.is_ok(),
        () = hurried => false,
    }
}

/// A child's recycle: its signal (none: it is only waited for), the grace, then SIGKILL. Its
/// parent, the worker's main process, reaps it and forks the replacement.
pub async fn recycle_child(
    pidfd: PidFd,
    signal: Option<i32>,
    grace: Duration,
    hurry: Hurry,
) -> Ending {
    let t0 = Instant::now();
    if let Some(s) = signal {
        let _ = pidfd.signal(signal_of(s));
    }
    if grace_wait(&pidfd, grace, hurry).await {
        return Ending::Exited {
            code: None,
            signal: None,
            after_ms: t0.elapsed().as_millis() as u64,
        };
    }
    let _ = pidfd.signal(Signal::SIGKILL);
    let _ = tokio::time::timeout(KILL_WAIT, pidfd.exited()).await;
    Ending::KilledAfterGrace {
        after_ms: t0.elapsed().as_millis() as u64,
    }
}

/// Stops a whole worker: `signal`, up to `grace` for the main process to exit, then SIGKILL of
/// its process group (spawn made it a session leader, so the group id is its pid, held by the
/// unreaped main) and of every descendant it had when signalled or at the grace's end. Those are
/// held by pidfds opened while they were still the main's: a descendant in a session of its
/// own (setsid) outlives the main's exit, re-parented to the init, and would otherwise be left
/// running with no worker to own it (on a host, cgroup.kill of the group ends it). Reaps the
/// main and returns how it ended.
pub async fn stop_worker(
    mut child: tokio::process::Child,
    pidfd: PidFd,
    signal: i32,
    grace: Duration,
    hurry: Hurry,
) -> Ending {
    let t0 = Instant::now();
    let pid = pidfd.pid();
    let mut tree = descendants(pid);
    let _ = pidfd.signal(signal_of(signal));
    let exited = grace_wait(&pidfd, grace, hurry).await;
    if !exited {
        // Read while the main is alive: once it dies its children are the init's.
        tree.extend(descendants(pid));
    }
    for fd in &tree {
        // One that already ended (or was reaped) answers ESRCH: nothing to do.
        let _ = fd.signal(Signal::SIGKILL);
    }
    let _ = pidfd.signal(Signal::SIGKILL);
    // The main is a zombie or dying: its process group id cannot have been reused.
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
    let status = tokio::time::timeout(MAIN_KILL_WAIT, child.wait()).await;
    let after_ms = t0.elapsed().as_millis() as u64;
    match status {
        Ok(Ok(st)) if exited => {
            use std::os::unix::process::ExitStatusExt;
            Ending::Exited {
                code: st.code(),
                signal: st.signal(),
                after_ms,
            }
        }
        _ => Ending::KilledAfterGrace { after_ms },
    }
}

/// A pidfd for every descendant of `pid` (not `pid` itself), each opened while its parent is
/// still one /proc named in the tree: a pid that ended and was reused is left out.
fn descendants(pid: u32) -> Vec<PidFd> {
    let tree = ProcTable::read(std::path::Path::new("/proc")).tree(pid);
    tree.iter()
        .filter(|&&p| p != pid)
        .filter_map(|&p| {
            let fd = PidFd::open(p).ok()?;
            crate::procfs::parent_pid(p)
                .is_some_and(|pp| tree.contains(&pp))
                .then_some(fd)
        })
        .collect()
}
