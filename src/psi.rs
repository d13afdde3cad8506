//! Kernel wake-ups: PSI triggers on memory.pressure and change notifications on cgroup.events and
//! memory.events, all through tokio's `AsyncFd` waiting for POLLPRI. Nothing here polls on a
//! timer: the kernel tells us when something happened.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{Interest, Ready};

use crate::policy::{PressureTrigger, StallKind};

#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error(
        "cannot open {path} for a PSI trigger: {source}. PSI may be disabled (boot with psi=1, check cgroup.pressure)"
    )]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the kernel refused the PSI trigger {trigger:?} on {path}: {source}")]
    Arm {
        path: PathBuf,
        trigger: String,
        source: std::io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Register {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the cgroup of {path} is gone")]
    Gone { path: PathBuf },
}

/// The text written to memory.pressure: `some 150000 1000000` (microseconds). The trailing NUL
/// matters for /proc/pressure files, where the kernel overwrites the last byte written.
pub fn trigger_text(t: &PressureTrigger) -> String {
    let kind = match t.kind {
        StallKind::Some => "some",
        StallKind::Full => "full",
    };
    format!("{kind} {} {}\0", t.stall.as_micros(), t.window.as_micros())
}

/// An armed PSI trigger. Dropping it closes the fd, which removes the trigger in the kernel.
pub struct PsiTrigger {
    fd: AsyncFd<File>,
    path: PathBuf,
}

impl PsiTrigger {
    pub fn arm(pressure_file: &Path, trigger: &PressureTrigger) -> Result<PsiTrigger, PsiError> {
        let path = pressure_file.to_path_buf();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| PsiError::Open {
                path: path.clone(),
                source,
            })?;
        let text = trigger_text(trigger);
        file.write_all(text.as_bytes())
            .map_err(|source| PsiError::Arm {
                path: path.clone(),
                trigger: text.trim_end_matches('\0').into(),
                source,
            })?;
        let fd = register(file, &path)?;
        Ok(PsiTrigger { fd, path })
    }

    /// Waits for the next trigger event. The kernel sends at most one per window.
    pub async fn fired(&mut self) -> Result<(), PsiError> {
        if wait_priority(&self.fd, &self.path).await?.is_error() {
            return Err(PsiError::Gone {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// A watched cgroup.events or memory.events file: wakes on every change. On these files the kernel
/// reports every change as POLLPRI|POLLERR, so ERROR does not mean "gone" here; a vanished group
/// shows up as a failed read instead.
pub struct FileWatch {
    fd: AsyncFd<File>,
    path: PathBuf,
}

impl FileWatch {
    pub fn open(path: &Path) -> Result<FileWatch, PsiError> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| PsiError::Open {
                path: path.into(),
                source,
            })?;
        Ok(FileWatch {
            fd: register(file, path)?,
            path: path.into(),
        })
    }

    /// Reads the whole file from offset 0 (the kernel regenerates it on each read).
    pub fn read(&mut self) -> Result<String, PsiError> {
        let file = self.fd.get_mut();
        let mut text = String::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_string(&mut text))
            .map_err(|_| PsiError::Gone {
                path: self.path.clone(),
            })?;
        Ok(text)
    }

    /// Waits until the file changed, then returns its new content.
    pub async fn changed(&mut self) -> Result<String, PsiError> {
        wait_priority(&self.fd, &self.path).await?;
        self.read()
    }
}

/// Waits for POLLPRI (or POLLERR) and clears it: readiness is edge-triggered.
async fn wait_priority(fd: &AsyncFd<File>, path: &Path) -> Result<Ready, PsiError> {
    let mut guard = fd
        .ready(Interest::PRIORITY | Interest::ERROR)
        .await
        .map_err(|source| PsiError::Register {
            path: path.to_path_buf(),
            source,
        })?;
    let ready = guard.ready();
    guard.clear_ready();
    Ok(ready)
}

fn register(file: File, path: &Path) -> Result<AsyncFd<File>, PsiError> {
    // SAFETY: the AsyncFd owns the File, so the fd stays open and refers to the same file
    // description for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY | Interest::ERROR) }.map_err(
        |e| PsiError::Register {
            path: path.into(),
            source: e.into(),
        },
    )
}

/// The smallest window older kernels accept; newer ones dropped the minimum.
pub const MIN_WINDOW: Duration = Duration::from_millis(500);

/// A process that is not our child (a worker adopted from a previous daemon): its pidfd becomes
/// readable when it exits (pidfd_open, Linux 5.3). Its exit status is not ours to collect.
pub struct PidWatch {
    fd: AsyncFd<std::os::fd::OwnedFd>,
}

impl PidWatch {
    pub fn open(pid: u32) -> std::io::Result<PidWatch> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: the AsyncFd owns the fd for its whole lifetime.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }
            .map_err(std::io::Error::from)?;
        Ok(PidWatch { fd })
    }

    pub async fn exited(&self) {
        // Readable means the process is gone; an error means the same for our purpose.
        let _ = self.fd.readable().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_text_is_in_microseconds() {
        let t = PressureTrigger {
            kind: StallKind::Some,
            stall: Duration::from_millis(150),
            window: Duration::from_secs(1),
            sustain: Duration::ZERO,
        };
        assert_eq!(trigger_text(&t), "some 150000 1000000\0");
        let full = PressureTrigger {
            kind: StallKind::Full,
            ..t
        };
        assert!(trigger_text(&full).starts_with("full "));
    }

    #[tokio::test]
    async fn a_regular_file_cannot_be_armed_as_a_trigger() {
        // On a plain file the write succeeds but epoll refuses it: the error names the file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.pressure");
        std::fs::write(&path, "").unwrap();
        let t = PressureTrigger {
            kind: StallKind::Some,
            stall: Duration::from_millis(100),
            window: Duration::from_secs(1),
            sustain: Duration::ZERO,
        };
        let err = PsiTrigger::arm(&path, &t)
            .err()
            .expect("plain files are not pollable");
        assert!(err.to_string().contains("memory.pressure"), "{err}");
    }
}
