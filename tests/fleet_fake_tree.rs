//! The instance state machine on the host, against a fake cgroup tree in a tempdir: real worker
//! processes, real signals, fake cgroup files. PSI and cgroup.events cannot be polled on plain
//! files, so what depends on the kernel's wake-ups is proven in the VM suite (tests/vm); this
//! covers the logic around it: manual restarts, respawn with backoff, the restart limit, reload
//! and stop.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oomguard::cgroupfs::{Group, CGROUP_PROCS, SUBTREE_CONTROL};
use oomguard::events::EventLog;
use oomguard::policy::{parse, Policy};
use oomguard::protocol::{Ending, InstanceState, InstanceStatus, Reason};
use oomguard::supervisor::{Fleet, SavedState};

fn policy(name: &str, command: &str, extra: &str) -> Policy {
    let text = format!(
        "name: {name}\nrun:\n  command: {command}\n  instances: 1\nmemory:\n  high: 48M\n  max: 96M\n\
         triggers:\n  pressure: {{some: 100ms, window: 1s}}\n{extra}"
    );
    parse(Path::new("/etc/oomguard/policies.d/test.yaml"), &text)
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// A fake tree: the root and policy groups with the files the kernel would create.
fn fleet(dir: &Path, names: &[&str]) -> Arc<Fleet> {
    let root = Group::new(dir.join("oomguard"));
    root.create().unwrap();
    for name in names {
        let g = root.child(name);
        g.create().unwrap();
        g.write(SUBTREE_CONTROL, "").unwrap();
        for index in 0..3 {
            let i = g.child(&index.to_string());
            i.create().unwrap();
            i.write(CGROUP_PROCS, "").unwrap();
        }
    }
    Arc::new(Fleet::new(root, Arc::new(EventLog::new())))
}

async fn wait_for(
    fleet: &Fleet,
    id: &str,
    what: &str,
    f: impl Fn(&InstanceStatus) -> bool,
) -> InstanceStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = fleet.status(Some(id)).unwrap();
        let st = report.policies[0].instances[0].clone();
        if f(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {id}: {what}; last {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn main_pid(fleet: &Fleet, id: &str) -> Option<u32> {
    let saved = fleet.saved_state();
    saved.get(id).and_then(|v| v.main_pid)
}

fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

#[tokio::test]
async fn manual_restart_signals_the_worker_and_respawns_it() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["sleeper"]);
    fleet
        .start_policy(
            policy("sleeper", r#"["/bin/sleep", "1000"]"#, ""),
            &SavedState::new(),
        )
        .unwrap();
    wait_for(&fleet, "sleeper/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let first = main_pid(&fleet, "sleeper/0").expect("a pid");
    // The worker placed itself in the (fake) group before exec.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("oomguard/sleeper/0/cgroup.procs")).unwrap(),
        "0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("oomguard/sleeper/0/memory.max")).unwrap(),
        "100663296"
    );

    let msg = fleet.restart("sleeper/0").await.unwrap();
    assert!(msg.contains("sleeper/0 restarted"), "{msg}");
    let st = wait_for(&fleet, "sleeper/0", "running again", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let second = main_pid(&fleet, "sleeper/0").unwrap();
    assert_ne!(first, second);
    assert!(!alive(first), "the old worker is gone");
    assert_eq!(st.restarts, 1);
    assert_eq!(st.last_restart_reason, Some(Reason::Manual));
    // memory.high was lifted for the grace period and is back to the policy's value.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("oomguard/sleeper/0/memory.high")).unwrap(),
        "50331648"
    );
    let ev = fleet
        .events()
        .last(10)
        .into_iter()
        .find(|e| e.action == "restart")
        .expect("a restart event");
    assert!(
        matches!(
            ev.ending,
            Some(Ending::Exited {
                signal: Some(15),
                ..
            })
        ),
        "{:?}",
        ev.ending
    );
    assert!(ev.message.contains("SIGTERM"), "{}", ev.message);

    fleet.stop_all().await;
    assert!(!alive(second));
    // (rmdir of the groups is proven in the VM: a fake tree's directories hold plain files.)
    assert!(
        fleet.status(Some("sleeper")).is_err(),
        "the policy is gone after stop"
    );
}

#[tokio::test]
async fn a_worker_that_exits_is_respawned_and_a_crash_loop_ends_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["crash"]);
    let limits =
        "restart:\n  backoff: {initial: 10ms, max: 40ms}\n  limit: {count: 3, within: 1h}\n";
    fleet
        .start_policy(
            policy("crash", r#"["/bin/false"]"#, limits),
            &SavedState::new(),
        )
        .unwrap();
    let st = wait_for(&fleet, "crash/0", "failed", |s| {
        s.state == InstanceState::Failed
    })
    .await;
    assert_eq!(
        st.restarts, 4,
        "three respawns, then the fourth exit fails it"
    );
    assert_eq!(st.last_restart_reason, Some(Reason::Exited));
    let events = fleet.events().last(20);
    assert_eq!(events.iter().filter(|e| e.action == "exit").count(), 4);
    let failed = events
        .iter()
        .find(|e| e.action == "failed")
        .expect("a failed event");
    assert!(
        failed.message.contains("oomguard restart crash/0"),
        "{}",
        failed.message
    );
    assert!(matches!(
        events[0].ending,
        Some(Ending::Exited { code: Some(1), .. })
    ));

    // An operator restart gives a failed instance a new start (and it fails again).
    fleet.restart("crash/0").await.unwrap();
    wait_for(&fleet, "crash/0", "failed again", |s| {
        s.state == InstanceState::Failed && s.restarts == 8
    })
    .await;
    fleet.stop_all().await;
}

#[tokio::test]
async fn reload_applies_limits_live_and_changes_instance_counts() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["web"]);
    let two = |high: &str| {
        let mut p = policy("web", r#"["/bin/sleep", "1000"]"#, "");
        p.run.instances = 2;
        p.memory.high = high.parse().unwrap();
        p
    };
    fleet.start_policy(two("48M"), &SavedState::new()).unwrap();
    wait_for(&fleet, "web/1", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let pid0 = main_pid(&fleet, "web/0").unwrap();
    let pid1 = main_pid(&fleet, "web/1").unwrap();

    let mut one = two("32M");
    one.run.instances = 1;
    let summary = fleet.reload(vec![one.clone()]).await;
    assert_eq!(summary.changed, vec!["web".to_string()]);
    let high = || std::fs::read_to_string(dir.path().join("oomguard/web/0/memory.high")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while high() != "33554432" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        high(),
        "33554432",
        "the new memory.high applied to the running worker"
    );
    assert_eq!(main_pid(&fleet, "web/0"), Some(pid0), "without a restart");
    assert!(!alive(pid1), "the extra instance was stopped");
    assert!(fleet.status(Some("web/1")).is_err());

    let summary = fleet.reload(vec![one]).await;
    assert_eq!(summary.unchanged, vec!["web".to_string()]);
    let summary = fleet.reload(vec![]).await;
    assert_eq!(summary.removed, vec!["web".to_string()]);
    assert!(!alive(pid0));
}

#[tokio::test]
async fn unknown_targets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &[]);
    assert!(fleet.status(Some("nope")).is_err());
    let err = fleet.restart("nope/0").await.unwrap_err();
    assert!(err.to_string().contains("oomguard status"), "{err}");
}

#[tokio::test]
async fn groups_no_policy_owns_are_found_as_strays() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["web", "gone"]);
    fleet
        .start_policy(
            policy("web", r#"["/bin/sleep", "1000"]"#, ""),
            &SavedState::new(),
        )
        .unwrap();
    // web has one instance: web/1 and web/2 (made by the fake tree) and all of `gone` are strays.
    let strays: Vec<String> = fleet
        .reap_strays()
        .iter()
        .map(|g| {
            g.path()
                .strip_prefix(dir.path().join("oomguard"))
                .unwrap()
                .display()
                .to_string()
        })
        .collect();
    assert_eq!(strays, vec!["gone/0", "gone/1", "gone/2", "web/1", "web/2"]);
    fleet.stop_all().await;
}

/// The memory trigger on a fake tree: memory.current written by the test stands in for the
/// kernel's. Below the threshold nothing happens; above it for `for`, the worker is restarted with
/// reason `memory` and the number that crossed the line in its event.
#[tokio::test]
async fn the_memory_trigger_restarts_only_above_its_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["mem"]);
    let current = dir.path().join("oomguard/mem/0/memory.current");
    std::fs::write(&current, "31457280").unwrap(); // 30M, under the 40M threshold
    let mut p = policy("mem", r#"["/bin/sleep", "1000"]"#, "");
    p.triggers.memory = Some(oomguard::policy::MemoryTrigger {
        above: 40 << 20,
        sustain: Duration::from_millis(1500),
    });
    fleet.start_policy(p, &SavedState::new()).unwrap();
    wait_for(&fleet, "mem/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let first = main_pid(&fleet, "mem/0").unwrap();
    // Several one-second samples below the line: no restart.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        main_pid(&fleet, "mem/0"),
        Some(first),
        "restarted below the threshold"
    );
    assert!(
        fleet.events().last(10).is_empty(),
        "{:?}",
        fleet.events().last(10)
    );

    // Above the line, but back under before `for` passed: still nothing.
    std::fs::write(&current, "52428800").unwrap(); // 50M
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&current, "31457280").unwrap();
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        main_pid(&fleet, "mem/0"),
        Some(first),
        "restarted on a short spike"
    );

    // Above the line and held: restarted, with the number in the event.
    std::fs::write(&current, "52428800").unwrap();
    let st = wait_for(&fleet, "mem/0", "restarted on memory", |s| s.restarts == 1).await;
    assert_eq!(st.last_restart_reason, Some(Reason::Memory));
    let ev = fleet
        .events()
        .last(10)
        .into_iter()
        .find(|e| e.action == "restart")
        .expect("a restart event");
    assert_eq!(ev.reason, Reason::Memory);
    assert!(
        ev.message.contains("50M") || ev.message.contains("50.0M"),
        "{}",
        ev.message
    );
    assert!(!alive(first), "the old worker was stopped");
    std::fs::write(&current, "0").unwrap();
    fleet.stop_all().await;
}
