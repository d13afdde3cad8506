//! oomguard inside a container, without a runtime: the group `ctr` with memory.max 192M and
//! memory.oom.group=1 (as the kubelet writes it) stands for the container's group;
//! `testworker --enter-container` moves into it, unshares the cgroup and mount namespaces,
//! mounts cgroup2 and execs `oomguard run`, as PID 1 of a container would start.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::daemon::DEFAULT_SOCKET;
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::Ending;

use crate::harness::*;

pub const CTR: &str = "/sys/fs/cgroup/ctr";
pub const CTR_MAX: u64 = 192 << 20;
/// 192M minus the daemon's 24M reserve.
pub const ENVELOPE: u64 = 168 << 20;

/// `oomguard exec` with a 60 s grace and a 3 s `--stop-timeout`: before `--` and the command,
/// `extra` flags (a stop of a worker that ignores SIGTERM is then cut short: `stop_cut_short`).
pub fn exec_with_stop_timeout(extra: &[&str]) -> Vec<String> {
    let head = [
        OOMGUARD,
        "exec",
        "--socket",
        SOCKET,
        "--grace",
        "60s",
        "--stop-timeout",
        "3s",
    ];
    head.iter()
        .chain(extra)
        .chain(&["--", TESTWORKER, "--ignore-sigterm"])
        .map(|s| s.to_string())
        .collect()
}

/// SIGTERM to a daemon started from `exec_with_stop_timeout`: its worker is killed when the 3 s
/// budget runs out (not before), and the exit status says so (4).
pub fn stop_cut_short(daemon: &mut Daemon) -> Result<()> {
    let t0 = std::time::Instant::now();
    let status = daemon.signal_and_wait_for(libc::SIGTERM, Duration::from_secs(30))?;
    let took = t0.elapsed();
    evidence(
        "stop past --stop-timeout 3s",
        format!("{status} after {} ms", took.as_millis()),
    );
    ensure!(status.code() == Some(4), "exit {status}, not 4");
    ensure!(
        took >= Duration::from_secs(3),
        "stopped after {took:?}, before the 3 s budget"
    );
    Ok(())
}

pub fn make_container() -> Result<()> {
    fs::create_dir_all(CTR).context("creating the container's group")?;
    fs::write(format!("{CTR}/memory.max"), CTR_MAX.to_string())?;
    fs::write(format!("{CTR}/memory.oom.group"), "1")?;
    Ok(())
}

/// `oomguard ARGS` as the container's entrypoint.
fn entrypoint(args: &[&str]) -> Vec<String> {
    ["--enter-container", CTR, "--", OOMGUARD]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect()
}

/// The container's entrypoint as a command to spawn.
fn entrypoint_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(TESTWORKER);
    cmd.args(entrypoint(args));
    cmd
}

pub fn ctr_events() -> Result<std::collections::BTreeMap<String, u64>> {
    Ok(parse_flat_keyed(&read_trimmed(Path::new(&format!(
        "{CTR}/memory.events"
    )))?))
}

/// One leaking plain worker (40M/64M) and a prefork worker (96M) whose first child leaks
/// (children 24M trigger, 32M/48M): 160M in all, inside the 168M envelope.
fn policies() -> Result<()> {
    let leaky = worker_command(&["--ledger", &ledger_path("leaky"), "--leak-mb-per-s", "8"]);
    write_policy(
        POLICY_DIR,
        "leaky",
        &format!(
            "run:\n  command: {leaky}\n  instances: 1\nmemory: {{high: 40M, max: 64M, boundary: false}}\n\
             triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\nrestart:\n  grace: 10s\n"
        ),
    )?;
    let pf = worker_command(&PREFORK_ONE_LEAKING);
    write_policy(
        POLICY_DIR,
        "pf",
        &format!(
            "run:\n  command: {pf}\nmemory: {{high: 80M, max: 96M}}\n\
             triggers: {{pressure: {{some: 200ms, window: 1s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
             children:\n  memory: {{high: 32M, max: 48M}}\n\
             \x20 triggers: {{memory: {{above: 24M}}, pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n\
             \x20 restart: {{signal: SIGTERM, grace: 10s}}\n"
        ),
    )?;
    Ok(())
}

/// What `status --json` says of the container (shown as evidence).
pub fn container_info(daemon: &mut Daemon) -> Result<oomguard::protocol::ContainerInfo> {
    let info = daemon
        .status()?
        .daemon
        .container
        .context("status does not say it runs in a container")?;
    evidence("status container", format!("{info:?}"));
    Ok(info)
}

pub fn graceful(e: &EventRecord) -> bool {
    matches!(e.ending, Some(Ending::Exited { .. }))
}

pub fn container_writable() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;

    // Too big for the envelope (3 × 64M = 192M): refused with the numbers, nothing prepared.
    let big = "/tmp/policies-big";
    let cmd = worker_command(&[]);
    write_policy(
        big,
        "big",
        &format!(
            "run:\n  command: {cmd}\n  instances: 3\nmemory: {{high: 48M, max: 64M}}\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s}}\n"
        ),
    )?;
    let args = entrypoint(&["run", "--policies", big, "--socket", SOCKET]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cmd(TESTWORKER, &argv, Duration::from_secs(30))?;
    evidence("too big", out.text().trim().lines().last().unwrap_or(""));
    ensure!(!out.status.success(), "a policy above the envelope started");
    ensure!(
        out.text().contains("192M") && out.text().contains("168M"),
        "the refusal lacks the numbers: {}",
        out.text()
    );
    ensure!(
        !Path::new(CTR).join("workers").exists(),
        "the refused start prepared the container's group"
    );

    policies()?;
    let cmd = entrypoint_command(&["run", "--policies", POLICY_DIR, "--socket", SOCKET]);
    let mut daemon = Daemon::start_command(cmd)?;
    daemon.wait_running(&["leaky/0", "pf/0"], Duration::from_secs(30))?;
    let info = container_info(&mut daemon)?;
    ensure!(
        info.mode == "writable"
            && info.memory_max == Some(CTR_MAX)
            && info.envelope == Some(ENVELOPE),
        "container info {info:?}"
    );
    let table = client(&["status"])?.text();
    ensure!(
        table.contains("inside a container (writable cgroups)"),
        "status header: {table}"
    );
    let workers_max = read_trimmed(Path::new(&format!("{CTR}/workers/memory.max")))?;
    ensure!(
        workers_max == ENVELOPE.to_string(),
        "workers memory.max {workers_max}"
    );
    let leaf = read_trimmed(Path::new(&format!("{CTR}/oomguard/cgroup.procs")))?;
    ensure!(
        leaf.lines().any(|l| l == daemon.pid().to_string()),
        "the daemon is not in the container's oomguard leaf: {leaf:?}"
    );

    let (restart, recycle) = wait_until(
        "a graceful restart of leaky/0 and a child recycle in pf/0",
        Duration::from_secs(60),
        || {
            let ev = recent_events().ok()?;
            let r = ev
                .iter()
                .find(|e| e.instance == "leaky/0" && e.action == "restart" && e.ending.is_some())?;
            let c = ev
                .iter()
                .find(|e| e.action == "child_recycle" && e.ending.is_some())?;
            Some((r.clone(), c.clone()))
        },
    )?;
    evidence(
        "leaky restart",
        format!("{:?} {:?}", restart.reason, restart.ending),
    );
    evidence(
        "child recycle",
        format!("{:?} {:?}", recycle.reason, recycle.ending),
    );
    ensure!(graceful(&restart), "leaky/0 ended {:?}", restart.ending);
    ensure!(graceful(&recycle), "the child ended {:?}", recycle.ending);
    let events = ctr_events()?;
    evidence("container memory.events", format!("{events:?}"));
    ensure!(
        events.get("oom_kill") == Some(&0)
            && events.get("oom_group_kill").copied().unwrap_or(0) == 0,
        "the container's own OOM fired: {events:?}"
    );
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited {status}");
    Ok(())
}

/// `kubectl exec POD -- oomguard status` in a container without systemd: the entrypoint
/// `oomguard run` with the default socket (no `--socket`; nothing has made /run/oomguard), and
/// a client that joins the daemon's mount namespace (`nsenter -m`, as `kubectl exec` joins the
/// container's) reaches it at that default path. The daemon logs with `--log-format json`: every
/// line of its log is one JSON object, the start line says the mode, and a restart event carries
/// its figures and message_id. The metrics are served over HTTP from inside too.
pub fn container_default_socket() -> Result<()> {
    make_ledger_dir()?;
    make_container()?;
    policies()?;
    let default_dir = Path::new(DEFAULT_SOCKET).parent().expect("a directory");
    ensure!(
        !default_dir.exists(),
        "{} exists before the daemon",
        default_dir.display()
    );
    run_cmd(
        "/bin/busybox",
        &["ip", "link", "set", "lo", "up"],
        Duration::from_secs(5),
    )?;
    let daemon = Daemon::spawn_command(entrypoint_command(&[
        "run",
        "--policies",
        POLICY_DIR,
        "--log-format",
        "json",
        "--metrics-listen",
        METRICS,
    ]))?;
    let pid = daemon.pid().to_string();
    let exec = |args: &[&str]| {
        let argv: Vec<&str> = ["-t", pid.as_str(), "-m", "--", OOMGUARD]
            .iter()
            .chain(args)
            .copied()
            .collect();
        run_cmd(
            "/bin/busybox",
            &[&["nsenter"], argv.as_slice()].concat(),
            CLI_TIMEOUT,
        )
    };
    let table = wait_until(
        "`oomguard status` at the default socket",
        Duration::from_secs(30),
        || {
            let out = exec(&["status"]).ok()?;
            out.status.success().then(|| out.text())
        },
    )?;
    evidence(
        "nsenter -m oomguard status",
        table.lines().next().unwrap_or(""),
    );
    ensure!(
        table.contains("inside a container (writable cgroups)"),
        "status: {table}"
    );
    let dir_mode = fs::metadata(default_dir)?.permissions().mode() & 0o7777;
    evidence(
        "socket directory",
        format!("{} {dir_mode:o}", default_dir.display()),
    );
    ensure!(
        dir_mode == 0o755,
        "{} is {dir_mode:o}",
        default_dir.display()
    );

    let (code, body) = http_get(METRICS, "/metrics")?;
    ensure!(
        code == 200 && body.contains("oomguard_"),
        "GET /metrics: {code} {body:.200}"
    );

    let restart_id = oomguard::events::journal::message_id("restart");
    let event = wait_until(
        "a restart event in the JSON log",
        Duration::from_secs(60),
        || {
            json_log()
                .ok()?
                .into_iter()
                .find(|l| l["message_id"] == restart_id && l["instance"] == "leaky/0")
        },
    )?;
    evidence("JSON restart event", &event);
    ensure!(
        event["level"] == "INFO" && event["memory_current"].is_u64() && event["policy"] == "leaky",
        "event line {event}"
    );
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited {status}");
    let lines = json_log()?;
    let start = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(" running"))
        })
        .context("no start line in the JSON log")?;
    evidence("JSON start line", start);
    ensure!(
        start["socket"] == DEFAULT_SOCKET
            && start["mode"]
                .as_str()
                .is_some_and(|m| m.contains("writable")),
        "start line {start}"
    );
    let all = fs::read_to_string(DAEMON_LOG)?.lines().count();
    evidence(
        "JSON log lines",
        format!("{} of {all} (the rest are the workers' own)", lines.len()),
    );
    Ok(())
}

/// Where `container_default_socket` serves the metrics.
const METRICS: &str = "127.0.0.1:9101";

/// The daemon's lines of its log, each parsed as JSON (one that does not parse fails). The
/// workers write to the same stderr, as in a container: their lines (not starting with `{`)
/// are their own and left out.
fn json_log() -> Result<Vec<serde_json::Value>> {
    fs::read_to_string(DAEMON_LOG)?
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).with_context(|| format!("not a JSON line: {l:?}")))
        .collect()
}
