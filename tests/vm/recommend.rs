//! `oomguard recommend` on a worker whose profile is known: it leaks 2 MiB/s (anon, touched
//! pages) and exits by itself after 120 jobs (~12 s), so each lifetime peaks at about its baseline +
//! 2 MiB/s x its length. Run in observe mode with a memory trigger far above (its 1 s tick is
//! the sampling the recorder reuses); the daemon is restarted once (SIGUSR2, as systemd does)
//! and the lifetimes from before must still be there. The numbers are checked against ranges
//! derived from the profile, never against a fixed output.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::*;

const MIB: f64 = 1048576.0;
/// The worker's leak, MiB/s.
const RATE: f64 = 2.0;
const STATE_FILE: &str = "/var/lib/oomguard/observations.json";

fn policy() -> String {
    let cmd = worker_command(&[
        "--leak-mb-per-s",
        &RATE.to_string(),
        "--exit-after-jobs",
        "120",
    ]);
    format!(
        "mode: observe\nrun:\n  command: {cmd}\n  instances: 1\n  user: worker\n\
         memory:\n  high: 200M\n  max: 300M\n\
         triggers:\n  memory: {{above: 190M, for: 5s}}\n\
         restart:\n  grace: 10s\n  backoff: {{initial: 1s, max: 1s}}\n  \
         limit: {{count: 1000, within: 1h}}\n"
    )
}

/// `recommend profiled --json`, parsed; its exit code is 1 while there is not enough data.
fn recommend_json() -> Result<(bool, serde_json::Value)> {
    let out = client(&["recommend", "profiled", "--json"])?;
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("recommend --json: {}", out.summary()))?;
    Ok((out.status.success(), v))
}

fn ended(v: &serde_json::Value) -> u64 {
    v["recommendation"]["evidence"]["lifetimes_ended"]
        .as_u64()
        .unwrap_or(0)
}

pub fn recommend() -> Result<()> {
    write_policy(POLICY_DIR, "profiled", &policy())?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    daemon.wait_running(&["profiled/0"], Duration::from_secs(20))?;
    let before = wait_until("a first lifetime to end", Duration::from_secs(60), || {
        recommend_json().ok().filter(|(_, v)| ended(v) >= 1)
    })?;
    let ended_before = ended(&before.1);
    evidence("lifetimes ended before the daemon restart", ended_before);

    let status = daemon.signal_and_wait(libc::SIGUSR2)?;
    ensure!(status.success(), "SIGUSR2 exit {status}");
    let saved = std::fs::metadata(STATE_FILE).context(STATE_FILE)?;
    evidence("observations.json bytes", saved.len());
    let daemon = Daemon::start(POLICY_DIR)?;
    let after = wait_until(
        "two more lifetimes after the restart and enough data",
        Duration::from_secs(90),
        || {
            recommend_json()
                .ok()
                // Enough data (exit 0) comes with 30 s observed: a few lifetimes.
                .filter(|(ok, v)| *ok && ended(v) >= ended_before + 2)
        },
    )?;
    let (ok, v) = after;
    let human = client(&["recommend", "profiled"])?;
    println!("{}", human.stdout);
    // What was recorded, for a failure's post-mortem (saved at the stop).
    daemon.stop()?;
    evidence(
        "observations.json",
        std::fs::read_to_string(STATE_FILE).unwrap_or_default(),
    );
    let r = &v["recommendation"];
    let e = &r["evidence"];
    evidence("recommendation", format!("{v:#}"));
    ensure!(ok, "recommend exited non-zero with enough data");
    ensure!(
        ended(&v) >= ended_before + 2,
        "lifetimes from before the restart lost"
    );
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(f64::NAN);
    let growth = num(&e["growth_bytes_per_s"]) / MIB;
    evidence(
        "growth MiB/s",
        format!("{growth:.2} (the worker leaks {RATE})"),
    );
    ensure!(
        (RATE * 0.6..=RATE * 1.4).contains(&growth),
        "growth {growth:.2} MiB/s is not the worker's {RATE} MiB/s"
    );
    ensure!(e["leaking"] == true, "a 2 MiB/s leak was not called a leak");
    // Each lifetime peaks near baseline + RATE x its length: the longest bounds the highest.
    let longest_s = num(&e["longest_ms"]) / 1000.0;
    let peak_max = num(&e["peak_max"]) / MIB;
    let expected = RATE * longest_s;
    evidence(
        "peak max MiB",
        format!("{peak_max:.1} (leak over the longest lifetime {longest_s:.1}s: {expected:.1})"),
    );
    ensure!(
        peak_max >= expected * 0.5 && peak_max <= expected + 24.0,
        "peak {peak_max:.1} MiB does not fit a {RATE} MiB/s leak over {longest_s:.1}s"
    );
    let (high, max) = (num(&r["high"]) / MIB, num(&r["max"]) / MIB);
    let p95 = num(&e["peak_p95"]) / MIB;
    evidence(
        "proposed",
        format!("high {high}M max {max}M (p95 {p95:.1}M)"),
    );
    ensure!(
        high >= p95 && high <= p95 * 1.3 + 1.0,
        "high {high}M is not p95 {p95:.1}M with headroom"
    );
    // max leaves room for the growth over the lead time (grace 10s + 5s) at the least.
    ensure!(
        max >= high + growth * 15.0,
        "max {max}M leaves no room for the leak"
    );
    ensure!(
        r["trigger"]["kind"] == "memory" && num(&r["trigger"]["above"]) / MIB < high,
        "a leak needs a memory trigger below high: {}",
        r["trigger"]
    );
    ensure!(
        human.stdout.contains("LEAKING") && human.stdout.contains("will not fix a leak"),
        "the human output does not say it leaks"
    );
    ensure!(
        human.stdout.contains("memory:\n") || human.stdout.contains("    memory:"),
        "no YAML snippet"
    );
    Ok(())
}
