//! Issue 7, the daemon's share: reloads serialized (`concurrent_reload`), one daemon per cgroup
//! root and a dry run that signals nothing, not even on exit (`second_daemon`), the failed state kept across a
//! daemon restart (`failed_persists`).

use std::collections::BTreeMap;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::vocabulary::InstanceState;

use crate::crasher_policy;
use crate::harness::*;

/// A plain testworker policy with `instances` instances.
fn plain(instances: u32, high: &str) -> String {
    format!(
        "run:\n  command: {}\n  instances: {instances}\nmemory:\n  high: {high}\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\nrestart:\n  grace: 5s\n",
        worker_command(&[])
    )
}

/// The pids in an instance's group, from the kernel.
fn group_procs(id: &str) -> Result<Vec<u32>> {
    let text = std::fs::read_to_string(instance_group(id).join("cgroup.procs"))
        .with_context(|| format!("cgroup.procs of {id}"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Every group holds exactly one process.
fn one_worker_each(ids: &[&str]) -> Result<BTreeMap<String, u32>> {
    let mut pids = BTreeMap::new();
    for id in ids {
        let procs = group_procs(id)?;
        ensure!(
            procs.len() == 1,
            "{id}'s group holds {procs:?}: not exactly one worker"
        );
        pids.insert(id.to_string(), procs[0]);
    }
    Ok(pids)
}

/// The alpha policy: its workers ignore SIGTERM, so a restart of one takes the whole grace, and
/// a reload that changes alpha waits that long for the instance to take the new limits.
fn alpha(high: &str) -> String {
    format!(
        "run:\n  command: {}\n  instances: 2\nmemory:\n  high: {high}\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\nrestart:\n  grace: 6s\n",
        worker_command(&["--ignore-sigterm"])
    )
}

/// Reloads racing: while `alpha/0` is being restarted (6 s of grace), a socket reload changes
/// alpha and adds `beta` and waits for alpha/0; then alpha changes again and SIGHUPs and more
/// `oomguard reload`s arrive, which wait for alpha/0 too. Unserialized, they all resumed at
/// once when the restart ended, each starting `beta` from its own snapshot. Exactly one worker
/// per group afterwards, and still one after a restart of each new instance (a second, hidden
/// task would respawn its own).
pub fn concurrent_reload() -> Result<()> {
    write_policy(POLICY_DIR, "alpha", &alpha("48M"))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&["alpha/0", "alpha/1"], Duration::from_secs(20))?;
    let restart = std::thread::spawn(|| client(&["restart", "alpha/0"]));
    sleep(Duration::from_secs(1));

    write_policy(POLICY_DIR, "alpha", &alpha("44M"))?;
    write_policy(POLICY_DIR, "beta", &plain(2, "48M"))?;
    let first = std::thread::spawn(|| client(&["reload"]));
    sleep(Duration::from_millis(1500));
    write_policy(POLICY_DIR, "alpha", &alpha("40M"))?;
    let pid = daemon.pid();
    let mut clients: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(|| client(&["reload"])))
        .collect();
    for _ in 0..3 {
        signal(pid, libc::SIGHUP)?;
        sleep(Duration::from_millis(200));
    }
    clients.push(first);
    let mut added = 0;
    for c in clients {
        let out = c
            .join()
            .map_err(|_| anyhow::anyhow!("a reload thread panicked"))??;
        evidence("oomguard reload", out.summary());
        ensure!(out.status.success(), "a reload failed: {}", out.text());
        added += usize::from(out.stdout.contains("added beta"));
    }
    // One start of beta; a second would be a second set of tasks for the same groups.
    let starts = std::fs::read_to_string(DAEMON_LOG)?
        .matches("policy started from /tmp/policies/beta.yaml")
        .count();
    evidence(
        "beta started",
        format!("{starts} time(s); {added} reply(ies) say added"),
    );
    ensure!(
        starts == 1 && added == 1,
        "beta was started {starts} times ({added} replies say added beta)"
    );
    let out = restart
        .join()
        .map_err(|_| anyhow::anyhow!("the restart thread panicked"))??;
    ensure!(out.status.success(), "restart alpha/0: {}", out.text());
    let ids = ["alpha/0", "alpha/1", "beta/0", "beta/1"];
    daemon.wait_running(&ids, Duration::from_secs(20))?;
    // Long enough for a duplicate task to have spawned its worker.
    sleep(Duration::from_secs(3));
    let pids = one_worker_each(&ids)?;
    evidence("one worker per group", format!("{pids:?}"));
    let high = read_trimmed(&instance_group("alpha/0").join("memory.high"))?;
    let report = daemon.status()?;
    ensure!(
        high_in_force(require_instance(&report, "alpha/0")?, &high, 40 << 20),
        "alpha/0 memory.high {high}: the change was not applied"
    );

    for id in ["beta/0", "beta/1"] {
        let out = client(&["restart", id])?;
        ensure!(out.status.success(), "restart {id}: {}", out.text());
    }
    daemon.wait_running(&ids, Duration::from_secs(20))?;
    sleep(Duration::from_secs(2));
    let after = one_worker_each(&ids)?;
    evidence("after restarting beta", format!("{after:?}"));
    for id in ["beta/0", "beta/1"] {
        ensure!(after[id] != pids[id], "{id} was not restarted");
        ensure!(
            !pid_alive(pids[id]),
            "{id}'s old worker {} still runs",
            pids[id]
        );
    }
    let report = daemon.status()?;
    for id in ids {
        let i = require_instance(&report, id)?;
        ensure!(
            i.pids.first() == after.get(id),
            "{id}: status says {:?}, the group holds {:?}",
            i.pids,
            after.get(id)
        );
    }
    let log = std::fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    evidence("reloads run", log.matches("reloaded /tmp/policies").count());
    evidence(
        "policy starts refused",
        log.matches("already running").count(),
    );
    let status = daemon.stop()?;
    ensure!(status.success(), "the daemon exited with {status}");
    Ok(())
}

/// A daemon with three workers; a second `oomguard run --dry-run` on the same root with an empty
/// policy directory must refuse, naming the first daemon's pid, and touch nothing. The lock goes
/// with the daemon: after a SIGUSR2 detach a new daemon starts and adopts; a dry run with no
/// other daemon only reports the strays.
pub fn second_daemon() -> Result<()> {
    write_policy(POLICY_DIR, "three", &plain(3, "48M"))?;
    let ids = ["three/0", "three/1", "three/2"];
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let pids = daemon.wait_running(&ids, Duration::from_secs(20))?;
    let empty = "/tmp/empty-policies";
    std::fs::create_dir_all(empty)?;
    set_mode(Path::new(empty), 0o755)?;
    let out = run_cmd(OOMGUARD, &dry_args(empty), Duration::from_secs(20))?;
    evidence("second daemon", out.summary());
    ensure!(!out.status.success(), "the second daemon exited 0");
    let named = format!("(pid {})", daemon.pid());
    ensure!(
        out.text().contains(&named),
        "its message does not name {named}: {}",
        out.text()
    );
    sleep(Duration::from_secs(2));
    for (id, pid) in &pids {
        ensure!(
            pid_alive(*pid),
            "{id} (pid {pid}) was killed by the second daemon"
        );
    }
    ensure!(
        one_worker_each(&ids)? == pids,
        "the groups changed: {:?}",
        one_worker_each(&ids)
    );
    daemon.wait_running(&ids, Duration::from_secs(5))?;

    // SIGUSR2 (systemd's restart): the next daemon finds the lock free and adopts.
    let status = daemon.signal_and_wait(libc::SIGUSR2)?;
    ensure!(status.success(), "SIGUSR2 exit {status}");
    let mut next = Daemon::start(POLICY_DIR)?;
    let adopted = next.wait_running(&ids, Duration::from_secs(20))?;
    ensure!(adopted == pids, "not adopted: {pids:?} -> {adopted:?}");
    let status = next.signal_and_wait(libc::SIGUSR2)?;
    ensure!(status.success(), "SIGUSR2 exit {status}");

    // No daemon now: a dry run with no policies sees three strays, reports, signals nothing.
    let mut dry_run = spawn_dry_run(empty)?;
    let said = wait_until(
        "the dry run to report the strays",
        Duration::from_secs(20),
        || {
            let text = std::fs::read_to_string(DRY_LOG).unwrap_or_default();
            text.contains("would stop").then_some(text)
        },
    )?;
    evidence(
        "dry run, no policies",
        said.lines().filter(|l| l.contains("would stop")).count(),
    );
    sleep(Duration::from_secs(2));
    end_dry_run(&mut dry_run)?;
    all_alive(&pids, "the dry run with no policies")?;

    // A dry run with the policies adopts the workers, refuses a restart, and leaves them all
    // running when it exits: stopping them would mean signalling them.
    let mut dry_run = spawn_dry_run(POLICY_DIR)?;
    let dry_socket = ["--socket", DRY_SOCKET];
    wait_until(
        "the dry run to adopt three/0..2",
        Duration::from_secs(20),
        || {
            let out = oomguard(&[&["status"][..], &dry_socket[..]].concat()).ok()?;
            (ids.iter().all(|id| out.stdout.contains(&format!("{id} ")))
                && out.stdout.contains("running"))
            .then_some(())
        },
    )?;
    let out = oomguard(&[&["restart", "three/0"][..], &dry_socket[..]].concat())?;
    evidence("restart in a dry run", out.summary());
    ensure!(
        !out.status.success() && out.text().contains("dry run"),
        "a dry run restarted a worker: {}",
        out.text()
    );
    end_dry_run(&mut dry_run)?;
    all_alive(&pids, "the dry run with the policies")?;
    ensure!(
        one_worker_each(&ids)? == pids,
        "the groups changed under the dry run"
    );

    // Clean up: adopt and stop them.
    let mut last = Daemon::start(POLICY_DIR)?;
    last.wait_running(&ids, Duration::from_secs(20))?;
    let status = last.stop()?;
    ensure!(status.success(), "the daemon exited with {status}");
    Ok(())
}

const DRY_SOCKET: &str = "/run/second/oomguard.sock";
const DRY_LOG: &str = "/tmp/dry-run.log";

/// `oomguard run --dry-run` on the scenarios' cgroup root, with its own socket.
fn dry_args(policies: &str) -> Vec<&str> {
    let mut args = run_args(policies);
    args.insert(1, "--dry-run");
    let socket = args
        .iter()
        .position(|a| *a == "--socket")
        .expect("run_args has --socket");
    args[socket + 1] = DRY_SOCKET;
    args
}

fn spawn_dry_run(policies: &str) -> Result<std::process::Child> {
    let log = std::fs::File::create(DRY_LOG)?;
    Ok(std::process::Command::new(OOMGUARD)
        .args(dry_args(policies))
        .env("RUST_LOG", "info")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// SIGTERM, and a clean exit within 20 s.
fn end_dry_run(dry_run: &mut std::process::Child) -> Result<()> {
    signal(dry_run.id(), libc::SIGTERM)?;
    let status = wait_until("the dry run to exit", Duration::from_secs(20), || {
        dry_run.try_wait().ok().flatten()
    })?;
    let log = std::fs::read_to_string(DRY_LOG).unwrap_or_default();
    ensure!(status.success(), "the dry run exited {status}: {log}");
    Ok(())
}

fn all_alive(pids: &BTreeMap<String, u32>, after: &str) -> Result<()> {
    for (id, pid) in pids {
        ensure!(pid_alive(*pid), "{id} (pid {pid}) was killed by {after}");
    }
    Ok(())
}

/// A crash loop reaches `failed`; a daemon restart (SIGUSR2, as systemd restarts it) keeps it
/// failed with its counters and starts nothing, until `oomguard restart`.
pub fn failed_persists() -> Result<()> {
    write_policy(POLICY_DIR, "crasher", &crasher_policy(2))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let restarts = daemon.wait_status("crasher/0 to fail", Duration::from_secs(30), |r| {
        let i = instance(r, "crasher/0")?;
        (i.state == InstanceState::Failed).then_some(i.restarts)
    })?;
    evidence("failed after restarts", restarts);
    let status = daemon.signal_and_wait(libc::SIGUSR2)?;
    ensure!(status.success(), "SIGUSR2 exit {status}");

    let mut next = Daemon::start(POLICY_DIR)?;
    sleep(Duration::from_secs(3));
    let report = next.status()?;
    let i = require_instance(&report, "crasher/0")?;
    evidence(
        "under the next daemon",
        format!("{:?} restarts {} pids {:?}", i.state, i.restarts, i.pids),
    );
    ensure!(i.state == InstanceState::Failed, "revived: {:?}", i.state);
    ensure!(
        i.restarts == restarts,
        "restarts {} -> {}: it was started again",
        restarts,
        i.restarts
    );
    ensure!(
        group_procs("crasher/0").unwrap_or_default().is_empty(),
        "a worker runs in a failed group"
    );

    let out = client(&["restart", "crasher/0"])?;
    ensure!(out.status.success(), "restart: {}", out.text());
    let again = next.wait_status(
        "crasher/0 to run and fail again",
        Duration::from_secs(30),
        |r| {
            let i = instance(r, "crasher/0")?;
            (i.state == InstanceState::Failed && i.restarts > restarts).then_some(i.restarts)
        },
    )?;
    evidence("after oomguard restart", again);
    let status = next.stop()?;
    ensure!(status.success(), "the daemon exited with {status}");
    Ok(())
}
