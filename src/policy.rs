//! Policy files: YAML in, a validated [`Policy`] out. The engine and supervisor only ever see a
//! `Policy` that passed validation; raw YAML types stay private to this module.
//!
//! - `raw`: the serde mirror of the file (`deny_unknown_fields`, every value captured, not yet
//!   trusted).
//! - `validate`: [`parse`], which turns raw into [`Policy`] and reports every problem at once;
//!   the rules per section are in `run`, `limits` (memory and triggers) and `restart`.
//! - `yaml`: serde_norway's syntax and unknown-key errors as a [`PolicyError`] with key and line.
//! - `load`: files and directories: [`load_file`], [`load_dir`], [`load_paths`].
//! - `perms`: [`check_file_permissions`]: who may write a policy file and the directories that
//!   lead to it; the read from the checked descriptor.
//! - `program`: [`Program`]: the same rules for the programs a policy runs as root (hooks, a
//!   `run.command` without a user), checked at load and executed from the checked descriptor.
//!
//! docs/policy.md is the user-facing reference for the file format and its messages.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::units::Limit;
use crate::vocabulary::Mode;

mod bounds;
mod children;
mod hooks;
mod limits;
mod load;
mod perms;
mod program;
pub use program::{runs_as_root, Program, ProgramError};
mod raw;
mod restart;
pub use restart::{overlap_envelope, overlap_peak};
mod run;
mod schema;
mod validate;
mod yaml;

#[cfg(test)]
pub(crate) mod testutil;

pub use hooks::{Hooks, PLACEHOLDERS};
pub use load::{load_dir, load_file, load_paths, load_text};
pub use perms::check_file_permissions;
pub use schema::schema;
pub use validate::parse;

/// One problem with one policy file. A bad file yields a list of these, one per problem, so a user
/// fixes everything in one pass. Displays as `"{file}: {key}: {message}"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {key}: {message}", file.display())]
pub struct PolicyError {
    /// The policy file (or directory) the problem is in.
    pub file: PathBuf,
    /// Dotted key path, e.g. "memory.high" or `run.command[0]`; for problems that are not about
    /// one key: "(file)" (reading), "(permissions)", "(yaml)" (syntax), "(dir)" (listing).
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(
        file: impl Into<PathBuf>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        PolicyError {
            file: file.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Policy {
    /// "name/0", "name/1", ...: the instance ids used in status, events and cgroup paths.
    pub fn instance_ids(&self) -> Vec<String> {
        (0..self.run.instances)
            .map(|i| format!("{}/{}", self.name, i))
            .collect()
    }
}

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
    /// `children:`: each process the main process forks gets a leaf group of its own, with
    /// these limits and triggers; None keeps the whole worker in one group.
    pub children: Option<ChildrenPolicy>,
}

/// The `children:` section: per-child limits and triggers, and how one child is recycled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChildrenPolicy {
    /// At most this many children get leaves; more stay in the main leaf (said in status).
    pub max: u32,
    /// Written to each child's leaf; the instance's `memory:` stays the envelope of them all.
    pub memory: MemoryLimits,
    /// Evaluated per child, on the child's leaf.
    pub triggers: Triggers,
    pub restart: ChildRestart,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ChildRestart {
    /// The child's graceful signal (raw number); None (`none`): no signal, the child is only
    /// given its memory.high back and waited for (frameworks that recycle a child by themselves).
    pub signal: Option<i32>,
    /// From the signal (or the lifted memory.high) until the child's leaf is killed.
    pub grace: std::time::Duration,
    /// At most this many children of one instance recycling at the same time.
    pub at_once: u32,
    pub scope: ChildScope,
}

/// What a child's offence restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildScope {
    /// The child alone; its main process forks a replacement.
    Child,
    /// The whole instance, gracefully, with the instance's `restart:` (frameworks whose children
    /// have no graceful way out of their own).
    Instance,
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
    /// `boundary` (default true): with memory.high set and no `triggers.memory`, restart at a
    /// sentinel just under memory.high (`crate::engine::boundary`); false turns it off.
    pub boundary: bool,
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

#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    /// The worker's graceful shutdown signal (raw number, e.g. libc::SIGTERM).
    pub signal: i32,
    pub grace: Duration,
    /// A rolling restart moves to the next instance once the replacement ran this long.
    pub ready: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// More than `limit_count` unplanned exits within `limit_within`: state failed.
    pub limit_count: u32,
    pub limit_within: Duration,
    /// `restart.hooks`: programs run before the signal and after the respawn.
    pub hooks: Hooks,
    /// `restart.overlap: true`: make-before-break restarts (the replacement starts in a sibling
    /// group before the old worker is signalled); None when off.
    pub overlap: Option<Overlap>,
}

/// How a restart with overlap runs (docs/policy.md, "Overlapping restarts").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// How long the replacement must have run before the old worker is signalled: the
    /// `restart.ready` written in the policy, else zero (the default `ready` of a rolling
    /// restart would keep a leaking worker running for seconds past its trigger).
    pub ready: Duration,
}
