//! Turns the goodput sweep's console logs (tests/vm/goodput.rs: `ROW`, `SAMPLE`, `MARK` lines)
//! into docs/benchmarks.md's table and the memory plot, on the host:
//!
//!   cat tests/vm/.cache/logs/bench_goodput_*.log | cargo run -q --example goodput-report -- table
//!     [--job sleep|compute]   (the rows of one job kind: GOODPUT_JOB=sleep or not)
//!   cat tests/vm/.cache/logs/bench_goodput_20.log tests/vm/.cache/logs/bench_goodput_oomd.log |
//!     cargo run --example goodput-report -- svg 20 > docs/goodput.svg
//!
//! The SVG is written by hand (polylines and text): smaller than a plotting crate for one chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read;
use std::process::ExitCode;

/// The fleets in the order the bench runs them, with the README's words for each.
const FLEETS: &[(&str, &str)] = &[
    ("no_guard", "no guard (memory.high alone)"),
    (
        "ceiling",
        "ceiling: the same leak, each MiB freed at once (no growth, no guard)",
    ),
    ("max_respawn", "memory.max + plain respawn"),
    ("earlyoom", "earlyoom (Debian, defaults) + respawn"),
    (
        "naive_psi",
        "naive PSI guard (first event: lift high, SIGTERM, respawn)",
    ),
    ("oomguard", "oomguard, README policy (PSI `some 150ms/1s`)"),
    ("oomguard_overlap", "oomguard + `restart.overlap: true`"),
    (
        "systemd_oomd",
        "systemd-oomd (`ManagedOOMMemoryPressure=kill`, defaults) + `Restart=always`, systemd VM",
    ),
];

/// One `ROW` line: `ROW rate=5 run=1 fleet=x goodput=0.93 ... graceful=3/3` or `... unsupported="why"`.
#[derive(Debug, Default, Clone, PartialEq)]
struct Row {
    rate: u32,
    run: u32,
    fleet: String,
    goodput: f64,
    oom_kills: u64,
    lost: u64,
    restarts: u64,
    graceful: (u64, u64),
    unsupported: Option<String>,
    /// `job=sleep`: the run's jobs slept instead of computing (`oomguard.job=sleep`).
    sleep: bool,
    /// An oomguard fleet's restart breakdown, medians of the run: `t2s_us`, `s2e_ms`, `e2x_ms`,
    /// `ovl_ms`, `dead_ms` (see BREAKDOWN).
    breakdown: BTreeMap<String, u64>,
}

/// The restart breakdown's fields on a ROW line, with the README's words.
const BREAKDOWN: &[(&str, &str)] = &[
    ("t2s_us", "trigger→signal (µs)"),
    ("s2e_ms", "signal→exit (ms)"),
    ("e2x_ms", "exit→exec (ms)"),
    ("ovl_ms", "overlap (ms)"),
    ("dead_ms", "dead time (ms)"),
];

fn parse_row(line: &str) -> Option<Row> {
    let rest = line.trim_end_matches('\r').strip_prefix("ROW ")?;
    let mut row = Row::default();
    if let Some((_, why)) = rest.split_once("unsupported=\"") {
        row.unsupported = Some(why.trim_end_matches('"').to_string());
    }
    for field in rest.split_whitespace() {
        let Some((k, v)) = field.split_once('=') else {
            continue;
        };
        match k {
            "rate" => row.rate = v.parse().ok()?,
            "run" => row.run = v.parse().ok()?,
            "fleet" => row.fleet = v.to_string(),
            "job" => row.sleep = v == "sleep",
            "goodput" => row.goodput = v.parse().ok()?,
            "oom_kills" => row.oom_kills = v.parse().ok()?,
            "lost" => row.lost = v.parse().ok()?,
            "restarts" => row.restarts = v.parse().ok()?,
            "graceful" => {
                let (a, b) = v.split_once('/')?;
                row.graceful = (a.parse().ok()?, b.parse().ok()?);
            }
            k if BREAKDOWN.iter().any(|(n, _)| *n == k) => {
                row.breakdown.insert(k.to_string(), v.parse().ok()?);
            }
            _ => {}
        }
    }
    (!row.fleet.is_empty() && row.rate > 0).then_some(row)
}

/// The middle value (the lower middle for an even count).
fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[(v.len() - 1) / 2]
}

fn span<T: PartialOrd + Copy + std::fmt::Display>(v: &[T]) -> String {
    let m = median(v.to_vec());
    let lo = v.iter().copied().fold(m, |a, b| if b < a { b } else { a });
    let hi = v.iter().copied().fold(m, |a, b| if b > a { b } else { a });
    if lo == hi {
        format!("{m}")
    } else {
        format!("{m} ({lo}-{hi})")
    }
}

/// One markdown cell: median goodput (range over runs), then the counts (median, range if they
/// differ), restarts and how many exits were graceful in all runs together, and the median over
/// runs of goodput / the ceiling fleet's goodput in the same run (`ceiling`: run -> goodput).
fn cell(rows: &[&Row], ceiling: &BTreeMap<u32, f64>) -> String {
    if let Some(why) = rows.iter().find_map(|r| r.unsupported.as_ref()) {
        return format!("{} ({} runs)", short_reason(why), rows.len());
    }
    let g: Vec<f64> = rows.iter().map(|r| r.goodput).collect();
    let m = median(g.clone());
    let lo = g.iter().copied().fold(m, f64::min);
    let hi = g.iter().copied().fold(m, f64::max);
    let goodput = if rows.len() > 1 {
        format!("**{m:.2}** ({lo:.2}-{hi:.2}, {} runs)", rows.len())
    } else {
        format!("**{m:.2}** (1 run)")
    };
    let counts = |f: fn(&Row) -> u64| span(&rows.iter().map(|r| f(r)).collect::<Vec<_>>());
    let (clean, gone) = rows
        .iter()
        .fold((0, 0), |(c, g), r| (c + r.graceful.0, g + r.graceful.1));
    let of_ceiling: Vec<f64> = rows
        .iter()
        // systemd-oomd runs in the systemd VM: no ceiling ran beside it.
        .filter(|r| r.fleet != "ceiling" && r.fleet != "systemd_oomd")
        .filter_map(|r| ceiling.get(&r.run).map(|c| r.goodput / c.max(1e-9)))
        .collect();
    let of_ceiling = if of_ceiling.is_empty() {
        String::new()
    } else {
        format!("<br>{:.2} of the ceiling", median(of_ceiling))
    };
    format!(
        "{goodput}<br>{} OOM, {} lost, {} restarts, {clean}/{gone} graceful{of_ceiling}",
        counts(|r| r.oom_kills),
        counts(|r| r.lost),
        counts(|r| r.restarts)
    )
}

/// The restart breakdown of the fleets that report one (oomguard's): per fleet and rate, the
/// median over runs of each run's median. Empty when no row carries one.
fn breakdown_table(rows: &[Row]) -> String {
    let mut keys: Vec<(&str, u32, bool)> = rows
        .iter()
        .filter(|r| !r.breakdown.is_empty())
        .map(|r| (r.fleet.as_str(), r.rate, r.sleep))
        .collect();
    keys.sort_by_key(|(f, rate, sleep)| {
        let order = FLEETS
            .iter()
            .position(|(n, _)| n == f)
            .unwrap_or(usize::MAX);
        (order, *sleep, *rate)
    });
    keys.dedup();
    if keys.is_empty() {
        return String::new();
    }
    let mut out = String::from("| restarts of | leak |");
    for (_, words) in BREAKDOWN {
        let _ = write!(out, " {words} |");
    }
    out.push_str("\n|---|---|");
    out.push_str(&"---|".repeat(BREAKDOWN.len()));
    out.push('\n');
    for (fleet, rate, sleep) in keys {
        let these: Vec<&Row> = rows
            .iter()
            .filter(|r| r.fleet == fleet && r.rate == rate && r.sleep == sleep)
            .collect();
        let suffix = if sleep { ", sleeping jobs" } else { "" };
        let _ = write!(out, "| {fleet}{suffix} | {rate} MB/s |");
        for (field, _) in BREAKDOWN {
            let v: Vec<u64> = these
                .iter()
                .filter_map(|r| r.breakdown.get(*field).copied())
                .collect();
            let text = if v.is_empty() {
                "—".to_string()
            } else {
                median(v).to_string()
            };
            let _ = write!(out, " {text} |");
        }
        out.push('\n');
    }
    out
}

/// `unsupported by this build: error: /tmp/x.yaml: restart.overlap: line 15: unknown key: expected
/// one of ...` -> `unsupported by this build: restart.overlap: line 15: unknown key` (the file is
/// the bench's, the list of keys is in the log).
fn short_reason(why: &str) -> String {
    let (head, rest) = why.split_once("error: ").unwrap_or(("", why));
    let rest = rest.split_once(".yaml: ").map_or(rest, |(_, r)| r);
    let rest = rest.split(": expected").next().unwrap_or(rest);
    format!("{head}{}", rest.trim_end_matches(';'))
}

fn table(rows: &[Row]) -> String {
    let mut rates: Vec<u32> = rows.iter().map(|r| r.rate).collect();
    rates.sort_unstable();
    rates.dedup();
    let mut out = String::from("| fleet |");
    for rate in &rates {
        let _ = write!(out, " {rate} MB/s |");
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(rates.len()));
    out.push('\n');
    let mut names: Vec<(&str, &str)> = FLEETS.to_vec();
    for r in rows {
        if !names.iter().any(|(n, _)| *n == r.fleet) {
            names.push((&r.fleet, &r.fleet));
        }
    }
    for (name, words) in &names {
        for sleep in [false, true] {
            let of = |r: &&Row| r.fleet == *name && r.sleep == sleep;
            if !rows.iter().any(|r| of(&r)) {
                continue;
            }
            let suffix = if sleep { ", sleeping jobs" } else { "" };
            let _ = write!(out, "| {words}{suffix} |");
            for rate in &rates {
                let these: Vec<&Row> = rows.iter().filter(|r| r.rate == *rate && of(r)).collect();
                let ceiling: BTreeMap<u32, f64> = rows
                    .iter()
                    .filter(|r| r.fleet == "ceiling" && r.rate == *rate && r.sleep == sleep)
                    .filter(|r| r.unsupported.is_none())
                    .map(|r| (r.run, r.goodput))
                    .collect();
                let text = if these.is_empty() {
                    "not run".to_string()
                } else {
                    cell(&these, &ceiling)
                };
                let _ = write!(out, " {text} |");
            }
            out.push('\n');
        }
    }
    out
}

/// memory.current samples (ms, KiB) and restart marks (ms) per fleet for one rate.
type Series = BTreeMap<String, (Vec<(u64, u64)>, Vec<u64>)>;

fn series(text: &str, rate: u32) -> Series {
    let mut s = Series::new();
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let ours = f.get(1).and_then(|r| r.parse::<u32>().ok()) == Some(rate);
        match (f.first(), ours, f.len()) {
            (Some(&"SAMPLE"), true, 5) => {
                if let (Ok(ms), Ok(kib)) = (f[3].parse(), f[4].parse()) {
                    s.entry(f[2].to_string()).or_default().0.push((ms, kib));
                }
            }
            (Some(&"MARK"), true, 4) => {
                if let Ok(ms) = f[3].parse() {
                    s.entry(f[2].to_string()).or_default().1.push(ms);
                }
            }
            _ => {}
        }
    }
    s
}

/// One panel per fleet: memory.current (blue), memory.high 40M and memory.max 64M (dashed),
/// a red tick per restart.
fn svg(s: &Series, rate: u32) -> String {
    let (w, ph, left, top) = (760.0, 120.0, 60.0, 40.0);
    let plot_w = w - left - 20.0;
    let t_max = s
        .values()
        .flat_map(|(p, _)| p.iter().map(|x| x.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let y_max = 72.0 * 1024.0;
    let order: Vec<&String> = FLEETS
        .iter()
        .filter_map(|(n, _)| s.get_key_value(*n).map(|(k, _)| k))
        .chain(s.keys().filter(|k| !FLEETS.iter().any(|(n, _)| n == k)))
        .collect();
    let h = top + ph * order.len() as f64 + 30.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">memory.current of the leaking worker's group, {rate} MB/s leak (red: a new worker pid, i.e. a restart)</text>\n"
    );
    for (i, name) in order.iter().enumerate() {
        let (points, marks) = &s[*name];
        let y0 = top + ph * i as f64;
        let plot_h = ph - 30.0;
        let y = |kib: f64| y0 + plot_h - kib.min(y_max) / y_max * plot_h;
        let x = |ms: f64| left + ms / t_max * plot_w;
        let words = FLEETS
            .iter()
            .find(|(n, _)| n == name)
            .map_or(name.as_str(), |(_, w)| w);
        let _ = writeln!(
            out,
            "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{}</text>",
            y0 + 2.0,
            xml(words)
        );
        let _ = writeln!(
            out,
            "<rect x=\"{left}\" y=\"{}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#888\"/>",
            y0
        );
        for (mib, label) in [(40.0, "high 40M"), (64.0, "max 64M")] {
            let yy = y(mib * 1024.0);
            let _ = writeln!(
                out,
                "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy:.1}\" y2=\"{yy:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\
                 <text x=\"4\" y=\"{:.1}\" fill=\"#666\">{label}</text>",
                left + plot_w,
                yy + 4.0
            );
        }
        for ms in marks {
            let xx = x(*ms as f64);
            let _ = writeln!(
                out,
                "<line x1=\"{xx:.1}\" x2=\"{xx:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"red\"/>",
                y0,
                y0 + plot_h
            );
        }
        let pts: Vec<String> = points
            .iter()
            .map(|(ms, kib)| format!("{:.1},{:.1}", x(*ms as f64), y(*kib as f64)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"1.2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for sec in (0..=(t_max / 1000.0) as u64).step_by(10) {
            let xx = x(sec as f64 * 1000.0);
            let _ = writeln!(out, "<text x=\"{xx:.1}\" y=\"{:.1}\" fill=\"#666\" text-anchor=\"middle\">{sec} s</text>", y0 + plot_h + 12.0);
        }
    }
    out.push_str("</svg>\n");
    out
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('`', "")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("goodput-report: cannot read the logs on stdin: {e}");
        return ExitCode::from(1);
    }
    // A serial console is not always valid UTF-8; the lines read here are ASCII.
    let text = String::from_utf8_lossy(&bytes);
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["table", ref kind @ ..] => {
            // `table --job sleep|compute`: only the rows of that job kind (an unsupported row ran
            // no jobs, and a build before job= on those rows did not mark it: it is kept).
            let keep: fn(&Row) -> bool = match kind {
                [] => |_| true,
                ["--job", "sleep"] => |r| r.sleep,
                ["--job", "compute"] => |r| !r.sleep,
                _ => {
                    eprintln!("goodput-report: table takes --job sleep or --job compute");
                    return ExitCode::from(2);
                }
            };
            let rows: Vec<Row> = text
                .lines()
                .filter_map(parse_row)
                .filter(|r| r.unsupported.is_some() || keep(r))
                .collect();
            if rows.is_empty() {
                eprintln!(
                    "goodput-report: no ROW lines on stdin (the bench_goodput_* console logs)"
                );
                return ExitCode::from(1);
            }
            print!("{}", table(&rows));
            let breakdown = breakdown_table(&rows);
            if !breakdown.is_empty() {
                print!("\n{breakdown}");
            }
            ExitCode::SUCCESS
        }
        ["svg", rate] => {
            let Ok(rate) = rate.parse() else {
                eprintln!("goodput-report: svg needs a leak rate in MB/s, got {rate:?}");
                return ExitCode::from(2);
            };
            let s = series(&text, rate);
            if s.is_empty() {
                eprintln!("goodput-report: no SAMPLE lines for {rate} MB/s on stdin");
                return ExitCode::from(1);
            }
            print!("{}", svg(&s, rate));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: goodput-report table [--job sleep|compute] | svg <rate>   (console logs on stdin)"
            );
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "ROW rate=5 run=1 fleet=naive_psi goodput=0.930 leaky_jobs=700 twin_jobs=750,752 oom_kills=0 lost=0 restarts=3 graceful=3/3\r\n\
        [ 12.3] kernel noise\n\
        ROW rate=5 run=2 fleet=naive_psi goodput=0.910 leaky_jobs=690 twin_jobs=750,752 oom_kills=1 lost=1 restarts=4 graceful=3/4\n\
        ROW rate=5 run=3 fleet=naive_psi goodput=0.950 leaky_jobs=710 twin_jobs=750,752 oom_kills=0 lost=0 restarts=3 graceful=3/3\n\
        ROW rate=5 run=1 fleet=oomguard_overlap unsupported=\"unsupported by this build: unknown key 'overlap'\"\n\
        SAMPLE 5 naive_psi 100 2048\nSAMPLE 5 naive_psi 200 4096\nMARK 5 naive_psi 200\nSAMPLE 20 naive_psi 100 1\n";

    #[test]
    fn parses_rows_and_skips_noise() {
        let rows: Vec<Row> = LOG.lines().filter_map(parse_row).collect();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[1].graceful, (3, 4));
        assert_eq!(rows[1].oom_kills, 1);
        assert!(rows[3].unsupported.as_deref().unwrap().contains("overlap"));
    }

    #[test]
    fn the_table_shows_medians_ranges_and_unsupported_rows() {
        let rows: Vec<Row> = LOG.lines().filter_map(parse_row).collect();
        let t = table(&rows);
        assert!(t.contains("| 5 MB/s |"), "{t}");
        assert!(t.contains("**0.93** (0.91-0.95, 3 runs)<br>0 (0-1) OOM, 0 (0-1) lost, 3 (3-4) restarts, 9/10 graceful"), "{t}");
        assert!(
            t.contains("unsupported by this build: unknown key 'overlap' (1 runs)"),
            "{t}"
        );
    }

    #[test]
    fn each_cell_says_its_share_of_the_ceiling_in_the_same_run_and_restarts_break_down() {
        let log = "ROW rate=20 run=1 fleet=ceiling goodput=0.800 restarts=0 graceful=0/0\n\
            ROW rate=20 run=2 fleet=ceiling goodput=0.900 restarts=0 graceful=0/0\n\
            ROW rate=20 run=1 fleet=oomguard goodput=0.760 restarts=9 graceful=9/9 t2s_us=300 s2e_ms=60 e2x_ms=40 dead_ms=40\n\
            ROW rate=20 run=2 fleet=oomguard goodput=0.810 restarts=9 graceful=9/9 t2s_us=500 s2e_ms=70 e2x_ms=44 dead_ms=44\n";
        let rows: Vec<Row> = log.lines().filter_map(parse_row).collect();
        let t = table(&rows);
        // Run by run: 0.76/0.80 = 0.95 and 0.81/0.90 = 0.90; the lower middle of two is 0.90.
        assert!(t.contains("18/18 graceful<br>0.90 of the ceiling |"), "{t}");
        assert!(
            !t.contains("0/0 graceful<br>"),
            "the ceiling is not measured against itself: {t}"
        );
        let b = breakdown_table(&rows);
        assert!(
            b.contains("| oomguard | 20 MB/s | 300 | 60 | 40 | — | 40 |"),
            "{b}"
        );
        assert_eq!(b.lines().count(), 3, "{b}");
    }

    #[test]
    fn the_plot_has_one_panel_per_fleet_with_restart_marks() {
        let s = series(LOG, 5);
        assert_eq!(s["naive_psi"].0, vec![(100, 2048), (200, 4096)]);
        assert_eq!(s["naive_psi"].1, vec![200]);
        let svg = svg(&s, 5);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert_eq!(svg.matches("stroke=\"red\"").count(), 1);
    }
}
