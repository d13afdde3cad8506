//! `restart.hooks` on a real kernel: a leaking test worker restarted on pressure with a `before`
//! hook that records its environment, whether the worker was still alive and the worker's ledger
//! as it stood (no `exit` line yet: the signal had not gone out), and an `after` hook that sees
//! the replacement's pid; then a `before` hook that hangs is killed at its timeout (with the
//! process it left) and the restart still happens. The events carry each hook's exit, output and
//! time; what the after hook leaves running ends with it. Then the worker's user takes the hooks over: `check`, a reload and the run refuse them. The hooks are busybox sh scripts: a test's convenience, oomguard itself runs no shell.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::{InstanceState, Reason};

use crate::harness::*;

/// Root's and 0755 up to `/` (/run is mounted 0755): a hook under /tmp (1777) is refused.
const HOOKS: &str = "/run/hooks";
const OUT: &str = "/tmp/hooks-out";
/// While this file exists the before hook hangs.
const HANG: &str = "/tmp/hooks-out/hang";
/// The test VM's `worker` user (/etc/passwd in the initramfs).
const WORKER_UID: u32 = 1000;

fn write_hook(name: &str, body: &str) -> Result<String> {
    let path = format!("{HOOKS}/{name}");
    fs::write(&path, format!("#!/bin/sh\n{body}\n"))?;
    set_mode(Path::new(&path), 0o755)?;
    Ok(path)
}

/// KEY=value lines of an env dump.
fn env_value(env: &str, key: &str) -> Option<String> {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
}

/// The latest event of `action` with a seq above `after`.
fn wait_event(action: &str, after: u64, limit: Duration) -> Result<EventRecord> {
    wait_until(&format!("a new {action} event"), limit, || {
        recent_events()
            .ok()?
            .into_iter()
            .rev()
            .find(|e| e.action == action && e.seq > after)
    })
}

pub fn hooks() -> Result<()> {
    make_ledger_dir()?;
    fs::create_dir_all(OUT)?;
    fs::create_dir_all(HOOKS)?;
    set_mode(Path::new(HOOKS), 0o755)?;
    let ledger = ledger_path("hooked");
    let before = write_hook(
        "before",
        &format!(
            "env > {OUT}/before.$OOMGUARD_PID.env\n\
             kill -0 $OOMGUARD_PID && echo alive > {OUT}/alive.$OOMGUARD_PID\n\
             cp {ledger} {OUT}/ledger.$OOMGUARD_PID\n\
             if [ -e {HANG} ]; then echo $$ > {OUT}/hung.pid; echo hanging; exec sleep 1000; fi\n\
             echo \"drained $1\"; echo warn >&2; exit 3"
        ),
    )?;
    let after = write_hook(
        "after",
        &format!(
            "env > {OUT}/after.$OOMGUARD_NEW_PID.env\n\
             sleep 1000 & echo $! > {OUT}/left.$OOMGUARD_NEW_PID\n\
             echo \"up $1\""
        ),
    )?;
    let cmd = worker_command(&["--ledger", &ledger, "--leak-mb-per-s", "8"]);
    write_policy(
        POLICY_DIR,
        "hooked",
        &format!(
            "run:\n  command: {cmd}\n  user: worker\nmemory:\n  high: 48M\n  max: 96M\n  boundary: false\n\
             triggers:\n  pressure: {{some: 100ms, window: 1s, for: 1s}}\n\
             restart:\n  grace: 10s\n  hooks:\n    before: [\"{before}\", \"{{pid}}\"]\n    \
             after: [\"{after}\", \"{{new_pid}}\"]\n    timeout: 2s\n"
        ),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&["hooked/0"], Duration::from_secs(20))?["hooked/0"];
    evidence("first pid", first);

    // 1. The leak's pressure restart, with both hooks.
    let ev = wait_event("restart", 0, Duration::from_secs(30))?;
    evidence("restart event", &ev.message);
    ensure!(ev.reason == Reason::Pressure, "reason {:?}", ev.reason);
    let h = ev.hooks.first().context("the restart event has no hooks")?;
    evidence("before hook record", format!("{h:?}"));
    ensure!(
        h.when == "before" && h.exit == Some(3) && !h.timed_out && h.argv0 == before,
        "before hook record {h:?}"
    );
    ensure!(
        h.output == format!("drained {first}\nwarn"),
        "before hook output {:?}",
        h.output
    );
    evidence(
        "before hook took / trigger to signal",
        format!("{} ms / {:?} us", h.took_ms, ev.trigger_to_signal_us),
    );
    let env = fs::read_to_string(format!("{OUT}/before.{first}.env"))
        .context("the before hook did not run for the first worker")?;
    for (key, want) in [
        ("OOMGUARD_HOOK", "before".to_string()),
        ("OOMGUARD_INSTANCE", "hooked/0".into()),
        ("OOMGUARD_REASON", "pressure".into()),
        ("OOMGUARD_PID", first.to_string()),
        ("OOMGUARD_MEMORY_HIGH", "50331648".into()),
        ("OOMGUARD_MEMORY_MAX", "100663296".into()),
        (
            "OOMGUARD_CGROUP",
            instance_group("hooked/0").display().to_string(),
        ),
    ] {
        let got = env_value(&env, key);
        ensure!(
            got.as_deref() == Some(want.as_str()),
            "{key}={got:?}, want {want}"
        );
    }
    let current: u64 = env_value(&env, "OOMGUARD_MEMORY_CURRENT")
        .and_then(|v| v.parse().ok())
        .context("no OOMGUARD_MEMORY_CURRENT")?;
    evidence("OOMGUARD_MEMORY_CURRENT", current);
    ensure!(current > 0, "memory.current 0 in the hook's env");
    ensure!(
        Path::new(&format!("{OUT}/alive.{first}")).exists(),
        "the worker was not alive when the before hook ran"
    );
    // The worker writes `exit <pid> clean` on its signal: not there yet when the hook ran,
    // there once the restart is over.
    let seen = Ledger::read(&format!("{OUT}/ledger.{first}"))?;
    ensure!(
        seen.pids.get(&first).is_some_and(|r| !r.clean_exit),
        "the ledger the before hook saw: {}",
        seen.summary()
    );
    let after_ev = wait_event("after_hook", 0, Duration::from_secs(15))?;
    evidence("after_hook event", &after_ev.message);
    let second = daemon.wait_status("the replacement", Duration::from_secs(15), |r| {
        let i = instance(r, "hooked/0")?;
        let p = *i.pids.first().filter(|p| **p != first)?;
        (i.state == InstanceState::Running).then_some(p)
    })?;
    let ah = after_ev.hooks.first().context("after_hook without hooks")?;
    ensure!(
        ah.when == "after" && ah.exit == Some(0) && ah.output == format!("up {second}"),
        "after hook record {ah:?} (replacement {second})"
    );
    // What the after hook left running in its process group ended with it.
    let left: u32 = read_trimmed(Path::new(&format!("{OUT}/left.{second}")))?.parse()?;
    let ended = wait_until(
        "the after hook's background sleep to end",
        Duration::from_secs(5),
        || (!pid_alive(left)).then_some(()),
    );
    ensure!(
        ended.is_ok(),
        "the after hook's background process {left} outlived the hook"
    );
    let env = fs::read_to_string(format!("{OUT}/after.{second}.env"))
        .context("the after hook did not run for the replacement")?;
    ensure!(
        env_value(&env, "OOMGUARD_PID") == Some(first.to_string()),
        "after hook OOMGUARD_PID {:?}",
        env_value(&env, "OOMGUARD_PID")
    );
    let done = Ledger::read(&ledger)?;
    ensure!(
        done.pids.get(&first).is_some_and(|r| r.clean_exit),
        "the first worker did not exit cleanly on its signal: {}",
        done.summary()
    );

    // 2. A before hook that hangs: killed at its 2 s timeout, the restart goes on.
    fs::write(HANG, "")?;
    let seq = ev.seq.max(after_ev.seq);
    let reply = client(&["restart", "hooked/0"])?;
    evidence("restart reply", reply.summary());
    let ev = wait_event("restart", seq, Duration::from_secs(30))?;
    evidence("hung restart event", &ev.message);
    let h = ev.hooks.first().context("no hook record")?;
    evidence("hung hook record", format!("{h:?}"));
    ensure!(
        h.timed_out && h.signal == Some(9) && h.output == "hanging",
        "hung before hook record {h:?}"
    );
    let hung: u32 = read_trimmed(Path::new(&format!("{OUT}/hung.pid")))?.parse()?;
    ensure!(
        !pid_alive(hung),
        "the hung hook {hung} survived its timeout"
    );
    let third = daemon.wait_status("a third worker", Duration::from_secs(15), |r| {
        let i = instance(r, "hooked/0")?;
        let p = *i.pids.first().filter(|p| **p != second && **p != first)?;
        (i.state == InstanceState::Running).then_some(p)
    })?;
    evidence("pids", format!("{first} -> {second} -> {third}"));
    fs::remove_file(HANG)?;

    // 3. The worker's user takes the hooks over (issue 17 item 1: it then ran as root at the
    // next restart): refused by `check`, by a reload (the running policy is kept) and at the
    // run itself.
    std::os::unix::fs::chown(&before, Some(WORKER_UID), None)?;
    set_mode(Path::new(&after), 0o775)?;
    let out = oomguard(&["check", POLICY_DIR])?;
    evidence("check", out.summary());
    let text = out.text();
    ensure!(
        !out.status.success(),
        "check accepted hooks the worker can write: {text}"
    );
    for want in [
        format!("restart.hooks.before[0]: `{before}` (run as root): the file is owned by uid {WORKER_UID}"),
        format!("chown root: {before}; chmod go-w {before}"),
        "restart.hooks.after[0]".to_string(),
        "writable by group or others (mode 0775)".to_string(),
    ] {
        ensure!(text.contains(&want), "check does not say {want:?}: {text}");
    }
    let out = client(&["reload"])?;
    evidence("reload", out.summary());
    ensure!(
        out.status.code() == Some(1) && out.text().contains(&format!("owned by uid {WORKER_UID}")),
        "a reload with the worker's hook was not refused: {}",
        out.text()
    );
    let seq = ev.seq;
    client(&["restart", "hooked/0"])?;
    let ev = wait_event("restart", seq, Duration::from_secs(30))?;
    let h = ev.hooks.first().context("no hook record")?;
    evidence("taken-over hook record", format!("{h:?}"));
    ensure!(
        h.error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("owned by uid {WORKER_UID}"))),
        "the worker's hook was not refused at its run: {h:?}"
    );
    ensure!(
        !Path::new(&format!("{OUT}/before.{third}.env")).exists(),
        "the worker's hook ran as root"
    );
    daemon.stop()?;
    Ok(())
}
