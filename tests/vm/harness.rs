//! What the in-VM scenarios share: starting and talking to the daemon, writing policy files,
//! waiting with timeouts, and reading the kernel's and the workers' evidence (vmstat, memory.events,
//! ledgers). Everything here assumes the VM layout that tests/vm/run.sh builds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use oomguard::protocol::{EventRecord, InstanceStatus, StatusReport};
use oomguard::vocabulary::{InstanceState, Reason};

pub const OOMGUARD: &str = "/bin/oomguard";
pub const TESTWORKER: &str = "/bin/testworker";
pub const SOCKET: &str = "/run/oomguard.sock";
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup/oomguard";
pub const POLICY_DIR: &str = "/tmp/policies";
pub const LEDGER_DIR: &str = "/tmp/ledgers";
/// The daemon's stdout and stderr; main prints its tail when a scenario fails.
pub const DAEMON_LOG: &str = "/tmp/oomguard.log";
/// How often status is polled while waiting for something.
const POLL: Duration = Duration::from_millis(200);
/// Upper bound for one-shot CLI calls; a hung client must not hang the scenario.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(15);

/// An evidence line: shown in the console log whatever the verdict.
pub fn evidence(key: &str, value: impl std::fmt::Display) {
    println!("EVIDENCE {key}: {value}");
}

/// What a finished command printed and how it ended.
pub struct CmdOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// One line for failure messages: exit status and the start of the output.
    pub fn summary(&self) -> String {
        let text = self.text();
        let text = text.trim();
        let cut: String = text.chars().take(400).collect();
        format!("{}, output: {:?}", self.status, cut)
    }
}

/// Runs a command to completion with a timeout, capturing its output in files so a chatty child
/// cannot block on a full pipe while we poll it.
pub fn run_cmd(program: &str, args: &[&str], timeout: Duration) -> Result<CmdOutput> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let out_path = PathBuf::from(format!("/tmp/cmd-{n}.out"));
    let err_path = PathBuf::from(format!("/tmp/cmd-{n}.err"));
    let shown = format!("`{program} {}`", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} still running after {timeout:?}; killed it");
        }
        sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    Ok(CmdOutput {
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    })
}

/// `oomguard <args>`, with a timeout.
pub fn oomguard(args: &[&str]) -> Result<CmdOutput> {
    run_cmd(OOMGUARD, args, CLI_TIMEOUT)
}

/// A client subcommand talking to the daemon's socket.
pub fn client(args: &[&str]) -> Result<CmdOutput> {
    let mut all = args.to_vec();
    all.extend(["--socket", SOCKET]);
    oomguard(&all)
}

/// The arguments of `oomguard run` as the scenarios use it.
pub fn run_args(policy_dir: &str) -> Vec<&str> {
    vec![
        "run",
        "--policies",
        policy_dir,
        "--socket",
        SOCKET,
        "--cgroup-root",
        CGROUP_ROOT,
    ]
}

/// The daemon under test, started with `oomguard run`. Dropping it kills it.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts the daemon on `policy_dir` and waits until `status --json` answers.
    pub fn start(policy_dir: &str) -> Result<Daemon> {
        Daemon::start_with(policy_dir, &[])
    }

    /// As [`Daemon::start`], with more `oomguard run` flags.
    pub fn start_with(policy_dir: &str, extra: &[&str]) -> Result<Daemon> {
        let mut cmd = Command::new(OOMGUARD);
        cmd.args(run_args(policy_dir)).args(extra);
        Daemon::start_command(cmd)
    }

    /// As [`Daemon::start`], for a command line of the caller's (e.g. one that enters a
    /// container first); its output goes to the daemon log.
    pub fn start_command(cmd: Command) -> Result<Daemon> {
        let mut daemon = Daemon::spawn_command(cmd)?;
        daemon.wait_status(
            "the daemon to answer `status --json`",
            Duration::from_secs(20),
            |_| Some(()),
        )?;
        Ok(daemon)
    }

    /// Starts `cmd` (output to the daemon log) without waiting for the harness's socket: for a
    /// daemon listening elsewhere.
    pub fn spawn_command(mut cmd: Command) -> Result<Daemon> {
        let log = File::create(DAEMON_LOG)?;
        let child = cmd
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start `oomguard run`")?;
        evidence("daemon pid", child.id());
        Ok(Daemon { child })
    }

    /// Fails if the daemon is no longer running.
    pub fn ensure_alive(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the daemon exited ({status}); its log is printed above"),
        }
    }

    pub fn status(&mut self) -> Result<StatusReport> {
        self.ensure_alive()?;
        status_json()
    }

    /// Polls status every 200 ms until `pred` returns a value. Fails at once if the daemon dies,
    /// and at the timeout with the last status error, if any.
    pub fn wait_status<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&StatusReport) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            self.ensure_alive()?;
            match status_json() {
                Ok(report) => {
                    if let Some(v) = pred(&report) {
                        return Ok(v);
                    }
                }
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                let why = last_err
                    .map(|e| format!(" (last status error: {e:#})"))
                    .unwrap_or_default();
                bail!("timed out after {timeout:?} waiting for {what}{why}");
            }
            sleep(POLL);
        }
    }

    /// Waits until every id in `ids` is running with at least one pid; returns their first pids.
    pub fn wait_running(
        &mut self,
        ids: &[&str],
        timeout: Duration,
    ) -> Result<BTreeMap<String, u32>> {
        let what = format!("{ids:?} to be running");
        self.wait_status(&what, timeout, |report| {
            ids.iter()
                .map(|id| {
                    let inst = instance(report, id)?;
                    let running = inst.state == oomguard::vocabulary::InstanceState::Running;
                    Some((id.to_string(), *inst.pids.first().filter(|_| running)?))
                })
                .collect()
        })
    }

    /// SIGTERM, then up to 20 s for a graceful exit (the Drop kills it after that).
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.signal_and_wait(libc::SIGTERM)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&mut self, sig: i32) -> Result<()> {
        self.ensure_alive()?;
        signal(self.child.id(), sig)
    }

    /// Sends `sig` and waits up to 20 s for the daemon to exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> Result<ExitStatus> {
        self.signal_and_wait_for(sig, Duration::from_secs(20))
    }

    /// Sends `sig` and waits up to `limit` for the daemon to exit.
    pub fn signal_and_wait_for(&mut self, sig: i32, limit: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        signal(self.child.id(), sig)?;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            sleep(Duration::from_millis(50));
        }
        bail!("the daemon did not exit within {limit:?} of signal {sig}")
    }

    /// SIGKILL: the daemon gets no chance to clean up, as in a crash.
    pub fn kill(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// As under systemd's LimitNOFILE=65536 (systemd/oomguard.service): a daemon started after this
/// starts with soft = hard = 65536.
pub fn unit_nofile_limit() -> Result<()> {
    let lim = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit reads the struct we pass.
    ensure!(
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0,
        "setrlimit: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

pub fn signal(pid: u32, sig: i32) -> Result<()> {
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        bail!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// `oomguard status --json`, parsed.
pub fn status_json() -> Result<StatusReport> {
    let out = client(&["status", "--json"])?;
    if !out.status.success() {
        bail!("`oomguard status --json` failed: {}", out.summary());
    }
    serde_json::from_str(&out.stdout).with_context(|| {
        format!(
            "cannot parse `oomguard status --json` output: {}",
            out.summary()
        )
    })
}

/// The instance "<policy>/<index>" in a report.
pub fn instance<'a>(report: &'a StatusReport, id: &str) -> Option<&'a InstanceStatus> {
    report
        .policies
        .iter()
        .flat_map(|p| &p.instances)
        .find(|i| i.id == id)
}

/// Whether the kernel's memory.high of an instance's group (`kernel`, as read) is the policy's
/// `configured` value in force: either that value itself, or the memory.high boundary's sentinel
/// under it that status reports for the running worker (a policy with memory.high and no
/// memory trigger; docs/policy.md, "The memory.high boundary").
pub fn high_in_force(status: &InstanceStatus, kernel: &str, configured: u64) -> bool {
    kernel == configured.to_string()
        || (status.memory_high == Some(configured)
            && status
                .boundary
                .is_some_and(|s| s < configured && kernel == s.to_string()))
}

/// Like [`instance`], but missing is an error.
pub fn require_instance<'a>(report: &'a StatusReport, id: &str) -> Result<&'a InstanceStatus> {
    instance(report, id).ok_or_else(|| anyhow!("status has no instance {id}"))
}

/// Every pid the report lists, over all instances.
pub fn all_pids(report: &StatusReport) -> BTreeSet<u32> {
    report
        .policies
        .iter()
        .flat_map(|p| &p.instances)
        .flat_map(|i| i.pids.iter().copied())
        .collect()
}

/// The daemon's last 1000 events, oldest first (`oomguard events --json`).
pub fn recent_events() -> Result<Vec<EventRecord>> {
    Ok(client(&["events", "--last", "1000", "--json"])?
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<EventRecord>(l).ok())
        .collect())
}

/// The first event of `action` in the daemon's history, waited for up to `timeout`.
pub fn wait_event(action: &str, timeout: Duration) -> Result<EventRecord> {
    wait_until(&format!("a {action} event"), timeout, || {
        recent_events()
            .ok()?
            .into_iter()
            .find(|e| e.action == action)
    })
}

/// Polls `f` every 200 ms until it returns a value or the timeout passes.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        sleep(POLL);
    }
}

/// Writes `<dir>/<name>.yaml` root-owned with mode 0644, as the daemon expects policy files.
pub fn write_policy(dir: &str, name: &str, yaml: &str) -> Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let path = Path::new(dir).join(format!("{name}.yaml"));
    fs::write(&path, yaml).with_context(|| format!("cannot write {}", path.display()))?;
    set_mode(&path, 0o644)?;
    std::os::unix::fs::chown(&path, Some(0), Some(0))?;
    println!("POLICY {} ----\n{}", path.display(), yaml.trim_end());
    Ok(path)
}

pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {mode:o} {}", path.display()))
}

/// A prefork test worker with 2 children, the first leaking 8 MB/s, 50 ms jobs.
pub const PREFORK_ONE_LEAKING: [&str; 8] = [
    "--prefork",
    "2",
    "--leak-slots",
    "1",
    "--leak-mb-per-s",
    "8",
    "--job-ms",
    "50",
];

/// The YAML flow list for a testworker command line: `["/bin/testworker", ...]`.
pub fn worker_command(args: &[&str]) -> String {
    let quoted: Vec<String> = std::iter::once(TESTWORKER)
        .chain(args.iter().copied())
        .map(|a| format!("{a:?}"))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The ledger path for a policy; the directory is world-writable so workers running as the
/// `worker` user can create their ledgers there.
pub fn ledger_path(policy: &str) -> String {
    format!("{LEDGER_DIR}/{policy}.ledger")
}

pub fn make_ledger_dir() -> Result<()> {
    fs::create_dir_all(LEDGER_DIR)?;
    set_mode(Path::new(LEDGER_DIR), 0o777)
}

/// /proc/vmstat `oom_kill`: every OOM kill on the machine since boot.
pub fn vmstat_oom_kill() -> Result<u64> {
    let text = fs::read_to_string("/proc/vmstat")?;
    parse_flat_keyed(&text)
        .get("oom_kill")
        .copied()
        .ok_or_else(|| anyhow!("/proc/vmstat has no oom_kill"))
}

/// A flat keyed file such as memory.events: `key value` per line.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// The cgroup directory of instance "<policy>/<index>".
pub fn instance_group(id: &str) -> PathBuf {
    Path::new(CGROUP_ROOT).join(id)
}

pub fn read_trimmed(path: &Path) -> Result<String> {
    Ok(fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string())
}

/// memory.events of an instance's group.
pub fn memory_events(id: &str) -> Result<BTreeMap<String, u64>> {
    let path = instance_group(id).join("memory.events");
    Ok(parse_flat_keyed(&read_trimmed(&path)?))
}

/// True while `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself contain ") ".
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// `oomguard restart <id>` in the background: with `restart.ready` its answer waits for the
/// replacement's ready, while the caller looks at the overlap. Kill or wait for it.
pub fn restart_in_background(id: &str) -> Result<std::process::Child> {
    Ok(std::process::Command::new(OOMGUARD)
        .args(["restart", id, "--socket", SOCKET])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?)
}

/// After `oomguard restart <id>`: waits for a new running pid (not `old`), then checks that the
/// last restart's reason is manual. Returns the new pid.
pub fn wait_manual_replacement(daemon: &mut Daemon, id: &str, old: u32) -> Result<u32> {
    let new = daemon.wait_status(
        &format!("a new {id} process"),
        Duration::from_secs(15),
        |r| {
            let inst = instance(r, id)?;
            let pid = *inst.pids.first().filter(|p| **p != old)?;
            (inst.state == InstanceState::Running).then_some(pid)
        },
    )?;
    ensure!(pid_alive(new), "the new pid {new} is not running");
    let report = daemon.status()?;
    let inst = require_instance(&report, id)?;
    evidence(
        "pids",
        format!("{old} -> {new}; restarts {}", inst.restarts),
    );
    ensure!(
        inst.last_restart_reason == Some(Reason::Manual),
        "last restart reason {:?}, want manual",
        inst.last_restart_reason
    );
    Ok(new)
}

/// The real uid of a process, from /proc/<pid>/status.
pub fn pid_uid(pid: u32) -> Result<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no Uid line in /proc/{pid}/status"))
}

/// What one worker process recorded in a ledger.
#[derive(Default, Debug)]
pub struct PidRecord {
    pub started: BTreeSet<u64>,
    pub done: BTreeSet<u64>,
    pub clean_exit: bool,
}

/// A parsed ledger (see testworker.rs for the line format).
#[derive(Default, Debug)]
pub struct Ledger {
    pub pids: BTreeMap<u32, PidRecord>,
}

impl Ledger {
    pub fn read(path: &str) -> Result<Ledger> {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read ledger {path}"))?;
        Ledger::parse(&text).with_context(|| format!("in ledger {path}"))
    }

    pub fn parse(text: &str) -> Result<Ledger> {
        let mut ledger = Ledger::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let bad = || anyhow!("malformed ledger line {line:?}");
            let [kind, pid, arg] = fields[..] else {
                return Err(bad());
            };
            let rec = ledger
                .pids
                .entry(pid.parse().map_err(|_| bad())?)
                .or_default();
            match (kind, arg) {
                ("exit", "clean") => rec.clean_exit = true,
                ("start", job) => {
                    rec.started.insert(job.parse().map_err(|_| bad())?);
                }
                ("done", job) => {
                    rec.done.insert(job.parse().map_err(|_| bad())?);
                }
                _ => return Err(bad()),
            }
        }
        Ok(ledger)
    }

    /// Jobs started and never finished, as (pid, job). For a pid in `running` its last started
    /// job may still be in flight and is not counted.
    pub fn lost_jobs(&self, running: &BTreeSet<u32>) -> Vec<(u32, u64)> {
        let mut lost = Vec::new();
        for (pid, rec) in &self.pids {
            let in_flight = rec.started.last().filter(|_| running.contains(pid));
            for job in rec.started.difference(&rec.done) {
                if Some(job) != in_flight {
                    lost.push((*pid, *job));
                }
            }
        }
        lost
    }

    /// Pids that are gone (not in `running`) without an `exit <pid> clean` line.
    pub fn unclean_exits(&self, running: &BTreeSet<u32>) -> Vec<u32> {
        self.pids
            .iter()
            .filter(|(pid, rec)| !rec.clean_exit && !running.contains(pid))
            .map(|(p, _)| *p)
            .collect()
    }

    pub fn completed_jobs(&self) -> usize {
        self.pids.values().map(|r| r.done.len()).sum()
    }

    /// "pid:done[+clean]" per pid, for evidence lines.
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .pids
            .iter()
            .map(|(pid, r)| {
                format!(
                    "{pid}:{}{}",
                    r.done.len(),
                    if r.clean_exit { "+clean" } else { "" }
                )
            })
            .collect();
        parts.join(" ")
    }
}

/// Prints the last `lines` lines of the daemon log, if there is one.
pub fn print_daemon_log_tail(lines: usize) {
    if let Ok(text) = fs::read_to_string(DAEMON_LOG) {
        let all: Vec<&str> = text.lines().collect();
        let from = all.len().saturating_sub(lines);
        println!(
            "---- daemon log {DAEMON_LOG} (last {} of {} lines) ----",
            all.len() - from,
            all.len()
        );
        for line in &all[from..] {
            println!("LOG | {line}");
        }
        println!("---- end of daemon log ----");
    }
}

/// `GET path` over HTTP/1.1 on `addr`: the status code and the body.
pub fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("no end of the HTTP head")?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in {head:?}"))?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEDGER: &str = "start 10 1\ndone 10 1\nstart 10 2\ndone 10 2\nexit 10 clean\n\
                          start 11 1\ndone 11 1\nstart 11 2\n\
                          start 12 1\ndone 12 1\nstart 12 2\n";

    #[test]
    fn a_running_pid_may_have_one_job_in_flight() {
        let ledger = Ledger::parse(LEDGER).unwrap();
        assert_eq!(ledger.completed_jobs(), 4);
        // 11 is gone: its unfinished job is lost; 12 runs: its last job is in flight.
        assert_eq!(ledger.lost_jobs(&BTreeSet::from([12])), vec![(11, 2)]);
        assert_eq!(ledger.lost_jobs(&BTreeSet::new()), vec![(11, 2), (12, 2)]);
        assert_eq!(ledger.unclean_exits(&BTreeSet::from([12])), vec![11]);
        assert_eq!(ledger.summary(), "10:2+clean 11:1 12:1");
    }

    #[test]
    fn only_the_last_job_of_a_running_pid_is_in_flight() {
        let ledger = Ledger::parse("start 5 1\nstart 5 2\ndone 5 2\nstart 5 3\n").unwrap();
        assert_eq!(ledger.lost_jobs(&BTreeSet::from([5])), vec![(5, 1)]);
    }

    #[test]
    fn torn_or_unknown_lines_are_errors() {
        assert!(Ledger::parse("start 5\n").is_err());
        assert!(Ledger::parse("start 5 1done 5 1\n").is_err());
        assert!(Ledger::parse("exit 5 dirty\n").is_err());
        assert!(Ledger::parse("done x 1\n").is_err());
    }

    #[test]
    fn flat_keyed_files_parse() {
        let events = parse_flat_keyed("low 0\nhigh 119\nmax 0\noom_kill 2\n");
        assert_eq!(events["high"], 119);
        assert_eq!(events["oom_kill"], 2);
    }
}
