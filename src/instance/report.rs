//! How decisions and endings are put into words and event records.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::{Instance, Worker};
use crate::cgroupfs::{MEMORY_CURRENT, MEMORY_PEAK};
use crate::protocol::EventRecord;
use crate::vocabulary::{Ending, Reason};

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
    use crate::engine::Stall;

    #[test]
    fn an_unread_avg10_is_said_so_never_zero() {
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
