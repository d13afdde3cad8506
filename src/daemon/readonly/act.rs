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

/// A child's recycle: its signal (none: it is only waited for), the grace, then SIGKILL. Its
/// parent, the worker's main process, reaps it and forks the replacement.
pub async fn recycle_child(pidfd: PidFd, signal: Option<i32>, grace: Duration) -> Ending {
    let t0 = Instant::now();
    if let Some(s) = signal {
        let _ = pidfd.signal(signal_of(s));
    }
    if tokio::time::timeout(grace, pidfd.exited()).await.is_ok() {
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
/// every descendant (by pidfd, while the main is alive and they are still its) and of its
/// process group (spawn made it a session leader, so the group id is its pid, held by the
/// unreaped main). Reaps the main and returns how it ended.
pub async fn stop_worker(
    mut child: tokio::process::Child,
    pidfd: PidFd,
    signal: i32,
    grace: Duration,
) -> Ending {
    let t0 = Instant::now();
    let pid = pidfd.pid();
    let _ = pidfd.signal(signal_of(signal));
    let exited = tokio::time::timeout(grace, pidfd.exited()).await.is_ok();
    if !exited {
        kill_tree(pid);
    }
    // The main is a zombie or still dying: its process group id cannot have been reused.
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

/// SIGKILL to every descendant of `pid` and to `pid`, each by a pidfd opened while its parent
/// is still one /proc named in the tree (a pid that ended and was reused is left alone).
fn kill_tree(pid: u32) {
    let tree = ProcTable::read(std::path::Path::new("/proc")).tree(pid);
    for &p in tree.iter().rev() {
        let Ok(fd) = PidFd::open(p) else { continue };
        let ours = p == pid || crate::procfs::parent_pid(p).is_some_and(|pp| tree.contains(&pp));
        if ours {
            let _ = fd.signal(Signal::SIGKILL);
        }
    }
}
