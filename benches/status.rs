//! Status latency and daemon memory at 1,000 instances, natively on the host: the real fleet,
//! socket server and client, 1,000 real `sleep` workers, and a fake cgroup tree in a tempdir
//! (the host has no cgroup v2 memory controller; the VM's bench_scale measures the real tree
//! under TCG emulation). Run: `cargo bench --bench status -- [INSTANCES]` (default 1,000).
//! Prints `METRIC` lines like the VM benchmarks.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oomguard::cgroupfs::{Group, CGROUP_PROCS, SUBTREE_CONTROL};
use oomguard::events::EventLog;
use oomguard::policy::parse;
use oomguard::protocol::Request;
use oomguard::server::{self, Access};
use oomguard::supervisor::{Fleet, SavedState};
use oomguard::vocabulary::InstanceState;

const POLICIES: u32 = 10;

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the first number is the instance count. Without it this is
    // `cargo test --all-targets` running the bench once as a test, on a machine that may be busy:
    // a small fleet proves the bench still works without measuring anything.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let measuring = args.iter().any(|a| a == "--bench");
    let instances: u32 = args
        .iter()
        .find(|a| !a.starts_with('-'))
        .map_or(Ok(if measuring { 1000 } else { 50 }), |a| a.parse())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .event_interval(1)
        .enable_all()
        .build()?;
    rt.block_on(run(instances, if measuring { 300 } else { 20 }))
}

async fn run(instances: u32, rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = Group::new(dir.path().join("oomguard"));
    root.create()?;
    let per = instances / POLICIES;
    for p in 0..POLICIES {
        let g = root.child(&format!("fleet{p}"));
        g.create()?;
        g.write(SUBTREE_CONTROL, "")?;
        for i in 0..per {
            // The files the kernel would create in each instance group.
            let ig = g.child(&i.to_string());
            ig.create()?;
            ig.write(CGROUP_PROCS, "")?;
            ig.write("memory.current", "12345678")?;
            ig.write("memory.peak", "23456789")?;
            ig.write("memory.pressure", "some avg10=1.00 avg60=0.50 avg300=0.10 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")?;
        }
    }
    let fleet = Arc::new(Fleet::new(root, Arc::new(EventLog::new())));
    for p in 0..POLICIES {
        let yaml = format!(
            "name: fleet{p}\nrun:\n  command: [\"/bin/sleep\", \"1000\"]\n  instances: {per}\n\
             memory:\n  high: 16M\n  max: 32M\ntriggers:\n  pressure: {{some: 100ms, window: 1s}}\n"
        );
        let policy = parse(Path::new("/etc/oomguard/policies.d/bench.yaml"), &yaml)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        fleet.start_policy(policy, &SavedState::new())?;
    }
    let socket = dir.path().join("oomguard.sock");
    let listener = server::bind(&socket, None)?;
    let api = Arc::new(BenchApi(fleet.clone()));
    tokio::spawn(server::serve(
        listener,
        api,
        Access::new(None, vec![]),
        std::future::pending(),
    ));

    let started = Instant::now();
    loop {
        let report = fleet.status(None)?;
        let running = report
            .policies
            .iter()
            .flat_map(|p| &p.instances)
            .filter(|i| i.state == InstanceState::Running)
            .count();
        if running == (per * POLICIES) as usize {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "only {running} running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "METRIC host{instances}.start_seconds {:.2}",
        started.elapsed().as_secs_f64()
    );

    // The daemon's side alone: build the report and serialize it, as the server does.
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let report = fleet.status(None)?;
        bytes = serde_json::to_vec(&report)?.len();
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = percentiles(ms);
    println!("METRIC host{instances}.daemon_side_p50_ms {p50:.2} ({bytes} bytes of JSON)");
    println!("METRIC host{instances}.daemon_side_p99_ms {p99:.2}");

    // The client runs on the same thread as the daemon here; that only adds to the latency.
    let mut ms = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        let resp = oomguard::client::request(&socket, &Request::Status { target: None }).await;
        anyhow::ensure!(resp.is_ok(), "status failed: {:?}", resp.err());
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (p50, p99) = percentiles(ms);
    println!("METRIC host{instances}.status_p50_ms {p50:.2}");
    println!("METRIC host{instances}.status_p99_ms {p99:.2}");
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap_or("?")
        .trim()
        .to_string();
    println!("METRIC host{instances}.process_rss {rss} (daemon, server and client in one process)");
    fleet.stop_all().await;
    Ok(())
}

/// p50 and p99 of a set of timings.
fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    (ms[ms.len() / 2], ms[ms.len() * 99 / 100])
}

struct BenchApi(Arc<Fleet>);

impl server::Api for BenchApi {
    fn status(
        &self,
        target: Option<&str>,
    ) -> Result<oomguard::protocol::StatusReport, oomguard::protocol::ApiError> {
        self.0
            .status(target)
            .map_err(|e| oomguard::protocol::ApiError::failed(e.to_string()))
    }
    fn events(&self, last: usize) -> Vec<oomguard::protocol::EventRecord> {
        self.0.events().last(last)
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<oomguard::protocol::EventRecord> {
        self.0.events().subscribe()
    }
    async fn restart(&self, target: &str) -> Result<String, oomguard::protocol::ApiError> {
        self.0
            .restart(target)
            .await
            .map_err(|e| oomguard::protocol::ApiError::failed(e.to_string()))
    }
    async fn reload(
        &self,
    ) -> Result<oomguard::protocol::ReloadReport, oomguard::protocol::ApiError> {
        Err(oomguard::protocol::ApiError::failed("not in the benchmark"))
    }
}
