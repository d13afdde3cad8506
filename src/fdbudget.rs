//! File descriptors kept in reserve. Each instance holds a few for as long as it runs (its
//! pidfd, the PSI trigger, the memory.events watch; a `children:` leaf three more), so a big
//! fleet under a small LimitNOFILE runs out. Without a reserve the last ones go to a trigger,
//! and then the socket's accept() fails (root locked out of status) and a restart cannot open
//! cgroup.kill. So arming a watch first checks that the reserve stays free, and refuses (the
//! instance says it is unarmed) rather than take the last descriptors.

/// Left free for the socket's connections and a restart's transient files (cgroup.procs,
/// cgroup.kill, a hook's pipe): 8 socket connections, a restart or two, and margin.
pub const RESERVE: u64 = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "only {free} file descriptors left under the limit of {limit} ({open} open), and {RESERVE} \
     are kept for the socket and restarts: raise LimitNOFILE= (docs/install.md, \"File \
     descriptors\")"
)]
pub struct Exhausted {
    pub free: u64,
    pub limit: u64,
    pub open: u64,
}

/// Ok when `open` descriptors under `limit` leave the reserve free.
pub fn check(open: u64, limit: u64) -> Result<(), Exhausted> {
    let free = limit.saturating_sub(open);
    if free > RESERVE {
        Ok(())
    } else {
        Err(Exhausted { free, limit, open })
    }
}

/// [`check`] for this process: its open descriptors (/proc/self/fd) against its soft limit.
/// Unreadable numbers pass: the open() that follows then fails with its own error.
pub fn check_own() -> Result<(), Exhausted> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Ok(());
    }
    // The descriptor table's size bounds the open descriptors (every number is below it; it
    // only grows, by doubling, when a higher one is needed): well under the limit, that settles
    // it in one small read. Counting /proc/self/fd walks every open descriptor, a dentry each:
    // with 200 instances x 8 children (thousands open) and three checks per child, that walk
    // was where a placement's time went under TCG.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if table_size(&status).is_some_and(|size| check(size, lim.rlim_cur).is_ok()) {
        return Ok(());
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Ok(());
    };
    // The directory's own descriptor is counted too: one more than before the call, harmless.
    check(dir.count() as u64, lim.rlim_cur)
}

/// `FDSize:` of /proc/<pid>/status: how many descriptors the table holds room for.
fn table_size(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("FDSize:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_stays_free() {
        assert_eq!(check(10, 1024), Ok(()));
        assert_eq!(check(1024 - RESERVE - 1, 1024), Ok(()));
        let e = check(1024 - RESERVE, 1024).unwrap_err();
        assert_eq!(e.free, RESERVE);
        assert!(e.to_string().contains("raise LimitNOFILE="), "{e}");
        // Over the limit (lowered by prlimit under a running daemon): nothing free.
        assert_eq!(check(60, 40).unwrap_err().free, 0);
    }

    #[test]
    fn the_table_size_is_read_from_status() {
        let status = "Name:\toomguard\nUmask:\t0022\nFDSize:\t8192\nGid:\t0\t0\t0\t0\n";
        assert_eq!(table_size(status), Some(8192));
        assert_eq!(
            table_size("Name:\tx\n"),
            None,
            "no line: the exact count decides"
        );
        assert_eq!(table_size("FDSize:\tmany\n"), None);
        // A table of 8192 under a limit of 65536 leaves the reserve free, whatever is open; a
        // table as large as the limit says nothing, and the exact count is taken.
        assert!(check(8192, 65536).is_ok());
        assert!(check(65536, 65536).is_err());
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(table_size(&own).is_some_and(|n| n >= 64), "{own}");
    }

    #[test]
    fn this_process_has_room() {
        assert_eq!(check_own(), Ok(()));
    }
}
