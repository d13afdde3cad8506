//! What `status` answers: the daemon, each policy, each instance and its children.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vocabulary::{ChildState, InstanceState, Mode, Reason};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// "<policy>/<index>".
    pub id: String,
    pub state: InstanceState,
    pub pids: Vec<u32>,
    pub memory_current: Option<u64>,
    /// `None` when the limit is "max". The policy's memory.high, also while the boundary's
    /// sentinel is the kernel's (see `boundary`).
    pub memory_high: Option<u64>,
    /// The memory.high boundary's sentinel, written as the kernel's memory.high a margin under
    /// `memory_high` while the worker runs (a policy with memory.high and no memory trigger).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<u64>,
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
    /// With `children:` in the policy: every child of the main process in a leaf of its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildStatus>,
    /// Children recycled (each alone) since the daemon started tracking this instance.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub child_recycles: u32,
    /// With `restart.overlap`, during a restart: the old worker being drained (also in `pids`,
    /// after the replacement's pid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_pid: Option<u32>,
    /// What could not be armed on the running worker ("pressure trigger: only 12 file
    /// descriptors left ..."): it runs without it until its next restart or a reload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unarmed: Vec<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One child of an instance's main process, in its own leaf group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChildStatus {
    pub pid: u32,
    /// The leaf's name under the instance's group: `child-<pid>`.
    pub leaf: String,
    pub state: ChildState,
    pub memory_current: Option<u64>,
    /// `None` when the limit is "max" (also while the child is recycling: its memory.high is
    /// lifted).
    pub memory_high: Option<u64>,
    /// The memory.high boundary's sentinel on the leaf (the kernel's memory.high a margin under
    /// `memory_high`), while armed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary: Option<u64>,
    pub memory_max: Option<u64>,
    pub psi_some_avg10: Option<f64>,
    /// Times oomguard began recycling this child: 0, or 1 once it is on its way out.
    pub recycles: u32,
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
    /// Log entries the journal did not take (journald slow or stalled): dropped, never waited
    /// for. 0 when logging plain text.
    #[serde(default)]
    pub log_dropped: u64,
    /// Set inside a container (docs/containers.md); left out on a host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerInfo>,
}

/// How the daemon guards inside a container, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// "writable": per-worker groups under the workers' envelope; "read-only": no groups, the
    /// workers recycled by signal (docs/containers.md).
    pub mode: String,
    /// The container's memory.max in bytes; null when "max".
    pub memory_max: Option<u64>,
    /// The workers' group's memory.max: memory_max - reserve; null when unlimited.
    pub envelope: Option<u64>,
    /// What the envelope leaves for the daemon, in bytes.
    pub reserve: u64,
    /// Read-only mode: the container usage (memory.current less droppable page cache) at which
    /// the biggest worker or child is recycled, memory_max - reserve; null otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recycle_at: Option<u64>,
    /// What was detected, in a sentence.
    pub why: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub daemon: DaemonInfo,
    pub policies: Vec<PolicyStatus>,
}
