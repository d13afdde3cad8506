//! The instance's boundary with `children:` (the envelope): children that leak together cross the
//! instance's sentinel before any child reaches its own, and the biggest child is recycled, not
//! the whole server; observe mode reports the child it would recycle; a main process that is the
//! one growing restarts the whole instance.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::Reason;

use crate::children::{pf, start_policy, wait_restarted, LOG};
use crate::harness::*;

/// Instance 96M/192M (its sentinel 90M), children 64M/128M (their sentinels 60M), no memory
/// triggers: both boundaries are armed, as `oomguard exec --children` makes them.
fn policy(worker_args: &[&str], mode: &str) -> String {
    let mut args = vec!["--children-log", LOG, "--job-ms", "50"];
    args.extend_from_slice(worker_args);
    format!(
        "name: pf\nmode: {mode}\nrun:\n  command: {}\nmemory: {{high: 96M, max: 192M}}\n\
         triggers: {{pressure: {{some: 200ms, window: 2s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
         children:\n  memory: {{high: 64M, max: 128M}}\n\
         \x20 triggers: {{pressure: {{some: 200ms, window: 2s, for: 2s}}}}\n\
         \x20 restart: {{signal: SIGTERM, grace: 5s}}\n",
        worker_command(&args)
    )
}

fn start(args: &[&str], mode: &str) -> Result<(Daemon, u32, u64)> {
    start_policy(&policy(args, mode))
}

/// Three children leaking 4 MB/s each: together they reach the instance's 90M sentinel with
/// about 29M each, half their own.
const THREE_LEAKING: [&str; 6] = [
    "--prefork",
    "3",
    "--leak-slots",
    "3",
    "--leak-mb-per-s",
    "4",
];

fn at_the_instance(e: &EventRecord, action: &str) -> bool {
    e.action == action && e.message.contains("instance boundary crossed")
}

pub fn children_envelope() -> Result<()> {
    child_first()?;
    observed()?;
    main_grows()
}

/// Three recycles at the instance's boundary (the sentinel re-armed after each), reason
/// `boundary`, each of the child that owned the most; the main process and the instance stay.
fn child_first() -> Result<()> {
    let (mut daemon, main, oom_before) = start(&THREE_LEAKING, "enforce")?;
    let recycles = wait_until(
        "3 child recycles at the instance's boundary",
        Duration::from_secs(90),
        || {
            let r: Vec<EventRecord> = recent_events()
                .ok()?
                .into_iter()
                .filter(|e| at_the_instance(e, "child_recycle"))
                .collect();
            (r.len() >= 3).then_some(r)
        },
    );
    let all = recent_events()?;
    for e in all.iter().filter(|e| e.action != "child_recycle") {
        evidence(
            "event",
            format!("{} {:?}: {}", e.action, e.reason, e.message),
        );
    }
    let recycles = recycles?;
    for e in &recycles {
        evidence("recycled at the instance", &e.message);
        ensure!(e.reason == Reason::Boundary, "reason {:?}", e.reason);
        ensure!(
            e.message.contains("the biggest of 3 children"),
            "the recycle does not say it took the biggest: {}",
            e.message
        );
        ensure!(
            e.child_pid.is_some_and(|p| p != main),
            "child pid {:?}",
            e.child_pid
        );
    }
    let said = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    let line = said
        .lines()
        .find(|l| l.contains("instance boundary crossed: recycling child"))
        .context("no log line for the recycle at the instance's boundary")?;
    evidence("log", line);
    ensure!(
        !all.iter()
            .any(|e| e.action == "restart" || e.action == "child_escalation"),
        "the instance was restarted"
    );
    let st = pf(&daemon.status()?).context("pf/0")?;
    ensure!(
        st.pids.first() == Some(&main) && st.restarts == 0,
        "the instance was restarted: pids {:?}, restarts {}",
        st.pids,
        st.restarts
    );
    let ooms = vmstat_oom_kill()? - oom_before;
    ensure!(ooms == 0, "{ooms} kernel OOM kills");
    daemon.stop()?;
    Ok(())
}

/// Observe mode: the child it would recycle is reported (`would_recycle`), nothing is done.
fn observed() -> Result<()> {
    let (mut daemon, main, _) = start(&THREE_LEAKING, "observe")?;
    let ev = wait_until(
        "a would_recycle at the instance's boundary",
        Duration::from_secs(60),
        || {
            recent_events()
                .ok()?
                .into_iter()
                .find(|e| at_the_instance(e, "would_recycle"))
        },
    )?;
    evidence("would_recycle", &ev.message);
    ensure!(ev.reason == Reason::Boundary, "reason {:?}", ev.reason);
    let all = recent_events()?;
    ensure!(
        !all.iter()
            .any(|e| e.action == "child_recycle" || e.action == "restart"),
        "observe mode acted"
    );
    let st = pf(&daemon.status()?).context("pf/0")?;
    ensure!(st.pids.first() == Some(&main), "pids {:?}", st.pids);
    daemon.stop()?;
    Ok(())
}

/// The main process leaks (8 MB/s), its two children do not: the main leaf owns the most, so the
/// whole instance restarts at its boundary and no child is recycled for it.
fn main_grows() -> Result<()> {
    let args = ["--prefork", "2", "--main-leaks", "--leak-mb-per-s", "8"];
    let (mut daemon, main, _) = start(&args, "enforce")?;
    let st = wait_restarted(&mut daemon, main, Reason::Boundary, Duration::from_secs(60))?;
    evidence("restarts_by_reason", format!("{:?}", st.restarts_by_reason));
    let all = recent_events()?;
    let restart = all
        .iter()
        .find(|e| e.action == "restart" && e.reason == Reason::Boundary)
        .context("no restart event with reason boundary")?;
    evidence("restart", &restart.message);
    ensure!(
        !all.iter().any(|e| at_the_instance(e, "child_recycle")),
        "a child was recycled for a main process that grew"
    );
    let said = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
    let line = said
        .lines()
        .find(|l| l.contains("restarting the whole instance: the main leaf owns"))
        .context("no log line saying why the whole instance")?;
    evidence("log", line);
    daemon.stop()?;
    Ok(())
}
