//! The serde mirror of a policy file. Nothing here is trusted: `validate` turns it into a `Policy`.
//!
//! Two choices make "report every problem at once" possible with serde, which stops at the first
//! error:
//! - every key is an `Option`, so a missing key is reported by validation (with its path) rather
//!   than by serde;
//! - every leaf value is a [`Field`], which keeps a value that failed to deserialize as an error
//!   string instead of aborting, so `high: 3X` and `grace: soon` are both reported.
//!
//! What still aborts is structural: unknown keys (`deny_unknown_fields`), a section that is not a
//! mapping, and YAML syntax. Those come back as a single error with the line.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

use crate::units::{ByteSize, Dur, Limit};
use crate::vocabulary::Mode;

/// A leaf value: parsed, or the reason it could not be. The type's own `Deserialize` does the
/// parsing, so the units' validated newtypes remain the single source of truth.
#[derive(Debug)]
pub(super) struct Field<T>(pub Result<T, String>);

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Any YAML value is accepted here; whether it is a valid T is decided on the copy.
        let value = serde_yaml::Value::deserialize(d)?;
        Ok(Field(T::deserialize(value).map_err(|e| e.to_string())))
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub name: Option<Field<String>>,
    pub mode: Option<Field<Mode>>,
    // `run`, `memory` and `triggers` are required by validation; marked here as well so that an
    // editor flags a file without them (`oomguard schema`).
    #[schemars(required)]
    pub run: Option<RawRun>,
    #[schemars(required)]
    pub memory: Option<RawMemory>,
    #[schemars(required)]
    pub triggers: Option<RawTriggers>,
    pub restart: Option<RawRestart>,
    pub children: Option<RawChildren>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChildren {
    /// Signed so that `-1` gets a range message rather than a type error.
    pub max: Option<Field<i64>>,
    pub memory: Option<RawMemory>,
    pub triggers: Option<RawTriggers>,
    pub restart: Option<RawChildRestart>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChildRestart {
    pub signal: Option<Field<String>>,
    pub grace: Option<Field<Dur>>,
    /// Signed so that `-1` gets a range message rather than a type error.
    pub at_once: Option<Field<i64>>,
    pub scope: Option<Field<String>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRun {
    pub command: Option<Field<Vec<String>>>,
    // Signed so that `-1` gets a range message rather than a type error.
    pub instances: Option<Field<i64>>,
    pub user: Option<Field<String>>,
    pub group: Option<Field<String>>,
    pub workdir: Option<Field<String>>,
    pub env: Option<BTreeMap<String, Field<String>>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemory {
    pub high: Option<Field<Limit>>,
    pub max: Option<Field<Limit>>,
    pub swap_max: Option<Field<Limit>>,
    pub boundary: Option<Field<bool>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTriggers {
    pub pressure: Option<RawPressure>,
    pub memory: Option<RawMemoryTrigger>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPressure {
    pub some: Option<Field<Dur>>,
    pub full: Option<Field<Dur>>,
    pub window: Option<Field<Dur>>,
    #[serde(rename = "for")]
    pub sustain: Option<Field<Dur>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMemoryTrigger {
    pub above: Option<Field<ByteSize>>,
    #[serde(rename = "for")]
    pub sustain: Option<Field<Dur>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRestart {
    pub signal: Option<Field<String>>,
    pub grace: Option<Field<Dur>>,
    pub ready: Option<Field<Dur>>,
    pub backoff: Option<RawBackoff>,
    pub limit: Option<RawLimit>,
    pub hooks: Option<RawHooks>,
    /// Make-before-break restarts (docs/policy.md, "Overlapping restarts").
    pub overlap: Option<Field<bool>>,
}

/// `restart.hooks`: argv lists run around a restart (docs/policy.md, "Restart hooks").
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHooks {
    pub before: Option<Field<Vec<String>>>,
    pub after: Option<Field<Vec<String>>>,
    pub timeout: Option<Field<Dur>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub initial: Option<Field<Dur>>,
    pub max: Option<Field<Dur>>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimit {
    pub count: Option<Field<i64>>,
    pub within: Option<Field<Dur>>,
}
