//! bench_scale's `children:` rows: instances x 8 prefork children (testworker, sleeping jobs).
//! Once they are in their leaves, the scenario kills children at a fixed rate, whatever the
//! scale, and the mains fork them again: the daemon's CPU per child ended and forked again, and
//! status p50/p99 during that churn, its RSS and descriptors. METRIC lines; fails only when
//! something is broken, never on a timing (a placement slower than the wait is a figure).

use std::collections::BTreeSet;
use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::bench::{cpu_ticks, rss_kib, status_latency};
use crate::harness::*;

const CHILDREN: usize = 8;
const LOG: &str = "/tmp/scale-children.log";
/// The churn: one child killed this often (the main forks another at once).
const KILL_EVERY: Duration = Duration::from_millis(500);
/// The window without churn before it.
const QUIET: Duration = Duration::from_secs(20);
/// Status requests timed after the churn.
const STATUS_REQUESTS: usize = 50;
/// How long the daemon's CPU is counted against the forks made meanwhile.
const WINDOW: Duration = Duration::from_secs(30);

/// Forks the prefork mains logged so far (`child <pid> <slot>` lines).
fn forks() -> usize {
    fs::read_to_string(LOG)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("child "))
        .count()
}

/// Every child pid status lists, and how many instances have all 8 in leaves.
fn children_seen(r: &oomguard::protocol::StatusReport) -> (Vec<u32>, usize) {
    let instances = r.policies.iter().flat_map(|p| &p.instances);
    let full = instances
        .clone()
        .filter(|i| i.children.len() == CHILDREN)
        .count();
    let pids = instances.flat_map(|i| i.children.iter().map(|c| c.pid));
    (pids.collect(), full)
}

/// The rows: the daemon's work per event must not grow from 20 x 8 children to 200 x 8.
pub fn bench_scale_children() -> Result<()> {
    for instances in [20, 200] {
        children_row(instances)?;
    }
    Ok(())
}

/// utime and stime in clock ticks: user space against the kernel's work done for the daemon
/// (cgroup mkdir/rmdir, moves, PSI triggers).
fn user_system(pid: u32) -> Result<(u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(") ").context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok((f[11].parse()?, f[12].parse()?))
}

/// The 20 x 8 row alone (`bench_scale_children20`).
pub fn bench_scale_children20() -> Result<()> {
    children_row(20)
}

/// The 200 x 8 row alone (`bench_scale_children200`).
pub fn bench_scale_children200() -> Result<()> {
    children_row(200)
}

/// How long to wait for the first status answer (`oomguard.first_wait=` seconds on the kernel
/// command line, for a quick look at a stalled start).
fn first_wait() -> Duration {
    let secs = fs::read_to_string("/proc/cmdline")
        .unwrap_or_default()
        .split_whitespace()
        .find_map(|w| w.strip_prefix("oomguard.first_wait=")?.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

fn children_row(instances: u32) -> Result<()> {
    // A child takes three descriptors (pidfd, PSI trigger, memory.events).
    unit_nofile_limit()?;
    let _ = fs::remove_file(LOG);
    let dir = format!("/tmp/scale-children-{instances}");
    let policies = instances.div_ceil(20);
    let per = instances / policies;
    let args = [
        "--prefork",
        "8",
        "--job-sleep",
        "--job-ms",
        "1000",
        "--children-log",
        LOG,
    ];
    let command = worker_command(&args);
    for i in 0..policies {
        let yaml = format!(
            "name: kids{i}\nrun:\n  command: {command}\n  instances: {per}\n\
             memory: {{high: 96M, max: 160M}}\n\
             triggers: {{pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n\
             children:\n  memory: {{high: 16M, max: 32M}}\n\
             \x20 triggers: {{pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n"
        );
        write_policy(&dir, &format!("kids{i}"), &yaml)?;
    }
    let total = (per * policies) as usize;
    let name = format!("scale_children{total}x{CHILDREN}");
    // Not Daemon::start's 20 s: while the workers start and fork, the first answer can take
    // longer on a loaded host (a figure of its own).
    let mut run = std::process::Command::new(OOMGUARD);
    run.args(run_args(&dir));
    let mut daemon = Daemon::spawn_command(run)?;
    let started = Instant::now();
    let profile = crate::stacks::Profile::start(daemon.pid());
    let first = daemon.wait_status("a first status answer", first_wait(), |_| Some(()));
    profile.report(&format!("{name}.start"));
    println!(
        "METRIC {name}.start_daemon_cpu_s {:.2}",
        cpu_ticks(daemon.pid())? as f64 / 100.0
    );
    println!(
        "METRIC {name}.workers_started {}",
        crate::children::log_count("started [")
    );
    first?;
    println!(
        "METRIC {name}.first_status_seconds {:.1}",
        started.elapsed().as_secs_f64()
    );
    let (mut full, mut leaves) = (0, 0);
    let placing = Instant::now();
    let _ = wait_until("every child in its leaf", Duration::from_secs(420), || {
        let (pids, f) = children_seen(&status_json().ok()?);
        (full, leaves) = (f, pids.len());
        (full == total).then_some(())
    });
    println!("METRIC {name}.instances_with_8_leaves {full}");
    println!("METRIC {name}.children_in_leaves {leaves}");
    println!(
        "METRIC {name}.placing_seconds {:.1}",
        placing.elapsed().as_secs_f64()
    );
    let pid = daemon.pid();
    let mut victims = children_seen(&daemon.status()?).0.into_iter();
    // The same window without churn first: what the daemon spends whatever the events (timers,
    // rescans), so that the per-event figure below can be told from it.
    let (quiet0, t_quiet) = (user_system(pid)?, Instant::now());
    sleep(QUIET);
    let quiet = user_system(pid)?;
    let secs = t_quiet.elapsed().as_secs_f64();
    println!(
        "METRIC {name}.daemon_quiet_cpu_percent {:.2} (user {:.2} + system {:.2})",
        (quiet.0 + quiet.1 - quiet0.0 - quiet0.1) as f64 / secs,
        (quiet.0 - quiet0.0) as f64 / secs,
        (quiet.1 - quiet0.1) as f64 / secs
    );
    let split0 = user_system(pid)?;
    let (cpu0, forks0, t0) = (cpu_ticks(pid)?, forks(), Instant::now());
    let mut killed = BTreeSet::new();
    while t0.elapsed() < WINDOW {
        if let Some(v) = victims.next() {
            if signal(v, libc::SIGKILL).is_ok() {
                killed.insert(v);
            }
        }
        sleep(KILL_EVERY);
    }
    let (cpu, churned) = (cpu_ticks(pid)? - cpu0, forks() - forks0);
    let secs = t0.elapsed().as_secs_f64();
    let split = user_system(pid)?;
    println!(
        "METRIC {name}.daemon_churn_cpu_split user {:.2} % system {:.2} %",
        (split.0 - split0.0) as f64 / secs,
        (split.1 - split0.1) as f64 / secs
    );
    println!("METRIC {name}.children_killed {}", killed.len());
    println!("METRIC {name}.forks_per_s {:.2}", churned as f64 / secs);
    // Ticks of 10 ms per second: percent of one CPU.
    println!("METRIC {name}.daemon_cpu_percent {:.2}", cpu as f64 / secs);
    ensure!(churned > 0, "no child was forked again in {secs:.0} s");
    // Each churned child: its exit seen through its pidfd, a fork event read and placed.
    println!(
        "METRIC {name}.daemon_cpu_ms_per_fork_exit {:.2}",
        cpu as f64 * 10.0 / churned as f64
    );
    // Fewer than the instance rows' 200: a report of 1,800 groups takes seconds under TCG, and
    // 200 of them outlasted the scenario's budget. The p99 of STATUS_REQUESTS is their maximum.
    let (p50, p99) = status_latency(STATUS_REQUESTS)?;
    println!("METRIC {name}.status_requests {STATUS_REQUESTS}");
    println!("METRIC {name}.status_p50_ms {p50:.2}");
    println!("METRIC {name}.status_p99_ms {p99:.2}");
    println!("METRIC {name}.daemon_rss_kib {}", rss_kib(pid)?);
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .context("the daemon's fds")?
        .count();
    println!("METRIC {name}.daemon_fds {fds}");
    let report = daemon.status()?;
    let unarmed: usize = report
        .policies
        .iter()
        .flat_map(|p| &p.instances)
        .filter(|i| !i.unarmed.is_empty())
        .count();
    println!("METRIC {name}.instances_unarmed {unarmed}");
    let stopping = Instant::now();
    let status = daemon.signal_and_wait_for(libc::SIGTERM, Duration::from_secs(300))?;
    ensure!(status.success(), "the daemon exited {status}");
    println!(
        "METRIC {name}.stop_seconds {:.1}",
        stopping.elapsed().as_secs_f64()
    );
    ensure!(unarmed == 0, "{unarmed} instances unarmed (see the status)");
    Ok(())
}
