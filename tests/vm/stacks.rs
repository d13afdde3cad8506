//! A poor man's profiler for the benches (perf is not in the VM): samples the daemon's runtime
//! thread every 20 ms, its state (running or waiting) and, while it waits in the kernel, the
//! kernel's stack of it, then prints how often each was seen as `PROFILE` lines. Where a stall
//! is spent in the kernel (a lock, a cgroup write) shows by name; `R` is running or runnable,
//! and the thread's schedstat tells which. Also every process's CPU meanwhile, by name: what
//! else the VM's two CPUs were busy with.

use std::collections::BTreeMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::Duration;

const EVERY: Duration = Duration::from_millis(20);

/// Frames that say nothing about why a thread waits.
const GENERIC: [&str; 12] = [
    "schedule",
    "__schedule",
    "schedule_timeout",
    "schedule_hrtimeout",
    "do_syscall_64",
    "entry_SYSCALL_64",
    "__x64_sys_",
    "ksys_",
    "do_epoll_wait",
    "ep_poll",
    "io_schedule",
    "preempt_schedule",
];

pub struct Profile {
    pid: u32,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<BTreeMap<String, u32>>>,
    /// Every process's CPU ticks at the start, by "comm pid".
    cpu0: BTreeMap<String, u64>,
    sched0: (u64, u64),
}

impl Profile {
    /// Starts sampling the main thread of `pid`.
    pub fn start(pid: u32) -> Profile {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = BTreeMap::new();
            while !done.load(Ordering::Relaxed) {
                if let Some(key) = sample(pid) {
                    *seen.entry(key).or_insert(0) += 1;
                }
                sleep(EVERY);
            }
            seen
        });
        Profile {
            pid,
            stop,
            thread: Some(thread),
            cpu0: every_cpu(),
            sched0: schedstat(pid),
        }
    }

    /// Stops and prints the most frequent states, `PROFILE <label> <share %> <samples> <what>`.
    pub fn report(mut self, label: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let Some(seen) = self.thread.take().and_then(|t| t.join().ok()) else {
            return;
        };
        let (run1, wait1) = schedstat(self.pid);
        println!(
            "PROFILE {label} runtime thread: {:.2} s on a CPU, {:.2} s runnable waiting for one",
            (run1 - self.sched0.0) as f64 / 1e9,
            (wait1 - self.sched0.1) as f64 / 1e9
        );
        let cpu1 = every_cpu();
        let mut used: Vec<(u64, &String)> = cpu1
            .iter()
            .map(|(k, t)| (t - self.cpu0.get(k).copied().unwrap_or(0), k))
            .collect();
        used.sort_by_key(|b| std::cmp::Reverse(b.0));
        // By command name: the fleet's own start-up against the daemon's and the kernel's.
        let mut by_comm: BTreeMap<&str, (u64, u32)> = BTreeMap::new();
        for (ticks, who) in &used {
            let comm = who.rsplit_once(' ').map_or(who.as_str(), |(c, _)| c);
            let comm = if comm.chars().all(|c| c.is_ascii_digit()) {
                "<digits>"
            } else {
                comm
            };
            let comm = comm.split('/').next().unwrap_or(comm);
            let e = by_comm.entry(comm).or_default();
            e.0 += ticks;
            e.1 += 1;
        }
        let mut by: Vec<_> = by_comm.into_iter().collect();
        by.sort_by_key(|b| std::cmp::Reverse(b.1 .0));
        for (comm, (ticks, n)) in by.into_iter().take(6) {
            println!(
                "PROFILE {label} cpu-by-name {:.2} s {comm} ({n} processes)",
                ticks as f64 / 100.0
            );
        }
        let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!("PROFILE {label} loadavg {}", load.trim());
        let total: u32 = seen.values().sum();
        let mut rows: Vec<(String, u32)> = seen.into_iter().collect();
        rows.sort_by_key(|b| std::cmp::Reverse(b.1));
        for (what, n) in rows.into_iter().take(8) {
            let share = f64::from(n) * 100.0 / f64::from(total.max(1));
            println!("PROFILE {label} {share:.1}% {n} {what}");
        }
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The state of the thread and, when it is not running, the first telling frames of its kernel
/// stack.
fn sample(pid: u32) -> Option<String> {
    let task = format!("/proc/{pid}/task/{pid}");
    let stat = fs::read_to_string(format!("{task}/stat")).ok()?;
    let state = stat
        .rsplit_once(") ")?
        .1
        .split_whitespace()
        .next()?
        .to_string();
    if state == "R" {
        return Some("R".into());
    }
    let stack = fs::read_to_string(format!("{task}/stack")).unwrap_or_default();
    let frames: Vec<&str> = stack
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| f.split('+').next().unwrap_or(f))
        .filter(|f| !GENERIC.iter().any(|g| f.starts_with(g)))
        .take(3)
        .collect();
    Some(format!("{state} {}", frames.join("<")))
}

/// utime + stime of every process (its threads included), by "comm pid".
fn every_cpu() -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
        let comm = head.split_once(" (").map_or(head, |(_, c)| c);
        all.insert(format!("{comm} {}", e.file_name().to_string_lossy()), ticks);
    }
    all
}

/// The thread's time on a CPU and time runnable but waiting, in ns (/proc/.../schedstat).
fn schedstat(pid: u32) -> (u64, u64) {
    let s = fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat")).unwrap_or_default();
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}
