//! bench_scale's `children:` rows: instances x 8 prefork children (testworker, sleeping jobs),
//! each child of slots 1-7 ending after its jobs and forked again, so fork and exit events keep
//! coming. METRIC lines: status p50/p99, the daemon's CPU per child forked and ended, its RSS and
//! descriptors. Fails only when something is broken (a child never gets its leaf), never on a
//! timing.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::bench::{cpu_ticks, rss_kib, status_latency};
use crate::harness::*;

const CHILDREN: usize = 8;
/// A churned child's life: this many 1 s jobs (200 x 7 churned children: 47 forks a second).
const JOBS: u32 = 30;
const LOG: &str = "/tmp/scale-children.log";
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

pub fn children_row(instances: u32) -> Result<()> {
    // A child takes three descriptors (pidfd, PSI trigger, memory.events).
    unit_nofile_limit()?;
    let _ = fs::remove_file(LOG);
    let dir = format!("/tmp/scale-children-{instances}");
    let policies = instances.div_ceil(20);
    let per = instances / policies;
    let jobs = JOBS.to_string();
    let args = [
        "--prefork",
        "8",
        "--job-sleep",
        "--job-ms",
        "1000",
        "--child-exit-after-jobs",
        &jobs,
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
    let mut daemon = Daemon::start(&dir)?;
    let started = Instant::now();
    // Children end and are forked again meanwhile: every instance seen with all 8 in leaves
    // once is enough.
    let mut full = std::collections::BTreeSet::new();
    daemon.wait_status("every child in its leaf", Duration::from_secs(900), |r| {
        for p in &r.policies {
            for i in p.instances.iter().filter(|i| i.children.len() == CHILDREN) {
                full.insert(i.id.clone());
            }
        }
        (full.len() == total).then_some(())
    })?;
    println!(
        "METRIC {name}.start_seconds {:.1}",
        started.elapsed().as_secs_f64()
    );
    let pid = daemon.pid();
    // Until the first children have ended: the churn's steady state.
    sleep(Duration::from_secs(u64::from(JOBS) + 5).saturating_sub(started.elapsed()));
    let (cpu0, forks0, t0) = (cpu_ticks(pid)?, forks(), Instant::now());
    sleep(WINDOW);
    let (cpu, churned) = (cpu_ticks(pid)? - cpu0, forks() - forks0);
    let secs = t0.elapsed().as_secs_f64();
    println!("METRIC {name}.forks_per_s {:.1}", churned as f64 / secs);
    println!(
        "METRIC {name}.daemon_cpu_percent {:.2}",
        cpu as f64 / secs // ticks of 10 ms per second = percent
    );
    ensure!(
        churned > 0,
        "no child ended and was forked again in {secs:.0} s"
    );
    // Each churned child: one fork event read and placed, one exit seen through its pidfd.
    println!(
        "METRIC {name}.daemon_cpu_ms_per_fork_exit {:.2}",
        cpu as f64 * 10.0 / churned as f64
    );
    let (p50, p99) = status_latency(200)?;
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
