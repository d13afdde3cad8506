//! `restart.overlap` on a real kernel: a leaking queue-consumer-like test worker (slow jobs, a
//! ledger) restarted on its memory trigger with make-before-break. A sampler thread reads both
//! generation groups' cgroup.procs every 20 ms: at no sampled moment may the instance have no
//! worker. Status shows both pids during the overlap; the restart event's breakdown adds up
//! (dead time 0, overlap covering the drain); the drained generation's group is removed; no job
//! is lost. Then the daemon is SIGKILLed while an overlap is under way and started again: it
//! adopts the replacement and drains the old worker, so there is still exactly one worker.
//! Last, a restart whose replacement waits for `restart.ready: 10m`: a reload during the wait is
//! answered, and a SIGTERM to the daemon stops both generations and ends it within the grace.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use oomguard::protocol::EventRecord;
use oomguard::vocabulary::Reason;

use crate::harness::*;

const ID: &str = "consumer/0";

/// The pids in the instance's group and its generation groups, read from cgroupfs.
fn worker_pids() -> BTreeSet<u32> {
    pids_of(ID)
}

fn pids_of(id: &str) -> BTreeSet<u32> {
    let home = instance_group(id);
    ["", "gen-a", "gen-b"]
        .iter()
        .map(|leaf| home.join(leaf).join("cgroup.procs"))
        .filter_map(|p| fs::read_to_string(p).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

fn generation_groups() -> Vec<PathBuf> {
    ["gen-a", "gen-b"]
        .iter()
        .map(|g| instance_group(ID).join(g))
        .filter(|p| p.is_dir())
        .collect()
}

/// `oomguard check --cgroup-root` refuses the overlap policy while the root's memory.max (150M)
/// cannot hold two generations (2 x 96M), as `run` would at load, and passes it once that limit
/// is gone. The workers are small meanwhile, so the brief limit touches nobody.
fn check_sees_the_limits_above() -> Result<()> {
    let file = format!("{POLICY_DIR}/consumer.yaml");
    let limit = std::path::Path::new(CGROUP_ROOT).join("memory.max");
    fs::write(&limit, "150M")?;
    let refused = oomguard(&["check", "--cgroup-root", CGROUP_ROOT, &file]);
    fs::write(&limit, "max")?;
    let refused = refused?;
    evidence("check under a 150M root", refused.summary());
    ensure!(
        !refused.status.success() && refused.text().contains("up to 192M"),
        "check passed the overlap policy under a 150M root: {}",
        refused.summary()
    );
    let ok = oomguard(&["check", "--cgroup-root", CGROUP_ROOT, &file])?;
    ensure!(
        ok.status.success() && ok.text().contains("two generations fit"),
        "check without the limit: {}",
        ok.summary()
    );
    Ok(())
}

/// Samples the instance's workers every 20 ms until stopped: counts of samples that saw 0, 1,
/// 2 and 3 or more workers.
struct Sampler {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 4]>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let (s, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                c[worker_pids().len().min(3)].fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Sampler {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    /// (samples, samples with no worker, with two, with three or more).
    fn finish(mut self) -> (u64, u64, u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let n: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect();
        (n.iter().sum(), n[0], n[2], n[3])
    }
}

/// The first restart event of instance `id`.
fn restart_event(id: &str) -> Option<EventRecord> {
    recent_events()
        .ok()?
        .into_iter()
        .find(|e| e.action == "restart" && e.instance == id)
}

pub fn overlap() -> Result<()> {
    make_ledger_dir()?;
    let ledger = ledger_path("consumer");
    // Slow jobs (3 s): a drain that lasts, as a queue consumer finishing its task.
    let cmd = worker_command(&[
        "--ledger",
        &ledger,
        "--leak-mb-per-s",
        "8",
        "--job-ms",
        "3000",
    ]);
    write_policy(
        POLICY_DIR,
        "consumer",
        &format!(
            "run:\n  command: {cmd}\n  user: worker\nmemory:\n  high: 48M\n  max: 96M\n\
             triggers:\n  memory: {{above: 32M}}\n\
             restart:\n  grace: 20s\n  overlap: true\n"
        ),
    )?;
    // The same worker without overlap, beside it: a plain restart's breakdown.
    write_policy(
        POLICY_DIR,
        "plain",
        &format!(
            "run:\n  command: {}\n  user: worker\nmemory:\n  high: 48M\n  max: 96M\n\
             triggers:\n  memory: {{above: 32M}}\nrestart:\n  grace: 20s\n",
            worker_command(&["--leak-mb-per-s", "8", "--job-ms", "3000"])
        ),
    )?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&[ID], Duration::from_secs(20))?[ID];
    evidence("first pid", first);
    let envelope = read_trimmed(&instance_group(ID).join("memory.max"))?;
    evidence("instance group memory.max (envelope)", &envelope);
    ensure!(envelope == "201326592", "envelope {envelope}, want 2 x 96M");
    check_sees_the_limits_above()?;
    let sampler = Sampler::start();

    // 1. The leak's restart: both pids in status while the old one drains.
    let both = daemon.wait_status("both pids in status", Duration::from_secs(40), |r| {
        let i = instance(r, ID)?;
        let old = i.draining_pid?;
        (i.pids.len() >= 2 && i.pids.contains(&old)).then(|| (i.pids[0], old))
    })?;
    evidence(
        "status during the overlap (new, draining)",
        format!("{both:?}"),
    );
    ensure!(
        both.1 == first,
        "draining pid {} is not the first worker {first}",
        both.1
    );
    let ev = wait_until("the restart event", Duration::from_secs(30), || {
        restart_event(ID)
    })?;
    evidence("restart event", &ev.message);
    evidence(
        "breakdown",
        format!(
            "trigger->signal {:?} us, signal->exit {:?} ms, exit->exec {:?}, overlap {:?} ms, dead {:?} ms, new {:?}",
            ev.trigger_to_signal_us,
            ev.signal_to_exit_ms,
            ev.exit_to_exec_ms,
            ev.overlap_ms,
            ev.dead_time_ms,
            ev.replacement_pid
        ),
    );
    ensure!(ev.reason == Reason::Memory, "reason {:?}", ev.reason);
    ensure!(
        ev.dead_time_ms == Some(0),
        "dead time {:?}",
        ev.dead_time_ms
    );
    ensure!(
        ev.replacement_pid == Some(both.0),
        "replacement {:?}",
        ev.replacement_pid
    );
    let overlap = ev.overlap_ms.context("no overlap_ms")?;
    let drain = ev.signal_to_exit_ms.context("no signal_to_exit_ms")?;
    let to_signal_ms = ev.trigger_to_signal_us.context("no trigger_to_signal_us")? / 1000;
    // The replacement was exec'd between the trigger and the signal: the overlap is its part
    // of trigger->signal plus the whole drain (ms rounding: 2 ms).
    ensure!(
        overlap >= drain && overlap <= to_signal_ms + drain + 2,
        "overlap {overlap} ms vs drain {drain} ms and trigger->signal {to_signal_ms} ms"
    );
    let one = daemon.wait_status("one worker again", Duration::from_secs(20), |r| {
        let i = instance(r, ID)?;
        (i.draining_pid.is_none() && i.pids.first() == Some(&both.0)).then_some(())
    });
    one?;
    let gens = wait_until("the drained group removed", Duration::from_secs(10), || {
        let g = generation_groups();
        (g.len() == 1).then_some(g)
    })?;
    evidence("generation groups after the restart", format!("{gens:?}"));
    ensure!(!pid_alive(first), "the first worker {first} still runs");
    let plain = wait_until("plain/0's restart event", Duration::from_secs(30), || {
        restart_event("plain/0")
    })?;
    evidence(
        "plain breakdown",
        format!(
            "trigger->signal {:?} us, signal->exit {:?} ms, exit->exec {:?} ms, overlap {:?}, dead {:?} ms, new {:?}",
            plain.trigger_to_signal_us,
            plain.signal_to_exit_ms,
            plain.exit_to_exec_ms,
            plain.overlap_ms,
            plain.dead_time_ms,
            plain.replacement_pid
        ),
    );
    ensure!(
        plain.exit_to_exec_ms.is_some()
            && plain.dead_time_ms == plain.exit_to_exec_ms
            && plain.overlap_ms.is_none()
            && plain.signal_to_exit_ms.is_some(),
        "plain restart breakdown {plain:?}"
    );
    let plain_pid = status_json()?;
    let plain_pid = require_instance(&plain_pid, "plain/0")?
        .pids
        .first()
        .copied();
    ensure!(
        plain.replacement_pid.is_some()
            && (plain_pid == plain.replacement_pid
                || !pid_alive(plain.replacement_pid.unwrap_or(0))),
        "replacement {:?}, running {plain_pid:?}",
        plain.replacement_pid
    );

    // 2. The daemon dies during the next overlap (SIGKILL: no state saved).
    // Polled every 20 ms straight from cgroupfs: the window is the old worker's last job.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while worker_pids().len() < 2 {
        ensure!(
            std::time::Instant::now() < deadline,
            "no second overlap within 40 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.kill()?;
    let left = worker_pids();
    evidence("workers left by the killed daemon", format!("{left:?}"));
    ensure!(
        left.len() == 2,
        "want both generations running, got {left:?}"
    );
    let mut daemon = Daemon::start(POLICY_DIR)?;
    // The first worker the new daemon names is the one it adopted (the leak restarts it again
    // a few seconds later, with overlap as usual).
    let kept = daemon.wait_status("the adopted worker", Duration::from_secs(40), |r| {
        instance(r, ID)?.pids.first().copied()
    })?;
    evidence("adopted after the daemon restart", kept);
    // Pids grow in a short VM run: the replacement has the larger one.
    let oldest = *left.first().context("no worker")?;
    let youngest = *left.last().context("no worker")?;
    ensure!(
        kept == youngest,
        "adopted {kept}, want the replacement (youngest of {left:?})"
    );
    wait_until(
        "the older generation drained",
        Duration::from_secs(30),
        || (!pid_alive(oldest)).then_some(()),
    )?;
    let (samples, empty, two, three) = sampler.finish();
    println!("METRIC overlap.samples {samples}");
    println!("METRIC overlap.samples_without_worker {empty}");
    println!("METRIC overlap.samples_with_two {two}");
    println!("METRIC overlap.samples_with_three_or_more {three}");
    ensure!(
        empty == 0,
        "{empty} of {samples} samples saw no worker (lost)"
    );
    ensure!(
        three == 0,
        "{three} of {samples} samples saw three workers (doubled)"
    );
    ensure!(
        two > 0,
        "no sample saw two workers: the overlap was never observed"
    );
    // Every job finished: each old worker drained its job in flight before exiting, and so do
    // the last ones at the daemon's stop.
    daemon.stop()?;
    let none = BTreeSet::new();
    let l = Ledger::read(&ledger)?;
    evidence("ledger", l.summary());
    let lost = l.lost_jobs(&none);
    ensure!(lost.is_empty(), "lost jobs {lost:?}");
    let unclean = l.unclean_exits(&none);
    ensure!(
        unclean.is_empty(),
        "workers gone without a clean exit: {unclean:?}"
    );
    stop_during_ready()
}

/// A SIGTERM to the daemon while an overlap's replacement waits for `restart.ready` (10 minutes):
/// the wait is dropped and both generations get their signal and grace at once. Before, the
/// daemon sat out the wait with both workers running (systemd then SIGKILLed it), and a reload
/// during the wait hung until it ended.
fn stop_during_ready() -> Result<()> {
    const SLOW: &str = "slowready/0";
    for name in ["consumer", "plain"] {
        fs::remove_file(format!("{POLICY_DIR}/{name}.yaml"))?;
    }
    let ledger = ledger_path("slowready");
    let policy = |high: &str| {
        format!(
            "run:\n  command: {}\n  user: worker\nmemory:\n  high: {high}\n  max: 96M\n\
             triggers:\n  memory: {{above: 40M}}\n\
             restart:\n  grace: 10s\n  overlap: true\n  ready: 10m\n",
            worker_command(&["--ledger", &ledger])
        )
    };
    write_policy(POLICY_DIR, "slowready", &policy("48M"))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let old = daemon.wait_running(&[SLOW], Duration::from_secs(20))?[SLOW];
    // Its answer waits for the replacement's ready: in the background, killed at the end.
    let mut restart = restart_in_background(SLOW)?;
    let new = daemon.wait_status(
        "the replacement beside the old worker",
        Duration::from_secs(30),
        |r| {
            let i = instance(r, SLOW)?;
            i.pids
                .first()
                .copied()
                .filter(|_| i.draining_pid == Some(old))
        },
    )?;
    evidence(
        "waiting for restart.ready (old, new)",
        format!("{old} {new}"),
    );
    write_policy(POLICY_DIR, "slowready", &policy("40M"))?;
    let reloaded = client(&["reload"])?;
    evidence("reload during the wait", reloaded.summary());
    ensure!(
        reloaded.status.success() && reloaded.text().contains("changed slowready"),
        "reload during the ready wait: {}",
        reloaded.summary()
    );
    ensure!(
        pid_alive(old) && pid_alive(new),
        "the reload stopped a worker"
    );
    // Generous for TCG: the grace is 10 s, the wait it replaces 10 minutes.
    let exited = daemon.signal_and_wait_for(libc::SIGTERM, Duration::from_secs(60));
    let _ = restart.kill();
    let _ = restart.wait();
    let exited = exited?;
    evidence("daemon exit after SIGTERM during the ready wait", exited);
    let left = pids_of(SLOW);
    ensure!(
        !pid_alive(old) && !pid_alive(new) && left.is_empty(),
        "workers left after the stop: old {old} alive {}, new {new} alive {}, in the group {left:?}",
        pid_alive(old),
        pid_alive(new)
    );
    let l = Ledger::read(&ledger)?;
    evidence("slowready ledger", l.summary());
    let unclean = l.unclean_exits(&BTreeSet::new());
    ensure!(
        unclean.is_empty(),
        "workers that did not exit on their signal: {unclean:?}"
    );
    Ok(())
}
