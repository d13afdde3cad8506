//! `oomguard recommend POLICY [--json]`: asks the daemon what it observed of the policy's
//! workers and prints proposed limits (pure logic in `crate::recommend`).
//!
//! Over the socket, not from the state directory: the daemon holds the running lifetimes (a
//! worker that never restarts has no ended one), takes a fresh reading of them for the request,
//! and decides who may read them like any status request (docs/protocol.md); the state file
//! stays root-only.

use std::path::Path;
use std::time::Duration;

use super::{call, fail, finish, print, usage, EXIT_REFUSED};
use crate::observations::PolicyObservations;
use crate::protocol::{Request, Target};
use crate::recommend::{self, Context};

/// Added to restart.grace for the restart lead time: a trigger's `for` plus its sampling.
const DETECTION: Duration = Duration::from_secs(5);
/// restart.grace when neither a policy file nor the running daemon says.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

pub async fn cmd_recommend(socket: &Path, policy: &str, json: bool) -> u8 {
    // A policy file (its name and grace) or a policy name.
    let (name, file_grace) =
        if policy.contains('/') || policy.ends_with(".yaml") || policy.ends_with(".yml") {
            match crate::policy::load_file(Path::new(policy)) {
                Ok(p) => (p.name.clone(), Some(p.restart.grace)),
                Err(errors) => {
                    for e in &errors {
                        eprintln!("error: {e}");
                    }
                    return EXIT_REFUSED;
                }
            }
        } else {
            (policy.to_string(), None)
        };
    let target = match Target::try_from(name.as_str()) {
        Ok(t) if t.index.is_none() => t,
        Ok(_) => {
            return usage(&format!(
                "{name}: recommend takes a policy, not an instance"
            ))
        }
        Err(e) => return usage(&e),
    };
    let obs: PolicyObservations =
        match call(socket, &Request::Observations { policy: target }).await {
            Ok(o) => o,
            Err(e) => return fail(&e),
        };
    let grace = file_grace
        .or(obs.grace_ms.map(Duration::from_millis))
        .unwrap_or(DEFAULT_GRACE);
    let cx = Context {
        lead: grace + DETECTION,
    };
    let rec = recommend::recommend(&obs.policy, &obs.ended, &obs.live, cx);
    let printed = if json {
        let v = serde_json::json!({
            "recommendation": rec,
            "yaml": recommend::yaml_snippet(&rec),
            "now": {"memory_high": obs.memory_high, "memory_max": obs.memory_max},
        });
        print(&format!("{v:#}\n"))
    } else {
        let current = obs.memory_high.clone().zip(obs.memory_max.clone());
        print(&recommend::human(&rec, current))
    };
    match finish(printed) {
        // No numbers is not a success: a script must not paste nothing.
        0 if rec.not_enough.is_some() => EXIT_REFUSED,
        code => code,
    }
}
