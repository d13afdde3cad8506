//! Fault injection on a real kernel: the daemon out of file descriptors, its runtime directory
//! full, a policy's cgroups removed from under it, and the daemon SIGKILLed in the middle of a
//! restart. In every case the daemon keeps running, never leaves two workers in one group, and
//! comes back to exactly one worker per instance with the policy's limits once the fault is gone.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oomguard::vocabulary::InstanceState;

use crate::harness::*;

/// The policies' memory.high (48M).
const HIGH: u64 = 48 << 20;

/// One instance, 8 MB/s leak, ignoring SIGTERM, with a short grace: every restart needs the
/// kill path (cgroup.kill, or SIGKILL through the pidfd), the one that needs resources.
fn stubborn_leaker() -> String {
    let cmd = worker_command(&["--leak-mb-per-s", "8", "--ignore-sigterm"]);
    format!(
        "run:\n  command: {cmd}\n  instances: 1\nmemory:\n  high: 48M\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\n\
         restart:\n  grace: 2s\n  backoff: {{initial: 1s, max: 2s}}\n  limit: {{count: 100, within: 1h}}\n"
    )
}

/// A worker that needs up to `job_ms` to finish its job after SIGTERM: a restart of it is "in
/// the middle" for that long.
fn slow_drainer(job_ms: u64, instances: u32) -> String {
    let job = job_ms.to_string();
    let cmd = worker_command(&["--job-ms", &job]);
    format!(
        "run:\n  command: {cmd}\n  instances: {instances}\nmemory:\n  high: 48M\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\n\
         restart:\n  grace: 30s\n  backoff: {{initial: 1s, max: 2s}}\n"
    )
}

/// Processes in an instance's group right now.
fn procs_in(id: &str) -> Result<Vec<u32>> {
    let text = read_trimmed(&instance_group(id).join("cgroup.procs"))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Fails if any of `ids` has more than one process in its group (our test workers never fork).
fn at_most_one_worker(ids: &[&str]) -> Result<()> {
    for id in ids {
        let procs = procs_in(id).unwrap_or_default();
        ensure!(
            procs.len() <= 1,
            "{id} has {} processes in its group: {procs:?}",
            procs.len()
        );
    }
    Ok(())
}

/// Waits until each id runs exactly one process, which status names, with the policy's
/// memory.high back in place.
fn settled(daemon: &mut Daemon, ids: &[&str], timeout: Duration) -> Result<()> {
    daemon.wait_status("every instance running one worker", timeout, |r| {
        ids.iter()
            .all(|id| {
                let Some(i) = instance(r, id) else {
                    return false;
                };
                let procs = procs_in(id).unwrap_or_default();
                let high =
                    read_trimmed(&instance_group(id).join("memory.high")).unwrap_or_default();
                i.state == InstanceState::Running
                    && procs.len() == 1
                    && i.pids.first() == procs.first()
                    && high_in_force(i, &high, HIGH)
            })
            .then_some(())
    })
}

fn set_nofile(pid: u32, soft: u64) -> Result<u64> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit reads nothing when new is null and writes the old limit into `old`.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) } != 0 {
        bail!("prlimit({pid}): {}", std::io::Error::last_os_error());
    }
    let new = libc::rlimit {
        rlim_cur: soft.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: both structs are valid for the call.
    if unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) } != 0 {
        bail!(
            "prlimit({pid}, {soft}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(old.rlim_cur)
}

fn open_fds(pid: u32) -> Result<u64> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64)
}

/// The daemon cannot open a single file more while a worker that ignores SIGTERM must be
/// restarted: the restart may fail, but it never ends with two workers in a group, a worker left
/// unkilled and forgotten, or a dead daemon; once descriptors are free again, it recovers.
pub fn fault_fd_exhaustion() -> Result<()> {
    write_policy(POLICY_DIR, "leaky", &stubborn_leaker())?;
    write_policy(POLICY_DIR, "healthy", &slow_drainer(100, 2))?;
    let ids = ["leaky/0", "healthy/0", "healthy/1"];
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&ids, Duration::from_secs(20))?;
    let pid = daemon.pid();
    // Below what is open: every open(), accept(), pipe() and pidfd_open() fails with EMFILE
    // while the descriptors already open keep working.
    let fds = open_fds(pid)?;
    let old = set_nofile(pid, 3)?;
    evidence("daemon fds", format!("{fds} open; soft limit {old} -> 3"));

    // The leak reaches memory.high in ~6 s; the restart then needs cgroup.events, cgroup.kill,
    // cgroup.procs... none of which can be opened. Watch for two workers in a group meanwhile.
    let exhausted = Instant::now();
    while exhausted.elapsed() < Duration::from_secs(20) {
        daemon.ensure_alive()?;
        at_most_one_worker(&ids)?;
        sleep(Duration::from_millis(100));
    }
    let log = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    let complaints = log
        .lines()
        .filter(|l| l.contains("Too many open files"))
        .count();
    evidence("log lines naming EMFILE while exhausted", complaints);

    set_nofile(pid, old)?;
    evidence("limit restored", old);
    settled(&mut daemon, &ids, Duration::from_secs(40))?;
    let report = daemon.status()?;
    for id in ["healthy/0", "healthy/1"] {
        let i = require_instance(&report, id)?;
        ensure!(
            i.pids.first() == Some(&first[id]) && i.restarts == 0,
            "{id} was disturbed by the fault: pids {:?}, restarts {}",
            i.pids,
            i.restarts
        );
    }
    let leaky = require_instance(&report, "leaky/0")?;
    evidence(
        "leaky after recovery",
        format!("pids {:?} restarts {}", leaky.pids, leaky.restarts),
    );
    ensure!(
        !pid_alive(first["leaky/0"]) || leaky.pids.first() == Some(&first["leaky/0"]),
        "the first leaky worker {} is alive but no longer supervised",
        first["leaky/0"]
    );
    fd_reserve(&mut daemon, first["healthy/1"], old)?;
    daemon.stop()?;
    Ok(())
}

/// Fewer descriptors free than the daemon keeps in reserve (issue 17 item 3): a restarted
/// worker runs with its watches unarmed, and says so in status and in an `unarmed` event
/// (never silently), while the socket still answers; with the limit back, the next restart
/// arms them again.
fn fd_reserve(daemon: &mut Daemon, pid1: u32, limit: u64) -> Result<()> {
    let pid = daemon.pid();
    let fds = open_fds(pid)?;
    let reserve = oomguard::fdbudget::RESERVE;
    set_nofile(pid, fds + reserve / 2)?;
    evidence(
        "fd reserve: limit",
        format!("{fds} open, soft limit {}", fds + reserve / 2),
    );
    let out = client(&["restart", "healthy/1"])?;
    ensure!(
        out.status.success(),
        "restart healthy/1 under the reserve: {}",
        out.summary()
    );
    let new = wait_manual_replacement(daemon, "healthy/1", pid1)?;
    let unarmed = daemon.wait_status(
        "healthy/1 to say what is unarmed",
        Duration::from_secs(10),
        |r| {
            let i = instance(r, "healthy/1")?;
            (!i.unarmed.is_empty()).then(|| i.unarmed.clone())
        },
    )?;
    evidence("fd reserve: healthy/1 unarmed", unarmed.join(" | "));
    ensure!(
        unarmed
            .iter()
            .any(|u| u.starts_with("pressure trigger: ") && u.contains("file descriptors left")),
        "healthy/1's pressure trigger is not reported unarmed for the fd reserve: {unarmed:?}"
    );
    let events = recent_events()?;
    let said = events
        .iter()
        .filter(|e| e.instance == "healthy/1" && e.action == "unarmed")
        .count();
    evidence("fd reserve: unarmed events for healthy/1", said);
    ensure!(said >= 1, "no `unarmed` event for healthy/1");
    let table = client(&["status"])?;
    ensure!(
        table
            .text()
            .contains("healthy/1: ! not armed: pressure trigger"),
        "the status table does not say healthy/1 is unarmed:\n{}",
        table.text()
    );
    let metrics = client(&["metrics"])?.text();
    ensure!(
        metrics.lines().any(|l| l
            .starts_with("oomguard_instance_unarmed{policy=\"healthy\",index=\"1\"}")
            && !l.ends_with(" 0")),
        "oomguard_instance_unarmed is 0 or missing for healthy/1"
    );

    set_nofile(pid, limit)?;
    let out = client(&["restart", "healthy/1"])?;
    ensure!(
        out.status.success(),
        "restart healthy/1 after the limit is back: {}",
        out.summary()
    );
    wait_manual_replacement(daemon, "healthy/1", new)?;
    daemon.wait_status("healthy/1 armed again", Duration::from_secs(10), |r| {
        instance(r, "healthy/1")?.unarmed.is_empty().then_some(())
    })?;
    evidence("fd reserve: healthy/1 after the limit is back", "armed");
    Ok(())
}

/// The runtime directory (socket and state.json) is full: saving state fails with a warning, the
/// last good state.json stays intact, and once there is room again it is saved again.
pub fn fault_enospc() -> Result<()> {
    let run = "/run/small";
    fs::create_dir_all(run)?;
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", run])
        .status()?;
    ensure!(mounted.success(), "cannot mount a small tmpfs on {run}");
    let socket = format!("{run}/oomguard.sock");
    let state = format!("{run}/state.json");
    write_policy(POLICY_DIR, "web", &slow_drainer(100, 1))?;
    let log = fs::File::create(DAEMON_LOG)?;
    let mut args = run_args(POLICY_DIR);
    let at = args
        .iter()
        .position(|a| *a == SOCKET)
        .context("run_args has the socket")?;
    args[at] = &socket;
    let mut child = Command::new(OOMGUARD)
        .args(&args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let cli = |cmd: &[&str]| -> Result<CmdOutput> {
        let mut all = cmd.to_vec();
        all.extend(["--socket", &socket]);
        oomguard(&all)
    };
    let restarts = |want: u32| -> Result<()> {
        wait_until(
            "the restart to show in status",
            Duration::from_secs(20),
            || {
                let out = cli(&["status", "web/0", "--json"]).ok()?;
                let r: oomguard::protocol::StatusReport = serde_json::from_str(&out.stdout).ok()?;
                let i = instance(&r, "web/0")?;
                (i.restarts >= want && i.state == InstanceState::Running).then_some(())
            },
        )
    };
    wait_until("the daemon to answer", Duration::from_secs(20), || {
        cli(&["status", "--json"])
            .ok()
            .filter(|o| o.status.success())
    })?;
    let out = cli(&["restart", "web/0"])?;
    ensure!(out.status.success(), "restart: {}", out.summary());
    restarts(1)?;
    let saved = wait_until("state.json", Duration::from_secs(10), || {
        fs::read_to_string(&state).ok().filter(|s| !s.is_empty())
    })?;
    serde_json::from_str::<serde_json::Value>(&saved).context("state.json before the fault")?;

    // Fill the file system to the last byte.
    let filler = format!("{run}/filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={filler}"), "bs=4k"])
        .stderr(Stdio::null())
        .status();
    let out = cli(&["restart", "web/0"])?;
    evidence("restart with a full runtime dir", out.summary());
    ensure!(
        out.status.success(),
        "restart with a full runtime dir: {}",
        out.summary()
    );
    restarts(2)?;
    sleep(Duration::from_secs(1));
    ensure!(
        child.try_wait()?.is_none(),
        "the daemon died with a full runtime dir"
    );
    let during = fs::read_to_string(&state).context("state.json during the fault")?;
    serde_json::from_str::<serde_json::Value>(&during)
        .with_context(|| format!("state.json was damaged by the full disk: {during:?}"))?;
    let log_text = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    ensure!(
        log_text.contains("cannot save"),
        "no warning about the state that could not be saved"
    );

    fs::remove_file(&filler)?;
    let out = cli(&["restart", "web/0"])?;
    ensure!(
        out.status.success(),
        "restart after the fault: {}",
        out.summary()
    );
    restarts(3)?;
    let after = wait_until(
        "state.json to record 3 restarts",
        Duration::from_secs(10),
        || {
            let v: serde_json::Value =
                serde_json::from_str(&fs::read_to_string(&state).ok()?).ok()?;
            (v.to_string().contains("\"restarts\":3")).then_some(v)
        },
    )?;
    evidence("state.json after the fault", after.to_string().len());
    signal(child.id(), libc::SIGTERM)?;
    wait_until("the daemon to exit", Duration::from_secs(20), || {
        child.try_wait().ok().flatten()
    })?;
    Ok(())
}

/// A policy's cgroups are removed from under the daemon (killed and rmdir'ed by someone else):
/// the instances come back in recreated groups with the policy's limits.
pub fn fault_group_removed() -> Result<()> {
    write_policy(POLICY_DIR, "web", &slow_drainer(100, 2))?;
    let ids = ["web/0", "web/1"];
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&ids, Duration::from_secs(20))?;

    // First one instance's group, then the policy's whole subtree.
    remove_groups(&["web/0"], false)?;
    settled(&mut daemon, &ids, Duration::from_secs(30)).context("after removing web/0's group")?;
    remove_groups(&ids, true)?;
    settled(&mut daemon, &ids, Duration::from_secs(30)).context("after removing web's subtree")?;
    let policy_group = Path::new(CGROUP_ROOT).join("web");
    let subtree = read_trimmed(&policy_group.join("cgroup.subtree_control"))?;
    evidence("recreated web subtree_control", &subtree);
    let report = daemon.status()?;
    for id in ids {
        let i = require_instance(&report, id)?;
        evidence(id, format!("state {:?} restarts {}", i.state, i.restarts));
    }
    daemon.stop()?;
    Ok(())
}

/// SIGKILLs every process in `g`: cgroup.kill where the kernel has it (5.14+), else each pid.
fn kill_all_in(g: &Path) -> Result<()> {
    if g.join("cgroup.kill").exists() {
        fs::write(g.join("cgroup.kill"), "1")?;
        return Ok(());
    }
    for pid in read_trimmed(&g.join("cgroup.procs"))?.lines() {
        if let Ok(pid) = pid.trim().parse::<u32>() {
            let _ = signal(pid, libc::SIGKILL);
        }
    }
    Ok(())
}

/// Kills the groups of `ids` and removes them (and their policy's group with `parent`), racing
/// the daemon's respawn; retries while the kernel still lists the dying processes.
fn remove_groups(ids: &[&str], parent: bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut removed = Vec::new();
    for id in ids {
        let g = instance_group(id);
        kill_all_in(&g).with_context(|| format!("killing {}", g.display()))?;
    }
    for id in ids {
        let g = instance_group(id);
        loop {
            match fs::remove_dir(&g) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() > deadline => bail!("rmdir {}: {e}", g.display()),
                Err(_) => sleep(Duration::from_millis(5)),
            }
        }
        removed.push(id.to_string());
    }
    if parent {
        let p = instance_group(ids[0])
            .parent()
            .context("no parent")?
            .to_path_buf();
        loop {
            match fs::remove_dir(&p) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => bail!("rmdir {}: {e}", p.display()),
                // The daemon may already have recreated a child: remove it again.
                Err(_) => {
                    for id in ids {
                        let _ = kill_all_in(&instance_group(id));
                        let _ = fs::remove_dir(instance_group(id));
                    }
                    sleep(Duration::from_millis(5));
                }
            }
        }
        removed.push(p.display().to_string());
    }
    evidence("removed groups", format!("{removed:?}"));
    Ok(())
}

/// The daemon is SIGKILLed while a restart is in flight (memory.high lifted, the old worker
/// draining): the next daemon puts memory.high back to the policy's value, and there is never
/// more than one worker in the group.
pub fn fault_kill_mid_restart() -> Result<()> {
    write_policy(POLICY_DIR, "slow", &slow_drainer(6000, 1))?;
    let id = "slow/0";
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&[id], Duration::from_secs(20))?[id];
    let high = instance_group(id).join("memory.high");
    let in_force = |daemon: &mut Daemon| -> Option<()> {
        let report = daemon.status().ok()?;
        let kernel = read_trimmed(&high).ok()?;
        high_in_force(instance(&report, id)?, &kernel, HIGH).then_some(())
    };
    ensure!(in_force(&mut daemon).is_some(), "memory.high not set");
    // The restart's client blocks until the new worker runs: run it in the background.
    let mut restart = Command::new(OOMGUARD)
        .args(["restart", id, "--socket", SOCKET])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_until("memory.high to be lifted", Duration::from_secs(10), || {
        (read_trimmed(&high).ok()? == "max").then_some(())
    })?;
    daemon.kill()?;
    let _ = restart.wait();
    evidence(
        "daemon SIGKILLed mid-restart; old worker alive",
        pid_alive(first),
    );
    ensure!(
        read_trimmed(&high)? == "max",
        "memory.high is not lifted: no restart was in flight"
    );

    let mut daemon = Daemon::start(POLICY_DIR)?;
    wait_until(
        "memory.high back at 48M (or its sentinel)",
        Duration::from_secs(10),
        || in_force(&mut daemon),
    )?;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(12) {
        at_most_one_worker(&[id])?;
        sleep(Duration::from_millis(50));
    }
    settled(&mut daemon, &[id], Duration::from_secs(30))?;
    let report = daemon.status()?;
    let i = require_instance(&report, id)?;
    evidence(
        "after the new daemon",
        format!("pids {:?} restarts {}", i.pids, i.restarts),
    );
    ensure!(
        !pid_alive(first) || i.pids.first() == Some(&first),
        "the old worker {first} is alive but not the supervised one"
    );
    daemon.stop()?;
    Ok(())
}
