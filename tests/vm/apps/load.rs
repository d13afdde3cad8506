//! `apps-load`: the HTTP load client of the real-apps VM (tests/vm/apps). Each of `--threads`
//! threads sends `GET /` over a new connection, one after the other, for `--seconds`, and counts
//! every request as served (a `200` with the app's body), refused (connect() got ECONNREFUSED:
//! nothing listened) or failed (anything else: reset, timeout, a short or non-200 answer).
//!
//! Plain std, no HTTP crate: HTTP/1.0 with `Connection: close`, so a reply ends at EOF. Under
//! TCG its CPU cost is a small fraction of the Python client it replaced (tests/vm/README.md).
//! `--rate R` paces the threads to R requests per second in all (0, the default: as fast as the
//! server answers). Paced, the leak of a leaking app grows at the same rate on a fast host as on
//! a slow one, so how long a worker lives does not depend on the host's speed.
//!
//! Prints one line: `LOAD served=N failed=N refused=N pids=N cpu_ms=N`, and the first few
//! failures, each once.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    served: u64,
    failed: u64,
    refused: u64,
    /// The worker pids that answered (the app puts its pid in the body): each recycle is a new one.
    pids: BTreeSet<u32>,
    samples: Vec<String>,
}

enum Outcome {
    Served(u32),
    Refused,
    Failed(String),
}

fn one(addr: &SocketAddr, timeout: Duration) -> Outcome {
    let mut s = match TcpStream::connect_timeout(addr, timeout) {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if let Err(e) = s.write_all(b"GET / HTTP/1.0\r\nHost: vm\r\nConnection: close\r\n\r\n") {
        return Outcome::Failed(format!("write: {e}"));
    }
    let mut reply = Vec::with_capacity(256);
    if let Err(e) = s.read_to_end(&mut reply) {
        return Outcome::Failed(format!("read: {e}"));
    }
    let text = String::from_utf8_lossy(&reply);
    if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
        let first = text.lines().next().unwrap_or("<empty reply>").to_string();
        return Outcome::Failed(format!("status: {first}"));
    }
    // Body: `ok <pid> <kept>`.
    match text
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| b.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
    {
        Some(pid) => Outcome::Served(pid),
        None => Outcome::Failed(format!("body: {:?}", text.split("\r\n\r\n").nth(1))),
    }
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default.to_string())
}

fn cpu_ms() -> u64 {
    // utime + stime of this process, in clock ticks (USER_HZ = 100 on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) * 10
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = arg(&args, "--port", "8000").parse().expect("--port N");
    let threads: usize = arg(&args, "--threads", "4").parse().expect("--threads N");
    let seconds: f64 = arg(&args, "--seconds", "60").parse().expect("--seconds S");
    let rate: f64 = arg(&args, "--rate", "0").parse().expect("--rate R");
    // Each thread's share of the rate: one request every `gap`.
    let gap = (rate > 0.0).then(|| Duration::from_secs_f64(threads as f64 / rate));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let counts = Arc::new(Mutex::new(Counts::default()));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let counts = Arc::clone(&counts);
            thread::spawn(move || {
                let mut next = Instant::now();
                while Instant::now() < end {
                    if let Some(gap) = gap {
                        // Paced: no catching up in a burst after a slow reply.
                        let now = Instant::now();
                        if next > now {
                            thread::sleep(next - now);
                        }
                        next = next.max(now) + gap;
                    }
                    let outcome = one(&addr, Duration::from_secs(30));
                    let mut c = counts.lock().expect("no thread panics holding it");
                    match outcome {
                        Outcome::Served(pid) => {
                            c.served += 1;
                            c.pids.insert(pid);
                        }
                        Outcome::Refused => {
                            c.refused += 1;
                            drop(c);
                            // Nothing listens: do not spin on refusals.
                            thread::sleep(Duration::from_millis(10));
                        }
                        Outcome::Failed(why) => {
                            c.failed += 1;
                            if c.samples.len() < 5 && !c.samples.contains(&why) {
                                c.samples.push(why);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("load thread");
    }
    let c = counts.lock().expect("threads joined");
    for s in &c.samples {
        println!("LOAD failure: {s}");
    }
    println!(
        "LOAD served={} failed={} refused={} pids={} cpu_ms={}",
        c.served,
        c.failed,
        c.refused,
        c.pids.len(),
        cpu_ms()
    );
}
