//! The shutdown sequence on the host against the fake cgroup tree grown with cgroup.events and
//! cgroup.kill: a small stand-in for the kernel answers cgroup.kill. The grace/kill path, a main
//! process that left its group, stray reaping with the policy's signal, and the error cases:
//! a cgroup.events that cannot be read is never taken for an empty group.

mod fake_tree;

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oomguard::cgroupfs::{Group, CGROUP_EVENTS, CGROUP_KILL, CGROUP_PROCS};
use oomguard::shutdown::{wait_empty, Emptiness};
use oomguard::supervisor::SavedState;
use oomguard::vocabulary::{Ending, InstanceState};

use fake_tree::*;

/// A process the test started, killed when the test ends (also on a failed assertion).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A worker that ignores SIGTERM (SIG_IGN survives exec).
const STUBBORN: &str = r#"["/bin/sh", "-c", "trap '' TERM; exec sleep 1000"]"#;

fn group_dir(dir: &Path, id: &str) -> PathBuf {
    dir.join("oomguard").join(id)
}

/// Plays the kernel's part of cgroup.kill for one group: once "1" is written, SIGKILLs `victim`
/// (None: a main process that left the group, which cgroup.kill cannot reach) and says
/// `populated 0`.
fn fake_kernel(group: PathBuf, victim: impl Fn() -> Option<u32> + Send + 'static) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if std::fs::read_to_string(group.join(CGROUP_KILL)).unwrap_or_default() == "1" {
                if let Some(pid) = victim() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::fs::write(group.join(CGROUP_EVENTS), "populated 0\n").unwrap();
                std::fs::write(group.join(CGROUP_KILL), "").unwrap();
            }
        }
    });
}

async fn stubborn_running(
    dir: &Path,
    name: &str,
) -> (std::sync::Arc<oomguard::supervisor::Fleet>, u32) {
    let fleet = fleet(dir, &[name]);
    let g = group_dir(dir, &format!("{name}/0"));
    std::fs::write(g.join(CGROUP_EVENTS), "populated 0\n").unwrap();
    std::fs::write(g.join(CGROUP_KILL), "").unwrap();
    fleet
        .start_policy(
            policy(name, STUBBORN, "restart:\n  grace: 300ms\n"),
            &SavedState::new(),
        )
        .unwrap();
    let id = format!("{name}/0");
    wait_for(&fleet, &id, "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    std::fs::write(g.join(CGROUP_EVENTS), "populated 1\n").unwrap();
    let pid = main_pid(&fleet, &id).unwrap();
    (fleet, pid)
}

#[tokio::test]
async fn a_worker_that_ignores_its_signal_is_killed_after_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, pid) = stubborn_running(dir.path(), "stubborn").await;
    fake_kernel(group_dir(dir.path(), "stubborn/0"), move || Some(pid));
    let msg = tokio::time::timeout(Duration::from_secs(20), fleet.restart("stubborn/0"))
        .await
        .expect("the restart returns")
        .unwrap();
    assert!(msg.contains("restarted"), "{msg}");
    assert!(!alive(pid), "the old worker is gone");
    let ev = restart_event(&fleet);
    assert!(
        matches!(ev.ending, Some(Ending::KilledAfterGrace { .. })),
        "{:?}",
        ev.ending
    );
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_main_process_that_left_its_group_is_killed_through_its_pidfd() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, pid) = stubborn_running(dir.path(), "escaper").await;
    // cgroup.kill empties the group but cannot reach the main process: it is elsewhere.
    fake_kernel(group_dir(dir.path(), "escaper/0"), || None);
    let msg = tokio::time::timeout(Duration::from_secs(20), fleet.restart("escaper/0"))
        .await
        .expect("a restart of a worker outside its group must not hang")
        .unwrap();
    assert!(msg.contains("restarted"), "{msg}");
    assert!(!alive(pid), "the escaped main process was killed");
    let ev = restart_event(&fleet);
    assert!(
        ev.message
            .contains(&format!("main pid {pid} left its group")),
        "{}",
        ev.message
    );
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_stray_of_a_known_policy_gets_that_policys_signal() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["web"]);
    fleet
        .start_policy(
            policy(
                "web",
                r#"["/bin/sleep", "1000"]"#,
                "restart:\n  signal: SIGUSR1\n  grace: 5s\n",
            ),
            &SavedState::new(),
        )
        .unwrap();
    // web/1 is past the policy's one instance and holds a process.
    let mut stray = std::process::Command::new("/bin/sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let g = group_dir(dir.path(), "web/1");
    std::fs::write(g.join(CGROUP_PROCS), format!("{}\n", stray.id())).unwrap();
    std::fs::write(g.join(CGROUP_EVENTS), "populated 1\n").unwrap();
    let found = fleet.reap_strays(false);
    assert!(found.iter().any(|s| s.path() == g), "{found:?}");
    let status = tokio::task::spawn_blocking(move || stray.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGUSR1), "{status:?}");
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_cgroup_events_that_cannot_be_read_is_not_empty() {
    let dir = tempfile::tempdir().unwrap();
    let g = Group::new(dir.path().join("g"));
    g.create().unwrap();
    // A directory where cgroup.events should be: it opens, but every read fails (EISDIR).
    std::fs::create_dir(g.file(CGROUP_EVENTS)).unwrap();
    let state = wait_empty(&g, Duration::from_millis(300)).await;
    assert!(matches!(state, Emptiness::Unknown(_)), "{state:?}");
    // No `populated` line: unknown too.
    let h = Group::new(dir.path().join("h"));
    h.create().unwrap();
    h.write(CGROUP_EVENTS, "frozen 0\n").unwrap();
    let state = wait_empty(&h, Duration::from_millis(100)).await;
    assert!(matches!(state, Emptiness::Unknown(_)), "{state:?}");
    // Populated until the limit: populated.
    h.write(CGROUP_EVENTS, "populated 1\n").unwrap();
    assert_eq!(
        wait_empty(&h, Duration::from_millis(100)).await,
        Emptiness::Populated
    );
    // Emptied during the wait.
    let file = h.file(CGROUP_EVENTS);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::fs::write(file, "populated 0\n").unwrap();
    });
    assert_eq!(
        wait_empty(&h, Duration::from_secs(5)).await,
        Emptiness::Empty
    );
    // A vanished group is the only other "empty".
    let gone = Group::new(dir.path().join("gone"));
    assert_eq!(
        wait_empty(&gone, Duration::from_millis(100)).await,
        Emptiness::Empty
    );
}

#[tokio::test]
async fn leftovers_are_killed_when_the_group_state_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["blind"]);
    let g = group_dir(dir.path(), "blind/0");
    std::fs::create_dir(g.join(CGROUP_EVENTS)).unwrap();
    std::fs::write(g.join(CGROUP_KILL), "").unwrap();
    fleet
        .start_policy(
            policy("blind", r#"["/bin/true"]"#, "restart:\n  grace: 100ms\n"),
            &SavedState::new(),
        )
        .unwrap();
    // Whether before the start or after the worker's exit: the group is killed, not assumed
    // empty.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(g.join(CGROUP_KILL)).unwrap() != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "cgroup.kill was never written for a group whose cgroup.events cannot be read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_groups_of_a_policy_that_failed_to_start_are_not_strays() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["web"]);
    let mut live = Reaped(
        std::process::Command::new("/bin/sleep")
            .arg("1000")
            .spawn()
            .unwrap(),
    );
    let g = group_dir(dir.path(), "web/0");
    std::fs::write(g.join(CGROUP_PROCS), format!("{}\n", live.0.id())).unwrap();
    std::fs::write(g.join(CGROUP_EVENTS), "populated 1\n").unwrap();
    // A valid policy whose user lookup fails at start (as a passing NSS failure would).
    let mut p = policy("web", r#"["/bin/sleep", "1000"]"#, "");
    p.run.user = Some("no-such-user-oomguard".into());
    assert!(fleet.start_policy(p, &SavedState::new()).is_err());
    let strays = fleet.reap_strays(false);
    assert!(strays.is_empty(), "{strays:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        live.0.try_wait().unwrap().is_none(),
        "the worker of a policy that failed to start was stopped"
    );
}
