//! What a restart decided on pressure says about itself: the stall the PSI trigger measured
//! (`some stall 640ms in the last 1.1s`) and avg10 beside it, named (`psi some avg10 5.4%`).
//! avg10 lags the trigger by seconds and read `0.0%` on restarts the trigger had every reason
//! for, so the log and the event must carry the trigger's own figure.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::Reason;

use crate::harness::*;

/// The stall figure of one decision text.
#[derive(Debug, PartialEq)]
pub struct StallText {
    pub stalled: Duration,
    pub over: Duration,
}

/// Finds `<kind> stall <dur> in the last <dur>` in a decision text.
pub fn stall_in(text: &str, kind: &str) -> Option<StallText> {
    let rest = &text[text.find(&format!("{kind} stall "))? + kind.len() + " stall ".len()..];
    let (stalled, rest) = rest.split_once(" in the last ")?;
    // The interval is the words that start with a digit (`1.1s`, or `2m 5s`), up to the first
    // punctuation; the log's fields (`instance=...`) or colour codes may follow it.
    let mut words = Vec::new();
    for word in rest.split_whitespace() {
        if !word.starts_with(|c: char| c.is_ascii_digit()) {
            break;
        }
        let bare = word.trim_end_matches([';', ',', ')']);
        words.push(bare);
        if bare.len() != word.len() {
            break;
        }
    }
    Some(StallText {
        stalled: parse_dur(stalled)?,
        over: parse_dur(&words.join(" "))?,
    })
}

/// `psi some avg10 N%` in a decision text; None when absent or `?`.
pub fn avg10_in(text: &str) -> Option<f64> {
    let rest = &text[text.find("psi some avg10 ")? + "psi some avg10 ".len()..];
    rest.split('%').next()?.parse().ok()
}

/// The daemon's durations: `640ms`, `1.1s`, or humantime's `2m 3s` from two minutes up.
fn parse_dur(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    if let Some(secs) = s.strip_suffix('s').and_then(|v| v.parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(secs));
    }
    humantime::parse_duration(s).ok()
}

fn pressure_lines() -> Result<Vec<String>> {
    let log = std::fs::read_to_string(DAEMON_LOG).context("reading the daemon log")?;
    Ok(log
        .lines()
        .filter(|l| l.contains("restart (pressure):"))
        .map(str::to_owned)
        .collect())
}

/// Every `restart (pressure)` line of the daemon log and every pressure restart event names a
/// stall above zero that fits in its interval (some-stall is at most wall-clock time), and a
/// numeric avg10. Returns how many restarts were checked.
///
/// Restarts go on while this runs, so it compares a consistent snapshot: the events first, then
/// the log's first lines, one per event (both in the daemon's order). Reading the log first let
/// a restart land in between ("8 pressure restart events but 7 log lines").
pub fn check_pressure_restarts() -> Result<usize> {
    let events: Vec<EventRecord> = client(&["events", "--last", "1000", "--json"])?
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|e: &EventRecord| e.reason == Reason::Pressure && e.action == "restart")
        .collect();
    ensure!(!events.is_empty(), "no pressure restart event");
    // The log line of the last event may still be on its way to the file: wait for it (not a
    // timed assertion: a missing line still fails after the wait).
    let mut lines = pressure_lines()?;
    for _ in 0..100 {
        if lines.len() >= events.len() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        lines = pressure_lines()?;
    }
    ensure!(
        lines.len() >= events.len(),
        "{} pressure restart events but only {} log lines",
        events.len(),
        lines.len()
    );
    lines.truncate(events.len());
    let texts = lines
        .iter()
        .map(|l| ("log", l.as_str()))
        .chain(events.iter().map(|e| ("event", e.message.as_str())));
    for (i, (source, text)) in texts.enumerate() {
        let stall = stall_in(text, "some")
            .with_context(|| format!("{source} names no `some stall X in the last Y`: {text}"))?;
        let avg10 =
            avg10_in(text).with_context(|| format!("{source} has no numeric avg10: {text}"))?;
        if i < 3 {
            evidence(
                &format!("{source} stall / avg10"),
                format!("{stall:?} / {avg10}%"),
            );
        }
        ensure!(
            stall.stalled > Duration::ZERO,
            "{source}: the trigger fired on a zero stall: {text}"
        );
        // Each side is rounded to 0.1 s (or whole ms) when printed.
        ensure!(
            stall.stalled <= stall.over + Duration::from_millis(100),
            "{source}: {stall:?} is more stall than time (wrong unit?): {text}"
        );
    }
    Ok(lines.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "INFO restart (pressure): memory pressure held 1.1s (trigger some \
        100ms/1.0s for 1.0s), some stall 640ms in the last 1.1s; memory 51.2M (high 48M, max 96M), \
        psi some avg10 0.0%; exited by itself 481 ms after SIGTERM (code 0) instance=leaky/0";

    #[test]
    fn reads_the_stall_and_avg10_of_a_restart_line() {
        assert_eq!(
            stall_in(LINE, "some"),
            Some(StallText {
                stalled: Duration::from_millis(640),
                over: Duration::from_millis(1100),
            })
        );
        assert_eq!(avg10_in(LINE), Some(0.0));
        assert_eq!(stall_in(LINE, "full"), None);
        let long = "x, some stall 1.2s in the last 2m 5s; y";
        assert_eq!(
            stall_in(long, "some").map(|s| s.over),
            Some(Duration::from_secs(125))
        );
        assert_eq!(avg10_in("psi some avg10 ?; z"), None);
        // An observe-mode line ends with the stall, then the log's fields.
        let would = "would restart (observe mode): memory pressure held 1.0s (trigger some \
            100ms/1.0s for 1.0s), some stall 617ms in the last 1.0s \x1b[3minstance\x1b[0m=leaky/0";
        assert_eq!(
            stall_in(would, "some").map(|s| s.over),
            Some(Duration::from_secs(1))
        );
    }
}
