//! Issue 7, the instance lifecycle on a real kernel: a reload that changes who a worker runs as,
//! a rolling restart into a bad deploy, a main process that left its group, a group left
//! populated by something the daemon cannot adopt, and what a worker inherits at start (its
//! working directory after the privilege drop, its open-files limit).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::InstanceState;

use crate::harness::*;
use crate::GUARDS;

fn events() -> Result<Vec<EventRecord>> {
    Ok(client(&["events", "--json"])?
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<EventRecord>(l).ok())
        .collect())
}

fn daemon_log() -> String {
    fs::read_to_string(DAEMON_LOG).unwrap_or_default()
}

/// Every process in a group's subtree.
fn subtree_procs(dir: &std::path::Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                pids.extend(subtree_procs(&e.path()));
            }
        }
    }
    pids
}

/// A reload that adds `user: worker` says the run section applies at the next start; the running
/// worker keeps running as root; after `oomguard restart` the new worker runs as uid 1000.
pub fn reload_identity() -> Result<()> {
    let cmd = worker_command(&[]);
    let policy = |user: &str| format!("run:\n  command: {cmd}\n  instances: 1\n{user}{GUARDS}");
    write_policy(POLICY_DIR, "ident", &policy(""))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let old = daemon.wait_running(&["ident/0"], Duration::from_secs(20))?["ident/0"];
    ensure!(pid_uid(old)? == 0, "the first worker does not run as root");

    write_policy(POLICY_DIR, "ident", &policy("  user: worker\n"))?;
    let out = client(&["reload"])?;
    evidence("reload", out.summary());
    ensure!(out.status.success(), "reload failed: {}", out.summary());
    let reply = out.text();
    ensure!(
        pid_alive(old),
        "the running worker was stopped by the reload"
    );

    let out = client(&["restart", "ident/0"])?;
    evidence("restart", out.summary());
    ensure!(out.status.success(), "restart failed: {}", out.summary());
    let new = daemon.wait_status("a new ident/0", Duration::from_secs(20), |r| {
        let i = instance(r, "ident/0")?;
        let pid = *i.pids.first().filter(|p| **p != old)?;
        (i.state == InstanceState::Running).then_some(pid)
    })?;
    let uid = pid_uid(new)?;
    evidence("new worker", format!("pid {new} uid {uid}"));
    ensure!(
        uid == 1000,
        "the restarted worker runs as uid {uid}, not 1000 (worker)"
    );
    ensure!(
        reply.contains("next start"),
        "the reload's reply does not say the run section applies at the next start: {reply}"
    );
    daemon.stop()?;
    Ok(())
}

/// Three instances; a reload points the command at a program that exits 1 at once; a rolling
/// restart must stop at the first replacement that does not stay up, exit 1 naming it, and leave
/// the other instances on their old workers.
pub fn rolling_restart_bad_deploy() -> Result<()> {
    let good = worker_command(&[]);
    let policy = |cmd: &str| {
        format!(
            "run:\n  command: {cmd}\n  instances: 3\n{GUARDS}restart:\n  grace: 5s\n  ready: 3s\n"
        )
    };
    write_policy(POLICY_DIR, "deploy", &policy(&good))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let ids = ["deploy/0", "deploy/1", "deploy/2"];
    let before = daemon.wait_running(&ids, Duration::from_secs(30))?;
    evidence("pids before", format!("{before:?}"));

    write_policy(POLICY_DIR, "deploy", &policy(r#"["/bin/false"]"#))?;
    let out = client(&["reload"])?;
    ensure!(out.status.success(), "reload failed: {}", out.summary());

    let out = client(&["restart", "deploy"])?;
    evidence("restart deploy", out.summary());
    ensure!(
        out.status.code() == Some(1),
        "`oomguard restart deploy` into a bad deploy exited {:?}, want 1: {}",
        out.status.code(),
        out.summary()
    );
    let text = out.text();
    for id in ["deploy/0", "deploy/1"] {
        ensure!(text.contains(id), "the message does not name {id}: {text}");
    }
    let report = daemon.status()?;
    for id in ["deploy/1", "deploy/2"] {
        let i = require_instance(&report, id)?;
        ensure!(
            i.pids.first() == Some(&before[id]) && pid_alive(before[id]),
            "{id} does not run its old worker {} any more: {:?} {:?}",
            before[id],
            i.state,
            i.pids
        );
    }
    daemon.stop()?;
    Ok(())
}

/// A root worker moves itself into another cgroup and ignores SIGTERM: `oomguard restart` must
/// return within grace + the kill bound, say what happened, and the process must be dead.
pub fn escaped_main() -> Result<()> {
    let elsewhere = "/sys/fs/cgroup/elsewhere";
    fs::create_dir_all(elsewhere)?;
    let cmd = worker_command(&["--ignore-sigterm", "--escape-to", elsewhere]);
    write_policy(
        POLICY_DIR,
        "escaper",
        &format!("run:\n  command: {cmd}\n  instances: 1\n{GUARDS}restart:\n  grace: 2s\n"),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let old = daemon.wait_running(&["escaper/0"], Duration::from_secs(20))?["escaper/0"];
    wait_until(
        &format!("pid {old} to leave its group"),
        Duration::from_secs(10),
        || {
            fs::read_to_string(format!("{elsewhere}/cgroup.procs"))
                .ok()
                .filter(|t| t.lines().any(|l| l.trim() == old.to_string()))
        },
    )?;
    evidence("escaped", format!("pid {old} is in {elsewhere}"));

    let asked = Instant::now();
    // Spawned, not run to completion: on the unfixed daemon this call hangs.
    let out = run_cmd(
        OOMGUARD,
        &["restart", "escaper/0", "--socket", SOCKET],
        Duration::from_secs(30),
    );
    let took = asked.elapsed();
    let out = out.context("`oomguard restart escaper/0` did not return within 30 s")?;
    evidence("restart", format!("{} after {took:?}", out.summary()));
    wait_until(
        &format!("pid {old} to be dead"),
        Duration::from_secs(5),
        || (!pid_alive(old)).then_some(()),
    )?;
    let ev = events()?
        .into_iter()
        .rev()
        .find(|e| e.action == "restart" && e.instance == "escaper/0")
        .context("no restart event")?;
    evidence("restart event", &ev.message);
    ensure!(
        ev.message.contains("left its group"),
        "the event does not say the main process left its group: {}",
        ev.message
    );
    ensure!(
        out.status.success(),
        "restart exited {:?}: {}",
        out.status.code(),
        out.summary()
    );
    daemon.stop()?;
    Ok(())
}

/// An instance's group already holds a process the daemon cannot adopt (in a subgroup, so no
/// main pid is found): the daemon must kill it, say so, and run exactly one worker there.
pub fn adopt_populated() -> Result<()> {
    let group = instance_group("leftover/0");
    let sub = group.join("sub");
    fs::create_dir_all(&sub)?;
    let procs = sub.join("cgroup.procs");
    let mut sleeper = Command::new("/bin/sh")
        .args([
            "-c",
            &format!("echo $$ > {}; exec sleep 1000", procs.display()),
        ])
        .stdin(Stdio::null())
        .spawn()?;
    let leftover = sleeper.id();
    wait_until(
        "the leftover to be in its group",
        Duration::from_secs(5),
        || subtree_procs(&group).contains(&leftover).then_some(()),
    )?;
    write_policy(
        POLICY_DIR,
        "leftover",
        &format!(
            "run:\n  command: {}\n  instances: 1\n{GUARDS}restart:\n  grace: 2s\n",
            worker_command(&[])
        ),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let pid = daemon.wait_running(&["leftover/0"], Duration::from_secs(30))?["leftover/0"];
    // The leftover is our child: reap it so it does not linger as a zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sleeper.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!(
                "the leftover pid {leftover} is still alive beside worker {pid}: procs {:?}",
                subtree_procs(&group)
            );
        }
        sleep(Duration::from_millis(100));
    }
    let procs = subtree_procs(&group);
    evidence("group procs", format!("{procs:?} (worker {pid})"));
    ensure!(
        procs == vec![pid],
        "want exactly the one worker {pid} in the group, got {procs:?}"
    );
    ensure!(
        daemon_log().contains("could not be adopted"),
        "the log does not say why the group was killed"
    );
    daemon.stop()?;
    Ok(())
}

/// A workdir only root may enter makes a `user: worker` start fail (start_failed), not run there;
/// workers get a soft open-files limit of 1024 whatever the daemon's own is.
pub fn spawn_hardening() -> Result<()> {
    let private = "/tmp/private";
    fs::create_dir_all(private)?;
    fs::set_permissions(private, fs::Permissions::from_mode(0o700))?;
    let cmd = worker_command(&[]);
    write_policy(
        POLICY_DIR,
        "private",
        &format!(
            "run:\n  command: {cmd}\n  instances: 1\n  user: worker\n  workdir: {private}\n{GUARDS}\
             restart:\n  limit: {{count: 1, within: 1h}}\n"
        ),
    )?;
    write_policy(
        POLICY_DIR,
        "limits",
        &format!("run:\n  command: {cmd}\n  instances: 1\n  user: worker\n{GUARDS}"),
    )?;
    unit_nofile_limit()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let pid = daemon.wait_running(&["limits/0"], Duration::from_secs(20))?["limits/0"];
    let limits = fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-files line")?;
    evidence("worker limits", line);
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    ensure!(
        nums == ["1024", "65536"],
        "the worker's open-files limits are {nums:?}, want soft 1024, hard 65536"
    );

    let failed = wait_until(
        "a start_failed event for private/0",
        Duration::from_secs(20),
        || {
            events()
                .ok()?
                .into_iter()
                .find(|e| e.instance == "private/0" && e.action == "start_failed")
        },
    )?;
    evidence("start_failed", &failed.message);
    let report = daemon.status()?;
    let inst = require_instance(&report, "private/0")?;
    ensure!(
        inst.state != InstanceState::Running,
        "private/0 runs ({:?}) in a directory its user cannot enter",
        inst.pids
    );
    ensure!(
        failed.message.contains(private),
        "the event does not name the workdir: {}",
        failed.message
    );
    daemon.stop()?;
    Ok(())
}
