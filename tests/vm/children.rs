//! `children:` on a real kernel: the test worker's prefork mode (prefork.rs) run by oomguard, each
//! child in a leaf of its own, the leaking child recycled alone, `at_once`, the grace kill of a
//! child that ignores SIGTERM, the escalation of a respawn loop, re-adoption of the leaves after a
//! daemon restart, and the fork-to-leaf delay with the proc connector and with the rescan
//! fallback (METRIC lines).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::{EventRecord, InstanceStatus};
use oomguard::vocabulary::{Ending, Reason};

use crate::harness::*;

pub(crate) const LOG: &str = "/tmp/ledgers/children.log";

/// A prefork policy `pf`: instance envelope 256M/320M (its restart grace 5 s, so a stop of
/// children that ignore SIGTERM fits the harness's 20 s), children 48M/96M with a memory
/// trigger at 40M (and a PSI backstop), the children's `restart` as given.
pub(crate) fn policy(worker_args: &[&str], restart: &str) -> String {
    let mut args = vec!["--children-log", LOG, "--job-ms", "50"];
    args.extend_from_slice(worker_args);
    format!(
        "name: pf\nrun:\n  command: {}\nmemory: {{high: 256M, max: 320M}}\n\
         triggers: {{pressure: {{some: 200ms, window: 1s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
         children:\n  memory: {{high: 48M, max: 96M}}\n\
         \x20 triggers: {{memory: {{above: 40M}}, pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n\
         \x20 restart: {restart}\n",
        worker_command(&args)
    )
}

/// The children log, parsed: (kind, pid, rest) per line.
fn log_lines() -> Vec<(String, u32, String)> {
    fs::read_to_string(LOG)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ' ');
            let kind = f.next()?.to_string();
            let pid = f.next()?.parse().ok()?;
            Some((kind, pid, f.next().unwrap_or("").to_string()))
        })
        .collect()
}

/// Pids forked into `slot`, oldest first.
fn slot_pids(slot: &str) -> Vec<u32> {
    log_lines()
        .into_iter()
        .filter(|(k, _, rest)| k == "child" && rest == slot)
        .map(|(_, p, _)| p)
        .collect()
}

/// Waits for at least `n` `child_recycle` events; returns them all.
fn wait_recycles(n: usize, timeout: Duration) -> Result<Vec<EventRecord>> {
    wait_until(&format!("{n} child_recycle events"), timeout, || {
        let r: Vec<EventRecord> = recent_events()
            .ok()?
            .into_iter()
            .filter(|e| e.action == "child_recycle")
            .collect();
        (r.len() >= n).then_some(r)
    })
}

fn logged(kind: &str, pid: u32) -> bool {
    log_lines().iter().any(|(k, p, _)| k == kind && *p == pid)
}

/// Fork-to-leaf delays (ms) logged by children after `skip` lines; fails on a timeout.
fn leaf_delays(skip: usize) -> Result<Vec<f64>> {
    let mut out = Vec::new();
    for (kind, pid, rest) in log_lines().into_iter().skip(skip) {
        if kind != "leaf" {
            continue;
        }
        ensure!(
            rest != "timeout",
            "child {pid} never saw itself in its leaf (10 s)"
        );
        out.push(rest.parse::<f64>().context("leaf delay")? / 1000.0);
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report_delays(name: &str, mut d: Vec<f64>) -> Result<()> {
    ensure!(
        d.len() >= 5,
        "only {} fork-to-leaf samples for {name}",
        d.len()
    );
    d.sort_by(|a, b| a.total_cmp(b));
    println!("METRIC fork_to_leaf.{name}.samples {}", d.len());
    println!(
        "METRIC fork_to_leaf.{name}.median_ms {:.2}",
        percentile(&d, 0.5)
    );
    println!(
        "METRIC fork_to_leaf.{name}.p95_ms {:.2}",
        percentile(&d, 0.95)
    );
    println!(
        "METRIC fork_to_leaf.{name}.max_ms {:.2}",
        percentile(&d, 1.0)
    );
    Ok(())
}

pub(crate) fn procs_of(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A fresh children log, the `pf` policy with `args` and `restart`, the daemon started and `pf/0`
/// running: the daemon, the main pid, and /proc/vmstat's OOM kills before.
fn start(args: &[&str], restart: &str) -> Result<(Daemon, u32, u64)> {
    start_policy(&policy(args, restart))
}

/// [`start`] with a whole `pf` policy's text.
pub(crate) fn start_policy(yaml: &str) -> Result<(Daemon, u32, u64)> {
    make_ledger_dir()?;
    let _ = fs::remove_file(LOG);
    write_policy(POLICY_DIR, "pf", yaml)?;
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let main = daemon.wait_running(&["pf/0"], Duration::from_secs(20))?["pf/0"];
    Ok((daemon, main, oom_before))
}

/// Waits until `pf/0` was restarted with `reason` and runs a main process other than `main`.
pub(crate) fn wait_restarted(
    daemon: &mut Daemon,
    main: u32,
    reason: Reason,
    timeout: Duration,
) -> Result<InstanceStatus> {
    daemon.wait_status(
        &format!("the instance restarted ({})", reason.as_str()),
        timeout,
        |r| {
            pf(r).filter(|i| {
                i.restarts_by_reason.get(&reason).is_some_and(|n| *n >= 1)
                    && i.pids.first().is_some_and(|p| *p != main)
            })
        },
    )
}

pub(crate) fn pf(report: &oomguard::protocol::StatusReport) -> Option<InstanceStatus> {
    instance(report, "pf/0").cloned()
}

/// The layout and its re-adoption: main in `main`, each child in `child-<pid>`, the grandchild
/// in its parent's leaf, empty leaves removed; children that churn give fork-to-leaf delays
/// with the proc connector; then the daemon is killed and a new one (without the connector)
/// adopts the main process and re-adopts the children's leaves, and places new children by
/// rescanning.
pub fn children_leaves() -> Result<()> {
    let args = [
        "--prefork",
        "3",
        "--grandchild",
        "--child-exit-after-jobs",
        "10",
    ];
    let (mut daemon, main, _) = start(&args, "{grace: 5s}")?;
    let g = instance_group("pf/0");
    ensure!(
        procs_of(&g.join("main")).contains(&main),
        "main {main} is not in the main leaf"
    );
    // The VM mounts cgroup2 with nsdelegate alone: from 6.0 the daemon says that favordynmods
    // would speed up each child's move, and how to turn it on; before 6.0 it has nothing to say.
    let release = read_trimmed(Path::new("/proc/sys/kernel/osrelease"))?;
    let six = oomguard::hostcheck::kernel_version(&release).is_some_and(|v| v >= (6, 0));
    let said = fs::read_to_string(DAEMON_LOG)
        .unwrap_or_default()
        .contains("mounted without favordynmods");
    ensure!(
        said == six,
        "kernel {release}: the favordynmods note was {} in the daemon log",
        if said { "present" } else { "missing" }
    );
    // Children churn, and each is in `main` for the moment between its fork and its move.
    wait_until("main alone in its leaf", Duration::from_secs(5), || {
        (procs_of(&g.join("main")) == vec![main]).then_some(())
    })?;
    ensure!(
        procs_of(&g).is_empty(),
        "the instance group holds processes itself"
    );
    // Churn: slots 1 and 2 end after 10 jobs (~0.5 s) and are forked again.
    sleep(Duration::from_secs(12));
    let report = daemon.status()?;
    let st = pf(&report).context("pf/0")?;
    evidence(
        "children",
        format!(
            "{:?}",
            st.children
                .iter()
                .map(|c| (c.pid, c.leaf.clone(), c.memory_current))
                .collect::<Vec<_>>()
        ),
    );
    ensure!(
        st.pids.first() == Some(&main),
        "main changed: {:?}",
        st.pids
    );
    ensure!(
        (1..=3).contains(&st.children.len()),
        "{} children in status",
        st.children.len()
    );
    let slot0 = *slot_pids("0").first().context("no slot 0 child")?;
    ensure!(
        procs_of(&g.join(format!("child-{slot0}"))).contains(&slot0),
        "child {slot0} is not in its leaf"
    );
    let (_, gc, _) = log_lines()
        .into_iter()
        .find(|(k, _, _)| k == "grandchild")
        .context("no grandchild")?;
    ensure!(
        procs_of(&g.join(format!("child-{slot0}"))).contains(&gc),
        "grandchild {gc} is not in its parent's leaf child-{slot0}"
    );
    evidence("grandchild", format!("{gc} in child-{slot0}"));
    let leaves: Vec<String> = fs::read_dir(&g)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("child-"))
        .collect();
    evidence("leaves", format!("{leaves:?}"));
    ensure!(
        leaves.len() <= 5,
        "empty leaves are not removed: {leaves:?}"
    );
    let with_connector = leaf_delays(0)?;
    report_delays("connector", with_connector)?;

    // Without the connector: a new daemon adopts and rescans.
    daemon.kill()?;
    let skip = log_lines().len();
    std::env::set_var("OOMGUARD_TEST_NO_PROC_CONNECTOR", "1");
    let mut daemon = Daemon::start(POLICY_DIR)?;
    std::env::remove_var("OOMGUARD_TEST_NO_PROC_CONNECTOR");
    let again = daemon.wait_running(&["pf/0"], Duration::from_secs(20))?["pf/0"];
    ensure!(
        again == main,
        "the new daemon did not adopt main {main} (got {again})"
    );
    let st = daemon.wait_status(
        "slot 0's child to be re-adopted",
        Duration::from_secs(10),
        |r| pf(r).filter(|i| i.children.iter().any(|c| c.pid == slot0)),
    )?;
    evidence(
        "children after the daemon restart",
        format!(
            "{:?}",
            st.children.iter().map(|c| c.pid).collect::<Vec<_>>()
        ),
    );
    let log = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    ensure!(
        log.contains("re-adopted the child"),
        "the log does not say it re-adopted a child"
    );
    sleep(Duration::from_secs(8));
    report_delays("rescan", leaf_delays(skip)?)?;

    daemon.stop()?;
    ensure!(!pid_alive(main), "main {main} survived the stop");
    Ok(())
}

/// `tests/vm/run.sh bench_fork_to_leaf`: the fork-to-leaf delay with the proc connector on cgroup2
/// as mounted (`nsdelegate`) and remounted with `favordynmods` (6.0+), in one boot. On
/// 6.0+ a write to cgroup.procs takes cgroup_threadgroup_rwsem for writing, which waits for an
/// RCU grace period unless the hierarchy favours dynamic modifications; under TCG a grace period
/// is long. METRIC lines for each; fails only when something is broken.
pub fn bench_fork_to_leaf() -> Result<()> {
    let args = ["--prefork", "3", "--child-exit-after-jobs", "10"];
    let mut pooled: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    // A, B, A: neither option set always runs first (a cold start) or last.
    let rounds = [
        ("default", "nsdelegate"),
        ("favordynmods", "nsdelegate,favordynmods"),
        ("default", "nsdelegate"),
    ];
    for (name, options) in rounds {
        remount_cgroup2(options)?;
        evidence("cgroup2 mount options", cgroup2_options()?);
        let (daemon, _, _) = start(&args, "{grace: 5s}")?;
        // Slots end after 10 jobs (~0.5 s) and are forked again: about 60 forks in 20 s.
        sleep(Duration::from_secs(20));
        let delays = leaf_delays(0)?;
        daemon.stop()?;
        pooled.entry(name).or_default().extend(delays);
    }
    for (name, delays) in pooled {
        report_delays(name, delays)?;
    }
    Ok(())
}

/// `mount -o remount,<options> none /sys/fs/cgroup`: the options given replace the mount's own.
fn remount_cgroup2(options: &str) -> Result<()> {
    let out = run_cmd(
        "mount",
        &[
            "-o",
            &format!("remount,{options}"),
            "none",
            "/sys/fs/cgroup",
        ],
        Duration::from_secs(20),
    )?;
    ensure!(
        out.status.success(),
        "remount cgroup2 with {options}: {}",
        out.summary()
    );
    Ok(())
}

/// The cgroup2 line of /proc/mounts (its options).
fn cgroup2_options() -> Result<String> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .map(str::to_string)
        .context("no cgroup2 in /proc/mounts")
}

/// A child that leaks fast under load trips young (here about 2 s after its birth) but is small
/// at birth: it is recycled alone however many times in a row, never taken for a respawn loop
/// (which would restart the whole server and refuse its connections).
pub fn children_fast_leak() -> Result<()> {
    let args = [
        "--prefork",
        "2",
        "--leak-slots",
        "1",
        "--leak-mb-per-s",
        "20",
    ];
    let (mut daemon, main, oom_before) = start(&args, "{signal: SIGTERM, grace: 10s, at_once: 1}")?;
    let recycles = wait_recycles(4, Duration::from_secs(60))?;
    let lives: Vec<String> = recycles.iter().map(|e| e.message.clone()).collect();
    evidence("recycles", format!("{lives:#?}"));
    let all = recent_events()?;
    ensure!(
        !all.iter().any(|e| e.action == "child_escalation"),
        "a fast leak was taken for a respawn loop: {:?}",
        all.iter()
            .find(|e| e.action == "child_escalation")
            .map(|e| &e.message)
    );
    let st = daemon.status()?;
    let inst = pf(&st).context("pf/0")?;
    ensure!(
        inst.pids.first() == Some(&main) && inst.restarts == 0,
        "the instance was restarted: pids {:?}, restarts {}",
        inst.pids,
        inst.restarts
    );
    // Young: the leaking slot's children lived well under 5 s each (40M at 20 MB/s).
    let born = slot_pids("0");
    evidence("slot 0 children", format!("{born:?}"));
    ensure!(born.len() >= 5, "only {} children in slot 0", born.len());
    ensure!(
        vmstat_oom_kill()? == oom_before,
        "the kernel OOM-killed during the run"
    );
    daemon.stop()?;
    Ok(())
}

/// Three children, slot 0 leaking 8 MB/s.
const ONE_LEAKING_OF_THREE: [&str; 6] = [
    "--prefork",
    "3",
    "--leak-slots",
    "1",
    "--leak-mb-per-s",
    "8",
];

/// One child leaks: it alone is recycled (its SIGTERM handler runs), the main process and its
/// siblings keep their pids, no OOM kill, its leaf goes, and a replacement gets a new leaf.
pub fn children_recycle() -> Result<()> {
    let (mut daemon, main, oom_before) = start(
        &ONE_LEAKING_OF_THREE,
        "{signal: SIGTERM, grace: 10s, at_once: 1}",
    )?;
    let ev = wait_until("a child_recycle event", Duration::from_secs(60), || {
        recent_events()
            .ok()?
            .into_iter()
            .find(|e| e.action == "child_recycle")
    })?;
    evidence("child_recycle", &ev.message);
    let leaker = *slot_pids("0").first().context("no slot 0 child")?;
    let siblings: Vec<u32> = ["1", "2"]
        .iter()
        .filter_map(|s| slot_pids(s).first().copied())
        .collect();
    ensure!(
        ev.child_pid == Some(leaker),
        "recycled {:?}, not the leaking child {leaker}",
        ev.child_pid
    );
    ensure!(
        ev.child_leaf.as_deref() == Some(format!("child-{leaker}").as_str()),
        "leaf {:?}",
        ev.child_leaf
    );
    ensure!(
        ev.reason == Reason::Memory || ev.reason == Reason::Pressure,
        "reason {:?}",
        ev.reason
    );
    ensure!(
        ev.memory_current.is_some_and(|m| m > 40 << 20),
        "memory figure {:?}",
        ev.memory_current
    );
    ensure!(
        matches!(ev.ending, Some(Ending::Exited { .. })),
        "ending {:?}",
        ev.ending
    );
    ensure!(
        logged("term", leaker),
        "the leaking child's SIGTERM handler did not run"
    );
    ensure!(
        !instance_group("pf/0")
            .join(format!("child-{leaker}"))
            .exists(),
        "the recycled child's leaf is still there"
    );
    let st = daemon.wait_status(
        "a replacement child in a leaf",
        Duration::from_secs(10),
        |r| pf(r).filter(|i| i.children.len() == 3 && !i.children.iter().any(|c| c.pid == leaker)),
    )?;
    ensure!(
        st.pids.first() == Some(&main) && st.restarts == 0,
        "the instance was restarted: {:?} restarts {}",
        st.pids,
        st.restarts
    );
    for s in &siblings {
        ensure!(
            pid_alive(*s) && st.children.iter().any(|c| c.pid == *s),
            "sibling {s} was touched"
        );
    }
    ensure!(
        st.child_recycles >= 1,
        "child_recycles {}",
        st.child_recycles
    );
    let metrics = client(&["metrics"])?.text();
    ensure!(
        metrics.contains("oomguard_child_recycles_total{policy=\"pf\",index=\"0\"}"),
        "no child recycle metric"
    );
    let ooms = vmstat_oom_kill()? - oom_before;
    evidence("oom kills", ooms);
    ensure!(ooms == 0, "{ooms} kernel OOM kills");
    daemon.stop()?;
    under_a_comm_flood()
}

/// How many unprivileged flooders rename themselves in a loop (more than the VM's 2 vCPUs).
const FLOODERS: usize = 3;

/// user + system CPU seconds of a process, from /proc/<pid>/stat (USER_HZ 100).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat without comm")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

/// Daemon log lines that contain `what`.
pub(crate) fn log_count(what: &str) -> usize {
    fs::read_to_string(DAEMON_LOG)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

/// Unprivileged processes (nobody) renaming themselves in a loop, each rename a proc connector
/// event: the daemon's socket must not overflow (it never receives those events), `status`
/// answers throughout (its latency is evidence, not asserted), and the leaking child is still
/// recycled at its boundary, not later by its PSI trigger.
fn under_a_comm_flood() -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut args = vec!["--children-log", LOG, "--job-ms", "50"];
    args.extend(ONE_LEAKING_OF_THREE);
    let yaml = format!(
        "name: pf\nrun:\n  command: {}\nmemory: {{high: 256M, max: 320M}}\n\
         triggers: {{pressure: {{some: 200ms, window: 1s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
         children:\n  memory: {{high: 48M, max: 96M}}\n\
         \x20 triggers: {{pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n\
         \x20 restart: {{signal: SIGTERM, grace: 10s, at_once: 1}}\n",
        worker_command(&args)
    );
    let _ = fs::remove_file(LOG);
    write_policy(POLICY_DIR, "pf", &yaml)?;
    let _ = fs::remove_file(DAEMON_LOG);
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&["pf/0"], Duration::from_secs(20))?;
    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        let c = std::process::Command::new(TESTWORKER)
            .arg("--flood-comm")
            .uid(65534)
            .gid(65534)
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("cannot start a flooder")?;
        flooders.push(c);
    }
    let cpu0 = cpu_seconds(daemon.pid())?;
    let t0 = std::time::Instant::now();
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let result = flood_checks(&mut daemon, since_ms);
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(daemon.pid())? - cpu0;
    let mut flooder_cpu = 0.0;
    for c in &mut flooders {
        flooder_cpu += cpu_seconds(c.id()).unwrap_or(0.0);
        let _ = c.kill();
        let _ = c.wait();
    }
    println!("METRIC comm_flood.wall_s {wall:.1}");
    println!("METRIC comm_flood.daemon_cpu_s {cpu:.2}");
    println!("METRIC comm_flood.flooders_cpu_s {flooder_cpu:.1}");
    let enobufs = log_count("ENOBUFS");
    println!("METRIC comm_flood.enobufs_log_lines {enobufs}");
    println!(
        "METRIC comm_flood.rescans_for_lost_events {}",
        log_count("rescanning every instance's children")
    );
    result?;
    let ooms = vmstat_oom_kill()? - oom_before;
    ensure!(ooms == 0, "{ooms} kernel OOM kills under the flood");
    ensure!(
        enobufs == 0,
        "the daemon's proc connector socket overflowed {enobufs} times under a flood of rename events it does not need"
    );
    daemon.stop()?;
    Ok(())
}

/// Events of the daemon before are still listed: only those from `since_ms` count.
fn flood_checks(daemon: &mut Daemon, since_ms: u64) -> Result<()> {
    let mut took = Vec::new();
    for _ in 0..20 {
        let t = std::time::Instant::now();
        let out = client(&["status"])?;
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        ensure!(
            out.status.success(),
            "status under the flood: {}",
            out.summary()
        );
        sleep(Duration::from_millis(500));
    }
    took.sort_by(|a, b| a.total_cmp(b));
    // What any command costs on the VM the flooders keep busy, without the daemon.
    let mut alone = Vec::new();
    for _ in 0..5 {
        let t = std::time::Instant::now();
        oomguard(&["--version"])?;
        alone.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    alone.sort_by(|a, b| a.total_cmp(b));
    println!(
        "METRIC comm_flood.version_median_ms {:.0}",
        percentile(&alone, 0.5)
    );
    println!(
        "METRIC comm_flood.status_median_ms {:.0}",
        percentile(&took, 0.5)
    );
    println!(
        "METRIC comm_flood.status_p99_ms {:.0}",
        percentile(&took, 0.99)
    );
    // The daemon's part alone: the request over the socket from this process, no CLI start-up.
    let (p50, p99) = crate::bench::status_latency(100)?;
    println!("METRIC comm_flood.status_socket_p50_ms {p50:.1}");
    println!("METRIC comm_flood.status_socket_p99_ms {p99:.1}");
    let ev = wait_until("a child_recycle event", Duration::from_secs(60), || {
        recent_events()
            .ok()?
            .into_iter()
            .find(|e| e.action == "child_recycle" && e.time_ms >= since_ms)
    })?;
    evidence("child_recycle under the flood", &ev.message);
    let leaker = *slot_pids("0").first().context("no slot 0 child")?;
    ensure!(
        ev.child_pid == Some(leaker),
        "recycled {:?}, not the leaking child {leaker}",
        ev.child_pid
    );
    ensure!(
        ev.reason == Reason::Boundary,
        "the leaking child was recycled by {:?}, not at its boundary",
        ev.reason
    );
    daemon.ensure_alive()
}

/// Every child leaks (5 MB/s: slow enough that the burst a throttled child makes once its
/// memory.high is lifted stays under its 96M memory.max during the grace) and ignores SIGTERM;
/// `at_once: 1`: recycles never overlap, each child is killed with its leaf after the 2 s grace,
/// and the main process stays.
pub fn children_at_once() -> Result<()> {
    let args = [
        "--prefork",
        "3",
        "--leak-slots",
        "3",
        "--leak-mb-per-s",
        "5",
        "--child-ignore-sigterm",
    ];
    let (mut daemon, main, oom_before) = start(&args, "{grace: 2s, at_once: 1}")?;
    let recycles = wait_recycles(3, Duration::from_secs(70))?;
    let mut spans: Vec<(u64, u64, u32)> = Vec::new();
    for e in &recycles {
        ensure!(
            matches!(e.ending, Some(Ending::KilledAfterGrace { .. })),
            "child {:?} ended {:?}, not killed after the grace",
            e.child_pid,
            e.ending
        );
        let pid = e.child_pid.context("no child pid")?;
        ensure!(!pid_alive(pid), "child {pid} survived its recycle");
        ensure!(
            !instance_group("pf/0").join(format!("child-{pid}")).exists(),
            "leaf of {pid} left"
        );
        let took = e.signal_to_exit_ms.context("no signal_to_exit_ms")?;
        spans.push((e.time_ms.saturating_sub(took), e.time_ms, pid));
    }
    spans.sort();
    evidence(
        "recycle spans (start ms, end ms, pid)",
        format!("{spans:?}"),
    );
    for w in spans.windows(2) {
        // 5 ms: the two times are rounded separately.
        ensure!(
            w[1].0 + 5 >= w[0].1,
            "recycles of {} and {} overlapped with at_once 1",
            w[0].2,
            w[1].2
        );
    }
    let st = pf(&daemon.status()?).context("pf/0")?;
    ensure!(
        st.pids.first() == Some(&main) && st.restarts == 0,
        "the instance was restarted"
    );
    let ooms = vmstat_oom_kill()? - oom_before;
    ensure!(ooms == 0, "{ooms} kernel OOM kills");
    daemon.stop()?;
    Ok(())
}

/// Every replacement of the leaking slot starts above its trigger: after three young recycles in
/// a row the instance is restarted, gracefully, with reason `child`, and the event says why.
pub fn children_escalate() -> Result<()> {
    let args = [
        "--prefork",
        "2",
        "--leak-slots",
        "1",
        "--child-start-mb",
        "44",
    ];
    let (mut daemon, main, _) = start(&args, "{grace: 5s}")?;
    let ev = wait_until("a child_escalation event", Duration::from_secs(60), || {
        recent_events()
            .ok()?
            .into_iter()
            .find(|e| e.action == "child_escalation")
    })?;
    evidence("child_escalation", &ev.message);
    ensure!(
        ev.message.contains("respawn loop"),
        "the escalation does not say why: {}",
        ev.message
    );
    let st = wait_restarted(&mut daemon, main, Reason::Child, Duration::from_secs(30))?;
    evidence("restarts_by_reason", format!("{:?}", st.restarts_by_reason));
    let restart = recent_events()?
        .into_iter()
        .find(|e| e.action == "restart" && e.reason == Reason::Child)
        .context("no restart event with reason child")?;
    ensure!(
        matches!(restart.ending, Some(Ending::Exited { .. })),
        "the main process was not stopped gracefully: {:?}",
        restart.ending
    );
    let recycled: BTreeSet<u32> = recent_events()?
        .iter()
        .filter(|e| e.action == "child_recycle")
        .filter_map(|e| e.child_pid)
        .collect();
    ensure!(
        recycled.len() >= 2,
        "escalated after {} recycles",
        recycled.len()
    );
    daemon.stop()?;
    Ok(())
}
