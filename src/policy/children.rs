//! Rules for `children:`: each child's leaf gets limits and triggers checked by the same rules as
//! the instance's (`limits`), with keys reported under `children.`; the instance's `memory.max`
//! stays the envelope, so no child may be allowed more than the whole instance.

use std::time::Duration;

use super::bounds;
use super::raw::{RawChildRestart, RawChildren};
use super::restart::parse_signal;
use super::validate::Check;
use crate::policy::{ChildRestart, ChildScope, ChildrenPolicy, MemoryLimits};
use crate::units::{Dur, Limit};

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_AT_ONCE: i64 = 1;
/// More children recycling at once than this is an instance restart in all but name.
const AT_ONCE_MAX: i64 = 1000;
/// Children with leaves of their own, per instance: each holds three descriptors and a task,
/// and placing one costs the runtime thread a mkdir, limits and a move.
pub const DEFAULT_MAX: i64 = 64;
const MAX_MAX: i64 = 1024;

impl Check<'_> {
    /// `Some(None)` when the section is absent; `None` when it is present and invalid.
    pub(super) fn children(
        &mut self,
        raw: Option<RawChildren>,
        instance: Option<&MemoryLimits>,
    ) -> Option<Option<ChildrenPolicy>> {
        let Some(raw) = raw else {
            return Some(None);
        };
        let before = self.errors.len();
        self.prefix = "children.";
        let (memory, max) = self.memory(raw.memory);
        let triggers = self.triggers(raw.triggers, max);
        self.prefix = "";
        if let (Some(child), Some(envelope)) = (max, instance.map(|m| m.max)) {
            self.within_envelope(child, envelope);
        }
        let restart = self.child_restart(raw.restart);
        let max = self.children_max(raw.max);
        if self.errors.len() > before {
            return None;
        }
        Some(Some(ChildrenPolicy {
            max: max?,
            memory: memory?,
            triggers: triggers?,
            restart: restart?,
        }))
    }

    /// children.memory.max above the instance's memory.max could never be reached: the kernel
    /// OOM-kills in the instance's group first, and the child's own triggers would come too late.
    fn within_envelope(&mut self, child: Limit, envelope: Limit) {
        let above = match (child, envelope) {
            (_, Limit::Max) => false,
            (Limit::Max, Limit::Bytes(_)) => true,
            (Limit::Bytes(c), Limit::Bytes(e)) => c > e,
        };
        if above {
            self.fail(
                "children.memory.max",
                format!(
                    "children.memory.max ({child}) is above the instance's memory.max ({envelope}), \
                     which holds the main process and every child together: lower it below the \
                     instance's"
                ),
            );
        }
    }

    fn children_max(&mut self, raw: Option<super::raw::Field<i64>>) -> Option<u32> {
        const KEY: &str = "children.max";
        self.optional(KEY, raw, DEFAULT_MAX, "write a whole number, 1 or more")
            .and_then(|n| match u32::try_from(n) {
                Ok(n) if (1..=MAX_MAX).contains(&i64::from(n)) => Some(n),
                _ => {
                    self.fail(
                        KEY,
                        format!(
                            "{n} is out of range: use 1 to {MAX_MAX} (each child with a leaf \
                             holds three file descriptors of the daemon's)"
                        ),
                    );
                    None
                }
            })
    }

    fn child_restart(&mut self, raw: Option<RawChildRestart>) -> Option<ChildRestart> {
        let raw = raw.unwrap_or(RawChildRestart {
            signal: None,
            grace: None,
            at_once: None,
            scope: None,
        });
        const KEY: &str = "children.restart.signal";
        let signal = match raw.signal {
            None => Some(Some(libc::SIGTERM)),
            Some(f) => self
                .take(KEY, f, "write the signal's name, e.g. SIGTERM, or none")
                .and_then(|s| {
                    if s == "none" {
                        return Some(None);
                    }
                    match parse_signal(&s) {
                        Ok(sig) => Some(Some(sig)),
                        Err(e) => {
                            self.fail(KEY, format!("{e}; or `none` (no signal: the child's memory.high is lifted and it is waited for)"));
                            None
                        }
                    }
                }),
        };
        let grace = self.optional("children.restart.grace", raw.grace, Dur(DEFAULT_GRACE), "");
        let grace = self.bounded("children.restart.grace", grace.map(|d| d.0), bounds::GRACE);
        let at_once = self
            .optional(
                "children.restart.at_once",
                raw.at_once,
                DEFAULT_AT_ONCE,
                "write a whole number, 1 or more",
            )
            .and_then(|n| match u32::try_from(n) {
                Ok(n) if (1..=AT_ONCE_MAX).contains(&i64::from(n)) => Some(n),
                _ => {
                    self.fail(
                        "children.restart.at_once",
                        format!("{n} is out of range: use 1 to {AT_ONCE_MAX}"),
                    );
                    None
                }
            });
        let scope = match raw.scope {
            None => Some(ChildScope::Child),
            Some(f) => self
                .take("children.restart.scope", f, "write child or instance")
                .and_then(|s| match s.as_str() {
                    "child" => Some(ChildScope::Child),
                    "instance" => Some(ChildScope::Instance),
                    other => {
                        self.fail(
                            "children.restart.scope",
                            format!(
                                "unknown scope `{other}`: use `child` (recycle the child alone) or \
                                 `instance` (restart the whole instance gracefully)"
                            ),
                        );
                        None
                    }
                }),
        };
        Some(ChildRestart {
            signal: signal?,
            grace: grace?,
            at_once: at_once?,
            scope: scope?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::policy::testutil::{accepts, rejects, BASE};
    use crate::policy::{ChildScope, MemoryTrigger};
    use crate::units::Limit;

    fn children(section: &str) -> String {
        format!("{BASE}children:\n{section}\n")
    }

    const MINIMAL: &str = "  memory: {high: 300M, max: 400M}\n  triggers: {memory: {above: 350M}}";

    #[test]
    fn absent_means_one_group() {
        assert_eq!(accepts(BASE).children, None);
    }

    #[test]
    fn the_contract_example_parses_with_defaults() {
        let c = accepts(&children(
            "  memory: {high: 300M, max: 400M}\n  triggers: {pressure: {some: 150ms, window: 1s}}\n  restart: {signal: SIGTERM, grace: 30s, at_once: 1}",
        ))
        .children
        .expect("children");
        assert_eq!(c.memory.high, Limit::Bytes(300 << 20));
        assert_eq!(c.memory.max, Limit::Bytes(400 << 20));
        assert!(c.triggers.pressure.is_some());
        assert_eq!(c.restart.signal, Some(libc::SIGTERM));
        assert_eq!(c.restart.scope, ChildScope::Child);
        let c = accepts(&children(MINIMAL)).children.expect("children");
        assert_eq!(
            c.triggers.memory,
            Some(MemoryTrigger {
                above: 350 << 20,
                sustain: Duration::ZERO
            })
        );
        assert_eq!(c.restart.grace, Duration::from_secs(30));
        assert_eq!(c.restart.at_once, 1);
        let c = accepts(&children(&format!(
            "{MINIMAL}\n  restart: {{signal: none, at_once: 3, scope: instance, grace: 5s}}"
        )))
        .children
        .expect("children");
        assert_eq!(c.restart.signal, None);
        assert_eq!(c.restart.at_once, 3);
        assert_eq!(c.restart.scope, ChildScope::Instance);
    }

    #[test]
    fn same_rules_as_the_instance_under_children_keys() {
        rejects(
            &children("  triggers: {memory: {above: 1M}}"),
            "children.memory",
            "missing",
        );
        rejects(
            &children("  memory: {high: 500M, max: 400M}\n  triggers: {memory: {above: 1M}}"),
            "children.memory.high",
            "is above memory.max",
        );
        rejects(
            &children("  memory: {high: 300M, max: 400M}"),
            "children.triggers",
            "missing",
        );
        rejects(
            &children("  memory: {high: 300M, max: 400M}\n  triggers: {memory: {above: 400M}}"),
            "children.triggers.memory.above",
            "is not below memory.max",
        );
        rejects(
            &children(
                "  memory: {high: 300M, max: 400M}\n  triggers: {pressure: {some: 1s, window: 1s}}",
            ),
            "children.triggers.pressure.some",
            "",
        );
        rejects(
            &children(&format!("{MINIMAL}\n  colour: blue")),
            "children.colour",
            "unknown key",
        );
    }

    #[test]
    fn a_child_may_not_be_allowed_more_than_the_instance() {
        // BASE: memory.max 2G.
        rejects(
            &children("  memory: {high: 1G, max: 3G}\n  triggers: {memory: {above: 1G}}"),
            "children.memory.max",
            "above the instance's memory.max (2G)",
        );
        rejects(
            &children("  memory: {high: 1G, max: max}\n  triggers: {memory: {above: 1G}}"),
            "children.memory.max",
            "above the instance's memory.max",
        );
        accepts(&children(
            "  memory: {high: 1G, max: 2G}\n  triggers: {memory: {above: 1G}}",
        ));
    }

    #[test]
    fn the_number_of_children_with_leaves_is_capped() {
        let c = accepts(&children(MINIMAL)).children.expect("children");
        assert_eq!(i64::from(c.max), super::DEFAULT_MAX);
        let with = |m: &str| children(&format!("  max: {m}\n{MINIMAL}"));
        assert_eq!(accepts(&with("3")).children.expect("children").max, 3);
        assert_eq!(accepts(&with("1024")).children.expect("children").max, 1024);
        for bad in ["0", "-1", "1025", "5000000000"] {
            rejects(&with(bad), "children.max", "out of range: use 1 to 1024");
        }
        rejects(&with("many"), "children.max", "whole number");
    }

    #[test]
    fn restart_keys_are_bounded() {
        let with = |r: &str| children(&format!("{MINIMAL}\n  restart: {{{r}}}"));
        rejects(
            &with("signal: SIGKILL"),
            "children.restart.signal",
            "cannot be caught",
        );
        rejects(
            &with("signal: nothing"),
            "children.restart.signal",
            "or `none`",
        );
        rejects(
            &with("grace: 0s"),
            "children.restart.grace",
            "below the allowed range",
        );
        rejects(
            &with("at_once: 0"),
            "children.restart.at_once",
            "use 1 to 1000",
        );
        rejects(
            &with("at_once: 1001"),
            "children.restart.at_once",
            "use 1 to 1000",
        );
        rejects(
            &with("at_once: many"),
            "children.restart.at_once",
            "whole number",
        );
        rejects(
            &with("scope: fleet"),
            "children.restart.scope",
            "unknown scope `fleet`",
        );
    }
}
