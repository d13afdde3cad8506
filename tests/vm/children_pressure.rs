//! A child recycled on pressure alone (its leaf's boundary off, no memory trigger): the recycle
//! line and event carry the stall the child's PSI trigger measured, as an instance's do.

use std::fs;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::vocabulary::Reason;

use crate::children::LOG;
use crate::harness::*;

/// One leaking child of two, throttled at its leaf's memory.high 40M until its PSI trigger fires.
fn policy() -> String {
    let mut args = vec!["--children-log", LOG];
    args.extend_from_slice(&PREFORK_ONE_LEAKING);
    format!(
        "name: pf\nrun:\n  command: {}\nmemory: {{high: 256M, max: 320M}}\n\
         triggers: {{pressure: {{some: 200ms, window: 1s, for: 2s}}}}\nrestart: {{grace: 5s}}\n\
         children:\n  memory: {{high: 40M, max: 96M, boundary: false}}\n\
         \x20 triggers: {{pressure: {{some: 100ms, window: 1s, for: 1s}}}}\n\
         \x20 restart: {{signal: SIGTERM, grace: 5s}}\n",
        worker_command(&args)
    )
}

pub fn children_pressure() -> Result<()> {
    make_ledger_dir()?;
    let _ = fs::remove_file(LOG);
    write_policy(POLICY_DIR, "pf", &policy())?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&["pf/0"], Duration::from_secs(20))?;
    let ev = wait_event("child_recycle", Duration::from_secs(90))?;
    evidence("child_recycle", &ev.message);
    ensure!(ev.reason == Reason::Pressure, "reason {:?}", ev.reason);
    // Before the fix the child's task never read memory.pressure: "stall not measured".
    ensure!(
        !ev.message.contains("not measured"),
        "the child's stall was not measured: {}",
        ev.message
    );
    // "some stall 640ms in the last 1.1s": the words fmt_dur writes, read back by humantime.
    let stall = ev
        .message
        .split("some stall ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|t| humantime::parse_duration(t).ok())
        .with_context(|| format!("no `some stall DURATION` in: {}", ev.message))?;
    evidence("measured stall", format!("{stall:?}"));
    ensure!(!stall.is_zero(), "a recycle on pressure measured no stall");
    daemon.stop()?;
    Ok(())
}
