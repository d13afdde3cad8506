//! PSI triggers on memory.pressure, through tokio's `AsyncFd` waiting for POLLPRI. Nothing here
//! polls on a timer: the kernel tells us when memory pressure crossed the trigger. File and pid
//! watches are in `watch`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::cgroupfs::parse_pressure;
use crate::engine::Stall;
use crate::policy::{PressureTrigger, StallKind};
use crate::watch::{register, wait_priority};

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
    kind: StallKind,
    /// The last reading of the trigger kind's `total=` (at arming, then at each event), so an
    /// event can say how much stall the group had since: the kernel sends at most one event per
    /// window, so during a run of events this spans about one window.
    mark: Option<(Instant, u64)>,
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
        let fd = register(file, Interest::PRIORITY | Interest::ERROR).map_err(|(_, source)| {
            PsiError::Register {
                path: path.clone(),
                source,
            }
        })?;
        let mut armed = PsiTrigger {
            fd,
            path,
            kind: trigger.kind,
            mark: None,
        };
        armed.mark = armed.total_us().map(|total| (Instant::now(), total));
        Ok(armed)
    }

    /// The stall (of the trigger's kind) since the previous event, or since the arming: the
    /// trigger's own measurement, read at the event `now`. None when memory.pressure cannot be
    /// read (the group is going away) or there was no earlier reading to compare with.
    pub fn measure(&mut self, now: Instant) -> Option<Stall> {
        let reading = self.total_us().map(|total| (now, total));
        let earlier = std::mem::replace(&mut self.mark, reading);
        Some(Stall::between(earlier?, reading?))
    }

    fn total_us(&self) -> Option<u64> {
        let p = parse_pressure(&std::fs::read_to_string(&self.path).ok()?)?;
        Some(match self.kind {
            StallKind::Some => p.some_total_us,
            StallKind::Full => p.full_total_us,
        })
    }

    /// Waits for the next trigger event. The kernel sends at most one per window.
    pub async fn fired(&mut self) -> Result<(), PsiError> {
        let ready = wait_priority(&self.fd)
            .await
            .map_err(|source| PsiError::Register {
                path: self.path.clone(),
                source,
            })?;
        if ready.is_error() {
            return Err(PsiError::Gone {
                path: self.path.clone(),
            });
        }
        Ok(())
    }
}

/// The smallest window older kernels accept; newer ones dropped the minimum.
pub const MIN_WINDOW: Duration = Duration::from_millis(500);

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
