//! `oomguard recommend`: memory.high, memory.max and a trigger proposed from observed worker
//! lifetimes, with the evidence and a confidence. Pure: lifetimes in, a recommendation out (the
//! rule is written down in docs/recommend.md; keep the two in step). `render` words it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::observations::Lifetime;

mod render;
pub use render::{human, yaml_snippet};

const MIB: u64 = 1 << 20;
/// memory.high = peak p95 x this.
pub const HEADROOM: f64 = 1.25;
/// The smallest gap between memory.high and memory.max, and the smallest memory.high.
pub const MIN_GAP: u64 = 16 * MIB;
/// Below this much observed time (all lifetimes together) no numbers are proposed.
pub const MIN_OBSERVED: Duration = Duration::from_secs(30);
/// Growth over a lifetime's steady part counts as a leak when it explains at least this share
/// of the median peak over a median lifetime...
pub const LEAK_SHARE: f64 = 0.25;
/// ...and is at least this fast (bytes/s), so that noise on a flat worker is not a leak.
pub const LEAK_MIN_RATE: f64 = 1024.0;
/// The steady part of a lifetime: after this share of it (start-up allocations excluded).
pub const STEADY_FROM: f64 = 0.25;
/// The memory trigger proposed for a leak.
pub const MEMORY_TRIGGER_FOR: Duration = Duration::from_secs(5);

/// What the recommendation is computed against: how long a restart takes to free memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Context {
    /// restart.grace plus the trigger's detection time: memory keeps growing meanwhile.
    pub lead: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// The rule, printed with every recommendation.
pub const CONFIDENCE_RULE: &str = "high: >= 10 lifetimes and >= 24h observed, no OOM kill, no \
    lifetime stalled >= 10%; medium: >= 3 lifetimes and >= 1h observed, no OOM kill; low otherwise";

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// `pressure: {some: .., window: .., for: ..}` (milliseconds).
    Pressure {
        some_ms: u64,
        window_ms: u64,
        for_ms: u64,
    },
    /// `memory: {above: .., for: ..}`.
    Memory { above: u64, for_ms: u64 },
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub lifetimes_ended: usize,
    pub lifetimes_running: usize,
    pub observed_ms: u64,
    pub shortest_ms: u64,
    pub longest_ms: u64,
    pub peak_p50: Option<u64>,
    pub peak_p95: Option<u64>,
    pub peak_max: Option<u64>,
    pub anon_peak_max: Option<u64>,
    /// Median over lifetimes of anon growth over their steady part, bytes/s.
    pub growth_bytes_per_s: Option<f64>,
    /// Lifetimes the growth was measured on.
    pub growth_lifetimes: usize,
    pub leaking: bool,
    /// The largest share of a lifetime spent stalled on memory (PSI some / full), 0.0-1.0.
    pub stall_some_max: Option<f64>,
    pub stall_full_max: Option<f64>,
    pub oom_kills: u64,
    pub endings: BTreeMap<String, usize>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub policy: String,
    /// None when there is not enough data; `not_enough` then says why.
    pub high: Option<u64>,
    pub max: Option<u64>,
    pub trigger: Option<Trigger>,
    pub not_enough: Option<String>,
    pub confidence: Confidence,
    pub confidence_rule: String,
    /// How each number was reached, in words.
    pub reasoning: Vec<String>,
    pub notes: Vec<String>,
    pub evidence: Evidence,
    pub lead_ms: u64,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// Least-squares slope (bytes/s) of anon over the lifetime's steady part; None with fewer than
/// 3 points or under 5 s there.
pub fn steady_growth(l: &Lifetime) -> Option<f64> {
    let end = l.points.last()?.0 as f64;
    let pts: Vec<(f64, f64)> = l
        .points
        .iter()
        .filter(|p| p.0 as f64 >= end * STEADY_FROM)
        .map(|p| (p.0 as f64 / 1000.0, p.1 as f64))
        .collect();
    let span = pts.last()?.0 - pts.first()?.0;
    if pts.len() < 3 || span < 5.0 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (
        pts.iter().map(|p| p.0).sum::<f64>() / n,
        pts.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn median_f(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[(v.len() - 1) / 2])
}

fn round_up_mib(b: f64) -> u64 {
    ((b.max(0.0) / MIB as f64).ceil() as u64).max(1) * MIB
}

fn round_down_mib(b: f64) -> u64 {
    ((b.max(0.0) / MIB as f64).floor() as u64).max(1) * MIB
}

pub fn evidence(ended: &[Lifetime], live: &[Lifetime]) -> Evidence {
    let all: Vec<&Lifetime> = ended.iter().chain(live).collect();
    let mut peaks: Vec<u64> = all
        .iter()
        .filter_map(|l| l.peak_total().or(l.peak_anon))
        .collect();
    peaks.sort_unstable();
    let durations: Vec<u64> = all.iter().map(|l| l.duration_ms()).collect();
    let slopes: Vec<f64> = all.iter().filter_map(|l| steady_growth(l)).collect();
    let growth_lifetimes = slopes.len();
    let growth = median_f(slopes);
    let p50 = percentile(&peaks, 0.5);
    let median_life = percentile(
        &{
            let mut d = durations.clone();
            d.sort_unstable();
            d
        },
        0.5,
    );
    let leaking = match (growth, p50, median_life) {
        (Some(g), Some(p), Some(life)) => {
            g >= LEAK_MIN_RATE && g * (life as f64 / 1000.0) >= LEAK_SHARE * p as f64
        }
        _ => false,
    };
    let shares: Vec<(f64, f64)> = all.iter().filter_map(|l| l.stall_share()).collect();
    let fmax = |f: fn(&(f64, f64)) -> f64| shares.iter().map(f).reduce(f64::max);
    let mut endings = BTreeMap::new();
    for l in ended {
        *endings
            .entry(l.ended.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    Evidence {
        lifetimes_ended: ended.len(),
        lifetimes_running: live.len(),
        observed_ms: durations.iter().sum(),
        shortest_ms: durations.iter().copied().min().unwrap_or(0),
        longest_ms: durations.iter().copied().max().unwrap_or(0),
        peak_p50: p50,
        peak_p95: percentile(&peaks, 0.95),
        peak_max: peaks.last().copied(),
        anon_peak_max: all.iter().filter_map(|l| l.peak_anon).max(),
        growth_bytes_per_s: growth,
        growth_lifetimes,
        leaking,
        stall_some_max: fmax(|s| s.0),
        stall_full_max: fmax(|s| s.1),
        oom_kills: all.iter().map(|l| l.oom_kills).sum(),
        endings,
    }
}

pub fn confidence(e: &Evidence) -> Confidence {
    let lifetimes = e.lifetimes_ended + e.lifetimes_running;
    let hours = e.observed_ms as f64 / 3_600_000.0;
    let stalled = e.stall_some_max.is_some_and(|s| s >= 0.10);
    if e.oom_kills > 0 {
        Confidence::Low
    } else if lifetimes >= 10 && hours >= 24.0 && !stalled {
        Confidence::High
    } else if lifetimes >= 3 && hours >= 1.0 {
        Confidence::Medium
    } else {
        Confidence::Low
    }
}

pub fn recommend(
    policy: &str,
    ended: &[Lifetime],
    live: &[Lifetime],
    cx: Context,
) -> Recommendation {
    let e = evidence(ended, live);
    let mut r = Recommendation {
        policy: policy.into(),
        high: None,
        max: None,
        trigger: None,
        not_enough: None,
        confidence: confidence(&e),
        confidence_rule: CONFIDENCE_RULE.into(),
        reasoning: Vec::new(),
        notes: Vec::new(),
        evidence: e.clone(),
        lead_ms: cx.lead.as_millis() as u64,
    };
    let (Some(p95), true) = (e.peak_p95, e.observed_ms >= MIN_OBSERVED.as_millis() as u64) else {
        r.not_enough = Some(format!(
            "not enough data: {} lifetime(s), {:.0}s observed, {} with a memory peak; \
             need at least {}s observed and one peak. Keep the policy in `mode: observe` longer",
            e.lifetimes_ended + e.lifetimes_running,
            e.observed_ms as f64 / 1000.0,
            if e.peak_p95.is_some() { "some" } else { "none" },
            MIN_OBSERVED.as_secs()
        ));
        return r;
    };
    let high = round_up_mib(p95 as f64 * HEADROOM).max(MIN_GAP);
    r.reasoning.push(format!(
        "memory.high = peak p95 {} x {HEADROOM} = {}",
        crate::units::human_bytes(p95),
        crate::units::human_bytes(high)
    ));
    let growth = e.growth_bytes_per_s.unwrap_or(0.0).max(0.0);
    let during_lead = growth * cx.lead.as_secs_f64();
    let gap = during_lead.max(high as f64 * 0.25).max(MIN_GAP as f64);
    let max = round_up_mib(high as f64 + gap);
    r.reasoning.push(format!(
        "memory.max = high + the largest of: growth over the restart lead time {} ({}/s x {}s), \
         25% of high, {}",
        crate::units::human_bytes(during_lead as u64),
        crate::units::human_bytes(growth as u64),
        cx.lead.as_secs(),
        crate::units::human_bytes(MIN_GAP)
    ));
    let trigger = if e.leaking {
        // Fire before memory.high: what the leak adds while the trigger holds and samples.
        let margin = growth * (MEMORY_TRIGGER_FOR.as_secs_f64() + 1.0);
        let above = round_down_mib((high as f64 - margin).max(high as f64 * 0.5));
        r.reasoning.push(format!(
            "trigger memory.above = high - growth x ({}s for + 1s sampling), at least half of high",
            MEMORY_TRIGGER_FOR.as_secs()
        ));
        r.notes.push(format!(
            "LEAKING: anon memory grows {}/s through each lifetime. Raising the limits will not \
             fix a leak; it only moves the restart later. The memory trigger recycles the worker \
             gracefully at {} (about every {}); fix the leak to stop the restarts",
            crate::units::human_bytes(growth as u64),
            crate::units::human_bytes(above),
            crate::units::fmt_dur(Duration::from_secs_f64(above as f64 / growth.max(1.0)))
        ));
        Trigger::Memory {
            above,
            for_ms: MEMORY_TRIGGER_FOR.as_millis() as u64,
        }
    } else {
        r.reasoning
            .push("trigger: pressure (no leak seen), the README's default".into());
        Trigger::Pressure {
            some_ms: 150,
            window_ms: 1000,
            for_ms: 2000,
        }
    };
    if e.oom_kills > 0 {
        r.notes.push(format!(
            "{} OOM kill(s) observed: those lifetimes were cut at memory.max, so their real peak \
             is unknown and may be higher",
            e.oom_kills
        ));
    }
    if e.stall_some_max.is_some_and(|s| s >= 0.10) {
        r.notes.push(
            "a lifetime spent >= 10% of its time stalled on memory: it was throttled at the \
             current memory.high, so its peak understates what it wanted"
                .into(),
        );
    }
    if growth > 0.0 && !e.leaking && e.growth_lifetimes > 0 {
        r.notes.push(format!(
            "slow growth {}/s, too little to call a leak over a lifetime",
            crate::units::human_bytes(growth as u64)
        ));
    }
    r.high = Some(high);
    r.max = Some(max);
    r.trigger = Some(trigger);
    r
}

#[cfg(test)]
mod tests;
