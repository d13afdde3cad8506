//! How decisions and endings are put into words and event records.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Instance, Worker};
use crate::cgroupfs::{MEMORY_CURRENT, MEMORY_PEAK};
use crate::engine::{Offence, Stall};
use crate::policy::{StallKind, Triggers};
use crate::protocol::{Ending, EventRecord, Reason};
use crate::units::human_bytes;

/// The numbers recorded with a decision.
pub(super) struct Numbers {
    pub(super) current: Option<u64>,
    pub(super) peak: Option<u64>,
    pub(super) some_avg10: Option<f64>,
    pub(super) full_avg10: Option<f64>,
}

pub(super) fn fill_numbers(ev: &mut EventRecord, n: &Numbers) {
    ev.memory_current = n.current;
    ev.memory_peak = n.peak;
    ev.psi_some_avg10 = n.some_avg10;
    ev.psi_full_avg10 = n.full_avg10;
}

pub(super) fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, d)| *d > 0)
        .collect()
}

/// An offence in words, against the triggers it tripped (the instance's or a child's).
pub fn describe(offence: &Offence, triggers: &Triggers) -> String {
    match offence.reason {
        Reason::Pressure => {
            let t = triggers
                .pressure
                .expect("a pressure offence needs a pressure trigger");
            let kind = match t.kind {
                StallKind::Some => "some",
                StallKind::Full => "full",
            };
            format!(
                "memory pressure held {} (trigger {kind} {}/{} for {}), {}",
                fmt_dur(offence.held_for),
                fmt_dur(t.stall),
                fmt_dur(t.window),
                fmt_dur(t.sustain),
                describe_stall(kind, offence.stall.as_ref()),
            )
        }
        Reason::Memory => {
            let t = triggers
                .memory
                .expect("a memory offence needs a memory trigger");
            format!(
                "memory.current {} above {} for {} (trigger for {})",
                offence.memory_current.map_or("?".into(), human_bytes),
                human_bytes(t.above),
                fmt_dur(offence.held_for),
                fmt_dur(t.sustain)
            )
        }
        Reason::Boundary => match &offence.boundary {
            Some(f) => describe_boundary(f),
            None => "memory.high boundary (figures not read)".into(),
        },
        other => other.as_str().to_string(),
    }
}

/// The boundary's decision with every number it used, e.g. `memory.high boundary: owned 37.6M
/// (anon 36.9M, file 1.1M of which shmem 0B, swap 0B) reached the sentinel 37.5M (memory.high
/// 40M minus a margin of 2.5M); memory.current 37.6M; growing 18.2M/s since armed`.
pub fn describe_boundary(f: &crate::engine::boundary::Figures) -> String {
    let r = &f.reading;
    format!(
        "memory.high boundary: owned {} (anon {}, file {} of which shmem {}, swap {}) reached the sentinel {} (memory.high {} minus a margin of {}); memory.current {}; growing {}/s since armed{}",
        human_bytes(r.owned()),
        human_bytes(r.anon),
        human_bytes(r.file),
        human_bytes(r.shmem),
        human_bytes(r.swap),
        human_bytes(f.sentinel),
        human_bytes(f.high),
        human_bytes(f.high.saturating_sub(f.sentinel)),
        human_bytes(r.current),
        human_bytes(f.rate as u64),
        if f.reclaimed { "; after a memory.reclaim" } else { "" },
    )
}

/// The trigger's own measurement, e.g. `some stall 640ms in the last 1.1s`: what made the kernel
/// fire, where avg10 (a 10 s average) may still read near 0.
fn describe_stall(kind: &str, stall: Option<&Stall>) -> String {
    match stall {
        Some(s) => format!(
            "{kind} stall {} in the last {}",
            fmt_dur(s.stalled),
            fmt_dur(s.over)
        ),
        None => format!("{kind} stall not measured (memory.pressure unreadable)"),
    }
}

/// avg10 named as such, `?` when memory.pressure could not be read (never a reassuring 0).
pub(super) fn describe_avg10(avg10: Option<f64>) -> String {
    avg10.map_or("psi some avg10 ?".into(), |a| {
        format!("psi some avg10 {a:.1}%")
    })
}

pub(super) fn describe_ending(ending: &Ending, signal: i32) -> String {
    let sig = Signal::try_from(signal).map_or_else(|_| signal.to_string(), |s| s.to_string());
    match ending {
        Ending::Exited {
            code,
            signal,
            after_ms,
        } => match (code, signal) {
            (Some(c), _) => format!("exited by itself {after_ms} ms after {sig} (code {c})"),
            (_, Some(s)) => format!("ended by signal {s} {after_ms} ms after {sig}"),
            _ => format!("ended {after_ms} ms after {sig}"),
        },
        Ending::KilledAfterGrace { after_ms } => format!(
            "still running after the grace period: killed the group {after_ms} ms after {sig}"
        ),
        Ending::OomKilled => "OOM-killed by the kernel during the grace period".into(),
    }
}

pub(super) fn exit_signal(status: &std::process::ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

pub(super) fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub fn fmt_dur(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(120) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

impl Instance {
    /// The event for a worker's end (an exit, a restart): the numbers, how it ended, and what
    /// memory.events counted during its life.
    pub(super) fn ending_event(
        &self,
        w: &Worker,
        reason: Reason,
        action: &str,
        ending: Ending,
        numbers: &Numbers,
        what: &str,
    ) -> EventRecord {
        let mut ev = self.event(reason, action, what);
        fill_numbers(&mut ev, numbers);
        ev.ending = Some(ending);
        ev.memory_events_delta = delta(
            &w.events_at_start,
            &self.group.memory_events().unwrap_or_default(),
        );
        ev
    }

    pub(super) fn event(&self, reason: Reason, action: &str, message: &str) -> EventRecord {
        EventRecord::blank(&self.id, reason, action, message.into())
    }

    pub(super) fn numbers(&self) -> Numbers {
        let pressure = self.group.pressure().ok();
        Numbers {
            current: self.group.number(MEMORY_CURRENT).ok(),
            peak: self.group.number(MEMORY_PEAK).ok(),
            some_avg10: pressure.map(|p| p.some_avg10),
            full_avg10: pressure.map(|p| p.full_avg10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{parse, Policy};

    fn policy(triggers: &str) -> Policy {
        let text = format!(
            "run:\n  command: [\"/bin/sleep\", \"1000\"]\nmemory:\n  high: 48M\n  max: 96M\n\
             triggers:\n{triggers}"
        );
        parse(
            std::path::Path::new("/etc/oomguard/policies.d/leaky.yaml"),
            &text,
        )
        .expect("a valid policy")
    }

    fn pressure_offence(stall: Option<Stall>) -> Offence {
        Offence {
            boundary: None,
            reason: Reason::Pressure,
            held_for: Duration::from_millis(1080),
            memory_current: None,
            stall,
        }
    }

    #[test]
    fn a_pressure_decision_names_the_stall_the_trigger_measured() {
        let p = policy("  pressure: {some: 100ms, window: 1s, for: 1s}\n");
        let stall = Stall {
            stalled: Duration::from_micros(640_123),
            over: Duration::from_millis(1084),
        };
        assert_eq!(
            describe(&pressure_offence(Some(stall)), &p.triggers),
            "memory pressure held 1.1s (trigger some 100ms/1.0s for 1.0s), \
             some stall 640ms in the last 1.1s"
        );
        let full = policy("  pressure: {full: 150ms, window: 2s}\n");
        assert!(
            describe(&pressure_offence(Some(stall)), &full.triggers)
                .ends_with("full stall 640ms in the last 1.1s"),
            "the stall is named by the trigger's kind"
        );
    }

    #[test]
    fn an_unread_stall_or_avg10_is_said_so_never_zero() {
        let p = policy("  pressure: {some: 100ms, window: 1s}\n");
        assert!(describe(&pressure_offence(None), &p.triggers)
            .ends_with("some stall not measured (memory.pressure unreadable)"));
        assert_eq!(describe_avg10(None), "psi some avg10 ?");
        assert_eq!(describe_avg10(Some(5.44)), "psi some avg10 5.4%");
    }

    #[test]
    fn stall_between_two_readings_saturates() {
        let t0 = std::time::Instant::now();
        let t1 = t0 + Duration::from_millis(1000);
        assert_eq!(
            Stall::between((t0, 1_000), (t1, 301_000)),
            Stall {
                stalled: Duration::from_millis(300),
                over: Duration::from_millis(1000)
            }
        );
        // A counter that went backwards (a recreated group) is no stall, not a panic.
        assert_eq!(
            Stall::between((t1, 5_000), (t0, 1_000)),
            Stall {
                stalled: Duration::ZERO,
                over: Duration::ZERO
            }
        );
    }
}
