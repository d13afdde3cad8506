//! The alert rules (deploy/prometheus/), their unit tests' input series (tests/prometheus/) and
//! the Grafana dashboard (deploy/grafana/) only use metric and label names the daemon really
//! exports. "Really": the exposition is rendered the way the daemon answers `oomguard metrics`
//! (the fleet's status, then `metrics::render`), from a running fleet with a real worker on the
//! fake cgroup tree, not from a list kept by hand. A renamed metric fails here, not on a
//! dashboard that silently goes blank.

mod fake_tree;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use oomguard::supervisor::SavedState;
use oomguard::vocabulary::InstanceState;
use serde_json::Value;

use fake_tree::*;

/// Metrics from other exporters the rules and dashboard use on purpose, with their labels:
/// node_exporter's textfile collector says when oomguard.prom was last written.
const EXTERNAL: [(&str, &[&str]); 1] = [("node_textfile_mtime_seconds", &["file"])];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// Metric name -> label names, from an exposition's sample lines.
type Exported = BTreeMap<String, BTreeSet<String>>;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `oomguard metrics` of a fleet with one running worker whose group has every file the daemon
/// samples (memory.current, memory.peak, memory.pressure; the limits it writes itself).
async fn real_exposition() -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = fleet(dir.path(), &["celery"]);
    let group = dir.path().join("oomguard/celery/0");
    std::fs::write(group.join("memory.current"), "52428800\n").expect("write");
    std::fs::write(group.join("memory.peak"), "62914560\n").expect("write");
    fleet
        .start_policy(
            policy("celery", r#"["/bin/sleep", "1000"]"#, ""),
            &SavedState::new(),
        )
        .expect("start");
    wait_for(&fleet, "celery/0", "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    // Written once the instance runs: arming its PSI trigger wrote to this (plain) file.
    std::fs::write(
        group.join("memory.pressure"),
        "some avg10=5.40 avg60=1.00 avg300=0.20 total=1234567\n\
         full avg10=0.50 avg60=0.10 avg300=0.00 total=23456\n",
    )
    .expect("write");
    // Status numbers are sampled at most every 2 s: wait for a sample taken after the limits
    // and the pressure were written.
    wait_for(&fleet, "celery/0", "limits and pressure sampled", |s| {
        s.memory_max.is_some() && s.memory_high.is_some() && s.psi_some_avg10.is_some()
    })
    .await;
    let report = fleet.status(None).expect("status");
    let text = oomguard::metrics::render(&report);
    fleet.stop_all().await;
    text
}

fn exported(text: &str) -> Exported {
    let mut out = Exported::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..end].to_string()).or_default();
        if let Some(inner) = line[end..]
            .strip_prefix('{')
            .and_then(|r| r.split_once('}'))
        {
            // Label values here are plain ("celery", "0", "pressure"): no quoted braces or commas.
            for pair in inner.0.split(',') {
                if let Some((k, _)) = pair.split_once('=') {
                    labels.insert(k.to_string());
                }
            }
        }
    }
    out
}

#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Punct(char),
    Str,
}

/// PromQL (and Grafana's `label_values(...)`) as tokens: identifiers, punctuation, and string
/// literals whose content is skipped (label values, regexes). Numbers, durations and Grafana
/// variables (`$policy`, `$__range`) are dropped.
fn tokens(expr: &str) -> Vec<Tok> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Tok::Str);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' || c == '$' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || "_:".contains(chars[i])) {
                i += 1;
            }
            if c != '$' {
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// Everything wrong with one query: unknown metric names, and label names that none of the
/// query's metrics carries.
fn problems(expr: &str, exported: &Exported) -> Vec<String> {
    let toks = tokens(expr);
    let external: BTreeMap<&str, &[&str]> = EXTERNAL.into_iter().collect();
    let is_metric = |n: &str| n.starts_with("oomguard_") || external.contains_key(n);
    let mut out = Vec::new();
    let mut labels: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
    let mut metrics = 0;
    for t in &toks {
        let Tok::Ident(name) = t else { continue };
        if !is_metric(name) {
            continue;
        }
        metrics += 1;
        if let Some(ls) = exported.get(name) {
            labels.extend(ls.iter().cloned());
        } else if let Some(ls) = external.get(name.as_str()) {
            labels.extend(ls.iter().map(|l| l.to_string()));
        } else {
            out.push(format!("metric {name} is not exported by oomguard"));
        }
    }
    if metrics == 0 {
        out.push("uses no known metric".into());
    }
    // Label names: inside a selector's braces, in by/on/without/ignoring (...) lists, and the
    // second argument of label_values(...).
    let mut used = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => {
                while i < toks.len() && toks[i] != Tok::Punct('}') {
                    if let (Tok::Ident(l), Some(Tok::Punct('=' | '!'))) =
                        (&toks[i], toks.get(i + 1))
                    {
                        used.push(l.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(k)
                if [
                    "by",
                    "on",
                    "without",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&k.as_str())
                    && toks.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                i += 2;
                while i < toks.len() && toks[i] != Tok::Punct(')') {
                    if let Tok::Ident(l) = &toks[i] {
                        used.push(l.clone());
                    }
                    i += 1;
                }
            }
            Tok::Ident(k) if k == "label_values" => {
                let close = toks[i..].iter().position(|t| *t == Tok::Punct(')'));
                if let Some(Tok::Ident(l)) = close.and_then(|c| toks.get(i + c - 1)) {
                    used.push(l.clone());
                }
            }
            _ => {}
        }
        i += 1;
    }
    for l in used {
        if !labels.contains(&l) {
            out.push(format!("label {l} is on none of the query's metrics"));
        }
    }
    out
}

/// Every query in the repository, with where it is.
fn queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("deploy/prometheus/oomguard.rules.yml"))
            .expect("rules"),
    )
    .expect("rules YAML");
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"]
                .as_str()
                .or(rule["record"].as_str())
                .unwrap_or("?");
            let expr = rule["expr"].as_str().expect("expr").to_string();
            out.push((format!("rule {name}"), expr));
        }
    }
    let tests: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo().join("tests/prometheus/oomguard.rules.test.yml"))
            .expect("rule tests"),
    )
    .expect("rule tests YAML");
    for test in tests["tests"].as_array().expect("tests") {
        for s in test["input_series"].as_array().expect("input_series") {
            let series = s["series"].as_str().expect("series").to_string();
            out.push(("rule test input series".into(), series));
        }
    }
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/grafana/oomguard.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    collect_dashboard(&dash, "dashboard", &mut out);
    out
}

/// Panels' `expr`s and the template variables' queries, wherever they nest.
fn collect_dashboard(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            let here = map
                .get("title")
                .or(map.get("name"))
                .and_then(Value::as_str)
                .map_or(at.to_string(), |t| format!("{at} / {t}"));
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr", Value::String(e)) => out.push((here.clone(), e.clone())),
                    ("query" | "definition", Value::String(q)) if q.contains('(') => {
                        out.push((here.clone(), q.clone()))
                    }
                    _ => collect_dashboard(child, &here, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|c| collect_dashboard(c, at, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_query_uses_metrics_and_labels_the_daemon_exports() {
    let text = real_exposition().await;
    let exported = exported(&text);
    // The exposition is the real one: per-instance families are there, with their labels.
    for family in [
        "oomguard_memory_current_bytes",
        "oomguard_memory_peak_bytes",
        "oomguard_psi_some_avg10",
    ] {
        assert!(
            exported.contains_key(family),
            "{family} missing from:\n{text}"
        );
    }
    let queries = queries();
    let dashboard = queries
        .iter()
        .filter(|(w, _)| w.starts_with("dashboard"))
        .count();
    assert!(dashboard >= 10, "dashboard queries found: {dashboard}");
    assert!(
        queries
            .iter()
            .filter(|(w, _)| w.starts_with("rule "))
            .count()
            >= 5
    );
    let mut bad = Vec::new();
    for (where_, expr) in &queries {
        for p in problems(expr, &exported) {
            bad.push(format!("{where_}: {p}\n    {expr}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{}\n\nexported: {exported:#?}",
        bad.join("\n")
    );
}

/// The checker itself finds what it is for (a positive control).
#[test]
fn a_misspelt_metric_or_label_is_reported() {
    let exported = exported(
        "# TYPE oomguard_restarts_total counter\n\
         oomguard_restarts_total{policy=\"p\",index=\"0\",reason=\"manual\"} 1\n",
    );
    let ok = r#"sum by (policy, reason) (increase(oomguard_restarts_total{instance=~"$instance",reason!="manual"}[$__rate_interval]))"#;
    assert_eq!(problems(ok, &exported), Vec::<String>::new());
    let p = problems("rate(oomguard_restart_total[5m])", &exported);
    assert!(
        p.iter().any(|m| m.contains("oomguard_restart_total")),
        "{p:?}"
    );
    let p = problems(
        r#"sum by (pool) (oomguard_restarts_total{worker="x"})"#,
        &exported,
    );
    assert!(p.iter().any(|m| m.contains("label pool")), "{p:?}");
    assert!(p.iter().any(|m| m.contains("label worker")), "{p:?}");
    let p = problems("label_values(oomguard_restarts_total, host)", &exported);
    assert!(p.iter().any(|m| m.contains("label host")), "{p:?}");
    assert_eq!(problems("up == 0", &exported), ["uses no known metric"]);
}
