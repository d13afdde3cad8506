//! `children:` with `restart.overlap` on a real kernel (issue 18, item 4): the test worker's
//! prefork mode restarted by `oomguard restart` starts a whole new generation of the server
//! beside the old one. The new main process runs in the other generation's `main` leaf and its
//! children get `child-<pid>` leaves there while the old generation still runs; the old one
//! drains and its generation group is removed; afterwards no process is in a group it does not
//! belong in and status shows the new children. Then the daemon is SIGKILLed during a second
//! overlap and started again: it adopts the younger generation's main process and its leaves and
//! drains the older generation. The old code refused this policy at load.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::children::{pf, policy, procs_of, LOG};
use crate::harness::*;

const ID: &str = "pf/0";

/// Every process in the instance's subtree, by the group (relative to the instance's group) it
/// is in.
fn placement() -> Vec<(String, u32)> {
    let home = instance_group(ID);
    let mut out = Vec::new();
    let mut stack = vec![home.clone()];
    while let Some(dir) = stack.pop() {
        let rel = dir
            .strip_prefix(&home)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        out.extend(procs_of(&dir).into_iter().map(|p| (rel.clone(), p)));
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    out.sort();
    out
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Waits until generation `gen` holds main `main` alone in its `main` leaf and `n` children of
/// it each in its own `child-<pid>` leaf, nothing anywhere else in the instance's subtree but
/// the processes of `other_ok` (the other generation, while it drains). Returns the children.
fn settled(gen: &str, main: u32, n: usize, timeout: Duration) -> Result<Vec<u32>> {
    let want_main = format!("{gen}/main");
    let found = wait_until(
        &format!("{n} children of {main} in {gen}'s leaves"),
        timeout,
        || {
            let p = placement();
            let mains: Vec<u32> = p
                .iter()
                .filter(|(g, _)| *g == want_main)
                .map(|(_, x)| *x)
                .collect();
            let kids: Vec<u32> = p
                .iter()
                .filter(|(g, pid)| *g == format!("{gen}/child-{pid}"))
                .map(|(_, x)| *x)
                .filter(|k| parent_of(*k) == Some(main))
                .collect();
            (mains == vec![main] && kids.len() == n).then_some(kids)
        },
    );
    if found.is_err() {
        evidence("placement", format!("{:?}", placement()));
    }
    found
}

/// Nothing of the instance outside generation `gen`'s `main` and `child-<pid>` leaves.
fn nothing_misplaced(gen: &str, main: u32) -> Result<()> {
    let p = placement();
    evidence("placement", format!("{p:?}"));
    let wrong: Vec<&(String, u32)> = p
        .iter()
        .filter(|(g, pid)| {
            !((*g == format!("{gen}/main") && *pid == main)
                || (*g == format!("{gen}/child-{pid}") && parent_of(*pid) == Some(main)))
        })
        .collect();
    ensure!(wrong.is_empty(), "processes in the wrong group: {wrong:?}");
    Ok(())
}

pub fn children_overlap() -> Result<()> {
    make_ledger_dir()?;
    let _ = fs::remove_file(LOG);
    let yaml = policy(&["--prefork", "3"], "{grace: 5s}").replace(
        "restart: {grace: 5s}\nchildren:",
        "restart: {grace: 10s, overlap: true, ready: 3s}\nchildren:",
    );
    ensure!(
        yaml.contains("overlap: true"),
        "the policy has no overlap: {yaml}"
    );
    write_policy(POLICY_DIR, "pf", &yaml)?;
    let check = oomguard(&[
        "check",
        "--cgroup-root",
        CGROUP_ROOT,
        &format!("{POLICY_DIR}/pf.yaml"),
    ])?;
    evidence("check", check.summary());
    ensure!(
        check.status.success(),
        "check refused children + overlap: {}",
        check.summary()
    );
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let m1 = daemon.wait_running(&[ID], Duration::from_secs(20))?[ID];
    let home = instance_group(ID);
    let old_kids = settled("gen-a", m1, 3, Duration::from_secs(15))?;
    evidence("generation a", format!("main {m1}, children {old_kids:?}"));
    ensure!(
        read_trimmed(&home.join("memory.max"))? == (640u64 << 20).to_string()
            && read_trimmed(&home.join("gen-a/memory.max"))? == (320u64 << 20).to_string(),
        "limits: the instance's group {} (want 2 x 320M), gen-a {} (want 320M)",
        read_trimmed(&home.join("memory.max"))?,
        read_trimmed(&home.join("gen-a/memory.max"))?
    );

    // The restart: its answer waits for restart.ready, so it runs in the background.
    let mut restart = restart_in_background(ID)?;
    let m2 = daemon.wait_status(
        "the new generation beside the old",
        Duration::from_secs(20),
        |r| {
            let i = pf(r)?;
            i.pids
                .first()
                .copied()
                .filter(|_| i.draining_pid == Some(m1))
        },
    )?;
    // While the old generation still runs (ready: 3 s), the new one's children get leaves.
    let new_kids = settled("gen-b", m2, 3, Duration::from_secs(10))?;
    let overlapping = old_kids.iter().all(|k| pid_alive(*k)) && pid_alive(m1);
    evidence(
        "during the overlap",
        format!("old {m1} {old_kids:?} alive {overlapping}; new {m2} {new_kids:?}"),
    );
    ensure!(
        overlapping,
        "the old generation did not run beside the new one"
    );
    let _ = restart.wait();
    wait_until("gen-a removed", Duration::from_secs(30), || {
        (!home.join("gen-a").exists()).then_some(())
    })?;
    ensure!(
        !pid_alive(m1) && old_kids.iter().all(|k| !pid_alive(*k)),
        "the old generation is still running"
    );
    let st = daemon.wait_status(
        "status with the new children",
        Duration::from_secs(10),
        |r| {
            pf(r).filter(|i| {
                i.pids.first() == Some(&m2)
                    && i.draining_pid.is_none()
                    && i.children.len() == 3
                    && i.children.iter().all(|c| new_kids.contains(&c.pid))
            })
        },
    )?;
    let leaves: BTreeSet<String> = st.children.iter().map(|c| c.leaf.clone()).collect();
    evidence("status children", format!("{leaves:?}"));
    for c in &st.children {
        ensure!(
            c.leaf == format!("gen-b/child-{}", c.pid) && c.memory_current.is_some(),
            "status child {} leaf {} memory {:?}",
            c.pid,
            c.leaf,
            c.memory_current
        );
    }
    ensure!(st.restarts == 1, "restarts {}", st.restarts);
    nothing_misplaced("gen-b", m2)?;
    let ev = recent_events()?
        .into_iter()
        .find(|e| e.action == "restart" && e.instance == ID)
        .context("no restart event")?;
    evidence(
        "restart event",
        format!("dead {:?} overlap {:?} ms", ev.dead_time_ms, ev.overlap_ms),
    );
    ensure!(
        ev.overlap_ms.is_some() && ev.replacement_pid == Some(m2),
        "the restart event is not an overlap's: {ev:?}"
    );

    // A daemon killed during the next overlap: the new one adopts the younger generation.
    let mut restart = restart_in_background(ID)?;
    let m3 = daemon.wait_status("the third generation", Duration::from_secs(20), |r| {
        let i = pf(r)?;
        i.pids
            .first()
            .copied()
            .filter(|_| i.draining_pid == Some(m2))
    })?;
    daemon.kill()?;
    let _ = restart.kill();
    let _ = restart.wait();
    ensure!(
        pid_alive(m2) && pid_alive(m3),
        "both generations should run after the daemon's kill"
    );
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let kept = daemon.wait_status("the adopted main", Duration::from_secs(40), |r| {
        pf(r)?.pids.first().copied()
    })?;
    evidence(
        "adopted after the daemon restart",
        format!("{kept} (m2 {m2}, m3 {m3})"),
    );
    ensure!(
        kept == m3,
        "adopted {kept}, want the younger generation's main {m3}"
    );
    wait_until(
        "the older generation drained",
        Duration::from_secs(30),
        || (!pid_alive(m2) && !home.join("gen-b").exists()).then_some(()),
    )?;
    let kids3 = settled("gen-a", m3, 3, Duration::from_secs(15))?;
    let st = daemon.wait_status(
        "status with the adopted children",
        Duration::from_secs(10),
        |r| pf(r).filter(|i| i.children.len() == 3),
    )?;
    ensure!(
        st.children
            .iter()
            .all(|c| kids3.contains(&c.pid) && c.leaf == format!("gen-a/child-{}", c.pid)),
        "status children after adoption: {:?}",
        st.children
    );
    nothing_misplaced("gen-a", m3)?;
    ensure!(
        !Path::new(&home).join("main").exists(),
        "a flat children layout appeared beside the generations"
    );
    daemon.stop()?;
    ensure!(
        !home.exists(),
        "the instance's group is left after the stop"
    );
    Ok(())
}
