//! What the daemon has seen of each worker lifetime (start or adoption to exit or restart): peak
//! memory, how anon memory grew, pressure stalls, how it ended. `oomguard recommend` turns it
//! into limits (`recommend`); the daemon keeps it across restarts in the state directory.
//!
//! Recording costs no wake-up of its own: the instance task hands a reading over at the wake-ups
//! it already has (start, its memory trigger's tick, a memory.events change, a PSI event, the
//! end), and a `recommend` request adds one reading of the running groups. While memory is flat
//! and nothing wakes the task, nothing is read; memory.peak (5.19+) still catches what happened
//! between two readings.
//!
//! Bounded: [`RING`] lifetimes per policy, [`MAX_POINTS`] growth points per lifetime (halved,
//! every other point dropped, when full; the spacing doubles so a long life stays covered).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::cgroupfs::{Group, MEMORY_CURRENT, MEMORY_PEAK};
use crate::events::now_ms;

/// Lifetimes kept per policy (the oldest is dropped).
pub const RING: usize = 20;
/// Growth points kept per lifetime.
pub const MAX_POINTS: usize = 48;
/// Readings closer together than this are not taken (a memory trigger ticks every second).
pub const MIN_READING_GAP_MS: u64 = 2_000;

/// What one look at a group found; `None` where a file could not be read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Reading {
    /// memory.stat `anon` plus memory.swap.current: what the worker itself allocated.
    pub anon: Option<u64>,
    pub current: Option<u64>,
    /// memory.peak: the group's high-water mark since it was created (kernel 5.19+).
    pub group_peak: Option<u64>,
    /// memory.pressure `total=` of some and full, microseconds since the group was created.
    pub stall_us: Option<(u64, u64)>,
}

impl Reading {
    /// Reads the group's files through cgroupfs; a missing file stays `None`.
    pub fn of(g: &Group) -> Reading {
        // The same memory.stat reading the memory.high boundary decides on.
        let memory = g.memory_reading().ok();
        let pressure = g.pressure().ok();
        Reading {
            anon: memory.map(|m| m.anon + m.swap),
            current: memory
                .map(|m| m.current)
                .or_else(|| g.number(MEMORY_CURRENT).ok()),
            group_peak: g.number(MEMORY_PEAK).ok(),
            stall_us: pressure.map(|p| (p.some_total_us, p.full_total_us)),
        }
    }
}

/// One point of anon memory over a lifetime: ms since its start, bytes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Point(pub u64, pub u64);

/// One worker lifetime.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lifetime {
    pub instance: String,
    pub pid: u32,
    pub started_ms: u64,
    /// The last reading, or the end.
    pub last_ms: u64,
    /// How it ended (`exited`, `oom_killed`, `pressure`, `memory`, `manual`, `stopped`, ...);
    /// `None` while it runs.
    pub ended: Option<String>,
    pub peak_anon: Option<u64>,
    pub peak_current: Option<u64>,
    /// memory.peak when the lifetime began and at its last reading: when it rose, this lifetime
    /// set the group's high-water mark and `group_peak_last` is its exact peak.
    pub group_peak_first: Option<u64>,
    pub group_peak_last: Option<u64>,
    pub stall_first_us: Option<(u64, u64)>,
    pub stall_last_us: Option<(u64, u64)>,
    pub oom_kills: u64,
    pub points: Vec<Point>,
    /// Minimum spacing of new points (doubles at each halving).
    pub gap_ms: u64,
}

impl Lifetime {
    pub fn begin(instance: &str, pid: u32, now_ms: u64, r: Reading) -> Lifetime {
        let mut l = Lifetime {
            instance: instance.into(),
            pid,
            started_ms: now_ms,
            last_ms: now_ms,
            ended: None,
            peak_anon: None,
            peak_current: None,
            group_peak_first: r.group_peak,
            group_peak_last: r.group_peak,
            stall_first_us: r.stall_us,
            stall_last_us: r.stall_us,
            oom_kills: 0,
            points: Vec::new(),
            gap_ms: MIN_READING_GAP_MS,
        };
        l.record(now_ms, r);
        l
    }

    /// Folds a reading in: peaks, the latest totals, and a growth point when spaced enough.
    pub fn record(&mut self, now_ms: u64, r: Reading) {
        self.last_ms = self.last_ms.max(now_ms);
        self.peak_anon = max_opt(self.peak_anon, r.anon);
        self.peak_current = max_opt(self.peak_current, r.current);
        // Totals only grow; a lower one is a recreated group: keep what was seen.
        self.group_peak_last = max_opt(self.group_peak_last, r.group_peak);
        if r.stall_us.is_some() {
            self.stall_last_us = r.stall_us;
            self.stall_first_us = self.stall_first_us.or(r.stall_us);
        }
        let Some(anon) = r.anon else { return };
        let t = now_ms.saturating_sub(self.started_ms);
        if let Some(last) = self.points.last() {
            if t < last.0 + self.gap_ms {
                return;
            }
        }
        self.points.push(Point(t, anon));
        if self.points.len() >= MAX_POINTS {
            let mut i = 0;
            self.points.retain(|_| {
                i += 1;
                i % 2 == 1
            });
            self.gap_ms = self.gap_ms.saturating_mul(2);
        }
    }

    pub fn end(&mut self, now_ms: u64, how: &str, oom_kills: u64, r: Reading) {
        // After an exit the group is empty: its memory figures say nothing about this lifetime,
        // but memory.peak and the stall totals still do.
        let after_exit = Reading {
            anon: None,
            current: None,
            ..r
        };
        self.record(
            now_ms,
            if how == "exited" || how == "oom_killed" {
                after_exit
            } else {
                r
            },
        );
        self.ended = Some(how.into());
        self.oom_kills += oom_kills;
    }

    pub fn duration_ms(&self) -> u64 {
        self.last_ms.saturating_sub(self.started_ms)
    }

    /// The lifetime's peak total memory: memory.peak when this lifetime raised it (exact), else
    /// the highest memory.current read.
    pub fn peak_total(&self) -> Option<u64> {
        let exact = match (self.group_peak_first, self.group_peak_last) {
            (Some(first), Some(last)) if last > first => Some(last),
            (None, Some(last)) => Some(last),
            _ => None,
        };
        max_opt(exact, self.peak_current)
    }

    /// Stall time (some, full) during the lifetime, as a share of it (0.0-1.0).
    pub fn stall_share(&self) -> Option<(f64, f64)> {
        let (a, b) = (self.stall_first_us?, self.stall_last_us?);
        let us = self.duration_ms().max(1) as f64 * 1000.0;
        Some((
            b.0.saturating_sub(a.0) as f64 / us,
            b.1.saturating_sub(a.1) as f64 / us,
        ))
    }
}

fn max_opt(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The `observations` reply: a policy's lifetimes, and its limits when it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyObservations {
    pub policy: String,
    /// The running policy's memory.high and memory.max as written in it; None when it is not
    /// running (only lifetimes recorded before remain).
    pub memory_high: Option<String>,
    pub memory_max: Option<String>,
    pub grace_ms: Option<u64>,
    pub ended: Vec<Lifetime>,
    pub live: Vec<Lifetime>,
}

/// Everything recorded, as saved in the state directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Store {
    /// Ended lifetimes per policy, oldest first, at most [`RING`].
    pub policies: BTreeMap<String, VecDeque<Lifetime>>,
    /// The running lifetime of each instance ("policy/N").
    pub live: BTreeMap<String, Lifetime>,
}

impl Store {
    fn close(&mut self, id: &str, now_ms: u64, how: &str, oom_kills: u64, r: Reading) {
        let Some(mut l) = self.live.remove(id) else {
            return;
        };
        l.end(now_ms, how, oom_kills, r);
        let policy = id.split('/').next().unwrap_or(id).to_string();
        let ring = self.policies.entry(policy).or_default();
        ring.push_back(l);
        while ring.len() > RING {
            ring.pop_front();
        }
    }

    /// A policy's ended and running lifetimes.
    pub fn of_policy(&self, policy: &str) -> (Vec<Lifetime>, Vec<Lifetime>) {
        let ended = self
            .policies
            .get(policy)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        let prefix = format!("{policy}/");
        let live = self
            .live
            .iter()
            .filter(|(id, _)| id.starts_with(&prefix))
            .map(|(_, l)| l.clone())
            .collect();
        (ended, live)
    }
}

/// The daemon's recorder, shared by the instance tasks (one owner of the data, a short lock).
#[derive(Default)]
pub struct Recorder {
    store: Mutex<Store>,
    dirty: std::sync::atomic::AtomicBool,
}

impl Recorder {
    fn with<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
        f(&mut s)
    }

    /// A new worker: whatever was running in this instance before has ended (`replaced`).
    pub fn started(&self, id: &str, pid: u32, g: &Group) {
        let r = Reading::of(g);
        let now = now_ms();
        self.with(|s| {
            s.close(id, now, "replaced", 0, r);
            s.live.insert(id.into(), Lifetime::begin(id, pid, now, r));
        });
    }

    /// An adopted worker continues the lifetime a previous daemon saved for it (same pid).
    pub fn adopted(&self, id: &str, pid: u32, g: &Group) {
        let same = {
            let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
            s.live.get(id).is_some_and(|l| l.pid == pid)
        };
        if same {
            self.sample(id, g, true);
        } else {
            self.started(id, pid, g);
        }
    }

    /// A reading at a wake-up the instance already had; skipped when the last one is recent.
    pub fn sample(&self, id: &str, g: &Group, force: bool) {
        let now = now_ms();
        // Looked at without marking the store changed: most wake-ups read nothing.
        let due = {
            let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
            s.live
                .get(id)
                .is_some_and(|l| force || now >= l.last_ms + MIN_READING_GAP_MS)
        };
        if !due {
            return;
        }
        let r = Reading::of(g);
        self.with(|s| {
            if let Some(l) = s.live.get_mut(id) {
                l.record(now, r);
            }
        });
    }

    /// The worker is gone (or going): `how` is the restart reason or how it ended.
    pub fn ended(&self, id: &str, how: &str, oom_kills: u64, g: &Group) {
        let r = Reading::of(g);
        let now = now_ms();
        self.with(|s| s.close(id, now, how, oom_kills, r));
    }

    /// Read only: does not make the next save due.
    pub fn of_policy(&self, policy: &str) -> (Vec<Lifetime>, Vec<Lifetime>) {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        s.of_policy(policy)
    }

    pub fn restore(&self, saved: Store) {
        self.with(|s| *s = saved);
    }

    /// After a failed save: the next chance saves again.
    pub fn mark_dirty(&self) {
        self.dirty.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A copy to save, or None when nothing changed since the last one.
    pub fn take_dirty(&self) -> Option<Store> {
        let s = self.store.lock().unwrap_or_else(|e| e.into_inner());
        self.dirty
            .swap(false, std::sync::atomic::Ordering::Relaxed)
            .then(|| s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(anon: u64, peak: u64) -> Reading {
        Reading {
            anon: Some(anon),
            current: Some(anon + 1),
            group_peak: Some(peak),
            stall_us: Some((0, 0)),
        }
    }

    #[test]
    fn points_are_spaced_and_halved_when_full_and_peaks_kept() {
        let mut l = Lifetime::begin("w/0", 1, 0, reading(0, 0));
        l.record(500, reading(99, 99)); // too soon for a point, but a peak
        assert_eq!(l.points.len(), 1);
        assert_eq!(l.peak_anon, Some(99));
        for i in 1..200u64 {
            l.record(i * 10_000, reading(i, i));
        }
        assert!(l.points.len() < MAX_POINTS, "{}", l.points.len());
        assert!(l.gap_ms > MIN_READING_GAP_MS);
        assert_eq!(l.points[0], Point(0, 0), "the start stays");
        assert_eq!(l.peak_anon, Some(199));
    }

    #[test]
    fn memory_peak_counts_only_when_this_lifetime_raised_it() {
        let mut fresh = Lifetime::begin("w/0", 1, 0, reading(10, 10));
        fresh.end(5_000, "exited", 0, reading(0, 80));
        assert_eq!(fresh.peak_total(), Some(80), "raised: exact");
        assert_eq!(
            fresh.peak_anon,
            Some(10),
            "an empty group's anon is not read"
        );
        let mut lower = Lifetime::begin("w/0", 2, 0, reading(10, 80));
        lower.record(3_000, reading(30, 80));
        lower.end(5_000, "pressure", 0, reading(30, 80));
        assert_eq!(
            lower.peak_total(),
            Some(31),
            "not raised: the sampled current"
        );
    }

    #[test]
    fn the_ring_is_bounded_and_adoption_continues_a_lifetime() {
        let mut s = Store::default();
        for pid in 0..(RING as u32 + 5) {
            s.close("w/0", 0, "x", 0, Reading::default());
            s.live.insert(
                "w/0".into(),
                Lifetime::begin("w/0", pid, 0, Reading::default()),
            );
            s.close("w/0", 10, "exited", 1, Reading::default());
        }
        assert_eq!(s.policies["w"].len(), RING);
        assert_eq!(s.policies["w"].back().unwrap().oom_kills, 1);
        let rec = Recorder::default();
        let mut live = Store::default();
        live.live.insert(
            "w/1".into(),
            Lifetime::begin("w/1", 42, 7, Reading::default()),
        );
        rec.restore(live);
        let dir = tempfile::tempdir().unwrap();
        let g = Group::new(dir.path().to_path_buf());
        rec.adopted("w/1", 42, &g);
        assert_eq!(rec.of_policy("w").1[0].started_ms, 7, "continued");
        rec.adopted("w/1", 43, &g);
        let (ended, live) = rec.of_policy("w");
        assert_eq!(ended[0].ended.as_deref(), Some("replaced"));
        assert_eq!(live[0].pid, 43);
        assert!(rec.take_dirty().is_some());
        assert!(rec.take_dirty().is_none(), "saved once per change");
        rec.sample("w/1", &g, false);
        assert!(
            rec.take_dirty().is_none(),
            "a wake-up too soon reads and changes nothing"
        );
        rec.sample("w/1", &g, true);
        assert!(rec.take_dirty().is_some(), "a forced reading is recorded");
    }
}
