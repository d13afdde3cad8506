//! The bench's own supervisors for the fleets that oomguard does not run: a plain respawn loop
//! (what a container restart policy gives), the same with earlyoom beside it, and the naive PSI
//! guard of issue 9 (first PSI event: lift memory.high, SIGTERM, respawn). Plus the sampler that
//! prints memory.current every 100 ms for the plot.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::harness::TESTWORKER;

/// The `worker` user of the VM image (tests/vm/run.sh writes /etc/passwd).
const WORKER_UID: libc::uid_t = 1000;
const WORKER_GID: libc::gid_t = 1000;
/// A PSI trigger of the naive guard: the README example's `{some: 150ms, window: 1s}`.
const NAIVE_TRIGGER: &str = "some 150000 1000000";
const GRACE: Duration = Duration::from_secs(10);

/// How a bench-supervised group is guarded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Started once; nobody restarts it (no guard: memory.high alone).
    None,
    /// Respawned 100 ms after it exits (killed by the kernel or by earlyoom).
    Respawn,
    /// Respawn, plus the naive PSI guard on the group.
    NaivePsi { high: &'static str },
}

/// One worker in its own group under the bench's root.
pub struct Member {
    pub group: PathBuf,
    pub args: Vec<String>,
    pub guard: Guard,
}

/// Starts the testworker already inside `group`, as the worker user: the child writes itself into
/// cgroup.procs before exec (so not one page is charged elsewhere), then drops to uid 1000.
pub fn spawn_in(group: &Path, args: &[String]) -> Result<Child> {
    let procs = CString::new(
        group
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )?;
    let mut cmd = Command::new(TESTWORKER);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (open, write, close, setgroups, setgid, setuid) on
    // data prepared before the fork; nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if !ok
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(WORKER_GID) != 0
                || libc::setuid(WORKER_UID) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("cannot start a testworker in {}", group.display()))
}

/// Runs `m` until `stop`, counting restarts in `restarts`. Errors end the thread and are
/// returned by its join (the bench then fails: a fleet that stopped being supervised would give
/// a figure that means nothing).
pub fn supervise(m: Member, stop: Arc<AtomicBool>, restarts: Arc<AtomicU64>) -> Result<()> {
    let mut child = spawn_in(&m.group, &m.args)?;
    let trigger = match m.guard {
        Guard::NaivePsi { .. } => Some(arm_trigger(&m.group)?),
        _ => None,
    };
    loop {
        if stop.load(Ordering::SeqCst) {
            return terminate(&mut child);
        }
        if child.try_wait()?.is_some() {
            if m.guard == Guard::None {
                // Nothing restarts an unguarded worker: wait for the end of the phase.
                while !stop.load(Ordering::SeqCst) {
                    sleep(Duration::from_millis(100));
                }
                return Ok(());
            }
            sleep(Duration::from_millis(100));
            child = spawn_in(&m.group, &m.args)?;
            restarts.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        match (&trigger, m.guard) {
            (Some(fd), Guard::NaivePsi { high }) => {
                if wait_event(fd, 100)? && !stop.load(Ordering::SeqCst) {
                    // The naive guard: lift the throttle so the handler can run, ask the worker
                    // to go, wait, put the limit back, start a new one.
                    write(&m.group, "memory.high", "max")?;
                    terminate(&mut child)?;
                    write(&m.group, "memory.high", high)?;
                    child = spawn_in(&m.group, &m.args)?;
                    restarts.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => sleep(Duration::from_millis(100)),
        }
    }
}

/// SIGTERM, up to GRACE for the worker to finish its job and exit, then SIGKILL.
fn terminate(child: &mut Child) -> Result<()> {
    // SAFETY: kill(2) on our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        sleep(Duration::from_millis(10));
    }
    child.kill()?;
    child.wait()?;
    Ok(())
}

fn arm_trigger(group: &Path) -> Result<OwnedFd> {
    let path = group.join("memory.pressure");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    std::io::Write::write_all(&mut &file, NAIVE_TRIGGER.as_bytes())
        .with_context(|| format!("cannot arm {NAIVE_TRIGGER:?} on {}", path.display()))?;
    Ok(OwnedFd::from(file))
}

/// True when the trigger fired within `ms`.
fn wait_event(fd: &OwnedFd, ms: i32) -> Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        bail!("poll on a PSI trigger: {e}");
    }
    if pfd.revents & libc::POLLERR != 0 {
        bail!("the PSI trigger's group is gone (POLLERR)");
    }
    Ok(pfd.revents & libc::POLLPRI != 0)
}

pub fn write(group: &Path, file: &str, value: &str) -> Result<()> {
    let path = group.join(file);
    fs::write(&path, value).with_context(|| format!("cannot write {value:?} to {}", path.display()))
}

/// Every pid in `group` and the groups below it (oomguard's overlap may use child groups).
pub fn pids_under(group: &Path) -> BTreeSet<u32> {
    let mut pids: BTreeSet<u32> = fs::read_to_string(group.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if let Ok(dir) = fs::read_dir(group) {
        for entry in dir.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(pids_under(&entry.path()));
            }
        }
    }
    pids
}

/// Prints `SAMPLE <rate> <fleet> <ms> <kib>` for each group every 100 ms, and `MARK <rate>
/// <fleet> <ms>` when a pid not seen before appears in a group that already had one (a restart).
pub fn sample(rate: u32, groups: Vec<(String, PathBuf)>, stop: Arc<AtomicBool>) {
    let started = Instant::now();
    let mut seen: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); groups.len()];
    while !stop.load(Ordering::SeqCst) {
        let ms = started.elapsed().as_millis();
        for ((fleet, group), seen) in groups.iter().zip(seen.iter_mut()) {
            if let Ok(text) = fs::read_to_string(group.join("memory.current")) {
                if let Ok(bytes) = text.trim().parse::<u64>() {
                    println!("SAMPLE {rate} {fleet} {ms} {}", bytes / 1024);
                }
            }
            let pids = pids_under(group);
            if !seen.is_empty() && pids.iter().any(|p| !seen.contains(p)) {
                println!("MARK {rate} {fleet} {ms}");
            }
            seen.extend(pids);
        }
        sleep(Duration::from_millis(100));
    }
}
