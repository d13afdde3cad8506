use super::*;
use crate::observations::{Lifetime, Reading};

/// A lifetime of `secs` seconds read every 2 s: anon = base + rate x t (rate in bytes/s).
fn life(secs: u64, base: u64, rate: u64, how: Option<&str>) -> Lifetime {
    let r = |anon: u64| Reading {
        anon: Some(anon),
        current: Some(anon + MIB),
        group_peak: None,
        stall_us: Some((0, 0)),
    };
    let mut l = Lifetime::begin("w/0", 1, 0, r(0));
    for t in (1..=secs / 2).map(|i| i * 2) {
        l.record(t * 1000, r(base + rate * t));
    }
    if let Some(how) = how {
        l.end(secs * 1000, how, 0, r(base + rate * secs));
    }
    l
}

fn cx() -> Context {
    Context {
        lead: Duration::from_secs(35),
    }
}

#[test]
fn a_flat_worker_gets_headroom_over_its_p95_and_a_pressure_trigger() {
    let ended: Vec<Lifetime> = (0..4)
        .map(|_| life(600, 30 * MIB, 0, Some("manual")))
        .collect();
    let r = recommend("w", &ended, &[life(600, 30 * MIB, 0, None)], cx());
    assert_eq!(r.not_enough, None);
    let peak = 31 * MIB; // memory.current read = anon + 1M
    assert_eq!(r.evidence.peak_p95, Some(peak));
    assert_eq!(r.high, Some(round_up_mib(peak as f64 * HEADROOM)));
    let high = r.high.unwrap();
    assert!(r.max.unwrap() >= high + MIN_GAP && r.max.unwrap() >= high + high / 4);
    assert!(!r.evidence.leaking, "{:?}", r.evidence.growth_bytes_per_s);
    assert!(r.evidence.growth_bytes_per_s.unwrap().abs() < 1.0);
    assert!(matches!(r.trigger, Some(Trigger::Pressure { .. })));
    // 5 lifetimes, 50 minutes: not yet an hour.
    assert_eq!(r.confidence, Confidence::Low);
}

#[test]
fn a_leak_gets_a_memory_trigger_below_high_and_the_note_that_limits_do_not_fix_it() {
    let rate = 2 * MIB;
    let ended: Vec<Lifetime> = (0..3)
        .map(|_| life(20, 4 * MIB, rate, Some("exited")))
        .collect();
    let r = recommend("w", &ended, &[], cx());
    let e = &r.evidence;
    assert!(e.leaking);
    let g = e.growth_bytes_per_s.unwrap();
    assert!((g - rate as f64).abs() < rate as f64 * 0.01, "{g}");
    let (high, max) = (r.high.unwrap(), r.max.unwrap());
    assert!(
        max >= high + 35 * rate,
        "max covers the growth over the lead time"
    );
    match r.trigger {
        Some(Trigger::Memory { above, for_ms }) => {
            assert!(above < high && above as f64 <= high as f64 - 6.0 * g + MIB as f64);
            assert_eq!(for_ms, 5000);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        r.notes.iter().any(|n| n.contains("will not fix a leak")),
        "{:?}",
        r.notes
    );
    assert_eq!(e.endings["exited"], 3);
}

#[test]
fn start_up_growth_is_not_a_leak() {
    // 100M allocated in the first 10 s, then flat for 10 minutes.
    let mut l = life(10, 0, 10 * MIB, None);
    for t in (6..300).map(|i| i * 2) {
        l.record(
            t * 1000,
            Reading {
                anon: Some(100 * MIB),
                ..Reading::default()
            },
        );
    }
    assert!(steady_growth(&l).unwrap().abs() < 1.0);
    assert!(!evidence(&[], &[l]).leaking);
}

#[test]
fn too_little_data_proposes_nothing_and_says_why() {
    let r = recommend("w", &[], &[life(10, MIB, 0, None)], cx());
    assert_eq!((r.high, r.max, r.trigger), (None, None, None));
    assert!(r.not_enough.as_ref().unwrap().contains("not enough data"));
    assert!(yaml_snippet(&r).is_none());
    assert!(human(&r, None).contains("NO RECOMMENDATION YET"));
    let none = recommend("w", &[], &[], cx());
    assert!(none.not_enough.is_some());
}

#[test]
fn confidence_follows_the_written_rule() {
    let mut e = Evidence {
        lifetimes_ended: 9,
        lifetimes_running: 1,
        observed_ms: 24 * 3_600_000,
        stall_some_max: Some(0.01),
        ..Evidence::default()
    };
    assert_eq!(confidence(&e), Confidence::High);
    e.stall_some_max = Some(0.2);
    assert_eq!(confidence(&e), Confidence::Medium);
    e.observed_ms = 3_599_999;
    assert_eq!(confidence(&e), Confidence::Low);
    e.observed_ms = 3_600_000;
    e.oom_kills = 1;
    assert_eq!(confidence(&e), Confidence::Low);
    e.oom_kills = 0;
    e.lifetimes_ended = 1;
    assert_eq!(confidence(&e), Confidence::Low, "2 lifetimes");
}

#[test]
fn the_snippet_is_a_valid_policy() {
    let ended: Vec<Lifetime> = (0..3)
        .map(|_| life(20, 4 * MIB, 2 * MIB, Some("exited")))
        .collect();
    for r in [
        recommend("w", &ended, &[], cx()),
        recommend("w", &[], &[life(600, 30 * MIB, 0, None)], cx()),
    ] {
        let snippet = yaml_snippet(&r).unwrap();
        let text = format!("name: web\nrun:\n  command: [\"/bin/true\"]\n{snippet}");
        let p = crate::policy::parse(std::path::Path::new("/etc/oomguard/web.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e:?}\n{text}"));
        assert_eq!(p.memory.high.bytes(), r.high);
        assert_eq!(p.memory.max.bytes(), r.max);
        let human = human(&r, Some(("1G".into(), "2G".into())));
        assert!(human.contains("Paste into the policy file"), "{human}");
        assert!(human.contains("now: memory.high 1G"), "{human}");
    }
}

#[test]
fn percentiles_are_nearest_rank() {
    let v: Vec<u64> = (1..=20).collect();
    assert_eq!(percentile(&v, 0.95), Some(19));
    assert_eq!(percentile(&v, 0.5), Some(10));
    assert_eq!(percentile(&[7], 0.95), Some(7));
}
