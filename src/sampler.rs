//! The numbers `status` and `metrics` show (memory, pressure, pids), read from the cgroup files
//! at most every [`MAX_AGE`] and shared by every request in between.
//!
//! Why a cache: reading ~6 files per instance on every request made status cost O(instances)
//! file reads (133 ms at 100 instances in the TCG VM), and a script polling status would make
//! the daemon read cgroupfs in a loop. Requests are answered from the last sample; the first
//! request after it aged refreshes it; when nobody asks, nothing is read. Decisions never use
//! these numbers: the instance tasks read what they need themselves, woken by the kernel.

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
        // Every process of the subtree: with `children:` the instance's group holds none itself.
        pids: g
            .subtree()
            .into_iter()
            .filter_map(|sub| sub.and_then(|s| s.procs()).ok())
            .flatten()
            .collect(),
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
    /// Shared with the requests being answered, so a request copies a pointer, not the map.
    by_group: Arc<HashMap<PathBuf, Sample>>,
    refreshing: bool,
}

#[derive(Default)]
pub struct Samples {
    /// Held only to copy the map in or out, never while reading files.
    state: Mutex<State>,
}

impl Samples {
    /// The latest samples. The first call reads every group at once; after that a request gets
    /// the last sample, and one that finds it older than [`MAX_AGE`] starts a refresh task that
    /// reads [`CHUNK`] groups at a time and yields in between, so no request waits for thousands
    /// of file reads. Everything stays on the daemon's one thread on purpose: a second thread
    /// reading cgroup files while the daemon forked workers into new groups soft-locked both
    /// vCPUs of the 6.1 test kernel (bench_scale, 100 instances; see the commit message).
    pub fn get(
        self: &Arc<Self>,
        groups: impl FnOnce() -> Vec<Group>,
    ) -> Arc<HashMap<PathBuf, Sample>> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.taken {
            None => {
                state.by_group = Arc::new(sample_all(&groups()).into_iter().collect());
                state.taken = Some(Instant::now());
            }
            Some(at) if at.elapsed() > MAX_AGE && !state.refreshing => {
                state.refreshing = true;
                tokio::spawn(Arc::clone(self).refresh(groups()));
            }
            Some(_) => {}
        }
        Arc::clone(&state.by_group)
    }

    async fn refresh(self: Arc<Self>, groups: Vec<Group>) {
        let mut fresh = HashMap::with_capacity(groups.len());
        for chunk in groups.chunks(CHUNK) {
            fresh.extend(sample_all(chunk));
            tokio::task::yield_now().await;
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.by_group = Arc::new(fresh);
        state.taken = Some(Instant::now());
        state.refreshing = false;
    }
}

/// Groups read between two yields of a refresh.
pub const CHUNK: usize = 50;

fn sample_all(groups: &[Group]) -> Vec<(PathBuf, Sample)> {
    groups
        .iter()
        .map(|g| (g.path().to_path_buf(), sample(g)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn served_from_the_last_sample_and_refreshed_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let groups: Vec<Group> = (0..CHUNK * 2 + 3)
            .map(|i| {
                let g = Group::new(dir.path().join(i.to_string()));
                g.create().unwrap();
                g.write(MEMORY_CURRENT, "100").unwrap();
                g
            })
            .collect();
        let g = groups[0].clone();
        g.write(crate::cgroupfs::CGROUP_PROCS, "7\n").unwrap();
        let samples = Arc::new(Samples::default());
        let first = samples.get(|| groups.clone());
        assert_eq!(
            first.len(),
            groups.len(),
            "the first request reads every group"
        );
        assert_eq!(first[g.path()].current, Some(100));
        assert_eq!(first[g.path()].pids, vec![7]);

        g.write(MEMORY_CURRENT, "200").unwrap();
        let cached = samples.get(|| panic!("a fresh sample needs no groups"));
        assert_eq!(
            cached[g.path()].current,
            Some(100),
            "served from the sample"
        );

        samples.state.lock().unwrap().taken = Some(Instant::now() - MAX_AGE * 2);
        let during = samples.get(|| groups.clone());
        assert_eq!(
            during[g.path()].current,
            Some(100),
            "the stale sample answers meanwhile"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let now = samples.get(|| groups.clone());
            if now[g.path()].current == Some(200) {
                assert_eq!(now.len(), groups.len());
                break;
            }
            assert!(Instant::now() < deadline, "the refresh never landed");
            tokio::task::yield_now().await;
        }
    }
}
