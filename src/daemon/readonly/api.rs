//! The socket's view of the read-only mode: the status the poll loop publishes each tick, the
//! event history; restarts and reloads are refused with what would make them possible.

use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::container::setup::WRITABLE_SETTINGS;
use crate::events::EventLog;
use crate::protocol::{ApiError, EventRecord, ReloadReport, StatusReport};
use crate::server::Api;

pub struct ReadOnlyApi {
    pub status: watch::Receiver<StatusReport>,
    pub events: Arc<EventLog>,
}

fn not_here(what: &str) -> ApiError {
    ApiError::failed(format!(
        "{what} is not available in the read-only (signals-only) container mode: restart the \
         container to change its policies, or make the cgroup mount writable: {WRITABLE_SETTINGS}"
    ))
}

impl Api for ReadOnlyApi {
    fn status(&self, target: Option<&str>) -> Result<StatusReport, ApiError> {
        let mut report = self.status.borrow().clone();
        let Some(t) = target else {
            return Ok(report);
        };
        let (policy, index) = t.split_once('/').map_or((t, None), |(p, i)| (p, Some(i)));
        report.policies.retain(|p| p.name == policy);
        for p in &mut report.policies {
            if index.is_some() {
                p.instances.retain(|i| i.id == t);
            }
        }
        if report.policies.iter().all(|p| p.instances.is_empty()) {
            return Err(ApiError::not_found(format!("no policy or instance {t:?}")));
        }
        Ok(report)
    }

    fn events(&self, last: usize) -> Vec<EventRecord> {
        self.events.last(last)
    }

    fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    async fn restart(&self, _target: &str) -> Result<String, ApiError> {
        Err(not_here("`oomguard restart`"))
    }

    async fn reload(&self) -> Result<ReloadReport, ApiError> {
        Err(not_here("`oomguard reload`"))
    }
}
