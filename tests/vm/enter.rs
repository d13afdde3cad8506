//! `testworker --enter-container DIR -- COMMAND...`: a container as a runtime makes one, without
//! a runtime. Moves itself into the group DIR, unshares the cgroup and mount namespaces (so
//! /proc/self/cgroup reads `0::/`), mounts cgroup2 afresh on /sys/fs/cgroup (its root is then DIR)
//! and execs COMMAND. Busybox's `unshare` has no -C.
//!
//! `--ro` (before `--`): the cgroup2 mount is read-only (MS_RDONLY), as Docker and Kubernetes
//! mount it by default.
//!
//! `--enter-container DIR --pid-ns -- COMMAND...`: COMMAND is PID 1 of a new pid namespace too,
//! with a /proc of its own, as a runtime starts a container's entrypoint. This process stays
//! outside (in its own cgroup, as runc's parent does), passes SIGTERM and SIGINT on to it and
//! exits with its status.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

fn check(what: &str, rc: libc::c_int) -> Result<(), String> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

fn enter(dir: &str, ro: bool) -> Result<(), String> {
    let procs = format!("{dir}/cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| format!("moving into {procs}: {e}"))?;
    // SAFETY: plain syscalls on constant arguments; this process has one thread.
    unsafe {
        check(
            "unshare(CLONE_NEWCGROUP|CLONE_NEWNS)",
            libc::unshare(libc::CLONE_NEWCGROUP | libc::CLONE_NEWNS),
        )?;
        let root = CString::new("/").expect("no NUL");
        check(
            "making / private",
            libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
        )?;
        let none = CString::new("none").expect("no NUL");
        let target = CString::new("/sys/fs/cgroup").expect("no NUL");
        // The same superblock on the same mount point is EBUSY: the host's mount goes first.
        check(
            "unmounting the host's /sys/fs/cgroup",
            libc::umount2(target.as_ptr(), libc::MNT_DETACH),
        )?;
        let fstype = CString::new("cgroup2").expect("no NUL");
        check(
            "mounting cgroup2 on /sys/fs/cgroup",
            libc::mount(
                none.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                if ro { libc::MS_RDONLY } else { 0 },
                std::ptr::null(),
            ),
        )?;
        if libc::getpid() == 1 {
            let proc_ = CString::new("/proc").expect("no NUL");
            let fstype = CString::new("proc").expect("no NUL");
            check(
                "mounting the pid namespace's /proc",
                libc::mount(
                    fstype.as_ptr(),
                    proc_.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                ),
            )?;
        }
    }
    Ok(())
}

/// Forks PID 1 of a new pid namespace, which enters the container and execs `cmd`; this
/// process passes SIGTERM/SIGINT on and exits with PID 1's status.
fn pid_namespace(dir: &str, ro: bool, cmd: &[String]) -> ExitCode {
    // SAFETY: plain syscalls; this process has one thread, so the child may run anything.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            eprintln!(
                "testworker --enter-container: unshare(CLONE_NEWPID): {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(1);
        }
        let child = libc::fork();
        if child == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            if let Err(e) = enter(dir, ro) {
                eprintln!("testworker --enter-container: {e}");
                libc::_exit(1);
            }
            let e = std::process::Command::new(&cmd[0]).args(&cmd[1..]).exec();
            eprintln!("testworker --enter-container: exec {}: {e}", cmd[0]);
            libc::_exit(127);
        }
        if child < 0 {
            eprintln!(
                "testworker --enter-container: fork: {}",
                std::io::Error::last_os_error()
            );
            return ExitCode::from(1);
        }
        loop {
            let mut sig = 0;
            libc::sigwait(&set, &mut sig);
            if sig != libc::SIGCHLD {
                libc::kill(child, sig);
                continue;
            }
            let mut status = 0;
            if libc::waitpid(child, &mut status, libc::WNOHANG) == child {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                return ExitCode::from(code as u8);
            }
        }
    }
}

/// `args`: DIR, [`--pid-ns`] [`--ro`], `--`, COMMAND... (after `--enter-container`).
pub fn run(args: &[String]) -> ExitCode {
    let flag = |f: &str| args.iter().take_while(|a| *a != "--").any(|a| a == f);
    let (pid_ns, ro) = (flag("--pid-ns"), flag("--ro"));
    let args: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let before_cmd = args.iter().take(*i).all(|b| b != "--");
            !(before_cmd && (*a == "--pid-ns" || *a == "--ro"))
        })
        .map(|(_, a)| a.clone())
        .collect();
    let (Some(dir), Some("--"), Some(cmd)) =
        (args.first(), args.get(1).map(String::as_str), args.get(2))
    else {
        eprintln!("testworker: usage: --enter-container DIR [--pid-ns] [--ro] -- COMMAND...");
        return ExitCode::from(2);
    };
    if pid_ns {
        return pid_namespace(dir, ro, &args[2..]);
    }
    if let Err(e) = enter(dir, ro) {
        eprintln!("testworker --enter-container: {e}");
        return ExitCode::from(1);
    }
    let e = std::process::Command::new(cmd).args(&args[3..]).exec();
    eprintln!("testworker --enter-container: exec {cmd}: {e}");
    ExitCode::from(127)
}
