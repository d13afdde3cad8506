//! Waiting for the kernel: PSI events, file changes, a deadline.

use crate::psi::PsiTrigger;
use crate::watch::{FileWatch, WatchError};

pub(super) async fn wait_psi(psi: &mut Option<PsiTrigger>) -> Result<(), crate::psi::PsiError> {
    match psi {
        Some(p) => p.fired().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn wait_file(w: &mut Option<FileWatch>) -> Result<String, WatchError> {
    match w {
        Some(f) => f.changed().await,
        None => std::future::pending().await,
    }
}
