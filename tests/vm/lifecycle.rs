//! Daemon lifecycle on a real kernel: a daemon that dies (SIGKILL) or is restarted (SIGUSR2, what
//! systemd's RestartKillSignal sends) leaves the workers running and the next one adopts them;
//! reloads apply limits and instance counts live, and a bad reload changes nothing.

use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::vocabulary::Reason;

use crate::harness::*;
use crate::{healthy_policy, leaky_policy};

/// SIGKILL the daemon: workers keep running; a new daemon adopts the same pids, restores the
/// counters it saved, and still restarts the leaking worker gracefully. Then SIGUSR2: the daemon
/// exits by itself leaving the workers, and the next one adopts them again.
pub fn adopt() -> Result<()> {
    make_ledger_dir()?;
    write_policy(POLICY_DIR, "leaky", &leaky_policy("enforce"))?;
    write_policy(POLICY_DIR, "healthy", &healthy_policy())?;
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let ids = ["leaky/0", "healthy/0", "healthy/1"];
    let first = daemon.wait_running(&ids, Duration::from_secs(20))?;
    evidence("pids before SIGKILL", format!("{first:?}"));

    // Kill it before the leak reaches memory.high, so the new daemon has to act on the adopted one.
    daemon.kill()?;
    sleep(Duration::from_secs(1));
    for (id, pid) in &first {
        ensure!(pid_alive(*pid), "{id} (pid {pid}) died with the daemon");
    }

    let mut daemon = Daemon::start(POLICY_DIR)?;
    let adopted = daemon.wait_running(&ids, Duration::from_secs(20))?;
    evidence("pids after restart", format!("{adopted:?}"));
    ensure!(
        adopted == first,
        "the new daemon did not adopt the same pids: {first:?} -> {adopted:?}"
    );
    ensure!(
        daemon_log().contains("adopted the running worker"),
        "the log does not say it adopted the workers"
    );

    // The adopted leaky worker is still guarded: restarted on pressure, gracefully.
    let leaky_pid = first["leaky/0"];
    let report = daemon.wait_status(
        "the adopted leaky worker to be restarted",
        Duration::from_secs(60),
        |r| {
            let i = instance(r, "leaky/0")?;
            (i.restarts >= 1 && i.pids.first() != Some(&leaky_pid)).then(|| r.clone())
        },
    )?;
    let leaky = require_instance(&report, "leaky/0")?;
    evidence(
        "leaky after adoption",
        format!(
            "restarts {} reason {:?}",
            leaky.restarts, leaky.last_restart_reason
        ),
    );
    ensure!(
        leaky.last_restart_reason == Some(Reason::Pressure),
        "reason {:?}",
        leaky.last_restart_reason
    );
    let ledger = Ledger::read(&ledger_path("leaky"))?;
    ensure!(
        ledger.pids.get(&leaky_pid).is_some_and(|r| r.clean_exit),
        "the adopted pid {leaky_pid} did not exit cleanly: {}",
        ledger.summary()
    );
    let restarts_before = leaky.restarts;

    // SIGUSR2: exit leaving the workers; state.json carries the counters to the next daemon.
    let now = daemon.wait_running(&ids, Duration::from_secs(20))?;
    let status = daemon.signal_and_wait(libc::SIGUSR2)?;
    ensure!(status.success(), "the daemon exited {status} on SIGUSR2");
    ensure!(
        Path::new("/run/state.json").exists(),
        "no state.json beside the socket"
    );
    for (id, pid) in &now {
        ensure!(pid_alive(*pid), "{id} (pid {pid}) died on SIGUSR2");
    }
    // While no daemon runs, the healthy policy shrinks to one instance: the next daemon adopts
    // what its policies still name and stops the stray healthy/1 gracefully.
    write_policy(
        POLICY_DIR,
        "healthy",
        &healthy_policy().replace("instances: 2", "instances: 1"),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let kept = ["leaky/0", "healthy/0"];
    let again = daemon.wait_running(&kept, Duration::from_secs(20))?;
    ensure!(
        kept.iter().all(|id| again[*id] == now[*id]),
        "not adopted after SIGUSR2: {now:?} -> {again:?}"
    );
    let stray = now["healthy/1"];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pid_alive(stray) && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(200));
    }
    ensure!(
        !pid_alive(stray),
        "the stray healthy/1 (pid {stray}) was not stopped"
    );
    let healthy = Ledger::read(&ledger_path("healthy"))?;
    ensure!(
        healthy.pids.get(&stray).is_some_and(|r| r.clean_exit),
        "the stray healthy/1 was not stopped gracefully: {}",
        healthy.summary()
    );
    sleep(Duration::from_millis(500));
    ensure!(
        !instance_group("healthy/1").exists(),
        "the stray group was not removed"
    );
    let restored = require_instance(&daemon.status()?, "leaky/0")?.restarts;
    evidence(
        "leaky restarts before/after SIGUSR2",
        format!("{restarts_before}/{restored}"),
    );
    ensure!(
        restored >= restarts_before,
        "counters were not restored: {restarts_before} -> {restored}"
    );
    ensure!(
        vmstat_oom_kill()? == oom_before,
        "the kernel OOM-killed something"
    );
    daemon.stop()?;
    for (id, pid) in &again {
        ensure!(
            !pid_alive(*pid),
            "{id} (pid {pid}) still runs after a SIGTERM stop"
        );
    }
    Ok(())
}

/// Reload: a new memory.high applies to running workers without a restart, a larger instance
/// count starts instances, a smaller one stops them gracefully, and a bad file changes nothing.
pub fn reload() -> Result<()> {
    make_ledger_dir()?;
    write_policy(POLICY_DIR, "healthy", &healthy_policy())?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&["healthy/0", "healthy/1"], Duration::from_secs(20))?;
    // The daemon raised its own open-files limit; its workers keep the usual soft limit.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", first["healthy/0"]))?;
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or("");
    evidence("worker open files limit", nofile);
    ensure!(
        nofile.split_whitespace().nth(3) == Some("1024"),
        "worker soft limit: {nofile}"
    );
    let high = || read_trimmed(&instance_group("healthy/0").join("memory.high"));
    ensure!(
        high()? == (48u64 << 20).to_string(),
        "memory.high before reload: {}",
        high()?
    );

    // 40M and three instances, through the socket.
    let changed = healthy_policy()
        .replace("high: 48M", "high: 40M")
        .replace("instances: 2", "instances: 3");
    ensure!(
        changed.contains("high: 40M") && changed.contains("instances: 3"),
        "policy text changed shape"
    );
    write_policy(POLICY_DIR, "healthy", &changed)?;
    let out = client(&["reload"])?;
    evidence("reload", out.summary());
    ensure!(out.status.success(), "reload failed: {}", out.text());
    ensure!(
        high()? == (40u64 << 20).to_string(),
        "memory.high after reload: {}",
        high()?
    );
    let now = daemon.wait_running(
        &["healthy/0", "healthy/1", "healthy/2"],
        Duration::from_secs(20),
    )?;
    ensure!(
        now["healthy/0"] == first["healthy/0"],
        "healthy/0 was restarted by the reload"
    );

    // A bad file: refused with the key named, nothing changes.
    write_policy(
        POLICY_DIR,
        "healthy",
        &changed.replace("instances: 3", "instnaces: 1"),
    )?;
    let out = client(&["reload"])?;
    evidence("bad reload", out.summary());
    ensure!(
        out.status.code() == Some(1),
        "a bad reload did not exit 1: {}",
        out.text()
    );
    ensure!(
        out.text().contains("instnaces"),
        "the error does not name the key: {}",
        out.text()
    );
    let after_bad = daemon.wait_running(
        &["healthy/0", "healthy/1", "healthy/2"],
        Duration::from_secs(5),
    )?;
    ensure!(
        after_bad == now,
        "a bad reload changed the workers: {now:?} -> {after_bad:?}"
    );
    ensure!(
        high()? == (40u64 << 20).to_string(),
        "a bad reload changed memory.high"
    );

    // SIGHUP with one instance: the two others stop gracefully.
    write_policy(
        POLICY_DIR,
        "healthy",
        &changed.replace("instances: 3", "instances: 1"),
    )?;
    daemon.signal(libc::SIGHUP)?;
    daemon.wait_status(
        "healthy/1 and /2 to be gone",
        Duration::from_secs(20),
        |r| {
            (instance(r, "healthy/1").is_none() && instance(r, "healthy/2").is_none()).then_some(())
        },
    )?;
    sleep(Duration::from_millis(500));
    let ledger = Ledger::read(&ledger_path("healthy"))?;
    for id in ["healthy/1", "healthy/2"] {
        let pid = now[id];
        ensure!(!pid_alive(pid), "{id} (pid {pid}) still runs");
        ensure!(
            ledger.pids.get(&pid).is_some_and(|r| r.clean_exit),
            "{id} (pid {pid}) was not stopped gracefully: {}",
            ledger.summary()
        );
    }
    ensure!(
        !instance_group("healthy/2").exists(),
        "the removed instance's group is still there"
    );
    ensure!(
        daemon_log().contains("reload"),
        "the reload is not in the log"
    );
    daemon.stop()?;
    Ok(())
}

fn daemon_log() -> String {
    std::fs::read_to_string(DAEMON_LOG)
        .context("daemon log")
        .unwrap_or_default()
}
