//! The memory.high boundary (the default for a policy with memory.high and no memory trigger):
//! a leaking worker is restarted at the sentinel, before the kernel throttles it; a worker that
//! sits at 90 % of its high is left alone at no CPU cost; page cache is reclaimed, never a reason
//! to restart; a child leaf (`children:`) is recycled the same way.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::Reason;

use crate::harness::*;

/// The README example's shape: memory.high 40M, max 64M, a PSI trigger, no memory trigger.
fn policy(cmd: &str, extra_memory: &str, triggers: &str) -> String {
    format!(
        "run:\n  command: {cmd}\n  instances: 1\n  user: worker\n\
         memory:\n  high: 40M\n  max: 64M\n{extra_memory}\
         triggers:\n  pressure: {{some: 150ms, window: 1s}}\n{triggers}\
         restart:\n  grace: 10s\n"
    )
}

const M: u64 = 1 << 20;
const HIGH: u64 = 40 * M;

/// memory.pressure `some` and `full` totals (µs) of an instance's group.
fn stall_us(id: &str) -> Result<(u64, u64)> {
    let text = read_trimmed(&instance_group(id).join("memory.pressure"))?;
    let p = oomguard::cgroupfs::parse_pressure(&text).context("memory.pressure")?;
    Ok((p.some_total_us, p.full_total_us))
}

/// utime + stime of a process in clock ticks (USER_HZ, 100 on Linux).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (_, rest) = stat.rsplit_once(") ").context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn restarts_of(events: &[EventRecord], id: &str) -> Vec<EventRecord> {
    events
        .iter()
        .filter(|e| e.instance == id && e.action == "restart")
        .cloned()
        .collect()
}

/// Three fleets side by side, each one worker leaking 8 MB/s: `edge` (the default: the
/// boundary), `psi` (the boundary off: the PSI trigger alone, as before) and `poll` (a memory
/// trigger at the same line as edge's first sentinel, sampled once a second). The boundary must
/// restart before the configured high: every `boundary` restart decided under 40M, at least as
/// little stall as the PSI-only fleet, no OOM kill, no lost job, every exit graceful.
pub fn boundary_leak() -> Result<()> {
    make_ledger_dir()?;
    let leak = |name: &str| {
        worker_command(&[
            "--ledger",
            &ledger_path(name),
            "--leak-mb-per-s",
            "8",
            "--job-ms",
            "50",
        ])
    };
    write_policy(POLICY_DIR, "edge", &policy(&leak("edge"), "", ""))?;
    write_policy(
        POLICY_DIR,
        "psi",
        &policy(&leak("psi"), "  boundary: false\n", ""),
    )?;
    write_policy(
        POLICY_DIR,
        "poll",
        &policy(&leak("poll"), "", "  memory: {above: 38400K}\n"),
    )?;
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let ids = ["edge/0", "psi/0", "poll/0"];
    daemon.wait_running(&ids, Duration::from_secs(20))?;
    let report = daemon.status()?;
    let edge = require_instance(&report, "edge/0")?;
    evidence(
        "edge status memory_high / boundary",
        format!("{:?} / {:?}", edge.memory_high, edge.boundary),
    );
    ensure!(
        edge.memory_high == Some(HIGH),
        "status must show the configured memory.high, shows {:?}",
        edge.memory_high
    );
    let sentinel = edge.boundary.context("no boundary in edge's status")?;
    ensure!(
        sentinel < HIGH && sentinel > HIGH / 10 * 9,
        "sentinel {sentinel}"
    );
    let kernel_high = read_trimmed(&instance_group("edge/0").join("memory.high"))?;
    evidence("edge kernel memory.high", &kernel_high);
    let stall0: Vec<(u64, u64)> = ids.iter().map(|id| stall_us(id)).collect::<Result<_>>()?;

    let run_for = Duration::from_secs(30);
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    while started.elapsed() < run_for {
        seen.extend(all_pids(&daemon.status()?));
        sleep(Duration::from_secs(1));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let before = daemon.status()?;
    let events = recent_events()?;
    let after = daemon.status()?;
    let running: BTreeSet<u32> = all_pids(&before)
        .union(&all_pids(&after))
        .copied()
        .collect();

    let mut failures = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let name = id.trim_end_matches("/0");
        let ledger = Ledger::read(&ledger_path(name))?;
        let inst = require_instance(&after, id)?;
        let (some, full) = stall_us(id)?;
        let restarts = restarts_of(&events, id);
        let at: Vec<String> = restarts
            .iter()
            .map(|e| {
                e.memory_current
                    .map_or("?".into(), |c| format!("{:.1}M", c as f64 / M as f64))
            })
            .collect();
        println!(
            "METRIC {name}_jobs_per_s {:.2}",
            ledger.completed_jobs() as f64 / elapsed
        );
        println!("METRIC {name}_restarts {}", inst.restarts);
        println!(
            "METRIC {name}_stall_some_ms {}",
            (some - stall0[i].0) / 1000
        );
        println!(
            "METRIC {name}_stall_full_ms {}",
            (full - stall0[i].1) / 1000
        );
        evidence(
            &format!("{name} restarts by reason / memory.current at each decision"),
            format!("{:?} / {at:?}", inst.restarts_by_reason),
        );
        if let Some(e) = restarts.last() {
            evidence(&format!("{name} last restart"), &e.message);
        }
        let unclean = ledger.unclean_exits(&running);
        if !unclean.is_empty() {
            failures.push(format!(
                "{name}: pids {unclean:?} ended without `exit clean`"
            ));
        }
        let lost = ledger.lost_jobs(&running);
        if !lost.is_empty() {
            failures.push(format!("{name}: lost jobs {lost:?}"));
        }
    }
    let edge = require_instance(&after, "edge/0")?;
    let edge_restarts = restarts_of(&events, "edge/0");
    ensure!(
        edge.restarts >= 2,
        "edge restarted {} time(s) in {elapsed:.0} s, want >= 2",
        edge.restarts
    );
    ensure!(
        edge.restarts_by_reason
            .keys()
            .all(|r| *r == Reason::Boundary),
        "edge restarted for {:?}, want only boundary",
        edge.restarts_by_reason
    );
    for e in &edge_restarts {
        let at = e
            .memory_current
            .context("a boundary restart without memory.current")?;
        ensure!(
            at < HIGH,
            "a boundary restart decided at memory.current {at} >= memory.high {HIGH}: {}",
            e.message
        );
        ensure!(
            e.message.contains("memory.high boundary: owned")
                && e.message.contains("sentinel")
                && e.message.contains("growing"),
            "the restart does not say what fired with its numbers: {}",
            e.message
        );
    }
    let oom_after = vmstat_oom_kill()?;
    ensure!(
        oom_after == oom_before,
        "the kernel OOM-killed {} process(es)",
        oom_after - oom_before
    );
    ensure!(failures.is_empty(), "{}", failures.join("; "));
    daemon.stop()?;
    Ok(())
}

/// A worker that grows to 90 % of memory.high (36M of 40M) and stays there for 60 s is never
/// restarted, and the daemon spends no CPU on it while it is flat.
pub fn boundary_stable() -> Result<()> {
    make_ledger_dir()?;
    let cmd = worker_command(&[
        "--ledger",
        &ledger_path("flat"),
        "--leak-mb-per-s",
        "20",
        "--leak-cap-mb",
        "36",
        "--job-ms",
        "200",
    ]);
    write_policy(POLICY_DIR, "flat", &policy(&cmd, "", ""))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&["flat/0"], Duration::from_secs(20))?["flat/0"];
    let group = instance_group("flat/0");
    wait_until("the worker to reach 36M", Duration::from_secs(30), || {
        let cur: u64 = read_trimmed(&group.join("memory.current"))
            .ok()?
            .parse()
            .ok()?;
        (cur >= 36 * M).then_some(cur)
    })?;
    let ticks0 = cpu_ticks(daemon.pid())?;
    let events0 = memory_events("flat/0")?;
    let started = Instant::now();
    let mut peak = 0u64;
    while started.elapsed() < Duration::from_secs(60) {
        let inst = daemon.status()?;
        let inst = require_instance(&inst, "flat/0")?;
        ensure!(
            inst.restarts == 0 && inst.pids.first() == Some(&first),
            "the flat worker was restarted: restarts {} {:?}, pids {:?}",
            inst.restarts,
            inst.restarts_by_reason,
            inst.pids
        );
        peak = peak.max(inst.memory_current.unwrap_or(0));
        sleep(Duration::from_secs(5));
    }
    // Status requests read files too: only the daemon's ticks over a quiet stretch count.
    let quiet0 = cpu_ticks(daemon.pid())?;
    sleep(Duration::from_secs(10));
    let quiet = cpu_ticks(daemon.pid())? - quiet0;
    let events1 = memory_events("flat/0")?;
    evidence(
        "memory.current peak while flat",
        format!("{:.1}M", peak as f64 / M as f64),
    );
    evidence(
        "memory.events before/after",
        format!("{events0:?} / {events1:?}"),
    );
    println!(
        "METRIC daemon_ticks_60s_with_status_polls {}",
        quiet0 - ticks0
    );
    println!("METRIC daemon_ticks_10s_quiet {quiet}");
    ensure!(
        events1.get("high") == events0.get("high"),
        "the sentinel was crossed by a flat worker"
    );
    daemon.stop()?;
    Ok(())
}

/// Loads brd (tests/vm/run.sh puts it in the image): a RAM block device whose unwritten sectors
/// read as zeros without allocating memory, so reading it fills only the page cache.
fn ram_disk(mb: u64) -> Result<&'static str> {
    let release = read_trimmed(Path::new("/proc/sys/kernel/osrelease"))?;
    let module = format!("/lib/modules/{release}/brd.ko");
    let size = format!("rd_size={}", mb * 1024);
    let out = run_cmd(
        "insmod",
        &[&module, "rd_nr=1", &size],
        Duration::from_secs(20),
    )?;
    ensure!(out.status.success(), "insmod brd: {}", out.summary());
    let dev = "/dev/ram0";
    wait_until("/dev/ram0", Duration::from_secs(5), || {
        Path::new(dev).exists().then_some(())
    })?;
    Ok(dev)
}

/// A shell loop reading the whole device through the page cache, one line per pass.
fn streamer(dev: &str, passes: &str) -> String {
    format!("while :; do dd if={dev} of=/dev/null bs=1M 2>/dev/null; echo p >> {passes}; done")
}

/// SIGKILL to the process group `pgid`.
fn signal_group(pgid: u32) -> Result<()> {
    let pgid = i32::try_from(pgid)?;
    // SAFETY: kill(2) with a negative pid signals that process group; no memory is involved.
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    ensure!(rc == 0, "kill -{pgid}: {}", std::io::Error::last_os_error());
    Ok(())
}

fn count_lines(path: &str) -> usize {
    fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

/// A worker that streams a 300 MB device through the page cache in a 64M group (no anon
/// growth) is never restarted and not throttled into a crawl: its passes per second against the
/// same loop with no limit, and its `full` stall.
pub fn boundary_pagecache() -> Result<()> {
    let dev = ram_disk(300)?;
    let window = Duration::from_secs(20);

    // Unlimited first, outside any oomguard group.
    let free = "/tmp/passes-free";
    // In a process group of its own, so the loop and its dd go together.
    let mut child = Command::new("/bin/sh")
        .args(["-c", &streamer(dev, free)])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the unlimited streamer")?;
    sleep(window);
    let free_passes = count_lines(free);
    signal_group(child.id())?;
    child.wait()?;

    let guarded = "/tmp/passes-guarded";
    let script = streamer(dev, guarded);
    write_policy(
        POLICY_DIR,
        "stream",
        &format!(
            "run:\n  command: [\"/bin/sh\", \"-c\", {script:?}]\n  instances: 1\n\
             memory:\n  high: 64M\n  max: 128M\n\
             triggers:\n  pressure: {{some: 150ms, window: 1s}}\nrestart:\n  grace: 5s\n"
        ),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&["stream/0"], Duration::from_secs(20))?;
    let sentinel = require_instance(&daemon.status()?, "stream/0")?
        .boundary
        .context("no boundary in status")?;
    let (some0, full0) = stall_us("stream/0")?;
    let high0 = memory_events("stream/0")?;
    let started = Instant::now();
    while started.elapsed() < window {
        let report = daemon.status()?;
        let inst = require_instance(&report, "stream/0")?;
        ensure!(
            inst.restarts == 0,
            "the streamer was restarted: {:?}",
            inst.restarts_by_reason
        );
        sleep(Duration::from_secs(1));
    }
    let guarded_passes = count_lines(guarded);
    let (some1, full1) = stall_us("stream/0")?;
    let high1 = memory_events("stream/0")?;
    let stat = read_trimmed(&instance_group("stream/0").join("memory.stat"))?;
    let stat = parse_flat_keyed(&stat);
    let secs = window.as_secs_f64();
    evidence("sentinel", format!("{:.1}M", sentinel as f64 / M as f64));
    evidence(
        "memory.stat anon/file at the end",
        format!("{:?}/{:?}", stat.get("anon"), stat.get("file")),
    );
    evidence(
        "memory.events high before/after",
        format!("{:?}/{:?}", high0.get("high"), high1.get("high")),
    );
    println!(
        "METRIC passes_per_s_unlimited {:.2}",
        free_passes as f64 / secs
    );
    println!(
        "METRIC passes_per_s_guarded {:.2}",
        guarded_passes as f64 / secs
    );
    println!("METRIC stall_some_ms {}", (some1 - some0) / 1000);
    println!("METRIC stall_full_ms {}", (full1 - full0) / 1000);
    ensure!(
        free_passes > 0,
        "the unlimited streamer made no pass: no page cache was read"
    );
    // A crawl (the kernel throttling at memory.high) would leave the worker stalled most of the
    // time; page cache reclaim is cheap. Not a timing bar: a share of the worker's own time.
    let full_share = (full1 - full0) as f64 / 1e6 / secs;
    ensure!(
        full_share < 0.5,
        "the streamer was stalled {:.0} % of the time (memory.pressure full)",
        full_share * 100.0
    );
    ensure!(guarded_passes > 0, "the guarded streamer made no pass");
    let restarts = restarts_of(&recent_events()?, "stream/0");
    if !restarts.is_empty() {
        bail!("restarted: {}", restarts[0].message);
    }
    daemon.stop()?;
    Ok(())
}

/// `children:` with memory.high and no memory trigger for the children: the leaking child is
/// recycled alone at its leaf's sentinel (reason `boundary`, decided under its configured high),
/// the main process and the other child are left alone.
pub fn boundary_child() -> Result<()> {
    let cmd = worker_command(&PREFORK_ONE_LEAKING);
    write_policy(
        POLICY_DIR,
        "pf",
        &format!(
            "name: pf\nrun:\n  command: {cmd}\nmemory: {{high: 256M, max: 320M}}\n\
             triggers: {{pressure: {{some: 200ms, window: 1s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
             children:\n  memory: {{high: 40M, max: 80M}}\n\
             \x20 triggers: {{pressure: {{some: 100ms, window: 1s}}}}\n\
             \x20 restart: {{signal: SIGTERM, grace: 10s}}\n"
        ),
    )?;
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let main = daemon.wait_running(&["pf/0"], Duration::from_secs(20))?["pf/0"];
    let st = daemon.wait_status("two children in leaves", Duration::from_secs(20), |r| {
        instance(r, "pf/0")
            .filter(|i| i.children.len() == 2)
            .cloned()
    })?;
    let child = &st.children[0];
    evidence(
        "child memory_high / boundary in status",
        format!("{:?} / {:?}", child.memory_high, child.boundary),
    );
    ensure!(
        child.memory_high == Some(HIGH) && child.boundary.is_some_and(|b| b < HIGH),
        "a child's status must show the configured memory.high and the sentinel apart: {child:?}"
    );
    let ev = wait_event("child_recycle", Duration::from_secs(60))?;
    evidence("child_recycle", &ev.message);
    ensure!(ev.reason == Reason::Boundary, "reason {:?}", ev.reason);
    let at = ev.memory_current.context("no memory figure")?;
    ensure!(
        at < HIGH,
        "decided at {at}, not under the child's memory.high {HIGH}"
    );
    let st = require_instance(&daemon.status()?, "pf/0")?.clone();
    ensure!(
        st.pids.first() == Some(&main) && st.restarts == 0,
        "the instance was restarted: {:?} restarts {}",
        st.pids,
        st.restarts
    );
    let oom_after = vmstat_oom_kill()?;
    ensure!(oom_after == oom_before, "the kernel OOM-killed a process");
    daemon.stop()?;
    Ok(())
}
