//! An optional deadline as a future: `None` never fires, so a `select!` arm for a timer that is
//! not set needs no special case. Shared by an instance, its children and the connector.

use std::time::Instant;

/// Sleeps until `at`; forever when it is `None`.
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
