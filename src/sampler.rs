//! The numbers `status` and `metrics` show (memory, pressure, pids), read from the cgroup files
//! at most every [`MAX_AGE`], on tokio's blocking pool, and shared by every request in between.
//!
//! Why a cache: reading ~6 files per instance on every request made status cost O(instances)
//! file reads (133 ms at 100 instances in the TCG VM), and a script polling status would make
//! the daemon read cgroupfs in a loop. Requests are answered from the last sample; a stale one is
//! refreshed in the background (on tokio's blocking pool, off the daemon's one thread), and when
//! nobody asks, nothing is read. Decisions never use these numbers: the instance tasks read what
//! they need themselves, woken by the kernel.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cgroupfs::{Group, Pressure, MEMORY_CURRENT, MEMORY_HIGH, MEMORY_MAX, MEMORY_PEAK};

/// How old a sample may be before a request triggers a refresh.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// One instance group's numbers; `None` where a file could not be read (group not created yet,
/// or gone).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    pub pids: Vec<u32>,
    pub current: Option<u64>,
    pub high: Option<u64>,
    pub max: Option<u64>,
    pub peak: Option<u64>,
    pub pressure: Option<Pressure>,
}

pub fn sample(g: &Group) -> Sample {
    let limit = |file| g.limit(file).ok().and_then(|l| l.bytes());
    Sample {
        pids: g.procs().unwrap_or_default(),
        current: g.number(MEMORY_CURRENT).ok(),
        high: limit(MEMORY_HIGH),
        max: limit(MEMORY_MAX),
        peak: g.number(MEMORY_PEAK).ok(),
        pressure: g.pressure().ok(),
    }
}

#[derive(Default)]
struct State {
    taken: Option<Instant>,
    by_group: HashMap<PathBuf, Sample>,
    refreshing: bool,
}

#[derive(Default)]
pub struct Samples {
    /// Held only to copy the map in or out, never while reading files.
    state: Mutex<State>,
}

impl Samples {
    /// The latest samples of `groups`, never read on the caller's thread: a request gets the last
    /// sample (empty before the first one landed) and, when it is missing or older than
    /// [`MAX_AGE`], starts a refresh on the blocking pool for the next request.
    pub fn get(self: &Arc<Self>, groups: Vec<Group>) -> HashMap<PathBuf, Sample> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let stale = state.taken.is_none_or(|at| at.elapsed() > MAX_AGE);
        if stale && !state.refreshing {
            state.refreshing = true;
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || this.refresh(&groups));
        }
        state.by_group.clone()
    }

    /// Reads every group now and keeps the result.
    pub fn refresh(&self, groups: &[Group]) {
        let fresh = sample_all(groups);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.by_group = fresh;
        state.taken = Some(Instant::now());
        state.refreshing = false;
    }
}

fn sample_all(groups: &[Group]) -> HashMap<PathBuf, Sample> {
    groups
        .iter()
        .map(|g| (g.path().to_path_buf(), sample(g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn served_from_the_last_sample_and_refreshed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let g = Group::new(dir.path().join("g"));
        g.create().unwrap();
        g.write(MEMORY_CURRENT, "100").unwrap();
        g.write(crate::cgroupfs::CGROUP_PROCS, "7\n").unwrap();
        let samples = Arc::new(Samples::default());
        let current =
            |s: &Arc<Samples>| s.get(vec![g.clone()]).get(g.path()).and_then(|x| x.current);
        let wait_for = |want: Option<u64>| {
            let samples = samples.clone();
            let g = g.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(5);
                while samples
                    .get(vec![g.clone()])
                    .get(g.path())
                    .and_then(|x| x.current)
                    != want
                {
                    assert!(Instant::now() < deadline, "the refresh never landed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        // The first request starts the first sample; a later one sees it.
        wait_for(Some(100)).await;
        assert_eq!(samples.get(vec![g.clone()])[g.path()].pids, vec![7]);

        g.write(MEMORY_CURRENT, "200").unwrap();
        assert_eq!(
            current(&samples),
            Some(100),
            "served from the sample while it is fresh"
        );

        samples.state.lock().unwrap().taken = Some(Instant::now() - MAX_AGE * 2);
        wait_for(Some(200)).await;
    }
}
