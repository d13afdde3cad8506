//! Policy files: YAML in, a validated [`Policy`] out. The engine and supervisor only ever see a
//! `Policy` that passed [`validate`]-time checks; raw YAML types stay private to this module.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::units::Limit;

/// One validated policy file.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `[a-z0-9][a-z0-9_-]{0,62}`; becomes a directory name under the cgroup root.
    pub name: String,
    /// The file it came from, for messages.
    pub source: PathBuf,
    pub mode: Mode,
    pub run: Run,
    pub memory: MemoryLimits,
    pub triggers: Triggers,
    pub restart: RestartPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and act.
    Enforce,
    /// Decide and report what would have been done; never signal, never change limits.
    Observe,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    /// argv; `command[0]` is an absolute path.
    pub command: Vec<String>,
    /// 1..=1000; each instance gets `<root>/<name>/<index>`.
    pub instances: u32,
    /// Drop to this user (and its primary group unless `group` is set) before exec.
    pub user: Option<String>,
    pub group: Option<String>,
    pub workdir: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryLimits {
    pub high: Limit,
    pub max: Limit,
    pub swap_max: Option<Limit>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Triggers {
    pub pressure: Option<PressureTrigger>,
    pub memory: Option<MemoryTrigger>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StallKind {
    Some,
    Full,
}

/// A kernel PSI trigger: `<kind> <stall> <window>` written to memory.pressure, and the offence
/// only counts once the trigger kept firing for `sustain` (the policy's `for`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PressureTrigger {
    pub kind: StallKind,
    pub stall: Duration,
    pub window: Duration,
    pub sustain: Duration,
}

/// memory.current above `above` bytes for `sustain`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryTrigger {
    pub above: u64,
    pub sustain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RestartPolicy {
    /// The worker's graceful shutdown signal (raw number, e.g. libc::SIGTERM).
    pub signal: i32,
    pub grace: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// More than `limit_count` unplanned exits within `limit_within`: state failed.
    pub limit_count: u32,
    pub limit_within: Duration,
}

/// A problem in a policy file, naming the file and the key.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
    }
}

// TEMPORARY stubs until the policy branch lands.
pub fn load_dir(_dir: &std::path::Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    unimplemented!()
}
pub fn load_paths(_paths: &[PathBuf]) -> (Vec<Policy>, Vec<PolicyError>) {
    unimplemented!()
}
