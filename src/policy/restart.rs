//! Rules for `restart:`: the graceful signal, the grace period, backoff and the restart limit.
//! The whole section is optional; these defaults are the ones docs/policy.md lists.

use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::bounds;
use super::raw::RawRestart;
use super::validate::Check;
use crate::policy::{MemoryLimits, Overlap, RestartPolicy};
use crate::units::Dur;
use crate::units::Limit;

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_READY: Duration = Duration::from_secs(5);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(300);
const DEFAULT_LIMIT_COUNT: u32 = 10;
const DEFAULT_LIMIT_WITHIN: Duration = Duration::from_secs(3600);

/// Accepts "SIGTERM", "TERM", "term"; refuses what cannot be handled.
pub(super) fn parse_signal(text: &str) -> Result<i32, String> {
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    match Signal::from_str(&name) {
        Ok(sig @ (Signal::SIGKILL | Signal::SIGSTOP)) => Err(format!(
            "{sig} cannot be caught, so no worker can shut down gracefully on it; oomguard already \
             kills the group itself when restart.grace runs out: use the worker's graceful \
             shutdown signal, e.g. SIGTERM"
        )),
        Ok(sig) => Ok(sig as i32),
        Err(_) => Err(format!(
            "unknown signal `{text}`: use a signal name such as SIGTERM, SIGINT, SIGQUIT, SIGHUP \
             or SIGUSR1 (the SIG prefix is optional)"
        )),
    }
}

impl Check<'_> {
    pub(super) fn restart(&mut self, raw: Option<RawRestart>) -> Option<RestartPolicy> {
        let raw = raw.unwrap_or(RawRestart {
            signal: None,
            grace: None,
            ready: None,
            backoff: None,
            limit: None,
            hooks: None,
            overlap: None,
        });
        let ready_written = raw.ready.is_some();
        let overlap = match raw.overlap {
            None => Some(false),
            Some(f) => self.take("restart.overlap", f, "write true or false"),
        };
        let hooks = self.hooks(raw.hooks);
        let signal = match raw.signal {
            None => Some(libc::SIGTERM),
            Some(f) => self
                .take(
                    "restart.signal",
                    f,
                    "write the signal's name, e.g. SIGTERM (numbers differ between architectures)",
                )
                .and_then(|s| match parse_signal(&s) {
                    Ok(sig) => Some(sig),
                    Err(e) => {
                        self.fail("restart.signal", e);
                        None
                    }
                }),
        };
        let grace = self.optional("restart.grace", raw.grace, Dur(DEFAULT_GRACE), "");
        let grace = self.bounded("restart.grace", grace.map(|d| d.0), bounds::GRACE);
        // 0 is allowed: a rolling restart then only waits for each replacement to start.
        let ready = self.optional("restart.ready", raw.ready, Dur(DEFAULT_READY), "");
        let ready = self.bounded("restart.ready", ready.map(|d| d.0), bounds::READY);
        let (initial, max) = match raw.backoff {
            None => (Some(DEFAULT_BACKOFF_INITIAL), Some(DEFAULT_BACKOFF_MAX)),
            Some(b) => {
                let i = self.optional(
                    "restart.backoff.initial",
                    b.initial,
                    Dur(DEFAULT_BACKOFF_INITIAL),
                    "",
                );
                let m = self.optional("restart.backoff.max", b.max, Dur(DEFAULT_BACKOFF_MAX), "");
                (i.map(|d| d.0), m.map(|d| d.0))
            }
        };
        let initial = self.bounded("restart.backoff.initial", initial, bounds::BACKOFF_INITIAL);
        let max = self.bounded("restart.backoff.max", max, bounds::BACKOFF_MAX);
        if let (Some(i), Some(m)) = (initial, max) {
            if m < i {
                self.fail(
                    "restart.backoff.max",
                    format!(
                        "restart.backoff.max ({}) is below restart.backoff.initial ({}): raise max \
                         or lower initial",
                        Dur(m),
                        Dur(i)
                    ),
                );
            }
        }
        let max = max.filter(|m| initial.is_some_and(|i| *m >= i));
        let (count, within) = match raw.limit {
            None => (
                Some(i64::from(DEFAULT_LIMIT_COUNT)),
                Some(DEFAULT_LIMIT_WITHIN),
            ),
            Some(l) => {
                let c = self.optional(
                    "restart.limit.count",
                    l.count,
                    i64::from(DEFAULT_LIMIT_COUNT),
                    "write a whole number, 1 or more",
                );
                let w = self.optional(
                    "restart.limit.within",
                    l.within,
                    Dur(DEFAULT_LIMIT_WITHIN),
                    "",
                );
                (c, w.map(|d| d.0))
            }
        };
        let count = count.and_then(|c| match u32::try_from(c) {
            Ok(c) if c >= 1 => Some(c),
            _ => {
                self.fail(
                    "restart.limit.count",
                    format!("{c} is out of range: use 1 or more (up to {})", u32::MAX),
                );
                None
            }
        });
        let within = self.bounded("restart.limit.within", within, bounds::LIMIT_WITHIN);
        Some(RestartPolicy {
            signal: signal?,
            grace: grace?,
            ready: ready?,
            backoff_initial: initial?,
            backoff_max: max?,
            limit_count: count?,
            limit_within: within?,
            hooks: hooks?,
            overlap: overlap?.then_some(Overlap {
                ready: if ready_written {
                    ready?
                } else {
                    Duration::ZERO
                },
            }),
        })
    }
}

impl Check<'_> {
    /// `restart.overlap` runs two generations of a worker at once, each under the policy's
    /// limits, in an instance group whose memory.max is twice memory.max (the envelope): so
    /// memory.max must be a size. With `children:` a generation is the whole prefork server
    /// (its main process and every child's leaf), so the same rule holds: memory.max bounds
    /// one generation, children's limits bound each leaf inside it, the envelope two of them.
    pub(super) fn overlap_fits(
        &mut self,
        restart: Option<&RestartPolicy>,
        memory: Option<&MemoryLimits>,
    ) {
        if restart.and_then(|r| r.overlap).is_none() {
            return;
        }
        if let Some(m) = memory {
            if overlap_envelope(m.max).is_none() {
                self.fail(
                    "restart.overlap",
                    format!(
                        "needs memory.max as a size (it is {}): while the replacement and the old \
                         worker both run, the instance's group holds twice memory.max; set \
                         memory.max, e.g. max: 2G, or remove `restart.overlap`",
                        m.max
                    ),
                );
            }
        }
    }
}

/// The most a policy with overlap may use at once: every instance's memory.max, plus one more
/// generation for the instance being restarted (a policy's restarts run one at a time).
pub fn overlap_peak(instances: u32, max: Limit) -> Option<u64> {
    max.bytes()?.checked_mul(u64::from(instances) + 1)
}

/// The instance group's memory.max while it may hold two generations: twice the policy's
/// memory.max; None when that has no size ("max") or the sum overflows.
pub fn overlap_envelope(max: Limit) -> Option<u64> {
    max.bytes()?.checked_mul(2)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_signal;
    use crate::policy::testutil::{accepts, rejects, BASE};

    fn restart(section: &str) -> String {
        format!("{BASE}restart:\n{section}\n")
    }

    #[test]
    fn signals_by_name_with_or_without_sig() {
        for (text, want) in [
            ("SIGTERM", libc::SIGTERM),
            ("TERM", libc::SIGTERM),
            ("term", libc::SIGTERM),
            ("SIGINT", libc::SIGINT),
            ("QUIT", libc::SIGQUIT),
            ("SIGHUP", libc::SIGHUP),
            ("USR1", libc::SIGUSR1),
            ("SIGUSR2", libc::SIGUSR2),
            ("WINCH", libc::SIGWINCH),
            ("TSTP", libc::SIGTSTP),
        ] {
            assert_eq!(parse_signal(text), Ok(want), "{text}");
        }
        for uncatchable in ["KILL", "SIGKILL", "STOP", "SIGSTOP"] {
            assert!(parse_signal(uncatchable)
                .unwrap_err()
                .contains("cannot be caught"));
        }
        for unknown in ["", "SIG", "FOO", "SIGTERM2", "15"] {
            assert!(
                parse_signal(unknown)
                    .unwrap_err()
                    .contains("unknown signal"),
                "{unknown}"
            );
        }
    }

    #[test]
    fn ready_defaults_to_5s_and_may_be_zero() {
        assert_eq!(accepts(BASE).restart.ready, Duration::from_secs(5));
        assert_eq!(
            accepts(&restart("  ready: 20s")).restart.ready,
            Duration::from_secs(20)
        );
        assert_eq!(
            accepts(&restart("  ready: 0")).restart.ready,
            Duration::ZERO
        );
        rejects(&restart("  ready: soon"), "restart.ready", "");
    }

    #[test]
    fn signal_key_errors() {
        assert_eq!(
            accepts(&restart("  signal: SIGQUIT")).restart.signal,
            libc::SIGQUIT
        );
        rejects(
            &restart("  signal: SIGKILL"),
            "restart.signal",
            "SIGKILL cannot be caught",
        );
        rejects(
            &restart("  signal: SIGSTOP"),
            "restart.signal",
            "SIGSTOP cannot be caught",
        );
        rejects(&restart("  signal: 15"), "restart.signal", "signal's name");
        rejects(
            &restart("  signal: SIGFOO"),
            "restart.signal",
            "unknown signal `SIGFOO`",
        );
    }

    #[test]
    fn durations_and_counts_are_positive() {
        rejects(
            &restart("  grace: 0s"),
            "restart.grace",
            "is below the allowed range",
        );
        rejects(&restart("  grace: 30"), "restart.grace", "no unit");
        rejects(
            &restart("  backoff: {initial: 0s}"),
            "restart.backoff.initial",
            "is below the allowed range",
        );
        rejects(
            &restart("  backoff: {initial: 1m, max: 30s}"),
            "restart.backoff.max",
            "is below restart.backoff.initial (1m)",
        );
        rejects(
            &restart("  backoff: {initial: 10m}"),
            "restart.backoff.max",
            "(5m) is below",
        );
        rejects(
            &restart("  limit: {count: 0}"),
            "restart.limit.count",
            "use 1 or more",
        );
        rejects(
            &restart("  limit: {count: -3}"),
            "restart.limit.count",
            "use 1 or more",
        );
        rejects(
            &restart("  limit: {count: many}"),
            "restart.limit.count",
            "whole number",
        );
        rejects(
            &restart("  limit: {within: 0s}"),
            "restart.limit.within",
            "is below the allowed range",
        );
        rejects(
            &restart("  backof: {initial: 1s}"),
            "restart.backof",
            "unknown key",
        );
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let r = accepts(&restart("  backoff: {max: 1m}\n  limit: {count: 3}")).restart;
        assert_eq!(
            (r.backoff_initial, r.backoff_max),
            (Duration::from_secs(1), Duration::from_secs(60))
        );
        assert_eq!(
            (r.limit_count, r.limit_within),
            (3, Duration::from_secs(3600))
        );
        assert_eq!(
            (r.signal, r.grace),
            (libc::SIGTERM, Duration::from_secs(30))
        );
        let r = accepts(&restart("  backoff: {initial: 1m, max: 1m}")).restart;
        assert_eq!(r.backoff_initial, r.backoff_max);
    }

    #[test]
    fn overlap_is_off_by_default_and_waits_only_for_a_written_ready() {
        assert_eq!(accepts(BASE).restart.overlap, None);
        let r = accepts(&restart("  overlap: true")).restart;
        assert_eq!(r.overlap.map(|o| o.ready), Some(Duration::ZERO));
        let r = accepts(&restart("  overlap: true\n  ready: 2s")).restart;
        assert_eq!(r.overlap.map(|o| o.ready), Some(Duration::from_secs(2)));
        assert_eq!(accepts(&restart("  overlap: false")).restart.overlap, None);
        rejects(&restart("  overlap: yes please"), "restart.overlap", "");
    }

    #[test]
    fn overlap_needs_a_sized_memory_max_and_takes_children() {
        let unbounded = BASE.replace("max: 2G", "max: max");
        rejects(
            &format!("{unbounded}restart:\n  overlap: true\n"),
            "restart.overlap",
            "needs memory.max as a size",
        );
        let prefork = format!(
            "{BASE}restart:\n  overlap: true\nchildren:\n  memory: {{high: 100M, max: 200M}}\n  triggers:\n    pressure: {{some: 150ms, window: 1s}}\n"
        );
        // A prefork server's whole generation overlaps (gunicorn --reuse-port, uWSGI, Puma).
        let r = accepts(&prefork);
        assert!(r.restart.overlap.is_some() && r.children.is_some());
        assert_eq!(
            super::overlap_envelope(crate::units::Limit::Bytes(2 << 30)),
            Some(4 << 30)
        );
        assert_eq!(super::overlap_envelope(crate::units::Limit::Max), None);
    }
}
