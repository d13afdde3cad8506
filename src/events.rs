//! The bounded in-memory history of decisions, a broadcast of new ones for `events --follow`, and
//! the one log line (or journal entry, `journal`) per decision.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::protocol::EventRecord;

pub mod journal;

/// How many events the history keeps; older ones are dropped (they are in the journal too).
pub const HISTORY: usize = 1000;

pub struct EventLog {
    /// A short critical section (push / copy out); never held across an await.
    inner: Mutex<(u64, VecDeque<EventRecord>)>,
    tx: broadcast::Sender<EventRecord>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new()
    }
}

impl EventLog {
    pub fn new() -> EventLog {
        let (tx, _) = broadcast::channel(256);
        EventLog {
            inner: Mutex::new((0, VecDeque::with_capacity(HISTORY))),
            tx,
        }
    }

    /// Stamps `event` with a sequence number and the time, logs it, keeps it and broadcasts it.
    /// The log line is written here, once, for every event: callers do not log it themselves.
    pub fn push(&self, mut event: EventRecord) -> EventRecord {
        {
            let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let (seq, history) = &mut *guard;
            *seq += 1;
            event.seq = *seq;
            event.time_ms = now_ms();
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(event.clone());
        }
        journal::log(&event);
        // No subscriber is fine: nobody is following.
        let _ = self.tx.send(event.clone());
        event
    }

    /// The last `n` events, oldest first.
    pub fn last(&self, n: usize) -> Vec<EventRecord> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let history = &guard.1;
        history
            .iter()
            .skip(history.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.tx.subscribe()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocabulary::Reason;

    fn event(i: usize) -> EventRecord {
        EventRecord::blank(&format!("p/{i}"), Reason::Exited, "respawn", String::new())
    }

    #[test]
    fn history_is_bounded_and_numbered() {
        let log = EventLog::new();
        let mut rx = log.subscribe();
        log.push(event(0));
        assert_eq!(
            rx.try_recv().unwrap().seq,
            1,
            "subscribers see events pushed after they joined"
        );
        for i in 1..HISTORY + 5 {
            log.push(event(i));
        }
        let last = log.last(3);
        assert_eq!(
            last.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1003, 1004, 1005]
        );
        assert_eq!(log.last(usize::MAX).len(), HISTORY);
    }
}
