//! How decisions and endings are put into words and event records.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Instance, Worker};
use crate::cgroupfs::{MEMORY_CURRENT, MEMORY_PEAK};
use crate::engine::Offence;
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
            format!(
                "memory pressure held {} (trigger {} {}/{} for {})",
                fmt_dur(offence.held_for),
                match t.kind {
                    StallKind::Some => "some",
                    StallKind::Full => "full",
                },
                fmt_dur(t.stall),
                fmt_dur(t.window),
                fmt_dur(t.sustain)
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
        other => other.as_str().to_string(),
    }
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
