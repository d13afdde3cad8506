//! PID 1 duties inside a container: orphans reaped, the runtime's signals passed on, the daemon's
//! exit status handed back.
//!
//! A process whose parent exits is re-parented to PID 1 (or to the nearest subreaper above it),
//! which must wait() for it, or it stays a zombie for the container's life. The daemon cannot
//! do that itself without racing its own waits: tokio waits for each worker and hook by its pid,
//! and a waitpid(-1) takes a worker's exit status from under it. Peeking with waitid(P_ALL,
//! WNOWAIT) and reaping only strangers would need the set of the daemon's own pids kept exact
//! across fork, exit and pid reuse (a stale entry hides an orphan behind it, a missing one steals
//! a status). So oomguard splits as tini does: before the async runtime exists (one thread, so
//! fork is safe), the process the runtime started stays behind as a small init and forks the
//! daemon. The init's only own child is the daemon, so it may wait(-1) on everything: orphans are
//! reaped, and the daemon's status is kept and becomes the init's. The workers stay the daemon's
//! children and are waited for by the daemon alone, as on a host.
//!
//! As PID 1 oomguard always splits. Not PID 1 but in a container (under tini or `docker --init`),
//! the init makes itself a subreaper (PR_SET_CHILD_SUBREAPER), so the workers' orphans come to it
//! rather than to whatever runs above. On a host nothing happens: systemd reaps.

use std::process::ExitCode;

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, setpgid, ForkResult, Pid};
use tracing::{info, warn};

/// Passed on to the daemon: the runtime's stop (TERM), a terminal's (INT, QUIT), reload (HUP),
/// detach (USR2) and the rest a daemon may be sent.
const FORWARDED: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// Whether this process must reap: PID 1 always; a container's process becomes a subreaper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Duty {
    None,
    Pid1,
    Subreaper,
}

pub fn duty(pid: u32, in_container: bool) -> Duty {
    match (pid, in_container) {
        (1, _) => Duty::Pid1,
        (_, true) => Duty::Subreaper,
        _ => Duty::None,
    }
}

/// Whether /sys/fs/cgroup says we run in a container (one that cannot be guarded counts too:
/// the daemon refuses it with the reason, and the init hands back that status).
pub fn in_container() -> bool {
    let mount = std::path::Path::new(crate::layout::CGROUP_MOUNT);
    let probe = super::detect::Probe::read(mount);
    !matches!(super::detect::detect(mount, &probe, |_| false), Ok(None))
}

/// Call before any thread or runtime exists. Returns None in the process that goes on as the
/// daemon (on a host: the only process); in the init, the exit code once the daemon ended.
pub fn split_if_needed() -> Option<ExitCode> {
    let duty = duty(std::process::id(), in_container());
    if duty == Duty::None {
        return None;
    }
    match split(duty) {
        Ok(code) => code,
        Err(e) => {
            // Without the split the daemon still guards; orphans then stay zombies.
            warn!("cannot set up orphan reaping ({e}): running without it");
            None
        }
    }
}

fn split(duty: Duty) -> nix::Result<Option<ExitCode>> {
    if duty == Duty::Subreaper {
        // SAFETY: prctl with an integer option and no pointers.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(nix::Error::last());
        }
    }
    let mut set = SigSet::empty();
    FORWARDED.iter().for_each(|s| set.add(*s));
    set.add(Signal::SIGCHLD);
    // Blocked before the fork, so none is lost between it and the wait loop; the daemon gets
    // its old mask back. A signal that came before the fork stays pending here and is passed on.
    let old = set.thread_swap_mask(SigmaskHow::SIG_BLOCK)?;
    // SAFETY: no other thread exists yet (the runtime is built after this), so the child may
    // run anything.
    match unsafe { fork() }? {
        ForkResult::Child => {
            // Its own process group: a terminal's ^C reaches the init only, which passes it on
            // once (twice would be the daemon's "second signal: exit at once").
            let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
            old.thread_set_mask()?;
            Ok(None)
        }
        ForkResult::Parent { child } => {
            info!(
                daemon = child.as_raw(),
                "{}: this process reaps orphans and passes signals on to the daemon (pid {child})",
                match duty {
                    Duty::Pid1 => "PID 1",
                    _ => "a subreaper",
                }
            );
            Ok(Some(serve(child, &set)))
        }
    }
}

/// The init's loop: signals to the daemon, every exited child reaped, until the daemon ends.
fn serve(daemon: Pid, set: &SigSet) -> ExitCode {
    let mut orphans = 0u64;
    loop {
        let sig = match set.wait() {
            Ok(sig) => sig,
            Err(e) => {
                warn!("sigwait: {e}");
                continue;
            }
        };
        if sig != Signal::SIGCHLD {
            // ESRCH: it is exiting; its SIGCHLD comes next.
            let _ = kill(daemon, sig);
            continue;
        }
        let (status, reaped) = reap(daemon);
        orphans += reaped;
        if let Some(code) = status {
            info!("the daemon exited with status {code}; {orphans} orphan(s) reaped");
            return ExitCode::from(code);
        }
    }
}

/// Reaps every exited child. Returns the daemon's status, as a shell would give it (128 + the
/// signal that killed it), once it is among them, and how many others were reaped.
fn reap(daemon: Pid) -> (Option<u8>, u64) {
    let mut status = None;
    let mut others = 0;
    loop {
        let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return (status, others),
            Ok(_) => continue,
        };
        if pid == daemon {
            status = Some(u8::try_from(code).unwrap_or(1));
        } else {
            others += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_1_always_reaps_and_a_container_process_becomes_a_subreaper() {
        assert_eq!(duty(1, false), Duty::Pid1);
        assert_eq!(duty(1, true), Duty::Pid1);
        assert_eq!(duty(42, true), Duty::Subreaper);
        assert_eq!(duty(42, false), Duty::None);
    }
}
