//! An offence in words, with every number that made it: the log line and the event message
//! of a restart decision, for an instance and for one child's leaf alike.

use crate::engine::{Offence, Stall};
use crate::policy::{StallKind, Triggers};
use crate::units::{fmt_dur, human_bytes};
use crate::vocabulary::Reason;

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
    fn an_unread_stall_is_said_so_never_zero() {
        let p = policy("  pressure: {some: 100ms, window: 1s}\n");
        assert!(describe(&pressure_offence(None), &p.triggers)
            .ends_with("some stall not measured (memory.pressure unreadable)"));
    }
}
