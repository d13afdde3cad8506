//! One daemon per cgroup root: an exclusive flock(2) on the root group's directory, held for
//! the daemon's life. A second daemon on the same root would adopt, reap or stop the first
//! one's workers, so it is refused before it touches anything under the root.
//!
//! The lock lives on an open file description of the directory (O_CLOEXEC, so workers never
//! inherit it) and goes away with the process, however it ends: the next daemon systemd starts
//! after a SIGUSR2 detach or a crash finds it free.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the cgroup root {path} to lock it: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "another oomguard daemon (pid {pid}) already runs on the cgroup root {path}: refusing to \
         touch its workers (stop it first, or give this one another --cgroup-root)"
    )]
    Held { path: PathBuf, pid: u32 },
    #[error(
        "another oomguard daemon already runs on the cgroup root {path} (its pid is not in \
         /proc/locks): refusing to touch its workers"
    )]
    HeldByUnknown { path: PathBuf },
    #[error("cannot lock the cgroup root {path}: {source}")]
    Lock { path: PathBuf, source: Errno },
}

/// Held while it lives.
pub struct RootLock {
    _lock: Flock<File>,
}

/// Takes the root's lock without waiting, or says who holds it.
pub fn lock_root(path: &Path) -> Result<RootLock, LockError> {
    let dir = super::runtime::open_dir(path).map_err(|source| LockError::Open {
        path: path.into(),
        source,
    })?;
    let meta = dir.metadata().map_err(|source| LockError::Open {
        path: path.into(),
        source,
    })?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(RootLock { _lock: lock }),
        Err((_, Errno::EWOULDBLOCK)) => {
            let dev = meta.dev();
            let id = (libc::major(dev), libc::minor(dev), meta.ino());
            let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
            Err(match holder_pid(&locks, id) {
                Some(pid) => LockError::Held {
                    path: path.into(),
                    pid,
                },
                None => LockError::HeldByUnknown { path: path.into() },
            })
        }
        Err((_, source)) => Err(LockError::Lock {
            path: path.into(),
            source,
        }),
    }
}

/// The pid holding a FLOCK on the inode `(major, minor, ino)`, from /proc/locks, whose lines
/// read `1: FLOCK  ADVISORY  WRITE 1234 00:1a:5678 0 EOF` (device numbers in hex; waiters are
/// marked `->` and skipped).
fn holder_pid(locks: &str, (major, minor, ino): (u32, u32, u64)) -> Option<u32> {
    let want = format!("{major:02x}:{minor:02x}:{ino}");
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) != Some(&"FLOCK") {
            return None;
        }
        let at = fields.iter().position(|f| *f == want)?;
        fields.get(at.checked_sub(1)?)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 00:1a:42 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 96 00:1a:4242 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 120 00:1a:42 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 95 00:1a:42 0 EOF\n";
        assert_eq!(holder_pid(locks, (0, 0x1a, 42)), Some(95));
        assert_eq!(holder_pid(locks, (0, 0x1a, 4242)), Some(96));
        assert_eq!(holder_pid(locks, (0, 0x1b, 42)), None);
        assert_eq!(holder_pid("", (0, 0x1a, 42)), None);
    }

    /// flock is per open file description, so a second open in this process stands in for a
    /// second daemon.
    #[test]
    fn a_second_lock_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_root(dir.path()).unwrap();
        let e = lock_root(dir.path()).err().expect("the second lock");
        let me = std::process::id();
        assert!(
            e.to_string().contains(&format!("(pid {me})")),
            "{e} (does /proc/locks list flocks here?)"
        );
        drop(first);
        lock_root(dir.path()).unwrap();
    }
}
