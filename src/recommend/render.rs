//! A recommendation in words for a person (read at 3 a.m.: the verdict first, then the lines to
//! paste, then the evidence) and as a YAML snippet the policy parser accepts.

use std::fmt::Write;
use std::time::Duration;

use super::{Confidence, Recommendation, Trigger, MIB};
use crate::units::fmt_dur;
use crate::units::human_bytes;

/// A byte size the policy parser reads back: whole MiB (the numbers are rounded to MiB).
fn yaml_bytes(b: u64) -> String {
    format!("{}M", b.div_ceil(MIB))
}

fn ms(v: u64) -> String {
    fmt_dur(Duration::from_millis(v))
}

/// The `memory:` and `triggers:` sections to paste; None when there is not enough data.
pub fn yaml_snippet(r: &Recommendation) -> Option<String> {
    let (high, max, trigger) = (r.high?, r.max?, r.trigger?);
    let trigger = match trigger {
        Trigger::Pressure {
            some_ms,
            window_ms,
            for_ms,
        } => format!(
            "  pressure: {{some: {}, window: {}, for: {}}}",
            ms(some_ms),
            ms(window_ms),
            ms(for_ms)
        ),
        Trigger::Memory { above, for_ms } => format!(
            "  memory: {{above: {}, for: {}}}",
            yaml_bytes(above),
            ms(for_ms)
        ),
    };
    Some(format!(
        "# oomguard recommend {} ({} confidence)\nmemory:\n  high: {}\n  max: {}\ntriggers:\n{trigger}\n",
        r.policy,
        word(r.confidence),
        yaml_bytes(high),
        yaml_bytes(max)
    ))
}

fn word(c: Confidence) -> &'static str {
    match c {
        Confidence::Low => "low",
        Confidence::Medium => "medium",
        Confidence::High => "high",
    }
}

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or("?".into(), human_bytes)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("?".into(), |s| format!("{:.1}%", s * 100.0))
}

/// The whole report. `current`: the policy's memory.high and memory.max now, when known.
pub fn human(r: &Recommendation, current: Option<(String, String)>) -> String {
    let e = &r.evidence;
    let mut out = String::new();
    let lifetimes = e.lifetimes_ended + e.lifetimes_running;
    match &r.not_enough {
        Some(why) => {
            let _ = writeln!(out, "{}: NO RECOMMENDATION YET. {why}.", r.policy);
        }
        None => {
            let _ = writeln!(
                out,
                "{}: {} CONFIDENCE, from {lifetimes} lifetime(s) over {} observed{}",
                r.policy,
                word(r.confidence).to_uppercase(),
                ms(e.observed_ms),
                if e.leaking { "; LEAKING" } else { "" }
            );
            let _ = writeln!(out, "\nPaste into the policy file:\n");
            for line in yaml_snippet(r).unwrap_or_default().lines() {
                let _ = writeln!(out, "    {line}");
            }
            if let Some((high, max)) = current {
                let _ = writeln!(out, "\n  (now: memory.high {high}, memory.max {max})");
            }
        }
    }
    let _ = writeln!(out, "\nEvidence");
    let _ = writeln!(
        out,
        "  lifetimes   {} ended, {} running; {} observed in all, {} to {} each",
        e.lifetimes_ended,
        e.lifetimes_running,
        ms(e.observed_ms),
        ms(e.shortest_ms),
        ms(e.longest_ms)
    );
    let _ = writeln!(
        out,
        "  peak        p50 {}  p95 {}  max {}  (anon max {})",
        opt_bytes(e.peak_p50),
        opt_bytes(e.peak_p95),
        opt_bytes(e.peak_max),
        opt_bytes(e.anon_peak_max)
    );
    let growth = match e.growth_bytes_per_s {
        Some(g) => format!(
            "{}{}/s over the steady part of {} lifetime(s){}",
            if g < 0.0 { "-" } else { "" },
            human_bytes(g.abs() as u64),
            e.growth_lifetimes,
            if e.leaking { ": a leak" } else { "" }
        ),
        None => "not measured (no lifetime with 3 readings over 5s of its steady part)".into(),
    };
    let _ = writeln!(out, "  growth      {growth}");
    let _ = writeln!(
        out,
        "  pressure    worst lifetime stalled some {} / full {} of its time",
        pct(e.stall_some_max),
        pct(e.stall_full_max)
    );
    let endings: Vec<String> = e.endings.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(
        out,
        "  endings     {}",
        if endings.is_empty() {
            "-".into()
        } else {
            endings.join(", ")
        }
    );
    let _ = writeln!(out, "  OOM kills   {}", e.oom_kills);
    if !r.reasoning.is_empty() {
        let _ = writeln!(
            out,
            "\nHow (restart lead time {}; docs/recommend.md)",
            ms(r.lead_ms)
        );
        for line in &r.reasoning {
            let _ = writeln!(out, "  {line}");
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "\nNOTE: {n}");
    }
    let _ = writeln!(out, "\nConfidence rule: {}", r.confidence_rule);
    out
}
