//! The real-kernel scenarios. Runs inside the VM as a child of /init, one scenario per boot:
//! `vm-scenarios <name>` prints evidence lines and ends with `SCENARIO <name> PASS` or
//! `SCENARIO <name> FAIL: <why>`. `vm-scenarios --list` (run on the host by tests/vm/run.sh)
//! prints the table below, so adding a scenario means adding one row here.

mod bench;
mod bench_children;
mod boundary;
mod children;
mod children_cap;
mod children_overlap;
mod children_pressure;
mod container;
mod container_exec;
mod container_readonly;
mod container_refusals;
mod envelope;
mod faults;
mod goodput;
mod hardening_daemon;
mod hardening_instance;
mod harness;
mod hooks;
mod kernels;
mod lifecycle;
mod overlap;
mod pressure_log;
mod recommend;
mod stacks;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use oomguard::vocabulary::{InstanceState, Reason};

use harness::*;

struct Scenario {
    name: &'static str,
    /// Demos are run only when named; `run.sh` with no arguments runs the tests.
    demo: bool,
    /// Appended to the kernel command line for this scenario's boot.
    kernel_args: &'static str,
    /// In-VM watchdog: the scenario fails (with the daemon log) if it takes longer.
    budget_s: u64,
    /// The VM's memory (qemu -m).
    vm_mb: u32,
    run: fn() -> Result<()>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "container_writable",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container::container_writable,
    },
    Scenario {
        name: "container_default_socket",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container::container_default_socket,
    },
    Scenario {
        name: "container_exec",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container_exec::container_exec,
    },
    Scenario {
        name: "container_refusals",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: container_refusals::container_refusals,
    },
    Scenario {
        name: "container_readonly",
        demo: false,
        kernel_args: "",
        budget_s: 150,
        vm_mb: 512,
        run: container_readonly::container_readonly,
    },
    Scenario {
        name: "container_readonly_restart",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container_readonly::container_readonly_restart,
    },
    Scenario {
        name: "container_readonly_observe",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container_readonly::container_readonly_observe,
    },
    Scenario {
        name: "container_readonly_last_line",
        demo: false,
        kernel_args: "",
        budget_s: 150,
        vm_mb: 512,
        run: container_readonly::container_readonly_last_line,
    },
    Scenario {
        name: "container_readonly_kill",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: container_readonly::container_readonly_kill,
    },
    Scenario {
        name: "smoke",
        demo: false,
        kernel_args: "",
        budget_s: 60,
        vm_mb: 512,
        run: smoke,
    },
    Scenario {
        name: "leak_restart",
        demo: false,
        kernel_args: "",
        budget_s: 150,
        vm_mb: 512,
        run: leak_restart,
    },
    Scenario {
        name: "hooks",
        demo: false,
        kernel_args: "",
        budget_s: 60,
        vm_mb: 512,
        run: hooks::hooks,
    },
    Scenario {
        name: "overlap",
        demo: false,
        kernel_args: "",
        budget_s: 180,
        vm_mb: 512,
        run: overlap::overlap,
    },
    Scenario {
        name: "observe",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: observe,
    },
    Scenario {
        name: "recommend",
        demo: false,
        kernel_args: "",
        budget_s: 180,
        vm_mb: 512,
        run: recommend::recommend,
    },
    Scenario {
        name: "respawn",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: respawn,
    },
    Scenario {
        name: "bad_policy",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: bad_policy,
    },
    Scenario {
        name: "no_memory_controller",
        demo: false,
        kernel_args: "cgroup_disable=memory",
        budget_s: 60,
        vm_mb: 512,
        run: no_memory_controller,
    },
    Scenario {
        name: "grace_kill",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: grace_kill,
    },
    Scenario {
        name: "adopt",
        demo: false,
        kernel_args: "",
        budget_s: 150,
        vm_mb: 512,
        run: lifecycle::adopt,
    },
    Scenario {
        name: "reload",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: lifecycle::reload,
    },
    Scenario {
        name: "kill_fallback",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: kernels::kill_fallback,
    },
    Scenario {
        name: "concurrent_reload",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_daemon::concurrent_reload,
    },
    Scenario {
        name: "second_daemon",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: hardening_daemon::second_daemon,
    },
    Scenario {
        name: "failed_persists",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_daemon::failed_persists,
    },
    Scenario {
        name: "reload_identity",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_instance::reload_identity,
    },
    Scenario {
        name: "rolling_restart_bad_deploy",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_instance::rolling_restart_bad_deploy,
    },
    Scenario {
        name: "escaped_main",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_instance::escaped_main,
    },
    Scenario {
        name: "adopt_populated",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_instance::adopt_populated,
    },
    Scenario {
        name: "spawn_hardening",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: hardening_instance::spawn_hardening,
    },
    Scenario {
        name: "fault_fd_exhaustion",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: faults::fault_fd_exhaustion,
    },
    Scenario {
        name: "fault_enospc",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: faults::fault_enospc,
    },
    Scenario {
        name: "fault_group_removed",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: faults::fault_group_removed,
    },
    Scenario {
        name: "fault_kill_mid_restart",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: faults::fault_kill_mid_restart,
    },
    Scenario {
        name: "boundary_leak",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: boundary::boundary_leak,
    },
    Scenario {
        name: "boundary_stable",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: boundary::boundary_stable,
    },
    Scenario {
        name: "boundary_pagecache",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 768,
        run: boundary::boundary_pagecache,
    },
    Scenario {
        name: "boundary_child",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: boundary::boundary_child,
    },
    Scenario {
        name: "bench_fork_to_leaf",
        demo: true,
        kernel_args: "",
        // Three rounds of 20 s of prefork churn: as mounted, favordynmods, as mounted.
        budget_s: 180,
        vm_mb: 512,
        run: children::bench_fork_to_leaf,
    },
    Scenario {
        name: "bench_goodput_1",
        demo: true,
        kernel_args: "oomguard.leak=1",
        // Up to 3 runs (oomguard.runs=, from run.sh) of seven fleets side by side for 40 s each.
        budget_s: 600,
        vm_mb: 1024,
        run: goodput::bench_goodput_rate,
    },
    Scenario {
        name: "bench_goodput_5",
        demo: true,
        kernel_args: "oomguard.leak=5",
        // Up to 3 runs (oomguard.runs=, from run.sh) of seven fleets side by side for 40 s each.
        budget_s: 600,
        vm_mb: 1024,
        run: goodput::bench_goodput_rate,
    },
    Scenario {
        name: "bench_goodput_20",
        demo: true,
        kernel_args: "oomguard.leak=20",
        // Up to 3 runs (oomguard.runs=, from run.sh) of seven fleets side by side for 40 s each.
        budget_s: 600,
        vm_mb: 1024,
        run: goodput::bench_goodput_rate,
    },
    Scenario {
        name: "bench_goodput_50",
        demo: true,
        kernel_args: "oomguard.leak=50",
        // Up to 3 runs (oomguard.runs=, from run.sh) of seven fleets side by side for 40 s each.
        budget_s: 600,
        vm_mb: 1024,
        run: goodput::bench_goodput_rate,
    },
    Scenario {
        name: "bench_scale",
        demo: true,
        kernel_args: "",
        // The instance rows (about 4 minutes), then 20 and 200 instances x 8 children.
        budget_s: 2100,
        vm_mb: 3072,
        run: bench::bench_scale,
    },
    Scenario {
        name: "bench_scale_children",
        demo: true,
        kernel_args: "",
        // bench_scale's children rows alone: 20 and 200 instances x 8 children.
        budget_s: 1800,
        vm_mb: 3072,
        run: bench_children::bench_scale_children,
    },
    Scenario {
        name: "bench_scale_children20",
        demo: true,
        kernel_args: "",
        // The 20 x 8 row alone.
        budget_s: 600,
        vm_mb: 3072,
        run: bench_children::bench_scale_children20,
    },
    Scenario {
        name: "bench_scale_children200",
        demo: true,
        kernel_args: "",
        // The 200 x 8 row alone: the starts (about 5 minutes under TCG), the placements (up to
        // 7 minutes), the churn, the status requests, the stop.
        budget_s: 1500,
        vm_mb: 3072,
        run: bench_children::bench_scale_children200,
    },
    Scenario {
        name: "demo",
        demo: true,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: demo,
    },
    Scenario {
        name: "children_leaves",
        demo: false,
        kernel_args: "",
        budget_s: 120,
        vm_mb: 512,
        run: children::children_leaves,
    },
    Scenario {
        name: "children_overlap",
        demo: false,
        kernel_args: "",
        budget_s: 180,
        vm_mb: 512,
        run: children_overlap::children_overlap,
    },
    Scenario {
        name: "children_cap",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: children_cap::children_cap,
    },
    Scenario {
        name: "children_recycle",
        demo: false,
        kernel_args: "",
        budget_s: 180,
        vm_mb: 512,
        run: children::children_recycle,
    },
    Scenario {
        name: "children_pressure",
        demo: false,
        kernel_args: "",
        budget_s: 150,
        vm_mb: 512,
        run: children_pressure::children_pressure,
    },
    Scenario {
        name: "children_at_once",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: children::children_at_once,
    },
    Scenario {
        name: "children_fast_leak",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: children::children_fast_leak,
    },
    Scenario {
        name: "children_escalate",
        demo: false,
        kernel_args: "",
        budget_s: 90,
        vm_mb: 512,
        run: children::children_escalate,
    },
    Scenario {
        name: "children_envelope",
        demo: false,
        kernel_args: "",
        budget_s: 240,
        vm_mb: 512,
        run: envelope::children_envelope,
    },
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--list"] => {
            // name, kind, budget, VM memory, kernel args: tab-separated, parsed by run.sh.
            for s in SCENARIOS {
                let kind = if s.demo { "demo" } else { "test" };
                println!(
                    "{}\t{kind}\t{}\t{}\t{}",
                    s.name, s.budget_s, s.vm_mb, s.kernel_args
                );
            }
            ExitCode::SUCCESS
        }
        [name] => match SCENARIOS.iter().find(|s| s.name == name) {
            Some(s) => run_one(s),
            None => {
                println!("SCENARIO {name} FAIL: no such scenario");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: vm-scenarios <scenario> | --list");
            ExitCode::from(2)
        }
    }
}

fn run_one(s: &'static Scenario) -> ExitCode {
    println!("SCENARIO {} BEGIN", s.name);
    let budget = s.budget_s;
    std::thread::spawn(move || {
        sleep(Duration::from_secs(budget));
        println!(
            "SCENARIO {} FAIL: in-VM watchdog: still running after {budget} s",
            s.name
        );
        print_daemon_log_tail(150);
        std::process::exit(1);
    });
    let started = Instant::now();
    let outcome = std::panic::catch_unwind(s.run)
        .unwrap_or_else(|panic| bail!("panicked: {}", panic_text(&panic)));
    evidence(
        "scenario seconds",
        format!("{:.1}", started.elapsed().as_secs_f64()),
    );
    match outcome {
        Ok(()) => {
            println!("SCENARIO {} PASS", s.name);
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_daemon_log_tail(150);
            println!("SCENARIO {} FAIL: {e:#}", s.name);
            ExitCode::FAILURE
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".to_string())
}

// ---- policies shared by several scenarios ----

/// Limits and trigger every scenario policy uses (`triggers` is a required section): high
/// throttles at 48M, max (the OOM line) at 96M, restart after 1 s of PSI trigger events. The
/// memory.high boundary (the default, tests/vm/boundary.rs) is off so these scenarios keep
/// testing the PSI trigger.
const GUARDS: &str = "memory:\n  high: 48M\n  max: 96M\n  boundary: false\n\
                      triggers:\n  pressure: {some: 100ms, window: 1s, for: 1s}\n";

/// One instance leaking ~8 MB/s: reaches memory.high in about 6 s.
fn leaky_policy(mode: &str) -> String {
    let cmd = worker_command(&["--ledger", &ledger_path("leaky"), "--leak-mb-per-s", "8"]);
    format!(
        "mode: {mode}\nrun:\n  command: {cmd}\n  instances: 1\n  user: worker\n{GUARDS}\
         restart:\n  grace: 10s\n"
    )
}

/// Two instances with no leak and the same limits: they must be left alone.
fn healthy_policy() -> String {
    let cmd = worker_command(&["--ledger", &ledger_path("healthy")]);
    format!(
        "mode: enforce\nrun:\n  command: {cmd}\n  instances: 2\n  user: worker\n{GUARDS}\
         restart:\n  grace: 10s\n"
    )
}

/// One instance that crashes at once, backoff 100ms..1s, failed after `limit` exits within 1h.
fn crasher_policy(limit: u32) -> String {
    let crasher = worker_command(&["--crash"]);
    format!(
        "run:\n  command: {crasher}\n  instances: 1\n{GUARDS}restart:\n  grace: 5s\n  \
         backoff: {{initial: 100ms, max: 1s}}\n  limit: {{count: {limit}, within: 1h}}\n"
    )
}

/// One plain, valid instance: for scenarios about what happens before any worker runs.
fn plain_policy() -> String {
    format!(
        "run:\n  command: {}\n  instances: 1\n{GUARDS}",
        worker_command(&[])
    )
}

/// `oomguard run` on `dir`, which must refuse to start (`why`: what it must refuse); returns its
/// output for the caller to check the message.
fn run_must_refuse(dir: &str, why: &str) -> Result<CmdOutput> {
    let out = run_cmd(OOMGUARD, &run_args(dir), Duration::from_secs(15))
        .with_context(|| format!("`run` should have refused to start: {why}"))?;
    evidence(&format!("run ({why})"), out.summary());
    ensure!(!out.status.success(), "`run` exited 0: {why}");
    Ok(out)
}

// ---- scenarios ----

/// The VM itself, no daemon: cgroup2 with the memory controller, PSI, the binaries runnable, and
/// the test worker's leak really charged, throttled by memory.high and firing a PSI trigger.
fn smoke() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    ensure!(
        mounts
            .lines()
            .any(|l| l.starts_with("none /sys/fs/cgroup cgroup2 ")),
        "cgroup2 is not mounted on /sys/fs/cgroup; /proc/mounts:\n{mounts}"
    );
    let root = Path::new("/sys/fs/cgroup");
    let subtree = read_trimmed(&root.join("cgroup.subtree_control"))?;
    evidence("root subtree_control", &subtree);
    ensure!(
        subtree.split(' ').any(|c| c == "memory"),
        "memory is not in the root's subtree_control"
    );
    let pressure = read_trimmed(&root.join("memory.pressure"))
        .context("PSI: the root's memory.pressure is missing")?;
    evidence("root memory.pressure", pressure.replace('\n', " | "));

    let probe = root.join("smoke-probe");
    fs::create_dir(&probe).context("cannot create a child cgroup")?;
    let throttled = leak_under_trigger(&probe);
    fs::remove_dir(&probe).context("cannot remove the probe cgroup")?;
    throttled?;

    let out = run_cmd(OOMGUARD, &["--help"], Duration::from_secs(10))?;
    evidence("oomguard --help", out.summary());
    let passwd = fs::read_to_string("/etc/passwd")?;
    ensure!(
        passwd.contains("worker:x:1000:"),
        "no worker user (uid 1000) in /etc/passwd"
    );
    Ok(())
}

/// Runs a leaking testworker in `group` (memory.high=16M) under a PSI trigger for 4 s and checks
/// what leak_restart relies on: the trigger can be armed (a second one on the fd is refused), the
/// leak is really charged (memory.events `high`, memory.peak) and it makes the trigger fire.
fn leak_under_trigger(group: &Path) -> Result<()> {
    let pressure = group.join("memory.pressure");
    let trigger = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&pressure)
        .with_context(|| format!("cannot open {} O_RDWR|O_NONBLOCK", pressure.display()))?;
    (&trigger)
        .write_all(b"some 150000 1000000")
        .context("cannot arm a PSI trigger on a child group")?;
    let second = (&trigger).write_all(b"some 150000 1000000");
    evidence(
        "PSI trigger",
        format!("armed; a second write on the fd: {second:?}"),
    );

    fs::write(group.join("memory.high"), "16M")?;
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec {TESTWORKER} --leak-mb-per-s 20 --job-ms 20",
        group.display()
    );
    let mut child = std::process::Command::new("/bin/sh")
        .args(["-c", &script])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let fired = count_trigger_events(&trigger, Duration::from_secs(4));
    let events = read_trimmed(&group.join("memory.events"));
    // memory.peak is Linux 5.19+ (absent on the matrix's 5.10).
    let peak_file = group.join("memory.peak");
    let peak = peak_file.exists().then(|| read_trimmed(&peak_file));
    // The worker is the only process (sh exec'd it); cgroup.kill (5.14+) is not needed for it.
    let _ = child.kill();
    let _ = child.wait();
    drop(trigger);
    let events = parse_flat_keyed(&events?);
    evidence("probe memory.events", format!("{events:?}"));
    evidence("probe PSI trigger events in 4 s", fired);
    ensure!(
        events.get("high").copied().unwrap_or(0) > 0,
        "a 20 MB/s leak never crossed memory.high=16M"
    );
    match peak {
        Some(peak) => {
            let peak = peak?;
            evidence("probe memory.peak", &peak);
            ensure!(
                peak.parse::<u64>().unwrap_or(0) >= 16 << 20,
                "memory.peak {peak} stayed below 16M"
            );
        }
        None => evidence("probe memory.peak", "absent (Linux < 5.19)"),
    }
    ensure!(
        fired > 0,
        "the PSI trigger never fired while the worker leaked against memory.high"
    );
    wait_until("the probe group to empty", Duration::from_secs(5), || {
        let events = fs::read_to_string(group.join("cgroup.events")).ok()?;
        events.contains("populated 0").then_some(())
    })
}

/// POLLPRI wake-ups on an armed trigger fd during `span`.
fn count_trigger_events(trigger: &fs::File, span: Duration) -> u32 {
    let deadline = Instant::now() + span;
    let mut fired = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let mut pfd = libc::pollfd {
            fd: trigger.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if n > 0 && pfd.revents & libc::POLLPRI != 0 {
            fired += 1;
        } else if n != 0
            && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    fired
}

/// A leaking worker is restarted gracefully on pressure, again and again, while its healthy
/// neighbours are untouched and the kernel never OOM-kills anything.
fn leak_restart() -> Result<()> {
    make_ledger_dir()?;
    write_policy(POLICY_DIR, "leaky", &leaky_policy("enforce"))?;
    write_policy(POLICY_DIR, "healthy", &healthy_policy())?;
    let oom_before = vmstat_oom_kill()?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(
        &["leaky/0", "healthy/0", "healthy/1"],
        Duration::from_secs(20),
    )?;
    evidence("first pids", format!("{first:?}"));
    ensure!(
        pid_uid(first["leaky/0"])? == 1000,
        "the leaky worker does not run as `worker` (uid 1000)"
    );

    let run_for = Duration::from_secs(60);
    let started = Instant::now();
    let mut leaky_pids = BTreeSet::new();
    while started.elapsed() < run_for {
        let report = daemon.status()?;
        for id in ["healthy/0", "healthy/1"] {
            let inst = require_instance(&report, id)?;
            ensure!(
                inst.pids.first() == Some(&first[id]) && inst.restarts == 0,
                "{id} was disturbed: pids {:?} (first {}), restarts {}",
                inst.pids,
                first[id],
                inst.restarts
            );
        }
        leaky_pids.extend(require_instance(&report, "leaky/0")?.pids.iter().copied());
        sleep(Duration::from_secs(1));
    }
    let elapsed = started.elapsed().as_secs_f64();

    // Pids listed before or after reading the ledgers may have a job in flight.
    let before = daemon.status()?;
    let leaky_ledger = Ledger::read(&ledger_path("leaky"))?;
    let healthy_ledger = Ledger::read(&ledger_path("healthy"))?;
    let after = daemon.status()?;
    let running: BTreeSet<u32> = all_pids(&before)
        .union(&all_pids(&after))
        .copied()
        .collect();
    let leaky = require_instance(&after, "leaky/0")?;
    evidence("leaky pids seen", format!("{leaky_pids:?}"));
    evidence(
        "leaky restarts",
        format!("{} {:?}", leaky.restarts, leaky.restarts_by_reason),
    );
    evidence("leaky ledger pid:done", leaky_ledger.summary());
    evidence("healthy ledger pid:done", healthy_ledger.summary());
    if let Ok(events) = memory_events("leaky/0") {
        evidence("leaky/0 memory.events", format!("{events:?}"));
    }

    // Goodput: completed jobs per second of the leaky instance against a healthy one.
    let leaky_rate = leaky_ledger.completed_jobs() as f64 / elapsed;
    let healthy_rate = healthy_ledger.completed_jobs() as f64 / 2.0 / elapsed;
    println!(
        "METRIC goodput_ratio {:.3}",
        leaky_rate / healthy_rate.max(f64::MIN_POSITIVE)
    );
    evidence(
        "jobs/s leaky vs healthy mean",
        format!("{leaky_rate:.2} vs {healthy_rate:.2}"),
    );

    let oom_after = vmstat_oom_kill()?;
    evidence(
        "vmstat oom_kill before/after",
        format!("{oom_before}/{oom_after}"),
    );
    ensure!(
        oom_after == oom_before,
        "the kernel OOM-killed {} process(es)",
        oom_after - oom_before
    );
    ensure!(
        leaky.restarts >= 2,
        "leaky restarted {} time(s) in {elapsed:.0} s, want >= 2",
        leaky.restarts
    );
    ensure!(
        leaky.last_restart_reason == Some(Reason::Pressure),
        "leaky's last restart reason is {:?}, want pressure",
        leaky.last_restart_reason
    );
    let unclean = leaky_ledger.unclean_exits(&running);
    ensure!(
        unclean.is_empty(),
        "leaky pids {unclean:?} ended without `exit clean` (no graceful shutdown)"
    );
    let mut lost = leaky_ledger.lost_jobs(&running);
    lost.extend(healthy_ledger.lost_jobs(&running));
    ensure!(lost.is_empty(), "lost jobs (pid, job): {lost:?}");
    let checked = pressure_log::check_pressure_restarts()?;
    evidence("pressure restarts naming their stall", checked);
    daemon.stop()?;
    Ok(())
}

/// Observe mode decides but never acts: no restart, same pid, limits untouched, and it says what it
/// would have done.
fn observe() -> Result<()> {
    make_ledger_dir()?;
    write_policy(POLICY_DIR, "leaky", &leaky_policy("observe"))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&["leaky/0"], Duration::from_secs(20))?["leaky/0"];
    let high_file = instance_group("leaky/0").join("memory.high");
    let high_before = read_trimmed(&high_file)?;
    evidence("memory.high at start", &high_before);
    ensure!(
        high_before == (48u64 << 20).to_string(),
        "memory.high is {high_before}, the policy says 48M"
    );
    sleep(Duration::from_secs(30));

    let report = daemon.status()?;
    let inst = require_instance(&report, "leaky/0")?;
    let high_after = read_trimmed(&high_file)?;
    let log = fs::read_to_string(DAEMON_LOG)
        .unwrap_or_default()
        .to_lowercase();
    evidence("pids", format!("{:?} (first {first})", inst.pids));
    evidence("memory.events", format!("{:?}", memory_events("leaky/0")?));
    evidence("psi some avg10", format!("{:?}", inst.psi_some_avg10));
    ensure!(
        inst.restarts == 0,
        "observe mode restarted {} time(s)",
        inst.restarts
    );
    ensure!(
        inst.pids == [first],
        "pid changed from {first} to {:?}",
        inst.pids
    );
    ensure!(
        high_after == high_before,
        "memory.high changed from {high_before} to {high_after}"
    );
    ensure!(
        log.contains("would restart") || log.contains("would_restart"),
        "the daemon log never says it would restart"
    );
    // Observe mode reads the stall at the event itself (no signal to go first).
    let would = log
        .lines()
        .find(|l| l.contains("would restart") && l.contains("pressure held"))
        .context("no `would restart` line for pressure")?;
    let stall = pressure_log::stall_in(would, "some")
        .with_context(|| format!("the `would restart` line names no stall: {would}"))?;
    evidence("would restart stall", format!("{stall:?}"));
    ensure!(
        pressure_log::avg10_in(would).is_some(),
        "the `would restart` line has no numeric psi some avg10: {would}"
    );
    ensure!(
        stall.stalled > Duration::ZERO,
        "a zero stall on a `would restart`: {would}"
    );
    daemon.stop()?;
    Ok(())
}

/// A worker that exits by itself is respawned; one that crashes at once ends in state failed.
fn respawn() -> Result<()> {
    make_ledger_dir()?;
    let finisher = worker_command(&[
        "--ledger",
        &ledger_path("finisher"),
        "--exit-after-jobs",
        "20",
    ]);
    write_policy(
        POLICY_DIR,
        "finisher",
        &format!(
            "run:\n  command: {finisher}\n  instances: 1\n{GUARDS}\
             restart:\n  grace: 5s\n  limit: {{count: 100, within: 1m}}\n"
        ),
    )?;
    write_policy(POLICY_DIR, "crasher", &crasher_policy(3))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let first = daemon.wait_running(&["finisher/0"], Duration::from_secs(20))?["finisher/0"];
    let (second, reason) =
        daemon.wait_status("finisher/0 to be respawned", Duration::from_secs(40), |r| {
            let inst = instance(r, "finisher/0")?;
            let pid = *inst.pids.first().filter(|p| **p != first)?;
            (inst.restarts >= 1).then_some((pid, inst.last_restart_reason))
        })?;
    evidence("finisher pids", format!("{first} -> {second}"));
    ensure!(
        reason == Some(Reason::Exited),
        "finisher's last restart reason is {reason:?}, want exited"
    );
    let ledger = Ledger::read(&ledger_path("finisher"))?;
    evidence("finisher ledger pid:done", ledger.summary());
    let rec = ledger
        .pids
        .get(&first)
        .context("the first finisher pid wrote nothing to its ledger")?;
    ensure!(
        rec.clean_exit && rec.done.len() == 20,
        "first finisher: {} jobs, clean {}",
        rec.done.len(),
        rec.clean_exit
    );

    let restarts = daemon.wait_status(
        "crasher/0 to reach state failed",
        Duration::from_secs(30),
        |r| {
            let inst = instance(r, "crasher/0")?;
            (inst.state == InstanceState::Failed).then_some(inst.restarts)
        },
    )?;
    evidence("crasher restarts before failed", restarts);
    ensure!(
        restarts <= 4,
        "crasher was restarted {restarts} times despite limit count 3"
    );
    sleep(Duration::from_secs(2));
    let report = daemon.status()?;
    let inst = require_instance(&report, "crasher/0")?;
    ensure!(
        inst.state == InstanceState::Failed && inst.pids.is_empty(),
        "failed did not stick: state {:?}, pids {:?}",
        inst.state,
        inst.pids
    );
    daemon.stop()?;
    Ok(())
}

/// Bad input is refused: `check` names the bad key, `run` starts nothing, and a policy file others
/// can write is not trusted.
fn bad_policy() -> Result<()> {
    let good_yaml = plain_policy();
    let bad_yaml = format!(
        "run:\n  command: {}\n  instnaces: 2\n{GUARDS}",
        worker_command(&[])
    );
    let dir = "/tmp/bad-policies";
    let good = write_policy(dir, "good", &good_yaml)?;
    let bad = write_policy(dir, "bad", &bad_yaml)?;

    let out = oomguard(&["check", &good.to_string_lossy()])?;
    evidence("check good", out.summary());
    ensure!(
        out.status.success(),
        "`check` refused a good policy: {}",
        out.summary()
    );
    let out = oomguard(&["check", &bad.to_string_lossy()])?;
    evidence("check bad", out.summary());
    ensure!(
        out.status.code() == Some(1),
        "`check` on a bad policy: want exit 1, got {}",
        out.summary()
    );
    ensure!(
        out.text().contains("instnaces"),
        "`check` does not name the bad key `instnaces`: {}",
        out.summary()
    );

    run_must_refuse(dir, "a policy in the directory is bad")?;
    let groups = fs::read_dir(CGROUP_ROOT)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    ensure!(
        groups == 0,
        "`run` created {groups} group(s) under {CGROUP_ROOT} before refusing"
    );

    let perm_dir = "/tmp/perm-policies";
    let writable = write_policy(perm_dir, "good", &good_yaml)?;
    set_mode(&writable, 0o666)?;
    let out = run_must_refuse(perm_dir, "a policy file has mode 0666")?;
    ensure!(
        out.text().contains("good.yaml"),
        "the refusal does not name the file: {}",
        out.summary()
    );

    // Control: the same file with mode 0644 is accepted, so the refusal was about the mode.
    set_mode(&writable, 0o644)?;
    Daemon::start(perm_dir)
        .context("the same policy with mode 0644 was not accepted")?
        .stop()?;
    Ok(())
}

/// Booted with cgroup_disable=memory: the daemon must refuse to start and say why.
fn no_memory_controller() -> Result<()> {
    let controllers = read_trimmed(Path::new("/sys/fs/cgroup/cgroup.controllers"))?;
    evidence("root cgroup.controllers", &controllers);
    ensure!(
        !controllers.split(' ').any(|c| c == "memory"),
        "harness: the memory controller is present; was the VM booted with cgroup_disable=memory?"
    );
    write_policy(POLICY_DIR, "plain", &plain_policy())?;
    let out = run_must_refuse(POLICY_DIR, "no memory controller")?;
    ensure!(
        out.text().to_lowercase().contains("memory controller"),
        "the refusal does not mention the memory controller: {}",
        out.summary()
    );
    Ok(())
}

/// A worker that ignores SIGTERM gets its grace period, then is killed and replaced.
/// Where `grace_kill` serves `--metrics-listen`.
const METRICS_ADDR: &str = "127.0.0.1:9101";

fn grace_kill() -> Result<()> {
    make_ledger_dir()?;
    let cmd = worker_command(&["--ledger", &ledger_path("ignorer"), "--ignore-sigterm"]);
    write_policy(
        POLICY_DIR,
        "ignorer",
        &format!("run:\n  command: {cmd}\n  instances: 1\n{GUARDS}restart:\n  grace: 2s\n"),
    )?;
    let grace = Duration::from_secs(2);
    // The metrics over HTTP too (`--metrics-listen`), checked below against `oomguard metrics`.
    run_cmd(
        "/bin/busybox",
        &["ip", "link", "set", "lo", "up"],
        Duration::from_secs(5),
    )?;
    let mut daemon = Daemon::start_with(POLICY_DIR, &["--metrics-listen", METRICS_ADDR])?;
    let old = daemon.wait_running(&["ignorer/0"], Duration::from_secs(20))?["ignorer/0"];
    sleep(Duration::from_secs(1)); // let it get into its jobs

    let asked = Instant::now();
    let out = client(&["restart", "ignorer/0"])?;
    evidence("restart ignorer/0", out.summary());
    ensure!(
        out.status.success(),
        "`oomguard restart ignorer/0` failed: {}",
        out.summary()
    );
    // Within the grace period the worker must still be there: it was not killed at once.
    let check_at = Duration::from_secs(1);
    if asked.elapsed() < check_at {
        sleep(check_at - asked.elapsed());
        ensure!(
            pid_alive(old),
            "pid {old} was gone {check_at:?} after the restart, before the {grace:?} grace"
        );
    } else {
        evidence(
            "grace check",
            format!("skipped: the restart command took {:?}", asked.elapsed()),
        );
    }
    let limit = grace + Duration::from_secs(2);
    wait_until(
        &format!("pid {old} to be gone"),
        limit.saturating_sub(asked.elapsed()),
        || (!pid_alive(old)).then_some(()),
    )?;
    evidence("old pid gone after", format!("{:?}", asked.elapsed()));

    wait_manual_replacement(&mut daemon, "ignorer/0", old)?;
    let ledger = Ledger::read(&ledger_path("ignorer"))?;
    let rec = ledger
        .pids
        .get(&old)
        .context("the old pid wrote nothing to its ledger")?;
    ensure!(
        !rec.clean_exit,
        "pid {old} exited cleanly: the kill path after the grace was not exercised"
    );

    // The operator surface tells the same story: the event carries how the worker ended, and the
    // metrics count the restart by reason.
    let events = client(&["events", "--json"])?;
    let restart: oomguard::protocol::EventRecord = events
        .text()
        .lines()
        .filter_map(|l| serde_json::from_str::<oomguard::protocol::EventRecord>(l).ok())
        .find(|e| e.action == "restart")
        .context("no restart event in `oomguard events --json`")?;
    evidence("restart event", &restart.message);
    ensure!(
        matches!(
            restart.ending,
            Some(oomguard::vocabulary::Ending::KilledAfterGrace { .. })
        ),
        "the event says the worker ended {:?}, want killed_after_grace",
        restart.ending
    );
    let metrics = client(&["metrics"])?.text();
    let line = r#"oomguard_restarts_total{policy="ignorer",index="0",reason="manual"} 1"#;
    ensure!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    let (code, scraped) = http_get(METRICS_ADDR, "/metrics")?;
    ensure!(code == 200, "GET /metrics answered {code}: {scraped}");
    ensure!(
        scraped.contains(line),
        "GET /metrics lacks {line}:\n{scraped}"
    );
    // The same series as the socket's text (the numbers may be a newer sample).
    let names = |text: &str| -> BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split([' ', '{']).next().map(str::to_string))
            .collect()
    };
    ensure!(
        names(&scraped) == names(&metrics),
        "GET /metrics and `oomguard metrics` differ:\n{scraped}\n---\n{metrics}"
    );
    evidence("GET /metrics", format!("{code}, {} bytes", scraped.len()));
    ensure!(http_get(METRICS_ADDR, "/")?.0 == 404, "GET / is not a 404");
    daemon.stop()?;

    // A port someone else holds refuses the start before any worker runs.
    let _holder = std::net::TcpListener::bind(METRICS_ADDR)?;
    let mut args = run_args(POLICY_DIR);
    args.extend(["--metrics-listen", METRICS_ADDR]);
    let out = run_cmd(OOMGUARD, &args, Duration::from_secs(15))?;
    evidence("run with the port taken", out.summary());
    ensure!(
        !out.status.success(),
        "`run` started with its metrics port taken"
    );
    ensure!(
        out.text()
            .contains("--metrics-listen 127.0.0.1:9101: cannot listen there"),
        "the refusal does not name the flag and the address: {}",
        out.text()
    );
    let left =
        fs::read_to_string(instance_group("ignorer/0").join("cgroup.procs")).unwrap_or_default();
    ensure!(
        left.trim().is_empty(),
        "a worker started before the refusal: pids {left:?}"
    );
    Ok(())
}

/// Not a test: the leaky + healthy fleet, shown as a person would watch it.
fn demo() -> Result<()> {
    make_ledger_dir()?;
    // The tests pin the PSI path (`boundary: false`); the demo shows what a user gets by
    // default: the restart at the memory.high boundary, with PSI as the backstop.
    let default = |policy: String| policy.replace("  boundary: false\n", "");
    write_policy(POLICY_DIR, "leaky", &default(leaky_policy("enforce")))?;
    write_policy(POLICY_DIR, "healthy", &default(healthy_policy()))?;
    let mut daemon = Daemon::start(POLICY_DIR)?;
    let mut log_lines_shown = 0;
    let mut restarts: BTreeMap<String, u32> = BTreeMap::new();
    for round in 0..8 {
        sleep(Duration::from_secs(5));
        daemon.ensure_alive()?;
        let log = fs::read_to_string(DAEMON_LOG).unwrap_or_default();
        for line in log.lines().skip(log_lines_shown) {
            println!("LOG | {line}");
        }
        log_lines_shown = log.lines().count();
        let table = client(&["status"])?;
        println!(
            "---- oomguard status, t={}s ----\n{}",
            (round + 1) * 5,
            table.text().trim_end()
        );
        if let Ok(report) = status_json() {
            for inst in report.policies.iter().flat_map(|p| &p.instances) {
                restarts.insert(inst.id.clone(), inst.restarts);
            }
        }
    }
    evidence("restarts", format!("{restarts:?}"));
    daemon.stop()?;
    Ok(())
}
