//! Kernel wake-ups other than PSI: change notifications on cgroup.events and memory.events
//! (POLLPRI through tokio's `AsyncFd`), and pidfds, which say when a process ended and carry
//! signals to exactly that process, never to a pid reused since.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Register {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file's cgroup was removed (ENOENT/ENODEV): a normal event, not a failure.
    #[error("the cgroup of {path} is gone")]
    Gone { path: PathBuf },
}

impl WatchError {
    pub fn is_gone(&self) -> bool {
        matches!(self, WatchError::Gone { .. })
    }
}

fn gone(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENODEV))
}

/// How often a file that cannot be polled is re-read (see [`FileWatch`]).
const REREAD: Duration = Duration::from_millis(100);

/// A watched cgroup.events or memory.events file: wakes on every change. On these files the kernel
/// reports every change as POLLPRI|POLLERR, so ERROR does not mean "gone" here; a vanished group
/// shows up as a failed read instead. A file epoll refuses (a plain file standing in for a cgroup
/// file in tests) is re-read every 100 ms instead: slower, never blind.
pub struct FileWatch {
    source: Source,
    path: PathBuf,
    /// The last content returned, to tell a change when re-reading.
    last: Option<String>,
}

enum Source {
    Kernel(AsyncFd<File>),
    Reread(File),
}

impl FileWatch {
    pub fn open(path: &Path) -> Result<FileWatch, WatchError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| {
                if gone(&source) {
                    WatchError::Gone { path: path.into() }
                } else {
                    WatchError::Open {
                        path: path.into(),
                        source,
                    }
                }
            })?;
        let source = match register(file, Interest::PRIORITY | Interest::ERROR) {
            Ok(fd) => Source::Kernel(fd),
            Err((file, e)) if e.raw_os_error() == Some(libc::EPERM) => Source::Reread(file),
            Err((_, source)) => {
                return Err(WatchError::Register {
                    path: path.into(),
                    source,
                })
            }
        };
        Ok(FileWatch {
            source,
            path: path.into(),
            last: None,
        })
    }

    /// Reads the whole file from offset 0 (the kernel regenerates it on each read).
    pub fn read(&mut self) -> Result<String, WatchError> {
        let file = match &mut self.source {
            Source::Kernel(fd) => fd.get_mut(),
            Source::Reread(file) => file,
        };
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|source| {
                if gone(&source) {
                    WatchError::Gone {
                        path: self.path.clone(),
                    }
                } else {
                    WatchError::Read {
                        path: self.path.clone(),
                        source,
                    }
                }
            })?;
        self.last = Some(text.clone());
        Ok(text)
    }

    /// Waits until the file changed, then returns its new content.
    pub async fn changed(&mut self) -> Result<String, WatchError> {
        match &self.source {
            Source::Kernel(fd) => {
                wait_priority(fd)
                    .await
                    .map_err(|source| WatchError::Register {
                        path: self.path.clone(),
                        source,
                    })?;
                self.read()
            }
            Source::Reread(_) => loop {
                let before = self.last.clone();
                tokio::time::sleep(REREAD).await;
                let text = self.read()?;
                if before.as_deref() != Some(text.as_str()) {
                    return Ok(text);
                }
            },
        }
    }
}

/// Waits for POLLPRI (or POLLERR) and clears it: readiness is edge-triggered.
pub(crate) async fn wait_priority(fd: &AsyncFd<File>) -> std::io::Result<Ready> {
    let mut guard = fd.ready(Interest::PRIORITY | Interest::ERROR).await?;
    let ready = guard.ready();
    guard.clear_ready();
    Ok(ready)
}

/// Registers a file with tokio's reactor; on failure the file is handed back.
pub(crate) fn register(
    file: File,
    interest: Interest,
) -> Result<AsyncFd<File>, (File, std::io::Error)> {
    // SAFETY: the AsyncFd owns the File, so the fd stays open and refers to the same file
    // description for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(file, interest) }.map_err(|e| e.into_parts())
}

/// A process by pidfd (pidfd_open, Linux 5.3): readable once the process ended, and the only way
/// oomguard signals a worker, so a signal can never reach a process that reused the pid. For an
/// adopted worker (not our child) the exit status is not ours to collect.
pub struct PidFd {
    fd: AsyncFd<OwnedFd>,
    pid: u32,
}

impl PidFd {
    pub fn open(pid: u32) -> std::io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: the AsyncFd owns the fd for its whole lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(PidFd { fd, pid })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// pidfd_send_signal: reaches this process or nobody (ESRCH once it ended).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> std::io::Result<()> {
        self.send(signal as libc::c_int)
    }

    /// Whether the process has not been reaped (signal 0: ESRCH once it has). While it has not,
    /// its pid is its own: a read of /proc/<pid> was of this process.
    pub fn alive(&self) -> bool {
        self.send(0).is_ok()
    }

    fn send(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal takes an fd we own, a signal number, a null siginfo (the
        // kernel fills in a kill()-like one) and zero flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub async fn exited(&self) {
        // Readable means the process is gone; an error means the same for our purpose.
        let _ = self.fd.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[tokio::test]
    async fn a_pidfd_signals_its_process_and_sees_it_end() {
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let fd = PidFd::open(child.id()).unwrap();
        assert_eq!(fd.pid(), child.id());
        fd.signal(Signal::SIGUSR1).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGUSR1));
        tokio::time::timeout(Duration::from_secs(5), fd.exited())
            .await
            .expect("readable once reaped");
        // Reaped: the pidfd refuses rather than hitting whoever has the pid now.
        let err = fd.signal(Signal::SIGTERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[tokio::test]
    async fn a_plain_file_is_reread_and_a_removed_one_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cgroup.events");
        std::fs::write(&path, "populated 1\n").unwrap();
        let mut w = FileWatch::open(&path).unwrap();
        assert_eq!(w.read().unwrap(), "populated 1\n");
        let p = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            std::fs::write(&p, "populated 0\n").unwrap();
        });
        let text = tokio::time::timeout(Duration::from_secs(5), w.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(text, "populated 0\n");
        let missing = FileWatch::open(&dir.path().join("nope")).err().unwrap();
        assert!(missing.is_gone(), "{missing}");
    }
}
