//! The test worker's prefork mode (`--prefork N`), a stand-in for gunicorn's arbiter or Celery's
//! prefork pool: the main process forks N children and forks a new one whenever one dies; it
//! ignores a child's death otherwise. Children do jobs, may leak, and exit gracefully on SIGTERM
//! after the job in flight. On SIGTERM the main process passes it on to every child, waits for
//! them and exits.
//!
//! The children log (`--children-log`), one O_APPEND write per line:
//! `child <pid> <slot>` (main, after a fork), `leaf <pid> <us>` (the child, once
//! /proc/self/cgroup names its leaf `child-<pid>`: microseconds since the main process read
//! CLOCK_MONOTONIC just before fork(); `leaf <pid> timeout` after 10 s), `grandchild <pid>
//! <parent>`, `term <pid>` (the child's SIGTERM handler ran: exiting after its job), `exit <pid>`
//! (it ended by itself, --child-exit-after-jobs).

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{do_job, touched_mib, Leak, Ledger, TERM_REQUESTED};

pub struct Prefork {
    pub children: usize,
    /// Slots below this leak (`--leak-mb-per-s`) and allocate `start_mb` at start.
    pub leak_slots: usize,
    pub leak_mb_per_s: f64,
    pub start_mb: usize,
    /// Slots 1 and above end by themselves after this many jobs (slot 0 stays, for the
    /// grandchild): a churn of forks to measure.
    pub exit_after_jobs: Option<u64>,
    pub ignore_sigterm: bool,
    /// Slot 0 forks a grandchild that lives as long as it does.
    pub grandchild: bool,
    pub job_ms: u64,
    /// `--job-sleep`: a job sleeps instead of computing (idle children for the scale bench).
    pub job_sleep: bool,
    /// `--main-leaks`: the main process leaks at `--leak-mb-per-s` (a master that grows).
    pub main_leaks: bool,
}

fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the struct we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

pub fn run(o: &Prefork, log: &mut Ledger) -> ExitCode {
    let main = std::process::id();
    println!(
        "testworker {main}: prefork main with {} children",
        o.children
    );
    let mut slots: Vec<Option<i32>> = vec![None; o.children];
    let mut leak = Leak::new(if o.main_leaks { o.leak_mb_per_s } else { 0.0 }, usize::MAX);
    loop {
        if TERM_REQUESTED.load(Ordering::SeqCst) {
            return shut_down(main, &slots);
        }
        leak.catch_up(|| TERM_REQUESTED.load(Ordering::SeqCst));
        for (slot, pid) in slots.iter_mut().enumerate() {
            if pid.is_none() {
                *pid = Some(fork_child(slot, o, log));
            }
        }
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes the status we pass.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if let Some(slot) = slots.iter_mut().find(|s| **s == Some(pid)) {
                *slot = None;
                println!(
                    "testworker {main}: child {pid} ended (status {status:#x}): forking another"
                );
            }
        }
        // A child that ended is forked again within this (200 mains at 5 ms were 40,000
        // wake-ups a second under TCG).
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to every child, then wait for them all (oomguard kills what is left after its grace).
fn shut_down(main: u32, slots: &[Option<i32>]) -> ExitCode {
    println!("testworker {main}: SIGTERM: stopping the children");
    for pid in slots.iter().flatten() {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status we pass.
        if unsafe { libc::waitpid(-1, &mut status, 0) } < 0 {
            break;
        }
    }
    println!("testworker {main}: SIGTERM: every child ended, exiting cleanly");
    ExitCode::SUCCESS
}

fn fork_child(slot: usize, o: &Prefork, log: &mut Ledger) -> i32 {
    let t0 = monotonic_us();
    // SAFETY: the main process is single-threaded, so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = child(slot, t0, o, log);
        // SAFETY: _exit ends the child without running the parent's atexit handlers twice.
        unsafe { libc::_exit(code) };
    }
    if pid < 0 {
        eprintln!(
            "testworker: fork failed: {}",
            std::io::Error::last_os_error()
        );
        std::thread::sleep(Duration::from_millis(100));
        return -1;
    }
    log.record(&format!("child {pid} {slot}"));
    pid
}

/// Waits until the kernel says this process is in its leaf, and logs how long that took.
fn probe_leaf(me: u32, t0: u64, log: &mut Ledger) {
    let want = format!("/child-{me}\n");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read_to_string("/proc/self/cgroup").is_ok_and(|c| c.ends_with(&want)) {
            log.record(&format!("leaf {me} {}", monotonic_us().saturating_sub(t0)));
            return;
        }
        std::thread::sleep(probe_pause(started.elapsed()));
    }
    log.record(&format!("leaf {me} timeout"));
}

/// The pause between two looks at /proc/self/cgroup: 200 us, growing with the wait to 5 % of it
/// (the delay measured stays within 5 %). Every 200 us for the whole wait, 1,600 children
/// waiting seconds for their leaves took 225 of the VM's 240 CPU-seconds in the first two
/// minutes of bench_scale's 200 x 8 row, and starved the daemon they were measuring.
fn probe_pause(waited: Duration) -> Duration {
    (waited / 20).max(Duration::from_micros(200))
}

fn child(slot: usize, t0: u64, o: &Prefork, log: &mut Ledger) -> i32 {
    let me = std::process::id();
    probe_leaf(me, t0, log);
    if o.grandchild && slot == 0 {
        // SAFETY: this child is single-threaded too.
        let g = unsafe { libc::fork() };
        if g == 0 {
            // SAFETY: getppid cannot fail.
            while unsafe { libc::getppid() } == me as i32 {
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: see fork_child.
            unsafe { libc::_exit(0) };
        }
        log.record(&format!("grandchild {g} {me}"));
    }
    let leaks = slot < o.leak_slots;
    let mut leak = Leak::new(if leaks { o.leak_mb_per_s } else { 0.0 }, usize::MAX);
    // Allocated at once and kept: a child that starts near its limit (a respawn loop).
    let mut at_start: Vec<Vec<u8>> = Vec::new();
    if leaks {
        for _ in 0..o.start_mb {
            at_start.push(touched_mib());
        }
    }
    if !at_start.is_empty() {
        println!(
            "testworker child {me}: allocated {} MiB at start",
            at_start.len()
        );
    }
    let mut job = 0u64;
    let mut said = false;
    loop {
        if TERM_REQUESTED.load(Ordering::SeqCst) {
            if !o.ignore_sigterm {
                log.record(&format!("term {me}"));
                println!("testworker child {me} (slot {slot}): SIGTERM: exiting after job {job}");
                return 0;
            }
            if !said {
                println!("testworker child {me}: SIGTERM received and ignored");
                said = true;
            }
        }
        if slot > 0 && o.exit_after_jobs.is_some_and(|n| job >= n) {
            log.record(&format!("exit {me}"));
            return 0;
        }
        job += 1;
        leak.catch_up(|| TERM_REQUESTED.load(Ordering::SeqCst) && !o.ignore_sigterm);
        if o.job_sleep {
            std::thread::sleep(Duration::from_millis(o.job_ms));
        } else {
            do_job(job, o.job_ms);
        }
    }
}
