//! The unix-socket protocol shared by daemon and CLI: newline-delimited JSON, one request per line,
//! one response per line (a `follow` events request streams one event per line).
//! docs/protocol.md documents every request, response and error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::Mode;

/// Bumped on any incompatible change; a request with another version gets `bad_version`.
pub const PROTOCOL_VERSION: u32 = 1;

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
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pressure => "pressure",
            Reason::Memory => "memory",
            Reason::Manual => "manual",
            Reason::Exited => "exited",
            Reason::OomKilled => "oom_killed",
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// "<policy>/<index>".
    pub id: String,
    pub state: InstanceState,
    pub pids: Vec<u32>,
    pub memory_current: Option<u64>,
    /// `None` when the limit is "max".
    pub memory_high: Option<u64>,
    pub memory_max: Option<u64>,
    pub memory_peak: Option<u64>,
    pub psi_some_avg10: Option<f64>,
    pub psi_full_avg10: Option<f64>,
    /// Total stall time in microseconds (memory.pressure `some total=`).
    pub psi_some_total_us: Option<u64>,
    pub psi_full_total_us: Option<u64>,
    /// Restarts of every kind since the daemon started tracking this instance.
    pub restarts: u32,
    pub restarts_by_reason: BTreeMap<Reason, u32>,
    pub last_restart_reason: Option<Reason>,
    /// Unix time in seconds.
    pub last_restart_at: Option<u64>,
    pub oom_kills: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub mode: Mode,
    pub instances: Vec<InstanceStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: u64,
    pub cgroup_root: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon: DaemonInfo,
    pub policies: Vec<PolicyStatus>,
}

/// How a worker process ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ending {
    /// Exited by itself (after the signal, or on its own), with its exit code or signal.
    Exited { code: Option<i32>, signal: Option<i32>, after_ms: u64 },
    /// Still there after the grace period: the group was killed with cgroup.kill.
    KilledAfterGrace { after_ms: u64 },
    /// The kernel OOM killer killed it.
    OomKilled,
}

/// One decision or happening, with the evidence that led to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Monotonic sequence number since daemon start.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub instance: String,
    pub reason: Reason,
    /// "restart", "would_restart" (observe mode), "respawn", "failed", ...
    pub action: String,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    /// Increase of each memory.events counter since the instance was (re)started.
    pub memory_events_delta: BTreeMap<String, u64>,
    pub psi_some_avg10: Option<f64>,
    pub psi_full_avg10: Option<f64>,
    pub ending: Option<Ending>,
    /// From the wake-up that made the decision to the signal being sent.
    pub trigger_to_signal_us: Option<u64>,
    /// From the signal to the group being empty.
    pub signal_to_exit_ms: Option<u64>,
    /// Human-readable one-line summary, the same text as the log line.
    pub message: String,
}
