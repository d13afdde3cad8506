//! Waiting for the kernel: the worker's exit, PSI events, file changes, an emptied group.

use std::time::{Duration, Instant};

use super::Worker;
use crate::cgroupfs::{Group, CGROUP_EVENTS};
use crate::psi::{FileWatch, PsiTrigger};

/// Waits for the worker's main process to end.
pub(super) async fn wait_worker(w: &mut Worker) -> Option<std::process::ExitStatus> {
    wait_main(&mut w.child, &w.pidfd).await
}

pub(super) async fn wait_main(
    child: &mut Option<tokio::process::Child>,
    pidfd: &Option<crate::psi::PidWatch>,
) -> Option<std::process::ExitStatus> {
    if let Some(child) = child.as_mut() {
        return child.wait().await.ok();
    }
    if let Some(fd) = pidfd {
        fd.exited().await;
    }
    None
}

pub(super) async fn wait_psi(psi: &mut Option<PsiTrigger>) -> Result<(), crate::psi::PsiError> {
    match psi {
        Some(p) => p.fired().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn wait_file(w: &mut Option<FileWatch>) -> Result<String, crate::psi::PsiError> {
    match w {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Waits until cgroup.events says the group is empty, woken by the kernel. True if it emptied
/// (or is gone) within `limit`.
pub async fn wait_empty(group: &Group, limit: Duration) -> bool {
    let watch = FileWatch::open(&group.file(CGROUP_EVENTS));
    let Ok(mut watch) = watch else { return true };
    let check = |text: &str| {
        crate::cgroupfs::parse_keyed(text)
            .get("populated")
            .copied()
            .unwrap_or(0)
            == 0
    };
    match watch.read() {
        Ok(t) if check(&t) => return true,
        Err(_) => return true,
        _ => {}
    }
    tokio::time::timeout(limit, async {
        loop {
            match watch.changed().await {
                Ok(t) if check(&t) => return true,
                Err(_) => return true,
                _ => {}
            }
        }
    })
    .await
    .unwrap_or(false)
}
