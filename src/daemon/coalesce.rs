//! state.json (and the observations) at most once a second, whatever the event rate: every
//! write serializes every instance's view, children included, so a write per event grows with
//! the fleet times the event rate. The first change after a quiet second is written at once;
//! changes within the second after a write are written together at its end.

use std::time::{Duration, Instant};

/// The shortest time between two writes.
pub const MIN_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Coalescer {
    /// When the last write was made.
    last: Option<Instant>,
    /// The first change not written yet.
    pending: Option<Instant>,
}

impl Coalescer {
    /// Something worth writing changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        self.pending.get_or_insert(now);
    }

    /// When to write next; None when nothing waits.
    pub fn due(&self) -> Option<Instant> {
        let first = self.pending?;
        Some(match self.last {
            Some(last) => first.max(last + MIN_GAP),
            None => first,
        })
    }

    /// The write was made at `now`.
    pub fn written(&mut self, now: Instant) {
        self.pending = None;
        self.last = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes made for events at `times` (ms), driven as the main loop drives it.
    fn writes(times: &[u64]) -> Vec<u64> {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = Coalescer::default();
        let mut out = Vec::new();
        let mut events = times.iter().copied().peekable();
        loop {
            // The earlier of the next event and the write that is due.
            let next_event = events.peek().copied();
            match (next_event, c.due()) {
                (Some(e), Some(d)) if at(e) < d => {
                    c.changed(at(e));
                    events.next();
                }
                (_, Some(d)) => {
                    out.push(d.duration_since(t0).as_millis() as u64);
                    c.written(d);
                }
                (Some(e), None) => {
                    c.changed(at(e));
                    events.next();
                }
                (None, None) => return out,
            }
        }
    }

    #[test]
    fn at_most_one_write_a_second() {
        // A burst of 1000 events in 100 ms: written at once, then once for the rest.
        let burst: Vec<u64> = (0..1000).map(|i| i / 10).collect();
        assert_eq!(writes(&burst), vec![0, 1000]);
        // An event every 10 ms for 5 s: one write a second.
        let steady: Vec<u64> = (0..500).map(|i| i * 10).collect();
        assert_eq!(writes(&steady), vec![0, 1000, 2000, 3000, 4000, 5000]);
        // Quiet periods: each change is written when it happens.
        assert_eq!(writes(&[0, 1500, 4000]), vec![0, 1500, 4000]);
        assert_eq!(writes(&[]), Vec::<u64>::new());
    }

    #[test]
    fn nothing_is_left_unwritten() {
        let mut c = Coalescer::default();
        let t = Instant::now();
        c.changed(t);
        c.written(t);
        assert_eq!(c.due(), None);
        c.changed(t + Duration::from_millis(1));
        assert_eq!(c.due(), Some(t + MIN_GAP));
    }
}
