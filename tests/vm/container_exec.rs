//! `oomguard exec` as PID 1 of a container: a new pid namespace (with its own /proc) on top of
//! container_writable's cgroup and mount namespaces, entered by `testworker --enter-container
//! ctr --pid-ns`. Proves that the orphans the workers leave are reaped while each worker's own
//! exit status still reaches the daemon, that the runtime's SIGTERM stops the workers gracefully
//! and exits 0, that --stop-timeout cuts a stop short (exit 4), and that exec's limits come from
//! the container's memory.max.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use oomguard::vocabulary::Ending;

use crate::container::{
    ctr_events, exec_with_stop_timeout, graceful, make_container, stop_cut_short, CTR, CTR_MAX,
    ENVELOPE,
};
use crate::harness::*;

/// exec names the policy after the program.
const IDS: [&str; 2] = ["testworker/0", "testworker/1"];

/// Pids of processes named `orphan` (testworker --orphan) that are zombies now.
fn orphan_zombies() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains("(orphan) Z"))
        })
        .collect()
}

/// Zombies still there 600 ms later: nobody is reaping them (one that is reaped takes
/// microseconds, and an orphan lives 300 ms).
fn stuck_zombies() -> Vec<u32> {
    let first = orphan_zombies();
    if first.is_empty() {
        return first;
    }
    std::thread::sleep(Duration::from_millis(600));
    let second = orphan_zombies();
    first.into_iter().filter(|p| second.contains(p)).collect()
}

/// `COMMAND` as PID 1 of the container.
fn pid1(command: &[&str]) -> Command {
    let mut cmd = Command::new(TESTWORKER);
    cmd.args(["--enter-container", CTR, "--pid-ns", "--"])
        .args(command);
    cmd
}

/// What a stopped fleet leaves in the container's group, undone, so that it can be entered
/// again (a process cannot join a group whose controllers are enabled for its children).
fn reset_container() -> Result<()> {
    for leaf in ["workers", "oomguard"] {
        let dir = format!("{CTR}/{leaf}");
        if Path::new(&dir).exists() {
            fs::remove_dir(&dir).with_context(|| format!("removing {dir}"))?;
        }
    }
    fs::write(format!("{CTR}/cgroup.subtree_control"), "-memory -pids")?;
    Ok(())
}

/// Processes whose parent is `ppid` (outer pids).
fn children_of(ppid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit_once(") ")
                    .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(ppid)
            })
        })
        .collect()
}

/// The container's init (PID 1 inside, the entering testworker's child) and the daemon it forked.
fn init_and_daemon(entering: u32) -> Result<(u32, u32)> {
    let init = *children_of(entering).first().context("no PID 1")?;
    let daemon = children_of(init)
        .into_iter()
        .find(|p| {
            fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "oomguard")
        })
        .context("PID 1 forked no daemon")?;
    Ok((init, daemon))
}

fn anon_kib(pid: u32) -> Result<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no RssAnon")
}

/// RSS of both oomguard processes and the daemon's CPU over `window` (nothing polls the socket
/// meanwhile), as METRIC lines: the daemon's own footprint, charged to the container's limit.
fn footprint(label: &str, entering: u32, window: Duration) -> Result<()> {
    use crate::bench::{cpu_ticks, rss_kib};
    let (init, daemon) = init_and_daemon(entering)?;
    let before = cpu_ticks(daemon)? + cpu_ticks(init)?;
    std::thread::sleep(window);
    let ticks = cpu_ticks(daemon)? + cpu_ticks(init)? - before;
    let cpu = ticks as f64 / 100.0 / window.as_secs_f64() * 100.0;
    println!("METRIC container_{label}_cpu_percent {cpu:.2}");
    // VmRSS counts the binary's text, shared by both (and charged once); RssAnon is each one's own.
    let daemon_rss = rss_kib(daemon)?;
    println!("METRIC container_{label}_daemon_rss_kib {daemon_rss}");
    println!(
        "METRIC container_{label}_daemon_anon_kib {}",
        anon_kib(daemon)?
    );
    println!("METRIC container_{label}_init_anon_kib {}", anon_kib(init)?);
    Ok(())
}

/// The daemon log without its colour codes.
fn log() -> String {
    let raw = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

pub fn container_exec() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;

    // The check can fail: under a PID 1 that does not reap (the test worker itself) the
    // orphan stays a zombie.
    let mut control = pid1(&[TESTWORKER, "--orphan", "--job-ms", "100"]).spawn()?;
    let seen = wait_until(
        "a zombie orphan under a PID 1 that does not reap",
        Duration::from_secs(15),
        || Some(stuck_zombies()).filter(|z| !z.is_empty()),
    );
    signal(control.id(), libc::SIGTERM)?;
    let _ = control.wait();
    evidence(
        "zombies under a PID 1 that does not reap",
        format!("{seen:?}"),
    );
    seen?;
    ensure!(orphan_zombies().is_empty(), "zombies outlived their PID 1");

    // Two instances under the derived limits, each leaving an orphan at every start and leaking
    // 16 MB/s, so each is restarted at its boundary within seconds.
    let ledger = ledger_path("exec");
    let worker = [
        TESTWORKER,
        "--orphan",
        "--ledger",
        &ledger,
        "--leak-mb-per-s",
        "16",
    ];
    let exec = [
        OOMGUARD,
        "exec",
        "--socket",
        SOCKET,
        "--instances",
        "2",
        "--grace",
        "5s",
        "--",
    ];
    let mut daemon = Daemon::start_command(pid1(&[&exec[..], &worker[..]].concat()))?;
    daemon.wait_running(&IDS, Duration::from_secs(30))?;
    // Two workers leaking 16 MB/s: a restart every few seconds.
    footprint("load", daemon.pid(), Duration::from_secs(5))?;

    // (c) exec's limits: (192M - 24M reserve) / 2 instances = 84M each, said in the log.
    let per = ENVELOPE / 2;
    for id in IDS {
        let max: u64 = read_trimmed(Path::new(&format!("{CTR}/workers/{id}/memory.max")))?
            .parse()
            .context("memory.max")?;
        ensure!(max == per, "{id} memory.max {max}, not {per}");
    }
    ensure!(
        2 * per <= ENVELOPE && ENVELOPE < CTR_MAX,
        "limits above the container's"
    );
    let said = "memory.max 84M = the workers' envelope 168M (the container's memory.max 192M \
                minus oomguard's reserve 24M) / 2 instance(s)";
    ensure!(
        log().contains(said),
        "the start log lacks the derivation: {}",
        log()
    );
    evidence("derived", said);

    // (a) Each instance restarted gracefully, its own exit code seen by the daemon (a reaper
    // that took it would leave None), and no orphan left a zombie meanwhile.
    let restarts = wait_until(
        "a finished restart of both instances",
        Duration::from_secs(60),
        || {
            let ev = recent_events().ok()?;
            IDS.iter()
                .map(|id| {
                    ev.iter()
                        .find(|e| e.instance == *id && e.action == "restart" && e.ending.is_some())
                        .cloned()
                })
                .collect::<Option<Vec<_>>>()
        },
    )?;
    for r in &restarts {
        evidence(
            "restart",
            format!("{} {:?} {:?}", r.instance, r.reason, r.ending),
        );
        ensure!(graceful(r), "{} ended {:?}", r.instance, r.ending);
        ensure!(
            matches!(r.ending, Some(Ending::Exited { code: Some(0), .. })),
            "{}'s exit status did not reach the daemon: {:?}",
            r.instance,
            r.ending
        );
    }
    daemon.wait_running(&IDS, Duration::from_secs(30))?;
    let stuck = stuck_zombies();
    evidence("zombie orphans under oomguard exec", format!("{stuck:?}"));
    ensure!(stuck.is_empty(), "orphans left as zombies: {stuck:?}");
    let events = ctr_events()?;
    evidence("container memory.events", format!("{events:?}"));
    ensure!(
        events.get("oom_kill") == Some(&0),
        "the container's OOM fired: {events:?}"
    );

    // (b) The runtime's stop: SIGTERM to PID 1, passed on to the daemon; every worker gets its
    // signal and exits by itself; exit 0 well within the default 25 s.
    let t0 = Instant::now();
    let status = daemon.stop()?;
    let took = t0.elapsed();
    evidence("stop", format!("{status} after {} ms", took.as_millis()));
    ensure!(status.success(), "PID 1 exited {status}");
    let text = log();
    for id in IDS {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("instance={id}")) && l.contains("stopped:"))
            .with_context(|| format!("no stop line for {id}"))?;
        ensure!(line.contains("after SIGTERM"), "{id}: {line}");
    }
    let reaped = text
        .lines()
        .find_map(|l| {
            l.split("; ")
                .nth(1)?
                .strip_suffix(" orphan(s) reaped")?
                .parse::<u64>()
                .ok()
        })
        .context("the init did not say how many orphans it reaped")?;
    evidence("orphans reaped by PID 1", reaped);
    ensure!(
        reaped >= 4,
        "only {reaped} orphans reaped (two starts of two instances)"
    );
    ensure!(orphan_zombies().is_empty(), "zombies after the stop");

    // --stop-timeout: a worker that ignores SIGTERM with a 60 s grace is killed when the 3 s
    // budget runs out, and the exit status says so.
    reset_container()?;
    let exec = exec_with_stop_timeout(&[]);
    let argv: Vec<&str> = exec.iter().map(String::as_str).collect();
    let mut daemon = Daemon::start_command(pid1(&argv))?;
    daemon.wait_running(&["testworker/0"], Duration::from_secs(30))?;
    // One worker doing its jobs, nothing to decide.
    footprint("idle", daemon.pid(), Duration::from_secs(4))?;
    stop_cut_short(&mut daemon)?;
    Ok(())
}
