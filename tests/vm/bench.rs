//! The footprint benchmark on a real kernel (run by name: `tests/vm/run.sh bench_scale`; the
//! goodput sweep is goodput.rs). It prints `METRIC <name> <value>` lines that docs/benchmarks.md's figures
//! come from, and fails only when something is broken (the daemon dies, nothing runs), never on a
//! timing.

use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use oomguard::protocol::Request;

use crate::harness::*;

/// Daemon RSS and CPU with 100 instances, then status latency (p50/p99 over 200 requests through
/// the library client) and RSS with 1,000 instances; then the `children:` rows
/// (bench_children.rs): 20 and 200 instances x 8 children, also alone as `bench_scale_children`.
pub fn bench_scale() -> Result<()> {
    for (instances, policies) in [(100u32, 1u32), (1000, 10)] {
        let dir = format!("/tmp/scale-{instances}");
        let per = instances / policies;
        for i in 0..policies {
            let yaml = format!(
                "name: fleet{i}\nrun:\n  command: [\"/bin/sleep\", \"100000\"]\n  instances: {per}\n\
                 memory:\n  high: 16M\n  max: 32M\n\
                 triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\n"
            );
            write_policy(&dir, &format!("fleet{i}"), &yaml)?;
        }
        let mut daemon = Daemon::start(&dir)?;
        let started = Instant::now();
        daemon.wait_status("every instance running", Duration::from_secs(240), |r| {
            let running = r
                .policies
                .iter()
                .flat_map(|p| &p.instances)
                .filter(|i| !i.pids.is_empty())
                .count();
            (running == instances as usize).then_some(())
        })?;
        println!(
            "METRIC scale{instances}.start_seconds {:.1}",
            started.elapsed().as_secs_f64()
        );
        let pid = daemon.pid();
        sleep(Duration::from_secs(2));
        let cpu_before = cpu_ticks(pid)?;
        let idle = Duration::from_secs(20);
        sleep(idle);
        let cpu = (cpu_ticks(pid)? - cpu_before) as f64 / 100.0 / idle.as_secs_f64() * 100.0;
        println!("METRIC scale{instances}.daemon_idle_cpu_percent {cpu:.2}");
        let (p50, p99) = status_latency(200)?;
        println!("METRIC scale{instances}.status_p50_ms {p50:.2}");
        println!("METRIC scale{instances}.status_p99_ms {p99:.2}");
        println!("METRIC scale{instances}.daemon_rss_kib {}", rss_kib(pid)?);
        // Stopping 1,000 workers gracefully (and removing 1,000 memory cgroups) takes a while
        // under TCG: measure it rather than fail on the scenarios' usual 20 s.
        let stopping = Instant::now();
        let status = daemon.signal_and_wait_for(libc::SIGTERM, Duration::from_secs(300))?;
        ensure!(status.success(), "the daemon exited {status}");
        println!(
            "METRIC scale{instances}.stop_seconds {:.1}",
            stopping.elapsed().as_secs_f64()
        );
    }
    crate::bench_children::bench_scale_children()
}

/// Status requests one after the other over the socket, timed in-process (no CLI start-up).
pub fn status_latency(n: usize) -> Result<(f64, f64)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let resp = rt.block_on(oomguard::client::request(
            Path::new(SOCKET),
            &Request::Status { target: None },
        ));
        ensure!(resp.is_ok(), "status request failed: {:?}", resp.err());
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[n / 2], ms[(n * 99) / 100]))
}

/// utime + stime in clock ticks (USER_HZ, 100 on Linux).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}
