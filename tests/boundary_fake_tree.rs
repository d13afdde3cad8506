//! The memory.high boundary's wiring on the host, against a fake cgroup tree: the sentinel
//! written as the group's memory.high while status keeps the configured one, a crossing by
//! anonymous memory restarting the instance (reason `boundary`, the configured high written
//! back first), and page cache reclaimed instead. memory.events on a plain file is re-read every
//! 100 ms instead of polled (crate::watch), which is enough to drive the decision here; the real
//! kernel's wake-ups are proven in tests/vm/boundary.rs.

mod fake_tree;

use std::path::Path;

use oomguard::supervisor::SavedState;
use oomguard::vocabulary::{InstanceState, Reason};

use fake_tree::*;

const HIGH: u64 = 48 << 20;
/// Before any restart was measured the margin is the ceiling, high/16.
const SENTINEL: u64 = HIGH - HIGH / 16;

/// The files the boundary reads, as the kernel would show a group holding `anon` + `file`.
fn set_memory(group: &Path, anon: u64, file: u64, high_events: u64) {
    let w = |name: &str, text: String| std::fs::write(group.join(name), text).unwrap();
    w("memory.current", format!("{}\n", anon + file));
    w(
        "memory.stat",
        format!("anon {anon}\nfile {file}\nkernel 0\nshmem 0\n"),
    );
    w(
        "memory.events.local",
        format!("low 0\nhigh {high_events}\n"),
    );
    // The watched file: its change is the wake-up.
    w(
        "memory.events",
        format!("low 0\nhigh {high_events}\nmax 0\noom 0\noom_kill 0\n"),
    );
}

fn kernel_high(group: &Path) -> u64 {
    std::fs::read_to_string(group.join("memory.high"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

async fn started(
    dir: &Path,
) -> (
    std::sync::Arc<oomguard::supervisor::Fleet>,
    std::path::PathBuf,
) {
    let fleet = fleet(dir, &["edge"]);
    let group = dir.join("oomguard/edge/0");
    set_memory(&group, 1 << 20, 0, 0);
    std::fs::write(group.join("memory.reclaim"), "").unwrap();
    fleet
        .start_policy(
            policy("edge", r#"["/bin/sleep", "1000"]"#, ""),
            &SavedState::new(),
        )
        .unwrap();
    let st = wait_for(&fleet, "edge/0", "running with a sentinel", |s| {
        // memory_high comes from the sample cache (up to 2 s old: crate::sampler).
        s.state == InstanceState::Running && s.boundary.is_some() && s.memory_high.is_some()
    })
    .await;
    assert_eq!(
        st.memory_high,
        Some(HIGH),
        "status shows the configured high"
    );
    assert_eq!(st.boundary, Some(SENTINEL));
    assert_eq!(
        kernel_high(&group),
        SENTINEL,
        "the kernel holds the sentinel"
    );
    (fleet, group)
}

#[tokio::test]
async fn anonymous_growth_past_the_sentinel_restarts_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, group) = started(dir.path()).await;
    let first = main_pid(&fleet, "edge/0").unwrap();
    set_memory(&group, SENTINEL + (1 << 20), 0, 1);
    let st = wait_for(&fleet, "edge/0", "restarted", |s| s.restarts == 1).await;
    assert_eq!(st.last_restart_reason, Some(Reason::Boundary));
    // The restart is counted at the signal; its event comes once the worker has exited.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !fleet
        .events()
        .last(10)
        .iter()
        .any(|e| e.action == "restart")
    {
        assert!(std::time::Instant::now() < deadline, "no restart event");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ev = restart_event(&fleet);
    assert_eq!(ev.reason, Reason::Boundary);
    assert!(
        ev.message.contains("memory.high boundary: owned 46M")
            && ev
                .message
                .contains("reached the sentinel 45M (memory.high 48M minus a margin of 3M)"),
        "{}",
        ev.message
    );
    assert!(!alive(first) || main_pid(&fleet, "edge/0") != Some(first));
    fleet.stop_all().await;
}

#[tokio::test]
async fn page_cache_past_the_sentinel_is_reclaimed_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (fleet, group) = started(dir.path()).await;
    set_memory(&group, 2 << 20, SENTINEL, 1);
    // The reclaim request is the sign the crossing was decided.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let asked = std::fs::read_to_string(group.join("memory.reclaim")).unwrap();
        if !asked.is_empty() {
            let bytes: u64 = asked.trim().parse().unwrap();
            // Back down to a margin under the sentinel.
            assert_eq!(bytes, (2 << 20) + SENTINEL - (SENTINEL - HIGH / 16));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no memory.reclaim written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let st = fleet.status(Some("edge/0")).unwrap().policies[0].instances[0].clone();
    assert_eq!(st.restarts, 0, "page cache never restarts a worker");
    assert_eq!(kernel_high(&group), SENTINEL, "still armed");
    fleet.stop_all().await;
}
