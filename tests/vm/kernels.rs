//! What differs between the kernels of the matrix (`tests/vm/run.sh --matrix`): the kill fallback
//! for kernels without cgroup.kill (5.10), which must reach the groups a worker made below its own.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use crate::harness::*;

/// A root worker that ignores SIGTERM, makes a group `sub` below its own instance group and moves
/// a forking child into it (a leaf without controllers: the instance group enables none for its
/// children, so the "no internal processes" rule does not apply). A manual restart runs out of
/// grace: the daemon's kill must take the child in `sub` and its forks too. The daemon runs with
/// OOMGUARD_TEST_NO_CGROUP_KILL=1, so the freeze + SIGKILL fallback runs on every kernel, as it
/// does on 5.10 for real.
pub fn kill_fallback() -> Result<()> {
    let script = "/tmp/kf-worker.sh";
    fs::write(
        script,
        "g=/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/self/cgroup)\n\
         mkdir -p \"$g/sub\"\n\
         trap '' TERM\n\
         sh -c \"echo \\$\\$ > $g/sub/cgroup.procs; while :; do sleep 1; done\" &\n\
         exec sleep 100000\n",
    )?;
    set_mode(Path::new(script), 0o755)?;
    write_policy(
        POLICY_DIR,
        "kf",
        &format!(
            "run:\n  command: [\"/bin/sh\", \"{script}\"]\n  instances: 1\n\
             memory:\n  high: 48M\n  max: 96M\n\
             triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\n\
             restart:\n  grace: 2s\n"
        ),
    )?;
    std::env::set_var("OOMGUARD_TEST_NO_CGROUP_KILL", "1");
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let old = daemon.wait_running(&["kf/0"], Duration::from_secs(20))?["kf/0"];
    let group = instance_group("kf/0");
    let sub = group.join("sub");
    evidence("kernel has cgroup.kill", group.join("cgroup.kill").exists());
    evidence(
        "kf/0 subtree_control",
        read_trimmed(&group.join("cgroup.subtree_control"))?,
    );
    let in_sub = wait_until("a process in kf/0/sub", Duration::from_secs(15), || {
        let procs = procs(&sub).ok()?;
        (!procs.is_empty()).then_some(procs)
    })?;
    evidence("pids in kf/0 / kf/0/sub", format!("{old} / {in_sub:?}"));

    let asked = Instant::now();
    let out = client(&["restart", "kf/0"])?;
    evidence("restart kf/0", out.summary());
    ensure!(
        out.status.success(),
        "`oomguard restart kf/0` failed: {}",
        out.summary()
    );
    let mut old_pids = in_sub.clone();
    old_pids.push(old);
    // Grace 2 s, then the kill: generous bound, a watchdog only.
    let left = wait_until("every old pid to be gone", Duration::from_secs(20), || {
        old_pids.iter().all(|p| !pid_alive(*p)).then_some(())
    });
    evidence("old pids gone after", format!("{:?}", asked.elapsed()));
    left.with_context(|| {
        let alive: Vec<_> = old_pids.iter().filter(|p| pid_alive(**p)).collect();
        format!(
            "still alive after the restart: {alive:?}; kf/0/sub holds {:?}",
            procs(&sub).unwrap_or_default()
        )
    })?;

    wait_manual_replacement(&mut daemon, "kf/0", old)?;
    let log = fs::read_to_string(DAEMON_LOG)?;
    let said = log
        .lines()
        .find(|l| l.contains("killing groups by freezing the subtree"));
    evidence("fallback log line", said.unwrap_or("(none)"));
    ensure!(
        said.is_some(),
        "the daemon never said it used the kill fallback"
    );
    // The freeze of a few tasks must settle well within the fallback's 100 ms bound.
    let unsettled = log.lines().find(|l| l.contains("did not report frozen"));
    ensure!(
        unsettled.is_none(),
        "the freeze did not settle: {unsettled:?}"
    );

    // A stop kills the new worker's subtree the same way and removes the groups, `sub` included.
    let status = daemon.stop()?;
    evidence("daemon exit", status);
    ensure!(status.success(), "the daemon exited with {status}");
    let root_events =
        fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.events")).unwrap_or_default();
    ensure!(
        !root_events.contains("populated 1"),
        "processes left under {CGROUP_ROOT} after the stop: {root_events:?}"
    );
    evidence(
        "kf/0 after the stop",
        if group.exists() {
            "still there"
        } else {
            "removed"
        },
    );
    Ok(())
}

fn procs(group: &Path) -> Result<Vec<u32>> {
    Ok(read_trimmed(&group.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}
