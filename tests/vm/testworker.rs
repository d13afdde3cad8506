//! A job-processing worker for the real-kernel tests: it does jobs of ~`--job-ms` each, records each
//! one in an append-only ledger, and can be told to leak, to exit on its own, to crash, or to ignore
//! SIGTERM. Std and libc only, so it stays a small, obvious stand-in for a real service.
//!
//! Ledger lines, each appended with a single O_APPEND write() so instances can share a file:
//! `start <pid> <job>`, `done <pid> <job>`, `exit <pid> clean`. A `start` without its `done` is a
//! lost job: the process died (or was killed) in the middle of it.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

mod enter;
mod prefork;

/// Set by the SIGTERM handler; read between jobs. The handler does nothing else, so it stays
/// async-signal-safe.
static TERM_REQUESTED: AtomicBool = AtomicBool::new(false);

const MIB: usize = 1024 * 1024;
/// Memory each job writes, so a throttled group (memory.high) slows the jobs down as it would a
/// real service. Below glibc's mmap threshold, so the heap reuses it instead of faulting anew.
const JOB_BUFFER_BYTES: usize = 64 * 1024;
const PAGE: usize = 4096;

struct Options {
    ledger: Option<String>,
    leak_mb_per_s: f64,
    /// `--leak-cap-mb N`: stop leaking once N MiB are held (a worker that grows, then stays flat).
    leak_cap_mb: Option<usize>,
    /// `--leak-freed`: write each leaked MiB, then give it back (the goodput sweep's ceiling:
    /// the page faults of the leak without its growth).
    leak_freed: bool,
    job_ms: u64,
    /// `--job-sleep`: jobs wait instead of computing (see sleep_job).
    job_sleep: bool,
    exit_after_jobs: Option<u64>,
    crash: bool,
    ignore_sigterm: bool,
    /// A cgroup directory to move itself into at start: a worker that leaves its group.
    escape_to: Option<String>,
    /// `--prefork N`: a main process with N children (see prefork.rs).
    prefork: Option<prefork::Prefork>,
    /// The prefork children log (see prefork.rs).
    children_log: Option<String>,
    /// `--orphan`: leave an orphan at start (see make_orphan).
    orphan: bool,
    /// `--detached-child`: fork a child in a session of its own that sleeps (make_detached).
    detached: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut opts = Options {
        ledger: None,
        leak_mb_per_s: 0.0,
        leak_cap_mb: None,
        leak_freed: false,
        job_ms: 100,
        job_sleep: false,
        exit_after_jobs: None,
        crash: false,
        ignore_sigterm: false,
        escape_to: None,
        prefork: None,
        children_log: None,
        orphan: false,
        detached: false,
    };
    let mut pf = prefork::Prefork {
        children: 0,
        leak_slots: 0,
        leak_mb_per_s: 0.0,
        start_mb: 0,
        exit_after_jobs: None,
        ignore_sigterm: false,
        grandchild: false,
        job_ms: 100,
        job_sleep: false,
        main_leaks: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--ledger" => opts.ledger = Some(value("--ledger")?),
            "--leak-mb-per-s" => {
                let v = value("--leak-mb-per-s")?;
                opts.leak_mb_per_s = v
                    .parse()
                    .ok()
                    .filter(|f: &f64| f.is_finite() && *f >= 0.0)
                    .ok_or(format!("--leak-mb-per-s: bad number {v:?}"))?;
            }
            "--leak-cap-mb" => opts.leak_cap_mb = Some(number(&value("--leak-cap-mb")?)?),
            "--job-ms" => {
                let v = value("--job-ms")?;
                opts.job_ms = v
                    .parse()
                    .map_err(|_| format!("--job-ms: bad number {v:?}"))?;
            }
            "--exit-after-jobs" => {
                let v = value("--exit-after-jobs")?;
                let n = v
                    .parse()
                    .map_err(|_| format!("--exit-after-jobs: bad number {v:?}"))?;
                opts.exit_after_jobs = Some(n);
            }
            "--job-sleep" => opts.job_sleep = true,
            "--leak-freed" => opts.leak_freed = true,
            "--crash" => opts.crash = true,
            "--ignore-sigterm" => opts.ignore_sigterm = true,
            "--escape-to" => opts.escape_to = Some(value("--escape-to")?),
            "--prefork" => pf.children = number(&value("--prefork")?)?,
            "--leak-slots" => pf.leak_slots = number(&value("--leak-slots")?)?,
            "--child-start-mb" => pf.start_mb = number(&value("--child-start-mb")?)?,
            "--child-exit-after-jobs" => {
                pf.exit_after_jobs = Some(number(&value("--child-exit-after-jobs")?)? as u64)
            }
            "--child-ignore-sigterm" => pf.ignore_sigterm = true,
            "--grandchild" => pf.grandchild = true,
            "--main-leaks" => pf.main_leaks = true,
            "--flood-comm" => flood_comm(),
            "--children-log" => opts.children_log = Some(value("--children-log")?),
            "--orphan" => opts.orphan = true,
            "--detached-child" => opts.detached = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if pf.children > 0 {
        pf.leak_mb_per_s = opts.leak_mb_per_s;
        pf.job_ms = opts.job_ms;
        pf.job_sleep = opts.job_sleep;
        opts.prefork = Some(pf);
    }
    Ok(opts)
}

fn number(v: &str) -> Result<usize, String> {
    v.parse().map_err(|_| format!("bad number {v:?}"))
}

extern "C" fn on_sigterm(_signal: libc::c_int) {
    TERM_REQUESTED.store(true, Ordering::SeqCst);
}

fn install_sigterm_handler() -> std::io::Result<()> {
    // SAFETY: the handler only stores to an atomic; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigterm as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGTERM, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The append-only ledger; absent when no `--ledger` was given.
struct Ledger(Option<File>);

impl Ledger {
    fn open(path: Option<&str>) -> std::io::Result<Ledger> {
        let file = match path {
            Some(p) => Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o666)
                    .open(p)?,
            ),
            None => None,
        };
        Ok(Ledger(file))
    }

    /// One write() per line: with O_APPEND the kernel places it atomically at the end.
    fn record(&mut self, line: &str) {
        if let Some(file) = &mut self.0 {
            if let Err(e) = file.write_all(format!("{line}\n").as_bytes()) {
                eprintln!("testworker: ledger write failed: {e}");
            }
        }
    }
}

/// ~`ms` of work: arithmetic, with a small buffer written and read back each round.
fn do_job(job: u64, ms: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut buf = vec![0u8; JOB_BUFFER_BYTES];
    let mut acc = job;
    loop {
        for i in (0..buf.len()).step_by(64) {
            acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i as u64);
            buf[i] = acc as u8;
        }
        acc ^= buf.iter().step_by(256).map(|&b| u64::from(b)).sum::<u64>();
        if Instant::now() >= deadline {
            return black_box(acc);
        }
    }
}

/// A job that mostly waits (a downstream call, I/O): one round of the buffer work, then the rest
/// of `ms` asleep. The goodput sweep's `oomguard.job=sleep` variant uses it so that eighteen
/// workers on two emulated vCPUs leave the leak its CPU (with computing jobs they starve it).
fn sleep_job(job: u64, ms: u64) -> u64 {
    let started = Instant::now();
    let acc = do_job(job, 0);
    std::thread::sleep(Duration::from_millis(ms).saturating_sub(started.elapsed()));
    acc
}

/// Allocates 1 MiB chunks and writes every page of each, so they are really charged to the
/// cgroup; they are kept until the process ends (or, with `freed`, given back at once).
struct Leak {
    mb_per_s: f64,
    cap: usize,
    started: Instant,
    chunks: Vec<Vec<u8>>,
    /// `--leak-freed`: one mapping whose pages are dropped after each MiB (see `fault_and_free`).
    freed: Option<Freed>,
    /// MiB leaked so far (kept in `chunks`, or written and dropped when `freed`).
    leaked: usize,
}

/// One MiB with every page written, so it is charged to the cgroup at once.
pub fn touched_mib() -> Vec<u8> {
    let mut chunk = vec![0u8; MIB];
    for i in (0..MIB).step_by(PAGE) {
        chunk[i] = 1;
    }
    black_box(chunk)
}

/// A 1 MiB anonymous mapping for `--leak-freed`. Not a Vec: glibc raises its mmap threshold
/// after the first free of a big chunk and then hands back heap pages that are already faulted
/// in, which would make the ceiling a free ride. MADV_DONTNEED makes the next write of each page
/// a fresh zero-page fault and charge, as the real leak's are.
struct Freed(*mut u8);

impl Freed {
    fn new() -> Result<Freed, String> {
        // SAFETY: a private anonymous mapping; the result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MIB,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Freed(p.cast()))
    }

    /// Writes every page, then hands them all back to the kernel.
    fn fault_and_free(&self) {
        for i in (0..MIB).step_by(PAGE) {
            // SAFETY: i < MIB, inside the mapping made in new().
            unsafe { std::ptr::write_volatile(self.0.add(i), 1) };
        }
        // SAFETY: the whole mapping made in new(); nothing holds a reference into it.
        unsafe { libc::madvise(self.0.cast(), MIB, libc::MADV_DONTNEED) };
    }
}

impl Leak {
    fn new(mb_per_s: f64, cap: usize) -> Leak {
        Leak {
            mb_per_s,
            cap,
            started: Instant::now(),
            chunks: Vec::new(),
            freed: None,
            leaked: 0,
        }
    }

    /// Catches up to the configured rate; a throttled process leaks in bursts, as a real one would.
    /// Stops early once `stop()` says so, so a shutdown is not held up by a long burst.
    fn catch_up(&mut self, stop: impl Fn() -> bool) {
        let due = ((self.started.elapsed().as_secs_f64() * self.mb_per_s) as usize).min(self.cap);
        while self.leaked < due && !stop() {
            match &self.freed {
                Some(f) => f.fault_and_free(),
                None => self.chunks.push(touched_mib()),
            }
            self.leaked += 1;
        }
    }
}

/// `--flood-comm`: renames itself in a loop for ever, each rename a proc connector event (what
/// any local user can do to a daemon that listens to every kind).
fn flood_comm() -> ! {
    let names = [c"flood-a", c"flood-b"];
    let mut i = 0usize;
    loop {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, names[i & 1].as_ptr()) };
        i = i.wrapping_add(1);
    }
}

/// A grandchild named `orphan` whose parent exits at once: re-parented to PID 1 (or the nearest
/// subreaper), it lives 300 ms and exits, a zombie until that process reaps it.
fn make_orphan() {
    // SAFETY: fork at start (one thread); the children only call async-signal-safe functions.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            if libc::fork() == 0 {
                libc::prctl(libc::PR_SET_NAME, c"orphan".as_ptr());
                libc::usleep(300_000);
                libc::_exit(0);
            }
            libc::_exit(0);
        }
        if child > 0 {
            let mut status = 0;
            libc::waitpid(child, &mut status, 0);
        }
    }
}

/// A child named `detached` in a session (and process group) of its own, sleeping until it is
/// killed: a worker's SIGTERM and a kill of its process group never reach it.
fn make_detached() {
    // SAFETY: fork at start (one thread); the child only calls async-signal-safe functions.
    unsafe {
        if libc::fork() == 0 {
            libc::setsid();
            libc::prctl(libc::PR_SET_NAME, c"detached".as_ptr());
            loop {
                libc::pause();
            }
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--enter-container") {
        return enter::run(&argv[1..]);
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("testworker: {e}");
            return ExitCode::from(2);
        }
    };
    let pid = std::process::id();
    if opts.crash {
        eprintln!("testworker {pid}: crashing at start, as asked (--crash)");
        return ExitCode::from(1);
    }
    if let Err(e) = install_sigterm_handler() {
        eprintln!("testworker {pid}: cannot install the SIGTERM handler: {e}");
        return ExitCode::from(1);
    }
    if opts.orphan {
        make_orphan();
    }
    if opts.detached {
        make_detached();
    }
    if let Some(dir) = &opts.escape_to {
        let procs = format!("{dir}/cgroup.procs");
        if let Err(e) = std::fs::write(&procs, pid.to_string()) {
            eprintln!("testworker {pid}: cannot move into {procs}: {e}");
            return ExitCode::from(1);
        }
        println!("testworker {pid}: moved itself into {dir} (--escape-to)");
    }
    if let Some(pf) = &opts.prefork {
        return match Ledger::open(opts.children_log.as_deref()) {
            Ok(mut log) => prefork::run(pf, &mut log),
            Err(e) => {
                eprintln!("testworker {pid}: cannot open the children log: {e}");
                ExitCode::from(1)
            }
        };
    }
    let mut ledger = match Ledger::open(opts.ledger.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "testworker {pid}: cannot open ledger {:?}: {e}",
                opts.ledger
            );
            return ExitCode::from(1);
        }
    };
    println!(
        "testworker {pid}: started (leak {} MB/s, job {} ms, uid {})",
        opts.leak_mb_per_s,
        opts.job_ms,
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    );
    let mut leak = Leak::new(opts.leak_mb_per_s, opts.leak_cap_mb.unwrap_or(usize::MAX));
    if opts.leak_freed {
        match Freed::new() {
            Ok(f) => leak.freed = Some(f),
            Err(e) => {
                eprintln!("testworker {pid}: --leak-freed: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let mut said_ignoring = false;
    let mut job = 0u64;
    let term_requested = || TERM_REQUESTED.load(Ordering::SeqCst);
    loop {
        if term_requested() {
            if !opts.ignore_sigterm {
                ledger.record(&format!("exit {pid} clean"));
                println!("testworker {pid}: SIGTERM: exiting cleanly after {job} jobs");
                return ExitCode::SUCCESS;
            }
            if !said_ignoring {
                println!("testworker {pid}: SIGTERM received and ignored (--ignore-sigterm)");
                said_ignoring = true;
            }
        }
        if opts.exit_after_jobs.is_some_and(|n| job >= n) {
            ledger.record(&format!("exit {pid} clean"));
            println!("testworker {pid}: exiting by itself after {job} jobs (--exit-after-jobs)");
            return ExitCode::SUCCESS;
        }
        job += 1;
        ledger.record(&format!("start {pid} {job}"));
        // The leak happens while a job runs, as in a real worker (big task arguments, caches
        // filled by the job): a SIGKILL at the memory limit loses the job in flight.
        leak.catch_up(|| term_requested() && !opts.ignore_sigterm);
        if opts.job_sleep {
            sleep_job(job, opts.job_ms);
        } else {
            do_job(job, opts.job_ms);
        }
        ledger.record(&format!("done {pid} {job}"));
        if job.is_multiple_of(10) {
            println!(
                "testworker {pid}: {job} jobs done, {} MiB leaked",
                leak.chunks.len()
            );
        }
    }
}
