//! Human output for the CLI: the status table and one-line events. Pure functions of the
//! report and the current time, so tests feed literal structs.

use std::time::{Duration, UNIX_EPOCH};

use crate::protocol::{ChildStatus, EventRecord, InstanceStatus, StatusReport};
use crate::vocabulary::Mode;
use crate::vocabulary::{Ending, InstanceState};

/// The status table: a header line about the daemon, then one aligned line per instance, then
/// notes for anything that needs an operator (observe mode, failed instances).
pub fn render_status(report: &StatusReport, now_unix: u64) -> String {
    let d = &report.daemon;
    let mut out = format!(
        "oomguard {} (pid {}), up {}, cgroups under {}\n",
        d.version,
        d.pid,
        duration_short(d.uptime_seconds),
        d.cgroup_root
    );
    if let Some(c) = &d.container {
        out.push_str(&crate::container::setup::summary(c));
        out.push('\n');
    }
    let mut rows = vec![[
        "INSTANCE", "STATE", "PIDS", "MEM", "PSI", "RESTARTS", "LAST", "OOM",
    ]
    .map(String::from)];
    let mut notes = Vec::new();
    for policy in &report.policies {
        if policy.mode == Mode::Observe {
            notes.push(format!(
                "{}: observe mode, restarts are reported, not carried out",
                policy.name
            ));
        }
        for i in &policy.instances {
            rows.push(row(i, now_unix));
            // `children:`: one indented row per child, RESTARTS being its recycles.
            rows.extend(i.children.iter().map(child_row));
            if i.child_recycles > 0 {
                notes.push(format!(
                    "{}: {} children recycled alone (not counted in RESTARTS)",
                    i.id, i.child_recycles
                ));
            }
            for u in &i.unarmed {
                notes.push(format!("{}: ! not armed: {u}", i.id));
            }
            if i.state == InstanceState::Failed {
                notes.push(format!(
                    "{}: FAILED, left stopped after too many restarts; `oomguard restart {}` starts it again",
                    i.id, i.id
                ));
            }
        }
    }
    if rows.len() == 1 {
        out.push_str("no policies loaded\n");
        return out;
    }
    out.push_str(&align(&rows));
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

fn row(i: &InstanceStatus, now_unix: u64) -> [String; 8] {
    let state = match i.state {
        // Capitals for the states that need a look; the text itself carries it, no colours.
        InstanceState::Failed => "FAILED".to_string(),
        InstanceState::Restarting => "RESTARTING".to_string(),
        s => s.as_str().to_string(),
    };
    let pids = match (i.pids.as_slice(), i.draining_pid) {
        ([], _) => "-".to_string(),
        // An overlapping restart: the replacement, then the old worker it replaces.
        ([new, ..], Some(old)) => format!("{new} ←{old}"),
        ([one], None) => one.to_string(),
        ([first, rest @ ..], None) => format!("{first} +{}", rest.len()),
    };
    let mem = memory(i.memory_current, i.memory_high, i.memory_max);
    let psi = percent(i.psi_some_avg10);
    let last = match (i.last_restart_reason, i.last_restart_at) {
        (Some(r), Some(at)) => format!(
            "{} {} ago",
            r.as_str(),
            duration_short(now_unix.saturating_sub(at))
        ),
        (Some(r), None) => r.as_str().to_string(),
        (None, _) => "-".to_string(),
    };
    [
        i.id.clone(),
        state,
        pids,
        mem,
        psi,
        i.restarts.to_string(),
        last,
        i.oom_kills.to_string(),
    ]
}

/// current/high/max and current as a share of max: "43M/48M/96M 44%".
fn memory(current: Option<u64>, high: Option<u64>, max: Option<u64>) -> String {
    let limit = |l: Option<u64>| l.map_or_else(|| "max".to_string(), bytes);
    let mut mem = format!(
        "{}/{}/{}",
        current.map_or_else(|| "-".to_string(), bytes),
        limit(high),
        limit(max)
    );
    if let (Some(cur), Some(max)) = (current, max.filter(|m| *m > 0)) {
        mem.push_str(&format!(" {}%", (cur as f64 * 100.0 / max as f64).round()));
    }
    mem
}

fn percent(p: Option<f64>) -> String {
    p.map_or_else(|| "-".to_string(), |p| format!("{p:.1}%"))
}

fn child_row(c: &ChildStatus) -> [String; 8] {
    [
        format!("  {}", c.leaf),
        c.state.as_str().to_string(),
        c.pid.to_string(),
        memory(c.memory_current, c.memory_high, c.memory_max),
        percent(c.psi_some_avg10),
        c.recycles.to_string(),
        "-".to_string(),
        "-".to_string(),
    ]
}

/// Columns padded to their widest cell, two spaces apart; no trailing spaces.
fn align<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (cell, w) in r.iter().zip(widths) {
            line.push_str(&format!("{cell:<w$}  "));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One event per line: time (UTC), instance, action, reason, the numbers, the message.
/// Fixed minimum widths rather than table alignment, since `--follow` prints as events come.
pub fn render_event(e: &EventRecord) -> String {
    let time = event_time(e.time_ms);
    let mut numbers = Vec::new();
    if let Some(m) = e.memory_current {
        numbers.push(format!("mem={}", bytes(m)));
    }
    if let Some(m) = e.memory_peak {
        numbers.push(format!("peak={}", bytes(m)));
    }
    match (e.psi_some_avg10, e.psi_full_avg10) {
        (Some(s), Some(f)) => numbers.push(format!("psi={s:.1}%/{f:.1}%")),
        (Some(s), None) => numbers.push(format!("psi={s:.1}%")),
        _ => {}
    }
    for (counter, n) in e.memory_events_delta.iter().filter(|(_, n)| **n > 0) {
        numbers.push(format!("{counter}+{n}"));
    }
    if let Some(us) = e.trigger_to_signal_us {
        numbers.push(format!("trigger→signal={}ms", us as f64 / 1000.0));
    }
    if let Some(ms) = e.signal_to_exit_ms {
        numbers.push(format!("signal→exit={ms}ms"));
    }
    if let Some(ms) = e.exit_to_exec_ms {
        numbers.push(format!("exit→exec={ms}ms"));
    }
    if let Some(ms) = e.overlap_ms {
        numbers.push(format!("overlap={ms}ms"));
    }
    if let Some(ms) = e.dead_time_ms {
        numbers.push(format!("dead={ms}ms"));
    }
    if let Some(pid) = e.replacement_pid {
        numbers.push(format!("new={pid}"));
    }
    match &e.ending {
        Some(Ending::Exited { code: Some(c), .. }) => numbers.push(format!("exit={c}")),
        Some(Ending::Exited {
            signal: Some(s), ..
        }) => numbers.push(format!("signal={s}")),
        Some(Ending::Exited { .. }) | None => {}
        Some(Ending::KilledAfterGrace { after_ms }) => {
            numbers.push(format!("killed-after-grace={after_ms}ms"))
        }
        Some(Ending::OomKilled) => numbers.push("oom-killed".to_string()),
    }
    if let Some(pid) = e.child_pid {
        numbers.insert(0, format!("child={pid}"));
    }
    let line = format!(
        "{time}  {:<12}  {:<13}  {:<10}  {:<40}  {}",
        e.instance,
        e.action,
        e.reason.as_str(),
        numbers.join(" "),
        e.message
    );
    line.trim_end().to_string()
}

/// UTC, to the second. The number comes from the daemon; past year 9999 humantime's Display
/// returns an error, which `format!` turns into a panic, so such a time prints as `@<ms>ms`.
fn event_time(ms: u64) -> String {
    /// 9999-12-31T23:59:59.999Z, the last instant RFC 3339 (and humantime) can write.
    const LAST_MS: u64 = 253_402_300_799_999;
    if ms > LAST_MS {
        return format!("@{ms}ms");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Binary units as in policy files: "512B", "412M", "1.5G", "2G".
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    let s = if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    // "10.0" after rounding 9.96 is fine as "10"; "2.0" reads better as "2".
    format!("{}{}", s.strip_suffix(".0").unwrap_or(&s), UNITS[unit])
}

/// The two largest units: "45s", "3m", "3m12s" is too noisy, so "3m"; "2h5m", "4d3h".
pub fn duration_short(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::protocol::{DaemonInfo, PolicyStatus};
    use crate::vocabulary::Reason;

    const NOW: u64 = 1_700_000_000;

    fn instance(id: &str) -> InstanceStatus {
        InstanceStatus {
            id: id.to_string(),
            state: InstanceState::Running,
            pids: vec![4242, 4243, 4244, 4245],
            memory_current: Some(432_013_312),
            memory_high: Some(1_610_612_736),
            boundary: None,
            memory_max: Some(2_147_483_648),
            memory_peak: Some(1_900_000_000),
            psi_some_avg10: Some(3.41),
            psi_full_avg10: Some(0.5),
            psi_some_total_us: Some(1),
            psi_full_total_us: Some(1),
            restarts: 3,
            restarts_by_reason: BTreeMap::from([(Reason::Pressure, 3)]),
            last_restart_reason: Some(Reason::Pressure),
            last_restart_at: Some(NOW - 180),
            oom_kills: 0,
            children: Vec::new(),
            child_recycles: 0,
            draining_pid: None,
            unarmed: Vec::new(),
        }
    }

    #[test]
    fn children_get_a_row_each_under_their_instance() {
        let mut pf = instance("pf/0");
        pf.child_recycles = 4;
        pf.children = vec![crate::protocol::ChildStatus {
            pid: 4243,
            leaf: "child-4243".into(),
            state: crate::vocabulary::ChildState::Recycling,
            memory_current: Some(44 << 20),
            memory_high: None,
            boundary: None,
            memory_max: Some(96 << 20),
            psi_some_avg10: Some(2.0),
            recycles: 1,
        }];
        let report = StatusReport {
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 42,
                uptime_seconds: 60,
                cgroup_root: "/sys/fs/cgroup/oomguard".into(),
                log_dropped: 0,
                container: None,
            },
            policies: vec![PolicyStatus {
                name: "pf".into(),
                mode: Mode::Enforce,
                instances: vec![pf],
            }],
        };
        let out = render_status(&report, NOW);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[2].starts_with("pf/0 "), "{out}");
        assert!(
            lines[3].starts_with("  child-4243  recycling  4243 ")
                && lines[3].contains("44M/max/96M 46%")
                && lines[3].contains("2.0%"),
            "{out}"
        );
        assert!(out.contains("pf/0: 4 children recycled alone"), "{out}");
    }

    #[test]
    fn an_overlap_shows_both_pids() {
        let mut i = instance("q/0");
        i.state = InstanceState::Restarting;
        i.pids = vec![5001, 5000];
        i.draining_pid = Some(5000);
        assert_eq!(row(&i, NOW)[2], "5001 ←5000");
        i.draining_pid = None;
        assert_eq!(row(&i, NOW)[2], "5001 +1");
    }

    #[test]
    fn status_table() {
        let mut failed = instance("web/12");
        failed.state = InstanceState::Failed;
        failed.pids = vec![];
        failed.memory_current = None;
        failed.memory_high = None;
        failed.memory_max = None;
        failed.psi_some_avg10 = None;
        failed.restarts = 11;
        failed.last_restart_reason = Some(Reason::Exited);
        failed.last_restart_at = Some(NOW - 7400);
        failed.oom_kills = 2;
        let mut fresh = instance("celery/1");
        fresh.pids = vec![5000];
        fresh.restarts = 0;
        fresh.last_restart_reason = None;
        fresh.last_restart_at = None;
        fresh.memory_high = None;
        let report = StatusReport {
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 42,
                uptime_seconds: 11_520,
                cgroup_root: "/sys/fs/cgroup/oomguard".into(),
                log_dropped: 0,
                container: None,
            },
            policies: vec![
                PolicyStatus {
                    name: "celery".into(),
                    mode: Mode::Enforce,
                    instances: vec![instance("celery/0"), fresh],
                },
                PolicyStatus {
                    name: "web".into(),
                    mode: Mode::Observe,
                    instances: vec![failed],
                },
            ],
        };
        let want = "\
oomguard 0.1.0 (pid 42), up 3h12m, cgroups under /sys/fs/cgroup/oomguard
INSTANCE  STATE    PIDS     MEM               PSI   RESTARTS  LAST             OOM
celery/0  running  4242 +3  412M/1.5G/2G 20%  3.4%  3         pressure 3m ago  0
celery/1  running  5000     412M/max/2G 20%   3.4%  0         -                0
web/12    FAILED   -        -/max/max         -     11        exited 2h3m ago  2

web: observe mode, restarts are reported, not carried out
web/12: FAILED, left stopped after too many restarts; `oomguard restart web/12` starts it again
";
        assert_eq!(
            render_status(&report, NOW),
            want,
            "\n{}",
            render_status(&report, NOW)
        );
    }

    #[test]
    fn empty_status() {
        let report = StatusReport {
            daemon: DaemonInfo {
                version: "0.1.0".into(),
                pid: 1,
                uptime_seconds: 5,
                cgroup_root: "/x".into(),
                log_dropped: 0,
                container: None,
            },
            policies: vec![],
        };
        assert_eq!(
            render_status(&report, NOW),
            "oomguard 0.1.0 (pid 1), up 5s, cgroups under /x\nno policies loaded\n"
        );
    }

    fn sample_event() -> EventRecord {
        EventRecord {
            seq: 7,
            time_ms: 1_700_000_000_123,
            instance: "celery/0".into(),
            reason: Reason::Pressure,
            action: "restart".into(),
            memory_current: Some(1_932_735_283),
            memory_peak: Some(2_040_109_465),
            memory_events_delta: BTreeMap::from([("high".to_string(), 12), ("oom".to_string(), 0)]),
            psi_some_avg10: Some(41.5),
            psi_full_avg10: Some(12.25),
            ending: Some(Ending::Exited {
                code: Some(0),
                signal: None,
                after_ms: 2300,
            }),
            trigger_to_signal_us: Some(1500),
            signal_to_exit_ms: Some(2300),
            exit_to_exec_ms: Some(40),
            overlap_ms: None,
            dead_time_ms: Some(40),
            replacement_pid: Some(4300),
            message: "celery/0: memory pressure some 41.5% for 30s; sent SIGTERM".into(),
            child_pid: None,
            child_leaf: None,
            hooks: Vec::new(),
        }
    }

    #[test]
    fn event_line() {
        assert_eq!(
            render_event(&sample_event()),
            "2023-11-14T22:13:20Z  celery/0      restart        pressure    \
             mem=1.8G peak=1.9G psi=41.5%/12.2% high+12 trigger→signal=1.5ms signal→exit=2300ms exit→exec=40ms dead=40ms new=4300 exit=0  \
             celery/0: memory pressure some 41.5% for 30s; sent SIGTERM"
        );
    }

    /// The time comes from the daemon: one past year 9999 (a broken or hostile peer) made
    /// humantime's Display fail, and `format!` panic in the CLI.
    #[test]
    fn event_times_past_year_9999_print_as_numbers() {
        let mut e = EventRecord {
            time_ms: u64::MAX,
            ..sample_event()
        };
        assert!(render_event(&e).starts_with("@18446744073709551615ms  celery/0"));
        e.time_ms = 253_402_300_799_999;
        assert!(render_event(&e).starts_with("9999-12-31T23:59:59Z"));
        e.time_ms = 253_402_300_800_000;
        assert!(render_event(&e).starts_with("@253402300800000ms"));
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(1024), "1K");
        assert_eq!(bytes(1536), "1.5K");
        assert_eq!(bytes(512 << 20), "512M");
        assert_eq!(bytes(2 << 30), "2G");
        assert_eq!(bytes(u64::MAX), "16E");
        assert_eq!(duration_short(0), "0s");
        assert_eq!(duration_short(59), "59s");
        assert_eq!(duration_short(60), "1m");
        assert_eq!(duration_short(3600), "1h");
        assert_eq!(duration_short(3 * 86_400 + 5 * 3600 + 7), "3d5h");
        assert_eq!(duration_short(86_400 + 59), "1d");
    }
}
