//! The goodput sweep of issue 9 (`tests/vm/run.sh bench_goodput`: one VM per leak rate, rows
//! `bench_goodput_<rate>`). In each run every fleet runs side by side for 40 s: one worker leaking
//! `<rate>` MB/s per 50 ms job beside two healthy twins, groups memory.high 40M / memory.max 64M.
//! Goodput = the leaky worker's completed jobs / the mean of its two twins'. Prints one `ROW`
//! line per fleet and run (read by `cargo run --example goodput-report`), and in the first run
//! `SAMPLE`/`MARK` lines for the plot. Fails only when something is broken, never on a figure.

#[path = "goodput/supervise.rs"]
mod supervise;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, sleep, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use oomguard::protocol::EventRecord;

use crate::harness::*;
use supervise::{pids_under, write, Guard, Member};

const PHASE: Duration = Duration::from_secs(40);
const HIGH: &str = "40M";
const MAX: &str = "64M";
const BENCH_ROOT: &str = "/sys/fs/cgroup/bench";
const EARLYOOM: &str = "/bin/earlyoom";
const ROLES: [&str; 3] = ["leaky", "twin-a", "twin-b"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Supervised by the bench itself (goodput/supervise.rs).
    Bench(Guard),
    /// Run by the oomguard daemon under test.
    Oomguard { overlap: bool },
}

struct Fleet {
    name: &'static str,
    kind: Kind,
    high: &'static str,
    max: &'static str,
    /// The leaky worker gives each leaked MiB back at once (testworker `--leak-freed`).
    freed: bool,
}

const FLEETS: &[Fleet] = &[
    // memory.high alone: the kernel throttles the leaker and nobody acts.
    Fleet {
        name: "no_guard",
        kind: Kind::Bench(Guard::None),
        high: HIGH,
        max: "max",
        freed: false,
    },
    // The ceiling no guard can pass: the same leak's page faults and charges, each MiB given
    // back at once, so the worker never grows and nothing restarts it. What separates this row
    // from the twins' 1.0 is the cost of the leaking itself under TCG, not any guard's doing.
    Fleet {
        name: "ceiling",
        kind: Kind::Bench(Guard::None),
        high: "max",
        max: "max",
        freed: true,
    },
    // A hard cap and a plain respawn (what a container restart policy gives): no memory.high,
    // so the worker runs at full speed until the kernel OOM-kills it at 64M.
    Fleet {
        name: "max_respawn",
        kind: Kind::Bench(Guard::Respawn),
        high: "max",
        max: MAX,
        freed: false,
    },
    // Debian's earlyoom with its defaults (it watches the machine's free memory, not groups),
    // beside the same respawn loop so a worker it or the kernel kills comes back.
    Fleet {
        name: "earlyoom",
        kind: Kind::Bench(Guard::Respawn),
        high: HIGH,
        max: MAX,
        freed: false,
    },
    // Issue 9's naive shell guard: first PSI event, lift high, SIGTERM, respawn.
    Fleet {
        name: "naive_psi",
        kind: Kind::Bench(Guard::NaivePsi { high: HIGH }),
        high: HIGH,
        max: MAX,
        freed: false,
    },
    // The README example policy as a new user writes it: PSI `{some: 150ms, window: 1s}`.
    Fleet {
        name: "oomguard",
        kind: Kind::Oomguard { overlap: false },
        high: HIGH,
        max: MAX,
        freed: false,
    },
    // The same with make-before-break restarts (`restart.overlap: true`, issue 9 item 3).
    Fleet {
        name: "oomguard_overlap",
        kind: Kind::Oomguard { overlap: true },
        high: HIGH,
        max: MAX,
        freed: false,
    },
];

/// `oomguard.leak=<MB/s>` and `oomguard.runs=<n>` from the kernel command line.
fn cmdline_number(key: &str, default: Option<u32>) -> Result<u32> {
    let cmdline = fs::read_to_string("/proc/cmdline")?;
    match cmdline.split_whitespace().find_map(|w| w.strip_prefix(key)) {
        Some(v) => v.parse().with_context(|| format!("{key}{v}: not a number")),
        None => default.ok_or_else(|| anyhow!("no {key}<n> on the kernel command line")),
    }
}

pub fn bench_goodput_rate() -> Result<()> {
    let rate = cmdline_number("oomguard.leak=", None)?;
    let runs = cmdline_number("oomguard.runs=", Some(3))?;
    make_ledger_dir()?;
    fs::create_dir_all(BENCH_ROOT)?;
    write(Path::new(BENCH_ROOT), "cgroup.subtree_control", "+memory")?;
    for run in 1..=runs {
        run_once(rate, run).with_context(|| format!("{rate} MB/s, run {run}"))?;
    }
    Ok(())
}

/// What a fleet's groups and counters are during one run.
struct Live {
    fleet: &'static Fleet,
    /// The leaky worker's group (for oomguard the policy group: overlap may add child groups).
    leaky_group: PathBuf,
    groups: Vec<PathBuf>,
    ledgers: Vec<String>,
    restarts: Arc<AtomicU64>,
    unsupported: Option<String>,
}

fn run_once(rate: u32, run: u32) -> Result<()> {
    let policy_dir = format!("/tmp/goodput-r{run}");
    let mut lives = Vec::new();
    let mut ids = Vec::new();
    for fleet in FLEETS {
        let ledgers: Vec<String> = ROLES
            .iter()
            .map(|r| ledger_path(&format!("r{run}-{}-{r}", fleet.name)))
            .collect();
        let (groups, unsupported) = match fleet.kind {
            Kind::Bench(_) => {
                let base = Path::new(BENCH_ROOT).join(fleet.name);
                let unsupported = (fleet.name == "earlyoom" && !Path::new(EARLYOOM).exists())
                    .then(|| format!("{EARLYOOM} is not in the image"));
                (ROLES.iter().map(|r| base.join(r)).collect(), unsupported)
            }
            Kind::Oomguard { overlap } => {
                let mut groups = Vec::new();
                let mut unsupported = None;
                for (role, ledger) in ROLES.iter().zip(&ledgers) {
                    let name = format!("r{run}-{}-{role}", fleet.name);
                    let yaml = policy(
                        &name,
                        fleet,
                        ledger,
                        if *role == "leaky" { rate } else { 0 },
                        overlap,
                    );
                    unsupported = unsupported.or(check_policy(&name, &yaml)?);
                    groups.push(Path::new(CGROUP_ROOT).join(&name));
                    if unsupported.is_none() {
                        write_policy(&policy_dir, &name, &yaml)?;
                        ids.push(format!("{name}/0"));
                    }
                }
                (groups, unsupported)
            }
        };
        lives.push(Live {
            fleet,
            leaky_group: groups[0].clone(),
            groups,
            ledgers,
            restarts: Arc::new(AtomicU64::new(0)),
            unsupported,
        });
    }
    let earlyoom = start_earlyoom()?;
    let mut daemon = Daemon::start(&policy_dir)?;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    daemon.wait_running(&id_refs, Duration::from_secs(60))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads: Vec<JoinHandle<Result<()>>> = Vec::new();
    for live in lives.iter().filter(|l| l.unsupported.is_none()) {
        let Kind::Bench(guard) = live.fleet.kind else {
            continue;
        };
        let base = Path::new(BENCH_ROOT).join(live.fleet.name);
        fs::create_dir_all(&base)?;
        write(&base, "cgroup.subtree_control", "+memory")?;
        for (i, (group, ledger)) in live.groups.iter().zip(&live.ledgers).enumerate() {
            fs::create_dir_all(group)?;
            write(group, "memory.high", live.fleet.high)?;
            write(group, "memory.max", live.fleet.max)?;
            let leak = if i == 0 { rate } else { 0 };
            let member = Member {
                group: group.clone(),
                args: worker_args(ledger, leak, i == 0 && live.fleet.freed),
                // The twins are respawned (or not) like the leaker, but never PSI-guarded.
                guard: if i == 0 || guard == Guard::None {
                    guard
                } else {
                    Guard::Respawn
                },
            };
            let (stop, restarts) = (
                stop.clone(),
                if i == 0 {
                    live.restarts.clone()
                } else {
                    Arc::default()
                },
            );
            threads.push(thread::spawn(move || {
                supervise::supervise(member, stop, restarts)
            }));
        }
    }
    let sampler = (run == 1).then(|| {
        let groups = lives
            .iter()
            // The ceiling's memory is flat by construction: not worth a panel.
            .filter(|l| l.unsupported.is_none() && !l.fleet.freed)
            .map(|l| (l.fleet.name.to_string(), l.leaky_group.clone()))
            .collect();
        let stop = stop.clone();
        thread::spawn(move || supervise::sample(rate, groups, stop))
    });
    let started = Instant::now();
    while started.elapsed() < PHASE {
        daemon.ensure_alive()?;
        if let Some(i) = threads.iter().position(|t| t.is_finished()) {
            // A fleet nobody supervises any more would give a figure that means nothing.
            let outcome = threads.swap_remove(i).join();
            let why = match outcome {
                Ok(Err(e)) => format!("{e:#}"),
                Ok(Ok(())) => "it returned before the end".to_string(),
                Err(_) => "it panicked".to_string(),
            };
            return Err(anyhow!("a bench supervisor ended early: {why}"));
        }
        sleep(Duration::from_millis(250));
    }
    // The window ends here: count jobs and note which workers are still running.
    let report = daemon.status()?;
    let mut rows = Vec::new();
    for live in &lives {
        if let Some(why) = &live.unsupported {
            println!(
                "ROW rate={rate} run={run} fleet={}{} unsupported=\"{why}\"",
                live.fleet.name,
                if sleeping_jobs() { " job=sleep" } else { "" }
            );
            continue;
        }
        let running: BTreeSet<u32> = live.groups.iter().flat_map(|g| pids_under(g)).collect();
        let jobs: Vec<usize> = live
            .ledgers
            .iter()
            .map(|l| Ledger::read(l).map(|l| l.completed_jobs()))
            .collect::<Result<_>>()?;
        let leaky = Ledger::read(&live.ledgers[0])?;
        let lost = leaky.lost_jobs(&running).len();
        // The leaky pids that were gone by the end of the window (restarted during it).
        let gone: BTreeSet<u32> = leaky
            .pids
            .keys()
            .filter(|p| !running.contains(p))
            .copied()
            .collect();
        let events = parse_flat_keyed(&read_trimmed(&live.leaky_group.join("memory.events"))?);
        let restarts = match live.fleet.kind {
            Kind::Bench(_) => live.restarts.load(Ordering::SeqCst),
            Kind::Oomguard { .. } => {
                let id = format!("r{run}-{}-leaky/0", live.fleet.name);
                u64::from(require_instance(&report, &id)?.restarts)
            }
        };
        rows.push((
            live,
            gone,
            jobs,
            lost,
            events.get("oom_kill").copied().unwrap_or(0),
            restarts,
        ));
    }
    stop.store(true, Ordering::SeqCst);
    for t in threads {
        t.join()
            .map_err(|_| anyhow!("a bench supervisor panicked"))??;
    }
    if let Some(s) = sampler {
        s.join().map_err(|_| anyhow!("the sampler panicked"))?;
    }
    let events = recent_events()?;
    daemon.stop()?;
    let earlyoom_kills = stop_earlyoom(earlyoom)?;
    for (live, gone, jobs, lost, ooms, restarts) in rows {
        // Graceful: a restart whose worker wrote `exit <pid> clean` (its SIGTERM handler ran).
        // Read after the stop, so late exit lines are in. Counted against the restarts, not the
        // pids in the ledger: a replacement killed before its first job never wrote a line, and
        // that restart was not graceful either.
        let ledger = Ledger::read(&live.ledgers[0])?;
        let clean = gone
            .iter()
            .filter(|p| ledger.pids.get(p).is_some_and(|r| r.clean_exit))
            .count();
        let twins = (jobs[1] + jobs[2]) as f64 / 2.0;
        let goodput = jobs[0] as f64 / twins.max(1.0);
        let extra = match live.fleet.kind {
            _ if live.fleet.name == "earlyoom" => format!(" earlyoom_kills={earlyoom_kills}"),
            Kind::Oomguard { .. } => {
                breakdown(&events, &format!("r{run}-{}-leaky/0", live.fleet.name))
            }
            Kind::Bench(_) => String::new(),
        };
        println!(
            "ROW rate={rate} run={run} fleet={}{} goodput={goodput:.3} leaky_jobs={} twin_jobs={},{} \
             oom_kills={ooms} lost={lost} restarts={restarts} graceful={}/{restarts}{extra}",
            live.fleet.name,
            if sleeping_jobs() { " job=sleep" } else { "" },
            jobs[0],
            jobs[1],
            jobs[2],
            (clean as u64).min(restarts)
        );
    }
    for live in lives
        .iter()
        .filter(|l| matches!(l.fleet.kind, Kind::Bench(_)))
    {
        for g in &live.groups {
            let _ = fs::remove_dir(g);
        }
        let _ = fs::remove_dir(Path::new(BENCH_ROOT).join(live.fleet.name));
    }
    Ok(())
}

/// Where an oomguard fleet's restarts spent their time (issue 9 item 4): the medians over this
/// run's restart events of the instance, as ` t2s_us=.. s2e_ms=.. e2x_ms=.. ovl_ms=.. dead_ms=..` (a field
/// no event carried is left out).
fn breakdown(events: &[EventRecord], id: &str) -> String {
    let restarts: Vec<_> = events
        .iter()
        .filter(|e| e.instance == id && e.action == "restart")
        .collect();
    type Field = (&'static str, fn(&EventRecord) -> Option<u64>);
    let fields: [Field; 5] = [
        ("t2s_us", |e| e.trigger_to_signal_us),
        ("s2e_ms", |e| e.signal_to_exit_ms),
        ("e2x_ms", |e| e.exit_to_exec_ms),
        ("ovl_ms", |e| e.overlap_ms),
        ("dead_ms", |e| e.dead_time_ms),
    ];
    let mut out = String::new();
    for (name, get) in fields {
        let mut v: Vec<u64> = restarts.iter().filter_map(|e| get(e)).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_unstable();
        out.push_str(&format!(" {name}={}", v[(v.len() - 1) / 2]));
    }
    out
}

/// `oomguard.job=sleep` on the kernel command line: the workers' jobs sleep instead of computing
/// (testworker `--job-sleep`), so the leak is not starved of CPU by eighteen busy loops.
fn sleeping_jobs() -> bool {
    fs::read_to_string("/proc/cmdline")
        .is_ok_and(|c| c.split_whitespace().any(|w| w == "oomguard.job=sleep"))
}

fn worker_args(ledger: &str, leak: u32, freed: bool) -> Vec<String> {
    let sleep = sleeping_jobs().then_some("--job-sleep");
    let freed = freed.then_some("--leak-freed");
    [
        "--ledger",
        ledger,
        "--leak-mb-per-s",
        &leak.to_string(),
        "--job-ms",
        "50",
    ]
    .into_iter()
    .chain(sleep)
    .chain(freed)
    .map(str::to_string)
    .collect()
}

fn policy(name: &str, fleet: &Fleet, ledger: &str, leak: u32, overlap: bool) -> String {
    let args = worker_args(ledger, leak, fleet.freed);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    format!(
        "name: {name}\nrun:\n  command: {}\n  instances: 1\n  user: worker\n\
         memory:\n  high: {}\n  max: {}\n\
         triggers:\n  pressure: {{some: 150ms, window: 1s}}\n\
         restart:\n  grace: 10s\n  backoff: {{initial: 100ms, max: 1s}}\n  limit: {{count: 1000, within: 1h}}\n{}",
        worker_command(&args),
        fleet.high,
        fleet.max,
        if overlap { "  overlap: true\n" } else { "" }
    )
}

/// `oomguard check` on the policy: `Some(why)` when this build refuses it (the overlap key
/// before that branch is merged), so the row says "unsupported by this build" instead of
/// vanishing.
fn check_policy(name: &str, yaml: &str) -> Result<Option<String>> {
    let path = write_policy("/tmp/goodput-check", name, yaml)?;
    let out = oomguard(&["check", &path.to_string_lossy()])?;
    if out.status.success() {
        return Ok(None);
    }
    let why = out
        .text()
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .replace('"', "'");
    Ok(Some(format!("unsupported by this build: {why}")))
}

/// earlyoom with Debian's defaults (no options), as a user who installed the package runs it.
fn start_earlyoom() -> Result<Option<Child>> {
    if !Path::new(EARLYOOM).exists() {
        return Ok(None);
    }
    let log = fs::File::create("/tmp/earlyoom.log")?;
    let child = Command::new(EARLYOOM)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot start earlyoom")?;
    Ok(Some(child))
}

/// Stops earlyoom; returns how many processes it said it killed.
fn stop_earlyoom(child: Option<Child>) -> Result<usize> {
    let Some(mut child) = child else { return Ok(0) };
    child.kill()?;
    child.wait()?;
    let log = fs::read_to_string("/tmp/earlyoom.log")?;
    // earlyoom 1.7 logs each kill as `sending SIGTERM to process <pid> ...` (its start-up
    // banner says `sending SIGTERM when mem <= ...`, which is not one).
    let kills = log.lines().filter(|l| l.contains(" to process ")).count();
    evidence(
        "earlyoom log (first lines)",
        log.lines().take(3).collect::<Vec<_>>().join(" | "),
    );
    Ok(kills)
}
