//! Commands during the long waits of a restart: the policy's restart lock (another instance may
//! hold it through its `restart.ready`), the `before` hook, `restart.ready`, the grace, the drain
//! of leftovers. Every such wait goes through [`Instance::serve`], which races it against the
//! instance's commands: a stop ends the wait (the caller then stops what runs, gracefully), a
//! reload is taken in for the rest of the restart and its replacement, and an operator's restart
//! is queued for after this one.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::info;

use super::{Command, Instance};
use crate::policy::Policy;
use crate::spawn::Identity;

/// The instance's commands: the channel from the fleet, and those queued during a restart.
pub(super) struct Inbox {
    rx: mpsc::Receiver<Command>,
    queued: VecDeque<Command>,
}

impl Inbox {
    pub(super) fn new(rx: mpsc::Receiver<Command>) -> Inbox {
        Inbox {
            rx,
            queued: VecDeque::new(),
        }
    }

    /// The next command, a queued one first. Cancel-safe.
    pub(super) async fn recv(&mut self) -> Option<Command> {
        if let Some(cmd) = self.queued.pop_front() {
            return Some(cmd);
        }
        self.rx.recv().await
    }
}

/// How a served wait ended.
pub(super) enum Served<T> {
    Done(T),
    /// A stop came first; its reply waits in `Instance::stops` for the end of the stop.
    Stopped,
}

impl Instance {
    /// Awaits `wait` while serving the instance's commands. `wait` must not borrow the instance
    /// (commands change it): clone what it needs, e.g. through `Instance::plan`. On a stop,
    /// `wait` is dropped (a hook's process is killed with it).
    pub(super) async fn serve<F: Future>(&mut self, wait: F) -> Served<F::Output> {
        tokio::pin!(wait);
        loop {
            tokio::select! {
                out = &mut wait => return Served::Done(out),
                cmd = self.inbox.rx.recv() => match cmd {
                    Some(Command::Stop(reply)) => {
                        self.stops.push(reply);
                        return Served::Stopped;
                    }
                    Some(Command::Update(policy, identity, done)) => {
                        self.take_in(policy, identity, done);
                    }
                    Some(restart) => self.inbox.queued.push_back(restart),
                    // The supervisor is gone: the daemon is exiting without stopping workers.
                    None => return Served::Done(wait.await),
                },
            }
        }
    }

    /// Right before a worker starts: the reloads already sent are taken in, so no worker starts
    /// with a policy older than the one a reload answered for. Other commands are queued.
    pub(super) fn take_in_sent(&mut self) {
        while let Ok(cmd) = self.inbox.rx.try_recv() {
            match cmd {
                Command::Update(policy, identity, done) => self.take_in(policy, identity, done),
                other => self.inbox.queued.push_back(other),
            }
        }
    }

    /// A reload while no worker is watched (a restart is under way, or one is about to start):
    /// the next start uses it whole (user, command, limits); a replacement that already runs
    /// gets its limits and triggers when it takes over (`retune`).
    fn take_in(
        &mut self,
        policy: Arc<Policy>,
        identity: Option<Identity>,
        done: oneshot::Sender<()>,
    ) {
        info!(instance = %self.id, "reload taken in: the next worker starts with it");
        self.policy = policy;
        self.identity = identity;
        self.retune = true;
        let _ = done.send(());
    }
}
