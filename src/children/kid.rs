//! One child's task: waits for its PSI trigger, its exit, or the order to recycle it, and then
//! carries the recycle out with the shutdown sequence on the child's leaf.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::{mpsc, oneshot};

use crate::cgroupfs::Group;
use crate::engine::Stall;
use crate::psi::PsiTrigger;
use crate::shutdown::{Proc, Report, Sequence};
use crate::watch::{FileWatch, PidFd};

/// What a child's task tells the set.
pub(super) enum KidNote {
    /// The trigger fired at the instant, with the stall it measured since its previous event
    /// (what the recycle line reports; None when the leaf's memory.pressure was unreadable).
    Pressure(u32, Instant, Option<Stall>),
    /// The leaf's memory.events changed (the boundary's sentinel may have been crossed).
    MemoryEvents(u32),
    PsiStopped(u32, String),
    /// Ended by itself (not recycled).
    Exited(u32),
    Recycled(u32, Recycle),
}

/// How to recycle.
pub(super) struct Order {
    /// None: no signal (`signal: none`), only the lifted memory.high and the wait.
    pub signal: Option<i32>,
    pub grace: Duration,
    /// The wake-up that decided it.
    pub woke: Instant,
}

pub(super) struct Recycle {
    pub report: Report,
    pub trigger_to_signal: Duration,
    /// The leaf's memory.events counted an OOM kill (a child that kept growing with its
    /// memory.high lifted reached its memory.max during the grace).
    pub oom_killed: bool,
}

pub(super) async fn watch(
    who: String,
    leaf: Group,
    pidfd: PidFd,
    mut psi: Option<PsiTrigger>,
    mut events: Option<FileWatch>,
    tx: mpsc::UnboundedSender<KidNote>,
    mut order: oneshot::Receiver<Order>,
) {
    let pid = pidfd.pid();
    loop {
        tokio::select! {
            changed = wait_file(&mut events) => match changed {
                Ok(_) => {
                    let _ = tx.send(KidNote::MemoryEvents(pid));
                }
                // The leaf went away, or the file cannot be watched: the PSI trigger remains.
                Err(_) => events = None,
            },
            fired = wait_psi(&mut psi) => match fired {
                Ok(()) => {
                    // Read at every event (one small file), so each measures from the last;
                    // only this task holds the trigger.
                    let woke = Instant::now();
                    let stall = psi.as_mut().and_then(|p| p.measure(woke));
                    let _ = tx.send(KidNote::Pressure(pid, woke, stall));
                }
                Err(e) => {
                    let _ = tx.send(KidNote::PsiStopped(pid, e.to_string()));
                    psi = None;
                }
            },
            _ = pidfd.exited() => {
                let _ = tx.send(KidNote::Exited(pid));
                return;
            }
            o = &mut order => {
                // Err: the set let go of this child (the worker ended): nothing to do.
                if let Ok(o) = o {
                    let recycle = recycle(&who, &leaf, pidfd, o).await;
                    let _ = tx.send(KidNote::Recycled(pid, recycle));
                }
                return;
            }
        }
    }
}

/// The shutdown sequence on one leaf: the child's signal through its pidfd (unless `none`), the
/// leaf's memory.high lifted so a throttled child can finish its job, the grace, then the leaf
/// killed (cgroup.kill, or the freeze fallback before 5.14).
async fn recycle(who: &str, leaf: &Group, pidfd: PidFd, o: Order) -> Recycle {
    let seq = Sequence {
        who,
        group: leaf,
        signal: o
            .signal
            .and_then(|s| Signal::try_from(s).ok())
            .unwrap_or(Signal::SIGTERM),
        grace: o.grace,
        // The leaf is removed afterwards.
        high: None,
    };
    let mut procs = [Proc { pidfd, child: None }];
    let signalled = match o.signal {
        Some(_) => seq.begin(&procs),
        None => seq.begin(&[]),
    };
    let trigger_to_signal = signalled.saturating_duration_since(o.woke);
    let report = seq.finish(&mut procs, signalled).await;
    // A fresh leaf per child: any OOM kill it counted happened to this child.
    let oom_killed = leaf
        .memory_events()
        .is_ok_and(|e| e.get("oom_kill").copied().unwrap_or(0) > 0);
    Recycle {
        report,
        trigger_to_signal,
        oom_killed,
    }
}

async fn wait_psi(psi: &mut Option<PsiTrigger>) -> Result<(), crate::psi::PsiError> {
    match psi {
        Some(p) => p.fired().await,
        None => std::future::pending().await,
    }
}

async fn wait_file(w: &mut Option<FileWatch>) -> Result<String, crate::watch::WatchError> {
    match w {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}
