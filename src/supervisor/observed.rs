//! The fleet's side of `oomguard recommend`: a policy's recorded lifetimes, with a fresh reading
//! of its running instances (the one reading the request itself costs).

use super::Fleet;
use crate::observations::PolicyObservations;

impl Fleet {
    /// `None` when the policy neither runs nor has any recorded lifetime.
    pub fn observations(&self, policy: &str) -> Option<PolicyObservations> {
        let running = {
            let policies = self.policies.read().unwrap_or_else(|e| e.into_inner());
            policies.get(policy).map(|run| {
                let groups: Vec<(String, crate::cgroupfs::Group)> = run
                    .instances
                    .iter()
                    .map(|h| (h.id.clone(), h.group.clone()))
                    .collect();
                (run.policy.clone(), groups)
            })
        };
        if let Some((_, groups)) = &running {
            for (id, group) in groups {
                self.observed.sample(id, group, true);
            }
        }
        let (ended, live) = self.observed.of_policy(policy);
        if running.is_none() && ended.is_empty() && live.is_empty() {
            return None;
        }
        let p = running.map(|(p, _)| p);
        Some(PolicyObservations {
            policy: policy.into(),
            memory_high: p.as_ref().map(|p| p.memory.high.to_string()),
            memory_max: p.as_ref().map(|p| p.memory.max.to_string()),
            grace_ms: p.as_ref().map(|p| p.restart.grace.as_millis() as u64),
            ended,
            live,
        })
    }
}
