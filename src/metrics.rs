//! Prometheus text exposition (format 0.0.4) of a [`StatusReport`]: a pure function, no I/O.
//!
//! Series are labelled `policy` and `index` ("celery", "0"), not `instance`: Prometheus sets
//! its own `instance` label on every scrape and would rename ours to `exported_instance`.
//! PSI averages are ratios 0..1 (the kernel prints percent; we divide by 100) and stall
//! totals are seconds, following Prometheus' base-unit convention.

use std::fmt::Write;

mod children;

use crate::protocol::{InstanceStatus, StatusReport};

use crate::vocabulary::{InstanceState, Reason};

const ALL_REASONS: [Reason; 8] = [
    Reason::Pressure,
    Reason::Memory,
    Reason::Manual,
    Reason::Exited,
    Reason::OomKilled,
    Reason::Child,
    Reason::Boundary,
    Reason::ContainerLimit,
];

const ALL_STATES: [InstanceState; 6] = [
    InstanceState::Starting,
    InstanceState::Running,
    InstanceState::Restarting,
    InstanceState::Backoff,
    InstanceState::Failed,
    InstanceState::Stopped,
];

// Adding a Reason or InstanceState variant breaks these matches: extend the lists above too, or
// the new value would never appear as a label.
const _: fn(Reason) = |r| match r {
    Reason::Pressure
    | Reason::Memory
    | Reason::Manual
    | Reason::Exited
    | Reason::OomKilled
    | Reason::Child
    | Reason::Boundary
    | Reason::ContainerLimit => {}
};
const _: fn(InstanceState) = |s| match s {
    InstanceState::Starting
    | InstanceState::Running
    | InstanceState::Restarting
    | InstanceState::Backoff
    | InstanceState::Failed
    | InstanceState::Stopped => {}
};

/// How to get one optional sample out of an instance.
type Sample = fn(&InstanceStatus) -> Option<f64>;

/// Per-instance families with one sample each: (name, type, help, value). `None` leaves the
/// sample out (unknown, or a limit of "max").
const GAUGES: [(&str, &str, &str, Sample); 9] = [
    (
        "memory_current_bytes",
        "gauge",
        "memory.current of the instance's cgroup.",
        |i| i.memory_current.map(|v| v as f64),
    ),
    (
        "memory_high_bytes",
        "gauge",
        "memory.high of the instance's cgroup; absent when \"max\".",
        |i| i.memory_high.map(|v| v as f64),
    ),
    (
        "memory_boundary_bytes",
        "gauge",
        "the memory.high boundary's sentinel, the kernel's memory.high a margin under the configured one while the worker runs; absent without one.",
        |i| i.boundary.map(|v| v as f64),
    ),
    (
        "memory_max_bytes",
        "gauge",
        "memory.max of the instance's cgroup; absent when \"max\".",
        |i| i.memory_max.map(|v| v as f64),
    ),
    (
        "memory_peak_bytes",
        "gauge",
        "memory.peak of the instance's cgroup.",
        |i| i.memory_peak.map(|v| v as f64),
    ),
    (
        "psi_some_avg10",
        "gauge",
        "Memory PSI \"some\" avg10 as a ratio (0..1).",
        |i| i.psi_some_avg10.map(|v| v / 100.0),
    ),
    (
        "psi_full_avg10",
        "gauge",
        "Memory PSI \"full\" avg10 as a ratio (0..1).",
        |i| i.psi_full_avg10.map(|v| v / 100.0),
    ),
    (
        "psi_some_stall_seconds_total",
        "counter",
        "Memory PSI \"some\" total stall time.",
        |i| i.psi_some_total_us.map(|v| v as f64 / 1e6),
    ),
    (
        "psi_full_stall_seconds_total",
        "counter",
        "Memory PSI \"full\" total stall time.",
        |i| i.psi_full_total_us.map(|v| v as f64 / 1e6),
    ),
];

/// The whole exposition, ending in a newline.
pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let instances: Vec<(&str, &str, &InstanceStatus)> = report
        .policies
        .iter()
        .flat_map(|p| {
            p.instances.iter().map(|i| {
                // The id is "<policy>/<index>"; fall back to the whole id if a daemon ever
                // reports something else, rather than dropping the series.
                let index = i.id.strip_prefix(&format!("{}/", p.name)).unwrap_or(&i.id);
                (p.name.as_str(), index, i)
            })
        })
        .collect();

    family(
        &mut out,
        "build_info",
        "gauge",
        "Version of the running daemon; always 1.",
    );
    sample(
        &mut out,
        "build_info",
        &[("version", &report.daemon.version)],
        1.0,
    );
    family(
        &mut out,
        "uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
    );
    sample(
        &mut out,
        "uptime_seconds",
        &[],
        report.daemon.uptime_seconds as f64,
    );
    family(
        &mut out,
        "log_dropped_total",
        "counter",
        "Log entries the journal did not take in time (journald slow or stalled): dropped rather than wait.",
    );
    sample(
        &mut out,
        "log_dropped_total",
        &[],
        report.daemon.log_dropped as f64,
    );

    for (name, kind, help, get) in GAUGES {
        family(&mut out, name, kind, help);
        for (policy, index, i) in &instances {
            if let Some(v) = get(i) {
                sample(&mut out, name, &[("policy", policy), ("index", index)], v);
            }
        }
    }

    family(
        &mut out,
        "restarts_total",
        "counter",
        "Restarts of the instance, by reason.",
    );
    for (policy, index, i) in &instances {
        for reason in ALL_REASONS {
            let n = i.restarts_by_reason.get(&reason).copied().unwrap_or(0);
            let labels = [
                ("policy", *policy),
                ("index", *index),
                ("reason", reason.as_str()),
            ];
            sample(&mut out, "restarts_total", &labels, f64::from(n));
        }
    }

    family(
        &mut out,
        "oom_kills_total",
        "counter",
        "Kernel OOM kills in the instance's cgroup.",
    );
    for (policy, index, i) in &instances {
        sample(
            &mut out,
            "oom_kills_total",
            &[("policy", policy), ("index", index)],
            i.oom_kills as f64,
        );
    }

    family(
        &mut out,
        "instance_unarmed",
        "gauge",
        "Watches not armed on the running worker (PSI trigger, memory.events, memory.high boundary): it runs without them; see `oomguard status`.",
    );
    for (policy, index, i) in &instances {
        sample(
            &mut out,
            "instance_unarmed",
            &[("policy", policy), ("index", index)],
            i.unarmed.len() as f64,
        );
    }

    family(
        &mut out,
        "instance_state",
        "gauge",
        "1 for the instance's current state, 0 for the others.",
    );
    for (policy, index, i) in &instances {
        for state in ALL_STATES {
            let labels = [
                ("policy", *policy),
                ("index", *index),
                ("state", state.as_str()),
            ];
            sample(
                &mut out,
                "instance_state",
                &labels,
                if i.state == state { 1.0 } else { 0.0 },
            );
        }
    }
    children::render(&mut out, &instances);
    out
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# HELP oomguard_{name} {help}\n# TYPE oomguard_{name} {kind}"
    );
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    let _ = write!(out, "oomguard_{name}");
    if !labels.is_empty() {
        out.push('{');
        for (n, (k, v)) in labels.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape_label(v));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_value(value));
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // Rust's Display never uses exponent notation and prints integers without ".0".
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::protocol::{DaemonInfo, PolicyStatus};
    use crate::vocabulary::Mode;

    pub(super) fn instance(id: &str) -> InstanceStatus {
        InstanceStatus {
            id: id.to_string(),
            state: InstanceState::Running,
            pids: vec![100],
            memory_current: Some(432_013_312),
            memory_high: Some(1_610_612_736),
            boundary: Some(1_509_949_440),
            memory_max: Some(2_147_483_648),
            memory_peak: Some(1_000_000_000),
            psi_some_avg10: Some(12.5),
            psi_full_avg10: Some(0.0),
            psi_some_total_us: Some(1_500_000),
            psi_full_total_us: Some(250),
            restarts: 3,
            restarts_by_reason: BTreeMap::from([(Reason::Pressure, 2), (Reason::Manual, 1)]),
            last_restart_reason: Some(Reason::Pressure),
            last_restart_at: Some(1_700_000_000),
            oom_kills: 1,
            children: Vec::new(),
            child_recycles: 0,
            draining_pid: None,
            unarmed: Vec::new(),
        }
    }

    fn report() -> StatusReport {
        let mut unlimited = instance("web/0");
        unlimited.state = InstanceState::Failed;
        unlimited.memory_high = None;
        unlimited.boundary = None;
        unlimited.memory_max = None;
        unlimited.memory_current = None;
        unlimited.restarts_by_reason = BTreeMap::new();
        StatusReport {
            daemon: DaemonInfo {
                version: "0.1.0-\"rc\\1\"\n".into(),
                pid: 42,
                uptime_seconds: 3600,
                cgroup_root: "/sys/fs/cgroup/oomguard".into(),
                log_dropped: 0,
                container: None,
            },
            policies: vec![
                PolicyStatus {
                    name: "celery".into(),
                    mode: Mode::Enforce,
                    instances: vec![instance("celery/0")],
                },
                PolicyStatus {
                    name: "web".into(),
                    mode: Mode::Observe,
                    instances: vec![unlimited],
                },
            ],
        }
    }

    const GOLDEN: &str = r#"# HELP oomguard_build_info Version of the running daemon; always 1.
# TYPE oomguard_build_info gauge
oomguard_build_info{version="0.1.0-\"rc\\1\"\n"} 1
# HELP oomguard_uptime_seconds Seconds since the daemon started.
# TYPE oomguard_uptime_seconds gauge
oomguard_uptime_seconds 3600
# HELP oomguard_log_dropped_total Log entries the journal did not take in time (journald slow or stalled): dropped rather than wait.
# TYPE oomguard_log_dropped_total counter
oomguard_log_dropped_total 0
# HELP oomguard_memory_current_bytes memory.current of the instance's cgroup.
# TYPE oomguard_memory_current_bytes gauge
oomguard_memory_current_bytes{policy="celery",index="0"} 432013312
# HELP oomguard_memory_high_bytes memory.high of the instance's cgroup; absent when "max".
# TYPE oomguard_memory_high_bytes gauge
oomguard_memory_high_bytes{policy="celery",index="0"} 1610612736
# HELP oomguard_memory_boundary_bytes the memory.high boundary's sentinel, the kernel's memory.high a margin under the configured one while the worker runs; absent without one.
# TYPE oomguard_memory_boundary_bytes gauge
oomguard_memory_boundary_bytes{policy="celery",index="0"} 1509949440
# HELP oomguard_memory_max_bytes memory.max of the instance's cgroup; absent when "max".
# TYPE oomguard_memory_max_bytes gauge
oomguard_memory_max_bytes{policy="celery",index="0"} 2147483648
# HELP oomguard_memory_peak_bytes memory.peak of the instance's cgroup.
# TYPE oomguard_memory_peak_bytes gauge
oomguard_memory_peak_bytes{policy="celery",index="0"} 1000000000
oomguard_memory_peak_bytes{policy="web",index="0"} 1000000000
# HELP oomguard_psi_some_avg10 Memory PSI "some" avg10 as a ratio (0..1).
# TYPE oomguard_psi_some_avg10 gauge
oomguard_psi_some_avg10{policy="celery",index="0"} 0.125
oomguard_psi_some_avg10{policy="web",index="0"} 0.125
# HELP oomguard_psi_full_avg10 Memory PSI "full" avg10 as a ratio (0..1).
# TYPE oomguard_psi_full_avg10 gauge
oomguard_psi_full_avg10{policy="celery",index="0"} 0
oomguard_psi_full_avg10{policy="web",index="0"} 0
# HELP oomguard_psi_some_stall_seconds_total Memory PSI "some" total stall time.
# TYPE oomguard_psi_some_stall_seconds_total counter
oomguard_psi_some_stall_seconds_total{policy="celery",index="0"} 1.5
oomguard_psi_some_stall_seconds_total{policy="web",index="0"} 1.5
# HELP oomguard_psi_full_stall_seconds_total Memory PSI "full" total stall time.
# TYPE oomguard_psi_full_stall_seconds_total counter
oomguard_psi_full_stall_seconds_total{policy="celery",index="0"} 0.00025
oomguard_psi_full_stall_seconds_total{policy="web",index="0"} 0.00025
# HELP oomguard_restarts_total Restarts of the instance, by reason.
# TYPE oomguard_restarts_total counter
oomguard_restarts_total{policy="celery",index="0",reason="pressure"} 2
oomguard_restarts_total{policy="celery",index="0",reason="memory"} 0
oomguard_restarts_total{policy="celery",index="0",reason="manual"} 1
oomguard_restarts_total{policy="celery",index="0",reason="exited"} 0
oomguard_restarts_total{policy="celery",index="0",reason="oom_killed"} 0
oomguard_restarts_total{policy="celery",index="0",reason="child"} 0
oomguard_restarts_total{policy="celery",index="0",reason="boundary"} 0
oomguard_restarts_total{policy="celery",index="0",reason="container_limit"} 0
oomguard_restarts_total{policy="web",index="0",reason="pressure"} 0
oomguard_restarts_total{policy="web",index="0",reason="memory"} 0
oomguard_restarts_total{policy="web",index="0",reason="manual"} 0
oomguard_restarts_total{policy="web",index="0",reason="exited"} 0
oomguard_restarts_total{policy="web",index="0",reason="oom_killed"} 0
oomguard_restarts_total{policy="web",index="0",reason="child"} 0
oomguard_restarts_total{policy="web",index="0",reason="boundary"} 0
oomguard_restarts_total{policy="web",index="0",reason="container_limit"} 0
# HELP oomguard_oom_kills_total Kernel OOM kills in the instance's cgroup.
# TYPE oomguard_oom_kills_total counter
oomguard_oom_kills_total{policy="celery",index="0"} 1
oomguard_oom_kills_total{policy="web",index="0"} 1
# HELP oomguard_instance_unarmed Watches not armed on the running worker (PSI trigger, memory.events, memory.high boundary): it runs without them; see `oomguard status`.
# TYPE oomguard_instance_unarmed gauge
oomguard_instance_unarmed{policy="celery",index="0"} 0
oomguard_instance_unarmed{policy="web",index="0"} 0
# HELP oomguard_instance_state 1 for the instance's current state, 0 for the others.
# TYPE oomguard_instance_state gauge
oomguard_instance_state{policy="celery",index="0",state="starting"} 0
oomguard_instance_state{policy="celery",index="0",state="running"} 1
oomguard_instance_state{policy="celery",index="0",state="restarting"} 0
oomguard_instance_state{policy="celery",index="0",state="backoff"} 0
oomguard_instance_state{policy="celery",index="0",state="failed"} 0
oomguard_instance_state{policy="celery",index="0",state="stopped"} 0
oomguard_instance_state{policy="web",index="0",state="starting"} 0
oomguard_instance_state{policy="web",index="0",state="running"} 0
oomguard_instance_state{policy="web",index="0",state="restarting"} 0
oomguard_instance_state{policy="web",index="0",state="backoff"} 0
oomguard_instance_state{policy="web",index="0",state="failed"} 1
oomguard_instance_state{policy="web",index="0",state="stopped"} 0
"#;

    #[test]
    fn golden_exposition() {
        let got = render(&report());
        for (n, (g, w)) in got.lines().zip(GOLDEN.lines()).enumerate() {
            assert_eq!(g, w, "line {}", n + 1);
        }
        assert_eq!(got, GOLDEN);
    }

    /// A strict reader of the text format: every line is HELP, TYPE or a sample of the family
    /// declared just above it, with well-formed labels and a float value.
    #[test]
    fn every_line_parses() {
        let text = render(&report());
        assert!(text.ends_with('\n'));
        let mut family: Option<String> = None;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has a name and text");
                family = Some(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and type");
                assert_eq!(Some(name), family.as_deref(), "TYPE follows its HELP");
                assert!(["gauge", "counter"].contains(&kind), "{line}");
                assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
            } else {
                let (name, labels, value) = parse_sample(line);
                assert_eq!(Some(name.as_str()), family.as_deref(), "{line}");
                assert!(name.starts_with("oomguard_") && valid_name(&name), "{line}");
                assert!(labels.iter().all(|(k, _)| valid_name(k)), "{line}");
                assert!(value.is_finite(), "{line}");
                samples += 1;
            }
        }
        // daemon 3; gauges: celery all 9, web 5 (no current/high/boundary/max); restarts 2x8;
        // ooms 2; unarmed 2; states 2x6.
        assert_eq!(samples, 3 + 9 + 5 + 16 + 2 + 2 + 12);
    }

    fn valid_name(s: &str) -> bool {
        let mut c = s.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
    }

    fn parse_sample(line: &str) -> (String, Vec<(String, String)>, f64) {
        let name_end = line.find(['{', ' ']).expect("sample has a value");
        let name = line[..name_end].to_string();
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                let (k, after) = l.split_once("=\"").expect("label is k=\"v\"");
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().expect("label value is closed") {
                        (_, '\\') => match chars.next().expect("escape has a char").1 {
                            'n' => value.push('\n'),
                            c @ ('\\' | '"') => value.push(c),
                            c => panic!("bad escape \\{c} in {line}"),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                labels.push((k.to_string(), value));
                l = &after[end + 1..];
                if let Some(more) = l.strip_prefix(',') {
                    l = more;
                } else {
                    rest = l.strip_prefix('}').expect("labels end with }");
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ').expect("one space before the value");
        (name, labels, value.parse().expect("value is a float"))
    }

    #[test]
    fn label_escaping_round_trips() {
        let (_, labels, _) = parse_sample(&{
            let mut s = String::new();
            sample(&mut s, "x", &[("version", "a\\b\"c\nd")], 1.0);
            s.trim_end().to_string()
        });
        assert_eq!(
            labels,
            vec![("version".to_string(), "a\\b\"c\nd".to_string())]
        );
    }
}
