//! state.json (and the observations) at most once a second, whatever the event rate: every
//! write serializes every instance's view, children included, so a write per event grows with
//! the fleet times the event rate. The first change after a quiet second is written at once;
//! changes within the second after a write are written together at its end, so a crash loses
//! at most the last second.

use std::time::Duration;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// The shortest time between two writes.
pub const MIN_GAP: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct Coalescer {
    /// When the last write was made.
    last: Option<Instant>,
    /// The first change not written yet.
    pending: Option<Instant>,
    /// The event stream ended: only pending changes are left to write.
    closed: bool,
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

    /// Takes `events` (every one is a change) until a write is due. Cancel-safe: a change is
    /// recorded as soon as it is received, so a `select!` that drops this loses nothing.
    pub async fn next_write<E: Clone>(&mut self, events: &mut broadcast::Receiver<E>) {
        loop {
            let due = self.due();
            tokio::select! {
                got = events.recv(), if !self.closed => match got {
                    // A lagging receiver missed changes: still changes.
                    Ok(_) | Err(RecvError::Lagged(_)) => self.changed(Instant::now()),
                    Err(RecvError::Closed) => self.closed = true,
                },
                _ = sleep_until_opt(due) => return,
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The main loop's use, on tokio's paused clock: `events` sent at the given ms, then the
    /// times (ms) the writes were made.
    async fn written_at(times: &[u64]) -> Vec<u64> {
        let t0 = Instant::now();
        let (tx, mut rx) = broadcast::channel::<()>(16);
        let times = times.to_vec();
        let mut sender = tokio::spawn(async move {
            for ms in times {
                tokio::time::sleep_until(t0 + Duration::from_millis(ms)).await;
                let _ = tx.send(());
            }
        });
        let (mut c, mut out, mut sent) = (Coalescer::default(), Vec::new(), false);
        loop {
            tokio::select! {
                _ = c.next_write(&mut rx) => {
                    out.push(t0.elapsed().as_millis() as u64);
                    c.written(Instant::now());
                }
                _ = &mut sender, if !sent => sent = true,
                // Ten quiet seconds after the last event: everything was written.
                _ = tokio::time::sleep(Duration::from_secs(10)), if sent => return out,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_writes_at_most_once_a_second() {
        // An event every millisecond for 10 s: one write a second.
        let flood: Vec<u64> = (0..10_000).collect();
        let w = written_at(&flood).await;
        assert_eq!(w, (0..=10).map(|s| s * 1000).collect::<Vec<_>>());
        // Every change is on disk within a second of it; a change after a quiet second at once.
        assert_eq!(
            written_at(&[0, 10, 20, 1500, 1510, 4000]).await,
            [0, 1000, 2000, 4000]
        );
        assert!(written_at(&[]).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_stream_still_writes_what_is_pending() {
        let (tx, mut rx) = broadcast::channel::<()>(4);
        let mut c = Coalescer::default();
        tx.send(()).unwrap();
        c.next_write(&mut rx).await;
        c.written(Instant::now());
        tx.send(()).unwrap();
        drop(tx);
        let t = Instant::now();
        c.next_write(&mut rx).await;
        assert_eq!(t.elapsed(), MIN_GAP);
    }

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
