//! A child's placement off the runtime thread: the mkdir of its leaf, its limits and the
//! cgroup.procs write take 12-25 ms each on 6.x (more under TCG), and on the daemon's one
//! runtime thread that was time the socket, PSI and the watchdog waited, for every fork.
//!
//! One placement per instance at a time, in the order the children were seen; the others wait
//! in a queue that `children.max` bounds (the caller counts them). And one at a time across the
//! daemon, on tokio's blocking pool, as when they ran on the runtime thread: every move takes
//! the kernel's cgroup_threadgroup_rwsem for writing, so moves in parallel only queue there, and
//! every fork and exit on the machine (the daemon's own worker starts too) waits behind them.
//! The result comes back on a channel, so `ChildSet::next` stays cancel-safe: a dropped wait
//! loses nothing. A set that is dropped (the worker ended) cancels what has not moved yet.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

use crate::cgroupfs::{Group, CGROUP_PROCS};
use crate::policy::MemoryLimits;
use crate::watch::PidFd;

/// A child to move: checked already (`verify`), its pidfd open.
pub(super) struct Job {
    pub pid: u32,
    pub leaf: Group,
    pub pidfd: PidFd,
    pub memory: MemoryLimits,
    /// When its fork event was read (None: found by a rescan), for the debug timings.
    pub forked: Option<Instant>,
}

/// How a placement ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// In its leaf, with the leaf's limits.
    Placed,
    /// It ended (or the set was dropped) before the move: the leaf is removed again.
    Gone,
    /// The leaf could not be made or the move failed: the leaf is removed again.
    Failed(String),
}

/// A finished job, back on the runtime.
pub(super) struct Done {
    pub job: Job,
    pub outcome: Outcome,
}

/// The daemon's one move at a time.
static MOVES: Semaphore = Semaphore::const_new(1);

pub(super) struct Placer {
    queue: VecDeque<Job>,
    /// The pid being placed now.
    busy: Option<u32>,
    tx: mpsc::UnboundedSender<Done>,
    pub rx: mpsc::UnboundedReceiver<Done>,
    /// Set when the set is dropped: a job not started or not moved yet stops.
    cancelled: Arc<AtomicBool>,
}

impl Drop for Placer {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

impl Placer {
    pub fn new() -> Placer {
        let (tx, rx) = mpsc::unbounded_channel();
        Placer {
            queue: VecDeque::new(),
            busy: None,
            tx,
            rx,
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether `pid` is queued or being placed.
    pub fn has(&self, pid: u32) -> bool {
        self.busy == Some(pid) || self.queue.iter().any(|j| j.pid == pid)
    }

    /// Children queued or being placed (they count against `children.max`).
    pub fn len(&self) -> usize {
        self.queue.len() + usize::from(self.busy.is_some())
    }

    /// The pids queued or being placed.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.busy
            .into_iter()
            .chain(self.queue.iter().map(|j| j.pid))
    }

    pub fn push(&mut self, job: Job) {
        self.queue.push_back(job);
        self.start_next();
    }

    /// The job in flight has come back (its `Done` was received): the next one starts.
    pub fn finished(&mut self) {
        self.busy = None;
        self.start_next();
    }

    fn start_next(&mut self) {
        if self.busy.is_some() {
            return;
        }
        let Some(job) = self.queue.pop_front() else {
            return;
        };
        self.busy = Some(job.pid);
        let (tx, cancelled) = (self.tx.clone(), self.cancelled.clone());
        tokio::spawn(async move {
            let Ok(_one_at_a_time) = MOVES.acquire().await else {
                return;
            };
            let _ = tokio::task::spawn_blocking(move || {
                let outcome = place(&job, &cancelled);
                // The set is gone when this fails: nothing left to tell.
                let _ = tx.send(Done { job, outcome });
            })
            .await;
        });
    }
}

/// The blocking part: the leaf, its limits, then the move by number, checked against the pidfd
/// just before (the leaf took time, and the pid may name another process by now).
fn place(job: &Job, cancelled: &AtomicBool) -> Outcome {
    if cancelled.load(Ordering::Relaxed) {
        return Outcome::Gone;
    }
    let leaf = &job.leaf;
    let t0 = Instant::now();
    let mut t1 = t0;
    let mut t2 = t0;
    let moved = leaf
        .create()
        .and_then(|()| {
            t1 = Instant::now();
            let m = job.memory;
            leaf.set_limits(m.high, m.max, m.swap_max)
        })
        .and_then(|()| {
            t2 = Instant::now();
            if cancelled.load(Ordering::Relaxed) || !job.pidfd.alive() {
                return Ok(false);
            }
            leaf.write(CGROUP_PROCS, &job.pid.to_string())
                .map(|()| true)
        });
    debug!(
        pid = job.pid,
        "placing a child: fork event to placement {:?}, mkdir {:?}, limits {:?}, move {:?}",
        job.forked.map(|a| t0.duration_since(a)),
        t1 - t0,
        t2 - t1,
        t2.elapsed()
    );
    match moved {
        Ok(true) => Outcome::Placed,
        Ok(false) => {
            let _ = leaf.remove();
            Outcome::Gone
        }
        Err(e) => {
            let _ = leaf.remove();
            // ESRCH (it ended meanwhile) reads as a failed write: not a failure then.
            if job.pidfd.alive() {
                Outcome::Failed(e.to_string())
            } else {
                Outcome::Gone
            }
        }
    }
}

#[cfg(test)]
#[path = "placing_tests.rs"]
mod tests;
