//! What `events` answers and `follow` streams: one decision or happening, with its evidence.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::vocabulary::{Ending, Reason};

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
    /// A restart's dead-time breakdown, after the two above: from the old worker's exit to the
    /// replacement's exec (plain restart; absent when the replacement never started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_to_exec_ms: Option<u64>,
    /// With `restart.overlap`: from the replacement's exec to the old worker's exit, while both
    /// ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap_ms: Option<u64>,
    /// How long the instance had no running worker: `exit_to_exec_ms` for a plain restart, 0
    /// with overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_time_ms: Option<u64>,
    /// The replacement's pid, once it runs (a restart with overlap names it from the start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacement_pid: Option<u32>,
    /// Human-readable one-line summary, the same text as the log line.
    pub message: String,
    /// The child of a `child_recycle`, `would_recycle` or `child_escalation` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_pid: Option<u32>,
    /// That child's leaf group, `child-<pid>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_leaf: Option<String>,
    /// `restart.hooks` that ran: the `before` hook in a `restart` event, the `after` hook in
    /// an `after_hook` event; left out when none ran.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
}

/// How one `restart.hooks` program went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HookRecord {
    /// `before` or `after`.
    pub when: String,
    /// The program (its arguments are left out: they may hold secrets).
    pub argv0: String,
    /// Its exit code, when it exited.
    pub exit: Option<i32>,
    /// The signal that ended it, when one did (9 after a timeout).
    pub signal: Option<i32>,
    /// Killed (with its process group) at `restart.hooks.timeout`.
    pub timed_out: bool,
    /// Why it could not be started; then nothing ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The first lines of its stdout and stderr, interleaved as written (at most 4 lines and
    /// 512 bytes; invalid UTF-8 replaced).
    pub output: String,
    pub took_ms: u64,
}

impl EventRecord {
    /// An event with only its instance, reason, action and message set; the daemon's event log
    /// fills in `seq` and `time_ms`.
    pub fn blank(instance: &str, reason: Reason, action: &str, message: String) -> EventRecord {
        EventRecord {
            seq: 0,
            time_ms: 0,
            instance: instance.to_string(),
            reason,
            action: action.into(),
            memory_current: None,
            memory_peak: None,
            memory_events_delta: BTreeMap::new(),
            psi_some_avg10: None,
            psi_full_avg10: None,
            ending: None,
            trigger_to_signal_us: None,
            signal_to_exit_ms: None,
            exit_to_exec_ms: None,
            overlap_ms: None,
            dead_time_ms: None,
            replacement_pid: None,
            message,
            child_pid: None,
            child_leaf: None,
            hooks: Vec::new(),
        }
    }
}
