//! `children.max` on a real kernel: a worker that forks more children than the cap gets leaves
//! for the cap and no more; the rest stay in the main leaf, and that is said once in status, in
//! an `unarmed` event, in the metrics and in the log. The same worker without the cap (the
//! default 64) gets a leaf for every child.

use std::fs;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::children::{log_count, pf, policy, procs_of, LOG};
use crate::harness::*;

const NOTE: &str = "children.max (3) reached";

/// `child-<pid>` leaves under pf/0, and the processes in its main leaf.
fn layout() -> (usize, Vec<u32>) {
    let g = instance_group("pf/0");
    let leaves = fs::read_dir(&g)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("child-"))
                .count()
        })
        .unwrap_or(0);
    (leaves, procs_of(&g.join("main")))
}

fn unarmed_events() -> Result<usize> {
    Ok(recent_events()?
        .iter()
        .filter(|e| e.instance == "pf/0" && e.action == "unarmed" && e.message.contains(NOTE))
        .count())
}

pub fn children_cap() -> Result<()> {
    make_ledger_dir()?;
    let _ = fs::remove_file(LOG);
    let capped =
        policy(&["--prefork", "5"], "{grace: 5s}").replace("children:\n", "children:\n  max: 3\n");
    ensure!(
        capped.contains("  max: 3\n"),
        "the policy has no children.max"
    );
    write_policy(POLICY_DIR, "pf", &capped)?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let main = daemon.wait_running(&["pf/0"], Duration::from_secs(20))?["pf/0"];

    let (leaves, in_main) = wait_until(
        "3 leaves, 2 children left in main",
        Duration::from_secs(10),
        || {
            let (leaves, in_main) = layout();
            (leaves == 3 && in_main.len() == 3).then_some((leaves, in_main))
        },
    )?;
    evidence("capped", format!("{leaves} leaves, main leaf {in_main:?}"));
    ensure!(
        in_main.contains(&main),
        "main {main} not in its leaf: {in_main:?}"
    );

    // Several rescans (every 2 s) later: still 3 leaves, and said once.
    sleep(Duration::from_secs(5));
    let (leaves, in_main) = layout();
    ensure!(
        leaves == 3 && in_main.len() == 3,
        "later: {leaves} leaves, main {in_main:?}"
    );
    let report = daemon.status()?;
    let st = pf(&report).context("pf/0")?;
    ensure!(
        st.children.len() == 3,
        "status lists {} children",
        st.children.len()
    );
    ensure!(
        st.unarmed
            .iter()
            .any(|u| u.starts_with("leaves beyond children.max: ") && u.contains(NOTE)),
        "status does not say the cap: {:?}",
        st.unarmed
    );
    let table = client(&["status"])?.text();
    ensure!(
        table.contains("pf/0: ! not armed: leaves beyond children.max"),
        "the status table does not say it:\n{table}"
    );
    let events = unarmed_events()?;
    ensure!(events == 1, "{events} unarmed events for the cap, want 1");
    let metrics = client(&["metrics"])?.text();
    ensure!(
        metrics.contains("oomguard_instance_unarmed{policy=\"pf\",index=\"0\"} 1"),
        "metrics: {:?}",
        metrics
            .lines()
            .filter(|l| l.contains("unarmed"))
            .collect::<Vec<_>>()
    );
    let logged = log_count("children.max (3) reached: child left in the main leaf");
    ensure!(logged == 1, "the log says the cap {logged} times, want 1");

    // Without the cap (the default, 64): the same worker's five children all get leaves.
    write_policy(
        POLICY_DIR,
        "pf",
        &policy(&["--prefork", "5"], "{grace: 5s}"),
    )?;
    let out = client(&["reload"])?;
    ensure!(out.status.success(), "reload: {}", out.summary());
    let out = client(&["restart", "pf/0"])?;
    ensure!(out.status.success(), "restart: {}", out.summary());
    let new = wait_manual_replacement(&mut daemon, "pf/0", main)?;
    let (leaves, in_main) = wait_until("5 leaves, main alone", Duration::from_secs(10), || {
        let (leaves, in_main) = layout();
        (leaves == 5 && in_main == vec![new]).then_some((leaves, in_main))
    })?;
    evidence(
        "uncapped",
        format!("{leaves} leaves, main leaf {in_main:?}"),
    );
    let report = daemon.status()?;
    let st = pf(&report).context("pf/0")?;
    ensure!(
        st.unarmed.is_empty(),
        "unarmed without the cap: {:?}",
        st.unarmed
    );
    let status = daemon.stop()?;
    ensure!(status.success(), "daemon exit {status}");
    Ok(())
}
