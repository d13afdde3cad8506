//! Reloads have one owner: a task fed by a channel. A reload may stop a slow policy (up to its
//! grace) and so must never run in the main loop, which pings the watchdog, handles signals and
//! saves state. And two reloads must never run at once: both would start the same new policy,
//! and the replaced tasks would go on supervising, unseen, a second worker per group.
//!
//! Requests that queue up while a reload runs (SIGHUPs, socket reloads) are answered together
//! by one more reload after it, which reads the policy files after every one of them was made.

use std::collections::BTreeMap;
use std::sync::Arc;

use sd_notify::NotifyState;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tracing::{debug, error, info};

use super::{load_policies, notify, Options};
use crate::policy::Policy;
use crate::protocol::ReloadReport;
use crate::supervisor::Fleet;

/// Why a reload changed nothing.
#[derive(Clone, Debug, PartialEq)]
pub enum ReloadError {
    /// Every problem found in the policy directory.
    Invalid(Vec<String>),
    /// The daemon is stopping its workers: nothing may start any more.
    ShuttingDown,
    /// The reload task is gone (it panicked: a bug, in the log).
    Gone,
}

pub type ReloadResult = Result<ReloadReport, ReloadError>;

/// How a requester hears the result; None for a SIGHUP, which only logs.
type Request = Option<oneshot::Sender<ReloadResult>>;

/// Requests waiting for the reload task. More would only wait behind the same next reload.
const QUEUE: usize = 64;

/// The way to the reload task.
#[derive(Clone)]
pub struct Reloads {
    requests: mpsc::Sender<Request>,
}

impl Reloads {
    /// Starts the reload task. It takes `owner` for each reload; whoever holds it (the
    /// shutdown) knows no reload runs. `closing` set: every reload is refused.
    pub fn spawn(
        fleet: Arc<Fleet>,
        opts: Options,
        owner: Arc<Mutex<()>>,
        closing: watch::Receiver<bool>,
    ) -> Reloads {
        let (requests, rx) = mpsc::channel(QUEUE);
        tokio::spawn(reload_task(fleet, opts, owner, closing, rx));
        Reloads { requests }
    }

    /// SIGHUP: a reload soon, without waiting for it. A full queue already holds a reload that
    /// will read the files after this signal, so nothing is lost.
    pub fn signal(&self) {
        if self.requests.try_send(None).is_err() {
            debug!("SIGHUP: a reload is already queued");
        }
    }

    /// A reload whose result the caller waits for. Cancel-safe: dropping the future drops only
    /// the reply; the reload itself runs to its end in the reload task.
    pub async fn request(&self) -> ReloadResult {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Some(tx)).await.is_err() {
            return Err(ReloadError::Gone);
        }
        rx.await.unwrap_or(Err(ReloadError::Gone))
    }
}

async fn reload_task(
    fleet: Arc<Fleet>,
    opts: Options,
    owner: Arc<Mutex<()>>,
    closing: watch::Receiver<bool>,
    mut rx: mpsc::Receiver<Request>,
) {
    while let Some(first) = rx.recv().await {
        let mut waiting: Vec<oneshot::Sender<ReloadResult>> = first.into_iter().collect();
        let mut coalesced = 0;
        while let Ok(more) = rx.try_recv() {
            waiting.extend(more);
            coalesced += 1;
        }
        if coalesced > 0 {
            debug!("{coalesced} more reload request(s) answered by this reload");
        }
        let result = {
            let _owner = owner.lock().await;
            if *closing.borrow() {
                info!("reload refused: shutting down");
                Err(ReloadError::ShuttingDown)
            } else {
                reload(&fleet, &opts).await.map_err(ReloadError::Invalid)
            }
        };
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

/// Re-reads and validates every policy first; only a fully valid set is applied, so a bad file
/// changes nothing.
async fn reload(fleet: &Fleet, opts: &Options) -> Result<ReloadReport, Vec<String>> {
    let mut reloading = vec![NotifyState::Reloading];
    // systemd >= 253 wants the monotonic time with RELOADING=1 (Type=notify-reload).
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        reloading.push(now);
    }
    notify(&reloading);
    let result = match load_policies(opts) {
        Err(errors) => {
            for e in &errors {
                error!("reload refused, nothing changed: {e}");
            }
            Err(errors)
        }
        Ok(policies) => {
            if opts.dry_run {
                let running = running_counts(fleet);
                if let Some(why) = dry_run_refusal(&running, &policies) {
                    error!("reload refused, nothing changed: {why}");
                    notify(&[NotifyState::Ready]);
                    return Err(vec![why]);
                }
            }
            match fleet.reload(policies).await {
                Ok(summary) => {
                    info!(added = ?summary.added, changed = ?summary.changed, removed = ?summary.removed, "reloaded {}", opts.policies.display());
                    Ok(summary)
                }
                Err(errors) => {
                    for e in &errors {
                        error!("reload refused, nothing changed: {e}");
                    }
                    Err(errors)
                }
            }
        }
    };
    notify(&[NotifyState::Ready]);
    result
}

/// Each running policy's instance count.
fn running_counts(fleet: &Fleet) -> BTreeMap<String, usize> {
    fleet.status(None).map_or_else(
        |_| BTreeMap::new(),
        |s| {
            s.policies
                .into_iter()
                .map(|p| (p.name, p.instances.len()))
                .collect()
        },
    )
}

/// A dry run signals nothing, and a reload that removes a policy or lowers its instance count
/// would stop workers: such a reload is refused, naming what it would stop.
fn dry_run_refusal(running: &BTreeMap<String, usize>, new: &[Policy]) -> Option<String> {
    let stops: Vec<String> = running
        .iter()
        .filter_map(
            |(name, &count)| match new.iter().find(|p| &p.name == name) {
                None => Some(format!("{name} (removed)")),
                Some(p) if (p.run.instances as usize) < count => {
                    Some(format!("{name} ({count} -> {} instances)", p.run.instances))
                }
                Some(_) => None,
            },
        )
        .collect();
    (!stops.is_empty()).then(|| {
        format!(
            "dry run: this reload would stop workers of {}, and a dry run signals nothing",
            stops.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::{Group, CGROUP_PROCS, SUBTREE_CONTROL};
    use crate::events::EventLog;
    use crate::policy::parse;
    use std::os::unix::fs::PermissionsExt;

    fn policy(name: &str, instances: u32) -> Policy {
        let text = format!(
            "name: {name}\nrun:\n  command: [\"/bin/true\"]\n  instances: {instances}\n\
             memory:\n  high: 48M\n  max: 96M\ntriggers:\n  pressure: {{some: 100ms, window: 1s}}\n"
        );
        parse(
            std::path::Path::new("/etc/oomguard/policies.d/t.yaml"),
            &text,
        )
        .unwrap()
    }

    #[test]
    fn a_dry_run_refuses_reloads_that_would_stop_workers() {
        let running: BTreeMap<String, usize> =
            [("web".to_string(), 2), ("jobs".to_string(), 1)].into();
        assert_eq!(
            dry_run_refusal(&running, &[policy("web", 2), policy("jobs", 1)]),
            None
        );
        assert_eq!(
            dry_run_refusal(
                &running,
                &[policy("web", 3), policy("jobs", 1), policy("new", 1)]
            ),
            None,
            "growing and adding stop nothing"
        );
        let why = dry_run_refusal(&running, &[policy("web", 1)]).unwrap();
        assert!(why.contains("jobs (removed)"), "{why}");
        assert!(why.contains("web (2 -> 1 instances)"), "{why}");
    }

    /// The reload task over a fake cgroup tree in a tempdir, with a real policy directory.
    #[tokio::test]
    async fn requests_queued_during_a_reload_are_answered_by_one_more() {
        if !nix::unistd::geteuid().is_root() {
            crate::testing::skip_without_root("needs root (policy files must be root's)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        std::fs::set_permissions(&policies, std::fs::Permissions::from_mode(0o755)).unwrap();
        let yaml =
            "run:\n  command: [\"/bin/sleep\", \"1000\"]\nmemory:\n  high: 48M\n  max: 96M\n\
                    triggers:\n  pressure: {some: 100ms, window: 1s}\n";
        let file = policies.join("web.yaml");
        std::fs::write(&file, yaml).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let root = Group::new(dir.path().join("oomguard"));
        root.create().unwrap();
        root.child("web").create().unwrap();
        root.child("web").write(SUBTREE_CONTROL, "").unwrap();
        root.child("web").child("0").create().unwrap();
        root.child("web")
            .child("0")
            .write(CGROUP_PROCS, "")
            .unwrap();
        let fleet = Arc::new(Fleet::new(root, Arc::new(EventLog::new())));
        let opts = Options {
            policies,
            socket: dir.path().join("oomguard.sock"),
            cgroup_root: None,
            dry_run: false,
            socket_group: None,
            admin_uids: vec![],
            state_dir: std::path::PathBuf::from("/nonexistent"),
            metrics_listen: None,
            stop_timeout: None,
        };
        let (closing_tx, closing) = watch::channel(false);
        let reloads = Reloads::spawn(fleet.clone(), opts, Arc::new(Mutex::new(())), closing);

        // A SIGHUP and five requests queue before the reload task runs (one thread): one
        // reload answers them all, so every reply says it added web. One reload per request
        // would have answered four of them "unchanged".
        reloads.signal();
        let replies = futures_util::future::join_all((0..5).map(|_| reloads.request())).await;
        for r in &replies {
            assert_eq!(
                r.as_ref().unwrap().added,
                vec!["web".to_string()],
                "{replies:?}"
            );
        }
        // A request after it gets a reload of its own, which finds web running.
        let again = reloads.request().await.unwrap();
        assert_eq!(again.unchanged, vec!["web".to_string()]);

        closing_tx.send_replace(true);
        assert_eq!(reloads.request().await, Err(ReloadError::ShuttingDown));
        fleet.stop_all().await;
    }
}
