//! `children:` on a fake cgroup tree: the layout (main leaf, a leaf per child with the child's
//! limits), and a child over its memory trigger recycled alone through its pidfd, with the event
//! naming it. The files the kernel would keep (cgroup.procs, memory.current) are written by the
//! test; the processes are real.

mod fake_tree;

use std::time::{Duration, Instant};

use fake_tree::*;
use oomguard::cgroupfs::{CGROUP_PROCS, SUBTREE_CONTROL};
use oomguard::supervisor::SavedState;
use oomguard::vocabulary::{Ending, InstanceState, Reason};

const CHILDREN: &str = "children:\n  memory: {high: 32M, max: 64M}\n  triggers: {memory: {above: 40M}}\n  restart: {grace: 2s}\n";

/// The main process's children, from /proc (what the kernel's cgroup.procs would also list).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A fleet on a fake tree running `pf` (sh with two sleeping children) with `children`, the
/// children listed in main's cgroup.procs as the kernel would: (tempdir, fleet, instance group
/// path, main pid, children).
async fn started(
    children: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<oomguard::supervisor::Fleet>,
    std::path::PathBuf,
    u32,
    Vec<u32>,
) {
    let dir = tempfile::tempdir().unwrap();
    let fleet = fleet(dir.path(), &["pf"]);
    let g = dir.path().join("oomguard/pf/0");
    std::fs::write(g.join(SUBTREE_CONTROL), "").unwrap();
    // The kernel creates these files with the group; oomguard makes the `main` leaf itself.
    std::fs::create_dir(g.join("main")).unwrap();
    std::fs::write(g.join("main").join(CGROUP_PROCS), "").unwrap();
    let p = policy(
        "pf",
        r#"["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"]"#,
        children,
    );
    fleet.start_policy(p, &SavedState::new()).unwrap();
    wait_for(&fleet, "pf/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let main = main_pid(&fleet, "pf/0").unwrap();
    // The worker wrote itself ("0") into the main leaf's cgroup.procs between fork and exec.
    assert_eq!(
        std::fs::read_to_string(g.join("main").join(CGROUP_PROCS)).unwrap(),
        "0",
        "the worker starts in the main leaf"
    );
    // The kernel would list the children in main's cgroup.procs until they are moved.
    let deadline = Instant::now() + Duration::from_secs(5);
    let kids = loop {
        let k = children_of(main);
        if k.len() == 2 || Instant::now() > deadline {
            break k;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(kids.len(), 2, "sh forked two sleeps");
    let procs: Vec<String> = std::iter::once(main)
        .chain(kids.clone())
        .map(|p| p.to_string())
        .collect();
    std::fs::write(g.join("main").join(CGROUP_PROCS), procs.join("\n")).unwrap();
    (dir, fleet, g, main, kids)
}

/// Waits for the first child recycle: the instance's status then, and the event.
async fn recycled(
    fleet: &oomguard::supervisor::Fleet,
) -> (
    oomguard::protocol::InstanceStatus,
    oomguard::protocol::EventRecord,
) {
    let st = wait_for(fleet, "pf/0", "a child recycled", |s| s.child_recycles == 1).await;
    let ev = fleet
        .events()
        .last(10)
        .into_iter()
        .find(|e| e.action == "child_recycle")
        .expect("a child_recycle event");
    (st, ev)
}

#[tokio::test]
async fn a_child_over_its_trigger_is_recycled_alone_in_its_leaf() {
    let (_dir, fleet, g, main, kids) = started(CHILDREN).await;
    let st = wait_for(&fleet, "pf/0", "two children in leaves", |s| {
        s.children.len() == 2
    })
    .await;
    for k in &kids {
        let leaf = g.join(format!("child-{k}"));
        assert!(st
            .children
            .iter()
            .any(|c| c.pid == *k && c.leaf == format!("child-{k}")));
        assert_eq!(
            std::fs::read_to_string(leaf.join(CGROUP_PROCS)).unwrap(),
            k.to_string()
        );
        assert_eq!(
            std::fs::read_to_string(leaf.join("memory.max"))
                .unwrap()
                .trim(),
            (64u64 << 20).to_string()
        );
    }

    // One child over its trigger: recycled alone.
    let (offender, sibling) = (kids[0], kids[1]);
    std::fs::write(
        g.join(format!("child-{offender}/memory.current")),
        (50u64 << 20).to_string(),
    )
    .unwrap();
    std::fs::write(
        g.join(format!("child-{sibling}/memory.current")),
        (1u64 << 20).to_string(),
    )
    .unwrap();
    let (st, ev) = recycled(&fleet).await;
    assert_eq!(ev.child_pid, Some(offender));
    assert_eq!(
        ev.child_leaf.as_deref(),
        Some(format!("child-{offender}").as_str())
    );
    assert_eq!(ev.reason, Reason::Memory);
    assert_eq!(ev.memory_current, Some(50 << 20));
    assert!(
        matches!(ev.ending, Some(Ending::Exited { .. })),
        "{:?}",
        ev.ending
    );
    assert!(
        ev.message.contains(&format!("child pid {offender}")),
        "{}",
        ev.message
    );
    assert!(ends(offender).await, "the offender got its SIGTERM");
    assert!(alive(sibling), "the sibling was touched");
    assert_eq!(
        (st.restarts, main_pid(&fleet, "pf/0")),
        (0, Some(main)),
        "the instance was restarted"
    );
    assert!(
        st.children.iter().all(|c| c.pid != offender),
        "{:?}",
        st.children
    );

    fleet.stop_all().await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sibling as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// `signal: none`: the child is not signalled, only given its memory.high back and waited for;
/// one that does not end within the grace is killed with its leaf (the freeze fallback on a
/// fake tree, whose leaf has no cgroup.kill).
#[tokio::test]
async fn signal_none_waits_then_kills_the_leaf() {
    let none = CHILDREN.replace(
        "restart: {grace: 2s}",
        "restart: {signal: none, grace: 500ms}",
    );
    let (_dir, fleet, g, _main, kids) = started(&none).await;
    let _ = wait_for(&fleet, "pf/0", "two children in leaves", |s| {
        s.children.len() == 2
    })
    .await;
    let offender = kids[0];
    std::fs::write(
        g.join(format!("child-{offender}/memory.current")),
        (50u64 << 20).to_string(),
    )
    .unwrap();
    std::fs::write(g.join(format!("child-{}/memory.current", kids[1])), "0").unwrap();
    let (_, ev) = recycled(&fleet).await;
    assert_eq!(ev.child_pid, Some(offender));
    assert!(
        matches!(ev.ending, Some(Ending::KilledAfterGrace { .. })),
        "{:?}",
        ev.ending
    );
    assert_eq!(
        std::fs::read_to_string(g.join(format!("child-{offender}/memory.high")))
            .unwrap()
            .trim(),
        "max",
        "memory.high lifted for the grace"
    );
    assert!(ends(offender).await, "killed after the grace");
    fleet.stop_all().await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(kids[1] as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A child placed after the last status sample (every replacement of a recycled worker is)
/// still shows its leaf's figures on the next request: status used to answer `null` for them
/// until a later request found them in a newer sample, which a script polling every few
/// seconds never did.
#[tokio::test]
async fn status_shows_the_figures_of_a_child_placed_after_the_last_sample() {
    let (_dir, fleet, g, _main, kids) = started(CHILDREN).await;
    // A sample taken now, before the children are in their leaves.
    let _ = fleet.status(Some("pf/0")).unwrap();
    wait_for(&fleet, "pf/0", "two children in leaves", |s| {
        s.children.len() == 2
    })
    .await;
    for k in &kids {
        std::fs::write(
            g.join(format!("child-{k}/memory.current")),
            (3u64 << 20).to_string(),
        )
        .unwrap();
    }
    let report = fleet.status(Some("pf/0")).unwrap();
    let st = &report.policies[0].instances[0];
    for c in &st.children {
        assert_eq!(c.memory_current, Some(3 << 20), "{c:?}");
        assert_eq!(c.memory_max, Some(64 << 20), "{c:?}");
    }
    fleet.stop_all().await;
    for k in kids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(k as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A worker that ended on its own is done with: its children are neither watched nor listed
/// through the backoff before the next start (their pids may be anybody's by then).
#[tokio::test]
async fn the_children_of_a_worker_that_ended_go_with_it() {
    let extra = format!("{CHILDREN}restart:\n  backoff: {{initial: 1h, max: 1h}}\n");
    let (_dir, fleet, _g, main, kids) = started(&extra).await;
    wait_for(&fleet, "pf/0", "two children in leaves", |s| {
        s.children.len() == 2
    })
    .await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(main as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_for(&fleet, "pf/0", "the backoff", |s| {
        s.state == InstanceState::Backoff
    })
    .await;
    // The fake tree's cgroup.kill kills nobody: the sleeps are still there.
    for k in &kids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*k as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        st.children.is_empty(),
        "the ended worker's children are still listed in the backoff: {:?}",
        st.children.iter().map(|c| c.pid).collect::<Vec<_>>()
    );
}
