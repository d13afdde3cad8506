//! `restart.overlap` and the restart's dead-time breakdown on the host, against the fake cgroup
//! tree: the replacement starts in the other generation leaf before the old worker is
//! signalled, both pids show during the overlap, the old leaf is removed; a plain restart's
//! event carries exit to exec; a daemon that finds both generations adopts the younger and
//! drains the older. The kernel's side (real groups, memory) is tests/vm/overlap.rs.

mod fake_tree;

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use oomguard::cgroupfs::{Group, CGROUP_PROCS, SUBTREE_CONTROL};
use oomguard::supervisor::SavedState;
use oomguard::vocabulary::InstanceState;

use fake_tree::*;

/// A worker that logs its start and its SIGTERM (with its pid) and takes 300 ms to drain.
fn worker(log: &Path) -> String {
    format!(
        r#"["/bin/sh", "-c", "echo start $$ >> {0}; trap 'echo term $$ >> {0}; sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done"]"#,
        log.display()
    )
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// q/0 with its two generation leaves, as the kernel creates them: subtree_control in the
/// instance's group, cgroup.procs in each leaf.
fn generations(d: &Path) -> Group {
    let home = Group::new(d.join("oomguard/q/0"));
    home.write(SUBTREE_CONTROL, "").unwrap();
    for leaf in ["gen-a", "gen-b"] {
        home.child(leaf).create().unwrap();
        home.child(leaf).write(CGROUP_PROCS, "").unwrap();
    }
    home
}

#[tokio::test]
async fn the_replacement_starts_before_the_old_worker_is_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("log");
    let fleet = fleet(d, &["q"]);
    let home = generations(d);
    let p = policy(
        "q",
        &worker(&log),
        "restart:\n  grace: 5s\n  overlap: true\n",
    );
    fleet.start_policy(p, &SavedState::new()).unwrap();
    wait_for(&fleet, "q/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let (a, b) = (home.child("gen-a"), home.child("gen-b"));
    let old = main_pid(&fleet, "q/0").unwrap();
    let _old = Killer(old);
    // The worker writes itself ("0") into the leaf it starts in: gen-a first.
    assert_eq!(a.read(CGROUP_PROCS).unwrap(), "0");
    assert_eq!(b.read(CGROUP_PROCS).unwrap(), "");
    assert_eq!(
        home.read("memory.max").unwrap().trim(),
        "201326592",
        "envelope: 2 x 96M"
    );

    let restart = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.restart("q/0").await })
    };
    // During the drain (300 ms): both pids in status, the replacement first.
    let during = wait_for(&fleet, "q/0", "overlapping", |s| s.draining_pid.is_some()).await;
    assert_eq!(during.draining_pid, Some(old));
    assert_eq!(during.pids.len(), 2, "{during:?}");
    assert_eq!(during.pids[1], old);
    let new = during.pids[0];
    let _guard = Killer(new);
    assert_eq!(
        b.read(CGROUP_PROCS).unwrap(),
        "0",
        "the replacement went to gen-b"
    );
    restart.await.unwrap().unwrap();

    let after = wait_for(&fleet, "q/0", "one worker again", |s| {
        s.state == InstanceState::Running && s.draining_pid.is_none()
    })
    .await;
    assert_eq!(after.pids, vec![new]);
    // (Removing the drained leaf is proven in the VM: rmdir of a fake group with files fails.)
    // Make before break: the replacement started before the old worker got its signal.
    let log = lines(&log);
    let started = log.iter().position(|l| *l == format!("start {new}"));
    let termed = log.iter().position(|l| *l == format!("term {old}"));
    assert!(
        started.is_some() && termed.is_some() && started < termed,
        "{log:?}"
    );
    let ov = event(&fleet, "overlap").await;
    assert_eq!(ov.replacement_pid, Some(new));
    let ev = restart_event(&fleet);
    assert!(ov.seq < ev.seq);
    assert_eq!(ev.dead_time_ms, Some(0), "{ev:?}");
    assert_eq!(ev.exit_to_exec_ms, None);
    assert_eq!(ev.replacement_pid, Some(new));
    let overlap = ev.overlap_ms.expect("overlap_ms");
    let drain = ev.signal_to_exit_ms.expect("signal_to_exit_ms");
    assert!(overlap >= drain, "the overlap covers the drain: {ev:?}");
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_plain_restart_event_says_exit_to_exec() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fleet = fleet(d, &["p"]);
    let p = policy("p", r#"["/bin/sleep", "1000"]"#, "restart:\n  grace: 5s\n");
    fleet.start_policy(p, &SavedState::new()).unwrap();
    wait_for(&fleet, "p/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    fleet.restart("p/0").await.unwrap();
    // The answer comes once the replacement runs, so the event is already out.
    let ev = restart_event(&fleet);
    let new = main_pid(&fleet, "p/0").unwrap();
    let _guard = Killer(new);
    assert_eq!(ev.replacement_pid, Some(new), "{ev:?}");
    assert_eq!(ev.overlap_ms, None);
    assert!(ev.exit_to_exec_ms.is_some() && ev.dead_time_ms == ev.exit_to_exec_ms);
    assert!(!Group::new(d.join("oomguard/p/0/gen-a")).exists());
    fleet.stop_all().await;
}

#[tokio::test]
async fn stop_and_reload_are_served_while_the_replacement_waits_for_ready() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let log = d.join("log");
    let fleet = fleet(d, &["q"]);
    generations(d);
    let with = |high: &str| {
        let mut p = policy(
            "q",
            &worker(&log),
            "restart:\n  grace: 5s\n  overlap: true\n  ready: 10m\n",
        );
        p.memory.high = high.parse().unwrap();
        p
    };
    fleet.start_policy(with("48M"), &SavedState::new()).unwrap();
    wait_for(&fleet, "q/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    let old = main_pid(&fleet, "q/0").unwrap();
    let _old = Killer(old);
    let restart = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.restart("q/0").await })
    };
    // The replacement runs and the old worker waits for restart.ready (10 minutes).
    let during = wait_for(&fleet, "q/0", "overlapping", |s| s.draining_pid.is_some()).await;
    let new = during.pids[0];
    let _new = Killer(new);

    // Watchdogs, not timing checks: without serving commands both would wait the 10 minutes.
    let summary = tokio::time::timeout(Duration::from_secs(30), fleet.reload(vec![with("40M")]))
        .await
        .expect("a reload during the ready wait does not wait for it")
        .unwrap();
    assert_eq!(summary.changed, vec!["q".to_string()]);
    assert!(alive(old) && alive(new), "the reload stopped nobody");
    tokio::time::timeout(Duration::from_secs(30), fleet.stop_all())
        .await
        .expect("a stop during the ready wait does not wait for it");
    assert!(!alive(old), "the old generation was stopped");
    assert!(!alive(new), "the replacement was stopped");
    // Both got their graceful signal (the worker logs it), not only the kill after the grace.
    let log = lines(&log);
    for pid in [old, new] {
        assert!(log.contains(&format!("term {pid}")), "{pid}: {log:?}");
    }
    let answer = restart.await.unwrap();
    assert!(answer.is_err(), "the restart was not finished: {answer:?}");
}

/// SIGKILLs a test's worker when the test ends, passed or not: the fake tree cannot.
struct Killer(u32);

impl Drop for Killer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0 as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// A process in a fake leaf (the test's child: reaped when it ends).
fn placed(leaf: &Group) -> Child {
    leaf.create().unwrap();
    let c = Command::new("/bin/sleep").arg("1000").spawn().unwrap();
    leaf.write(CGROUP_PROCS, &c.id().to_string()).unwrap();
    c
}

#[tokio::test]
async fn a_daemon_restarted_mid_overlap_adopts_the_younger_and_drains_the_older() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fleet = fleet(d, &["q"]);
    let home = populated_home(d);
    let (older, younger) = older_and_younger(&home.child("gen-b"), &home.child("gen-a"));
    keeps_the_younger(&fleet, older, younger, "").await;
}

/// Policy `q`'s instance group as the kernel shows it with workers in its leaves (what makes
/// the daemon adopt).
fn populated_home(d: &std::path::Path) -> Group {
    let home = Group::new(d.join("oomguard/q/0"));
    home.write(SUBTREE_CONTROL, "memory pids").unwrap();
    home.write(oomguard::cgroupfs::CGROUP_EVENTS, "populated 1\n")
        .unwrap();
    home
}

/// A process in `older`, then one clearly younger in `younger` (/proc's start time counts clock
/// ticks of 10 ms).
fn older_and_younger(older: &Group, younger: &Group) -> (Child, Child) {
    let first = placed(older);
    std::thread::sleep(Duration::from_millis(50));
    (first, placed(younger))
}

/// Starts policy `q` with overlap (and `extra`) over the two generations `older` and `younger`
/// left in its group: the younger is adopted, the older drained.
async fn keeps_the_younger(
    fleet: &std::sync::Arc<oomguard::supervisor::Fleet>,
    mut older: std::process::Child,
    mut younger: std::process::Child,
    extra: &str,
) {
    let _guards = (Killer(older.id()), Killer(younger.id()));
    let p = policy(
        "q",
        r#"["/bin/sleep", "1000"]"#,
        &format!("restart:\n  grace: 5s\n  overlap: true\n{extra}"),
    );
    fleet.start_policy(p, &SavedState::new()).unwrap();
    let st = wait_for(fleet, "q/0", "one worker", |s| {
        s.state == InstanceState::Running && s.draining_pid.is_none()
    })
    .await;
    // (pids may still list the older one: a fake cgroup.procs is not emptied by its exit.)
    assert_eq!(st.pids[0], younger.id(), "the younger generation is kept");
    let status = tokio::task::spawn_blocking(move || older.wait()).await;
    assert!(status.unwrap().is_ok(), "the older generation was drained");
    assert!(alive(younger.id()));
    fleet.stop_all().await;
    let _ = younger.kill();
    let _ = younger.wait();
}

/// A prefork server's generations (`children:` with overlap): each main process in its
/// generation's own `main` leaf. The daemon finds both, adopts the younger main from its `main`
/// leaf and drains the older generation (before issue 18 an inner generation's empty
/// cgroup.procs hid the worker).
#[tokio::test]
async fn a_prefork_generation_is_adopted_from_its_main_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let fleet = fleet(d, &["q"]);
    let home = populated_home(d);
    for gen in ["gen-a", "gen-b"] {
        home.child(gen).create().unwrap();
        home.child(gen)
            .write(SUBTREE_CONTROL, "memory pids")
            .unwrap();
        home.child(gen).write(CGROUP_PROCS, "").unwrap();
    }
    let (older, younger) = older_and_younger(
        &home.child("gen-b").child("main"),
        &home.child("gen-a").child("main"),
    );
    let children =
        "children:\n  memory: {high: 32M, max: 64M}\n  triggers: {memory: {above: 40M}}\n";
    keeps_the_younger(&fleet, older, younger, children).await;
}
