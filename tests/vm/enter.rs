//! `testworker --enter-container DIR -- COMMAND...`: a container as a runtime makes one, without
//! a runtime. Moves itself into the group DIR, unshares the cgroup and mount namespaces (so
//! /proc/self/cgroup reads `0::/`), mounts cgroup2 afresh on /sys/fs/cgroup (its root is then DIR)
//! and execs COMMAND. Busybox's `unshare` has no -C.

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

fn enter(dir: &str) -> Result<(), String> {
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
                0,
                std::ptr::null(),
            ),
        )?;
    }
    Ok(())
}

/// `args`: DIR, `--`, COMMAND... (after `--enter-container`).
pub fn run(args: &[String]) -> ExitCode {
    let (Some(dir), Some("--"), Some(cmd)) =
        (args.first(), args.get(1).map(String::as_str), args.get(2))
    else {
        eprintln!("testworker: usage: --enter-container DIR -- COMMAND...");
        return ExitCode::from(2);
    };
    if let Err(e) = enter(dir) {
        eprintln!("testworker --enter-container: {e}");
        return ExitCode::from(1);
    }
    let e = std::process::Command::new(cmd).args(&args[3..]).exec();
    eprintln!("testworker --enter-container: exec {cmd}: {e}");
    ExitCode::from(127)
}
