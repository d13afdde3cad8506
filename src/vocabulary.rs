//! The words every layer shares: why an instance restarted, what state it and its children are
//! in, how a worker ended, and whether a policy acts or only reports. The engine, the policy, the
//! wire protocol and the status table all speak them; this module imports nothing of the crate,
//! so none of them has to import another for a word.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and act.
    Enforce,
    /// Decide and report what would have been done; never signal, never change limits.
    Observe,
}

/// Why an instance was restarted (or ended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The PSI trigger kept firing for the policy's `for`.
    Pressure,
    /// memory.current stayed above `triggers.memory.above` for its `for`.
    Memory,
    /// An operator asked (`oomguard restart`).
    Manual,
    /// The worker exited on its own.
    Exited,
    /// The kernel OOM killer killed a process in the group.
    OomKilled,
    /// A child's offence restarted the instance (`children.restart.scope: instance`, or a
    /// respawn loop); the `child_escalation` event before the restart says which.
    Child,
    /// No memory trigger: what the worker owns (memory.stat) reached the sentinel a margin
    /// under memory.high (docs/policy.md, "The memory.high boundary").
    Boundary,
    /// Read-only container mode: the container's usage reached its memory.max minus the
    /// reserve and this was the biggest worker or child (docs/containers.md).
    ContainerLimit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pressure => "pressure",
            Reason::Memory => "memory",
            Reason::Manual => "manual",
            Reason::Exited => "exited",
            Reason::OomKilled => "oom_killed",
            Reason::Child => "child",
            Reason::Boundary => "boundary",
            Reason::ContainerLimit => "container_limit",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Group being created, process being spawned.
    Starting,
    Running,
    /// Shutdown signal sent; waiting for the grace period.
    Restarting,
    /// Exited on its own; waiting out the backoff before respawning.
    Backoff,
    /// Exceeded the restart limit; left stopped until an operator restarts it.
    Failed,
    /// Stopped on purpose (daemon shutdown, policy removed).
    Stopped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    Running,
    /// Tripped its triggers: signalled (or left to exit by itself), its leaf killed after the grace.
    Recycling,
}

impl ChildState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildState::Running => "running",
            ChildState::Recycling => "recycling",
        }
    }
}

/// How a worker process ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// Exited by itself (after the signal, or on its own), with its exit code or signal.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
        after_ms: u64,
    },
    /// Still there after the grace period: the group was killed with cgroup.kill.
    KilledAfterGrace { after_ms: u64 },
    /// The kernel OOM killer killed it.
    OomKilled,
}

impl InstanceState {
    /// The wire spelling, also used in the status table and as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Restarting => "restarting",
            InstanceState::Backoff => "backoff",
            InstanceState::Failed => "failed",
            InstanceState::Stopped => "stopped",
        }
    }
}
