//! oomguard in a container whose cgroup mount is read-only (Docker's and Kubernetes' default):
//! container_writable's group `ctr` (memory.max 192M, memory.oom.group=1), entered with
//! `testworker --enter-container ctr --ro`. A prefork worker whose slot-0 child leaks 16 MB/s:
//! - control, without oomguard: the container's own OOM kill fires (so the check can fail);
//! - `oomguard exec --children` as the entrypoint: it starts (before the read-only mode it
//!   exited 1 with a refusal), status says read-only and why, the leaking children are recycled
//!   one at a time by their signal, the main worker stays, and the container's oom_kill stays;
//! - `container_readonly_restart`: a worker without children is restarted whole, gracefully;
//!   `container_readonly_kill`: one that ignores its signal is SIGKILLed after the grace, then
//!   `--metrics-listen` answers and `--stop-timeout` cuts a stop short (exit 4);
//!   `container_readonly_observe`: `--dry-run` reports an offender once per episode.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::{InstanceState, Reason};

use crate::container::{
    container_info, ctr_events, exec_with_stop_timeout, graceful, make_container, stop_cut_short,
    CTR, CTR_MAX,
};
use crate::harness::*;

const CHILDREN_LOG: &str = "/tmp/ledgers/ro-children.log";

fn worker() -> Vec<String> {
    [
        TESTWORKER,
        "--prefork",
        "2",
        "--leak-slots",
        "1",
        "--leak-mb-per-s",
        "16",
        "--job-ms",
        "50",
        "--children-log",
        CHILDREN_LOG,
    ]
    .map(String::from)
    .to_vec()
}

fn in_ro_container(cmd: &[String]) -> std::process::Command {
    let mut c = std::process::Command::new(TESTWORKER);
    c.args(["--enter-container", CTR, "--ro", "--"]).args(cmd);
    c
}

fn oom_kills() -> Result<u64> {
    Ok(ctr_events()?.get("oom_kill").copied().unwrap_or(0))
}

/// Live processes named `name`.
fn named(name: &str) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            pid_alive(pid)
                && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .collect()
}

/// The slot each child was forked into, from the children log (`child <pid> <slot>`).
fn slot_of(pid: u32) -> Option<u32> {
    let log = fs::read_to_string(CHILDREN_LOG).ok()?;
    log.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "child" && f.next()?.parse::<u32>().ok()? == pid)
            .then(|| f.next()?.parse().ok())?
    })
}

pub fn container_readonly() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;

    // Control: the same worker alone in the read-only container reaches memory.max.
    let mut control = in_ro_container(&worker())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the control worker")?;
    let killed = wait_until(
        "the container's OOM kill without oomguard",
        Duration::from_secs(60),
        || (oom_kills().ok()? > 0).then_some(()),
    );
    let _ = control.kill();
    let _ = control.wait();
    killed?;
    wait_until(
        "the control's processes gone",
        Duration::from_secs(10),
        || {
            read_trimmed(std::path::Path::new(&format!("{CTR}/cgroup.procs")))
                .ok()
                .filter(|p| p.is_empty())
        },
    )?;
    // Read once the group kill is over: read at the first kill, a busy host once counted the
    // control's last victim (40 ms later) against oomguard.
    let before = ctr_events()?;
    evidence("control memory.events", format!("{before:?}"));
    let _ = fs::remove_file(CHILDREN_LOG);

    let exec: Vec<String> = [OOMGUARD, "exec", "--socket", SOCKET, "--children", "--"]
        .map(String::from)
        .into_iter()
        .chain(worker())
        .collect();
    let mut daemon = Daemon::start_command(in_ro_container(&exec))?;
    let id = "testworker/0";
    let first = daemon.wait_running(&[id], Duration::from_secs(30))?[id];
    let info = container_info(&mut daemon)?;
    ensure!(
        info.mode == "read-only"
            && info.memory_max == Some(CTR_MAX)
            && info.recycle_at == Some(CTR_MAX - (24 << 20))
            && info.why.contains("writable-cgroups"),
        "container info {info:?}"
    );
    let table = client(&["status"])?.text();
    evidence("status header", table.lines().next().unwrap_or(""));
    ensure!(table.contains("read-only cgroups"), "status: {table}");

    let recycles: Vec<EventRecord> = wait_until(
        "two children recycled by the read-only mode",
        Duration::from_secs(90),
        || {
            let done: Vec<EventRecord> = recent_events()
                .ok()?
                .into_iter()
                .filter(|e| {
                    e.action == "child_recycle"
                        && e.reason == Reason::ContainerLimit
                        && e.ending.is_some()
                })
                .collect();
            (done.len() >= 2).then_some(done)
        },
    )?;
    for e in &recycles {
        evidence("recycle", &e.message);
        ensure!(graceful(e), "the child ended {:?}", e.ending);
        let pid = e.child_pid.context("a recycle without its child")?;
        ensure!(
            slot_of(pid) == Some(0),
            "recycled child {pid} is not the leaking slot 0"
        );
        ensure!(
            e.memory_current.is_some_and(|m| m < CTR_MAX),
            "memory_current {:?}",
            e.memory_current
        );
    }
    let after = ctr_events()?;
    evidence("container memory.events", format!("{after:?}"));
    ensure!(
        after.get("oom_kill") == before.get("oom_kill")
            && after.get("oom_group_kill") == before.get("oom_group_kill"),
        "the container's own OOM fired under oomguard: {before:?} -> {after:?}"
    );
    let report = daemon.status()?;
    let inst = require_instance(&report, id)?;
    ensure!(
        inst.pids.first() == Some(&first) && pid_alive(first) && inst.restarts == 0,
        "the main worker {first} did not stay: {inst:?}"
    );
    ensure!(
        inst.child_recycles >= 2,
        "child_recycles {}",
        inst.child_recycles
    );
    let log = fs::read_to_string(CHILDREN_LOG)?;
    for e in &recycles {
        let pid = e.child_pid.unwrap_or(0);
        ensure!(
            log.lines().any(|l| l == format!("term {pid}")),
            "child {pid} did not run its SIGTERM handler"
        );
    }
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited {status}");
    Ok(())
}

/// A plain worker (no `children:`) leaking 16 MB/s in the read-only container: restarted whole,
/// gracefully (its SIGTERM, its job finished, a clean exit), respawned with a new pid, and the
/// container's OOM kill never fires.
pub fn container_readonly_restart() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;
    let ledger = ledger_path("ro");
    let worker = [
        "--ledger",
        &ledger,
        "--leak-mb-per-s",
        "16",
        "--detached-child",
    ];
    let (mut daemon, restart, second) = restarted_once("10s", &worker)?;
    ensure!(graceful(&restart), "the worker ended {:?}", restart.ending);
    // The first worker's child in a session of its own is killed with it (before, it outlived
    // the graceful exit, re-parented to the init); the respawned worker's own is left running.
    let detached = wait_until(
        "the old worker's detached child gone",
        Duration::from_secs(10),
        || {
            let d = named("detached");
            (d.len() == 1).then_some(d)
        },
    )?;
    let parent = oomguard::procfs::parent_pid(detached[0]);
    ensure!(
        parent == Some(second),
        "the detached child left is {detached:?}, parent {parent:?}, not the new worker {second}'s"
    );
    let id = "testworker/0";
    let events = ctr_events()?;
    evidence("container memory.events", format!("{events:?}"));
    ensure!(
        events.get("oom_kill") == Some(&0),
        "the container's own OOM fired: {events:?}"
    );
    // A reload signal (passed on by the init) is declined and said, not fatal.
    daemon.signal(libc::SIGHUP)?;
    wait_until("the SIGHUP to be declined", Duration::from_secs(10), || {
        fs::read_to_string(DAEMON_LOG)
            .ok()?
            .contains("SIGHUP: reload is not available")
            .then_some(())
    })?;
    daemon.ensure_alive()?;
    ensure!(
        require_instance(&daemon.status()?, id)?.pids.first() == Some(&second),
        "the worker changed after SIGHUP"
    );
    let running: std::collections::BTreeSet<u32> = [second].into();
    let l = Ledger::read(&ledger)?;
    evidence("ledger", l.summary());
    ensure!(
        l.lost_jobs(&running).is_empty() && l.unclean_exits(&running).is_empty(),
        "lost jobs {:?}, unclean exits {:?}",
        l.lost_jobs(&running),
        l.unclean_exits(&running)
    );
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited {status}");
    Ok(())
}

/// `oomguard exec --grace GRACE -- testworker WORKER...` in the read-only container, until its
/// first whole-worker restart has ended and the respawned worker runs: the daemon, the restart
/// event and the new pid.
fn restarted_once(grace: &str, worker: &[&str]) -> Result<(Daemon, EventRecord, u32)> {
    let exec: Vec<String> = [OOMGUARD, "exec", "--socket", SOCKET, "--grace", grace, "--"]
        .iter()
        .chain(&[TESTWORKER])
        .chain(worker)
        .map(|s| s.to_string())
        .collect();
    let mut daemon = Daemon::start_command(in_ro_container(&exec))?;
    let id = "testworker/0";
    let first = daemon.wait_running(&[id], Duration::from_secs(30))?[id];
    let restart = wait_until(
        "a whole-worker restart by the read-only mode",
        Duration::from_secs(60),
        || {
            recent_events().ok()?.into_iter().find(|e| {
                e.action == "restart" && e.reason == Reason::ContainerLimit && e.ending.is_some()
            })
        },
    )?;
    evidence("restart", &restart.message);
    let second = wait_until("the respawned worker", Duration::from_secs(20), || {
        let report = status_json().ok()?;
        let inst = instance(&report, id)?;
        (inst.state == InstanceState::Running && inst.restarts >= 1)
            .then(|| inst.pids.first().copied())?
            .filter(|&p| p != first)
    })?;
    evidence("pids", format!("{first} -> {second}"));
    Ok((daemon, restart, second))
}

/// A worker that ignores its SIGTERM, leaking 8 MB/s, `--grace 2s`: SIGKILLed after the grace
/// (its process group, as there is no cgroup.kill), respawned, and the kill came before the
/// kernel's: the container's oom_kill stays 0.
pub fn container_readonly_kill() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;
    let worker = ["--ignore-sigterm", "--leak-mb-per-s", "8"];
    let (daemon, restart, second) = restarted_once("2s", &worker)?;
    ensure!(
        matches!(
            restart.ending,
            Some(oomguard::vocabulary::Ending::KilledAfterGrace { .. })
        ),
        "the worker that ignores SIGTERM ended {:?}",
        restart.ending
    );
    ensure!(pid_alive(second), "the respawned worker {second} is gone");
    let events = ctr_events()?;
    evidence("container memory.events", format!("{events:?}"));
    ensure!(
        events.get("oom_kill") == Some(&0),
        "the container's own OOM fired: {events:?}"
    );
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited {status}");
    stop_timeout_and_metrics()
}

/// Where the read-only daemon serves `--metrics-listen` (the VM's one network namespace).
const METRICS: &str = "127.0.0.1:9102";

/// The read-only mode's `--metrics-listen` answers /metrics, and `--stop-timeout 3s` cuts the
/// stop of a worker that ignores SIGTERM with a 60 s grace short: killed, exit status 4.
fn stop_timeout_and_metrics() -> Result<()> {
    run_cmd(
        "/bin/busybox",
        &["ip", "link", "set", "lo", "up"],
        Duration::from_secs(5),
    )?;
    let exec = exec_with_stop_timeout(&["--metrics-listen", METRICS]);
    let mut daemon = Daemon::start_command(in_ro_container(&exec))?;
    let id = "testworker/0";
    let pid = daemon.wait_running(&[id], Duration::from_secs(30))?[id];
    let (code, body) = http_get(METRICS, "/metrics")?;
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("oomguard_instance_state{policy=\"testworker\"")
                && l.contains("state=\"running\"")
        })
        .map(str::to_string);
    evidence("GET /metrics", format!("{code}: {line:?}"));
    ensure!(
        code == 200 && line.as_deref().is_some_and(|l| l.ends_with(" 1")),
        "{id} not running by the metrics over HTTP:\n{body}"
    );
    stop_cut_short(&mut daemon)?;
    ensure!(!pid_alive(pid), "the worker {pid} outlived the stop");
    Ok(())
}

/// `oomguard exec --dry-run` in the read-only container, a worker that grows to 172M and holds
/// there (above the line, 168M, under the container's 192M): one would_restart report for the
/// whole episode. Before, the report came again after every 2 s cooldown, for as long as the
/// worker stayed there.
pub fn container_readonly_observe() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;
    let exec: Vec<String> = [
        OOMGUARD,
        "exec",
        "--dry-run",
        "--socket",
        SOCKET,
        "--",
        TESTWORKER,
        "--leak-mb-per-s",
        "16",
        "--leak-cap-mb",
        "172",
    ]
    .map(String::from)
    .to_vec();
    let mut daemon = Daemon::start_command(in_ro_container(&exec))?;
    let id = "testworker/0";
    let pid = daemon.wait_running(&[id], Duration::from_secs(30))?[id];
    let reports = || -> Vec<EventRecord> {
        recent_events()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| e.action == "would_restart")
            .collect()
    };
    let first = wait_until("a would_restart report", Duration::from_secs(60), || {
        reports().into_iter().next()
    })?;
    evidence("would_restart", &first.message);
    // Five cooldowns above the line.
    std::thread::sleep(Duration::from_secs(10));
    let n = reports().len();
    evidence("would_restart reports in 10 s above the line", n);
    ensure!(n == 1, "{n} would_restart reports for one episode");
    ensure!(pid_alive(pid), "observe mode signalled the worker {pid}");
    let events = ctr_events()?;
    ensure!(
        events.get("oom_kill") == Some(&0),
        "the container's own OOM fired: {events:?}"
    );
    let status = daemon.stop()?;
    ensure!(status.success(), "the daemon exited {status}");
    Ok(())
}

/// A leaking child that ignores its SIGTERM under a 60 s grace, in the read-only container: it
/// goes on leaking through its grace, and before the last line (186M) existed that ended in the
/// container's own OOM kill of every worker. Now its grace ends at the last line: SIGKILLed,
/// said in the event, and the container's oom_kill stays 0.
pub fn container_readonly_last_line() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;
    let _ = fs::remove_file(CHILDREN_LOG);
    let exec: Vec<String> = [
        OOMGUARD,
        "exec",
        "--socket",
        SOCKET,
        "--children",
        "--grace",
        "60s",
        "--stop-timeout",
        "3s",
        "--",
    ]
    .map(String::from)
    .into_iter()
    .chain(worker())
    // 8 MB/s (the last --leak-mb-per-s wins): the 6M from the last line to memory.max is
    // three polls.
    .chain(["--child-ignore-sigterm", "--leak-mb-per-s", "8"].map(String::from))
    .collect();
    let mut daemon = Daemon::start_command(in_ro_container(&exec))?;
    let id = "testworker/0";
    let main = daemon.wait_running(&[id], Duration::from_secs(30))?[id];
    let ev = wait_until(
        "a child recycle cut short at the last line",
        Duration::from_secs(90),
        || {
            recent_events().ok()?.into_iter().find(|e| {
                e.action == "child_recycle" && e.ending.is_some() && e.message.contains("last line")
            })
        },
    )?;
    evidence("child_recycle", &ev.message);
    let after = ev.signal_to_exit_ms.context("no signal-to-exit figure")?;
    ensure!(
        after < 60_000,
        "the child was killed after {after} ms, not before its 60 s grace"
    );
    let events = ctr_events()?;
    evidence("container memory.events", format!("{events:?}"));
    ensure!(
        events.get("oom_kill") == Some(&0),
        "the container's own OOM fired: {events:?}"
    );
    ensure!(pid_alive(main), "the main worker {main} did not stay");
    // Its children ignore SIGTERM: the stop is cut at 3 s, not the grace's 60.
    stop_cut_short(&mut daemon)
}
