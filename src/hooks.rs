//! Running `restart.hooks`: an operator's program before a restart's signal (a load-balancer
//! drain, a stack dump of the leaking worker) and after the respawn.
//!
//! A hook runs as the daemon (root): a drain needs credentials the worker should not hold, and a
//! stack dump (`py-spy dump --pid`) needs ptrace over the worker, which the worker's own user lacks
//! under the usual `kernel.yama.ptrace_scope=1`. Only root can write a policy file
//! (`check_file_permissions`), or the hook's program, its interpreter and the directories above
//! them (`crate::policy::Program`, checked again at each run), so a hook is no more than root
//! already allows itself.
//!
//! The pure parts (argv substitution, the environment, bounding the output) are separate from
//! [`run`], which starts the program in its own session (so that its whole process group can be
//! killed when it exits, at the timeout, or when its instance goes away), with a clean
//! environment, stdin from /dev/null and stdout and stderr on one pipe. The output is redacted of
//! secrets ([`redact`]) and bounded before it reaches the event and the log.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::policy::Program;
use crate::protocol::HookRecord;
use crate::units::Limit;

/// At most this much of a hook's output lands in its event.
pub const OUTPUT_BYTES: usize = 512;
/// At most this many lines of it.
pub const OUTPUT_LINES: usize = 4;
/// Read of its output before redaction and the cut to [`OUTPUT_BYTES`], so that a secret across
/// the cut is still whole when it is redacted.
const CAPTURE_BYTES: usize = 4096;
/// After the hook exits (and its process group is killed), how long its output may still take to
/// reach EOF (a process that left the group can hold the pipe open for ever; its remaining output
/// is not waited for).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(200);
/// What a secret in a hook's output becomes.
pub const REDACTED: &str = "[redacted]";
/// An environment variable whose name holds one of these (any case) is a secret: its value is
/// redacted from hook output (see [`redact`]).
pub const SECRET_WORDS: [&str; 4] = ["PASSWORD", "SECRET", "TOKEN", "KEY"];
/// Values shorter than this are not searched for (a `KEY=1` would redact every `1`).
const MIN_SECRET_LEN: usize = 4;

/// What a hook is told about the restart.
#[derive(Clone, Debug, PartialEq)]
pub struct Context {
    pub instance: String,
    /// `Reason::as_str()`: pressure, memory, manual, child.
    pub reason: String,
    /// The worker being restarted.
    pub pid: u32,
    /// The replacement (`after` only).
    pub new_pid: Option<u32>,
    /// memory.current when the instance was chosen; None when it could not be read.
    pub current: Option<u64>,
    pub high: Limit,
    pub max: Limit,
    /// The instance's cgroup directory.
    pub cgroup: String,
    /// Values to redact from the output: the worker's and the daemon's environment variables
    /// named like a secret ([`secret_values`]).
    pub secrets: Vec<String>,
}

/// Which hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    Before,
    After,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::Before => "before",
            When::After => "after",
        }
    }
}

/// The policy's argv with the placeholders (`crate::policy::PLACEHOLDERS`) substituted in the
/// arguments; the program is left as written (validation refuses a placeholder there). No
/// shell ever sees the result, so a substituted value cannot become more than one argument.
pub fn argv(template: &[String], ctx: &Context) -> Vec<String> {
    let new_pid = ctx.new_pid.map_or(String::new(), |p| p.to_string());
    let pid = ctx.pid.to_string();
    template
        .iter()
        .enumerate()
        .map(|(i, a)| {
            if i == 0 {
                return a.clone();
            }
            a.replace("{pid}", &pid)
                .replace("{new_pid}", &new_pid)
                .replace("{instance}", &ctx.instance)
                .replace("{reason}", &ctx.reason)
        })
        .collect()
}

/// The hook's whole environment (nothing of the daemon's own is passed on). Figures are bytes;
/// a limit without one is `max`, an unreadable memory.current is empty.
pub fn env(ctx: &Context, when: When) -> Vec<(&'static str, String)> {
    let mut env = vec![
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
        ),
        ("OOMGUARD_HOOK", when.as_str().to_string()),
        ("OOMGUARD_INSTANCE", ctx.instance.clone()),
        ("OOMGUARD_REASON", ctx.reason.clone()),
        ("OOMGUARD_PID", ctx.pid.to_string()),
        (
            "OOMGUARD_MEMORY_CURRENT",
            ctx.current.map_or(String::new(), |c| c.to_string()),
        ),
        ("OOMGUARD_MEMORY_HIGH", ctx.high.to_kernel()),
        ("OOMGUARD_MEMORY_MAX", ctx.max.to_kernel()),
        ("OOMGUARD_CGROUP", ctx.cgroup.clone()),
    ];
    if let Some(p) = ctx.new_pid {
        env.push(("OOMGUARD_NEW_PID", p.to_string()));
    }
    if let Ok(lang) = std::env::var("LANG") {
        env.push(("LANG", lang));
    }
    env
}

/// Whether an environment variable's name marks its value as a secret ([`SECRET_WORDS`]).
pub fn is_secret_name(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_WORDS.iter().any(|w| upper.contains(w))
}

/// The values of `env` (the policy's `run.env`, then the daemon's own environment) whose names
/// mark them as secrets, longest first so a value containing another is replaced whole.
pub fn secret_values<'a>(env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<String> {
    let mut values: Vec<String> = env
        .into_iter()
        .filter(|(k, v)| is_secret_name(k) && v.len() >= MIN_SECRET_LEN)
        .map(|(_, v)| v.to_string())
        .chain(
            std::env::vars()
                .filter(|(k, v)| is_secret_name(k) && v.len() >= MIN_SECRET_LEN)
                .map(|(_, v)| v),
        )
        .collect();
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    values.dedup();
    values
}

/// `text` with each of `secrets` replaced by [`REDACTED`], and the value of every `NAME=value`
/// or `NAME: value` whose NAME is a secret's ([`is_secret_name`]) too, up to the end of the
/// word (whitespace, a quote, `,` or `;`).
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        out = out.replace(s.as_str(), REDACTED);
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find(['=', ':']) {
        let (head, tail) = rest.split_at(i);
        let name_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map_or(0, |j| j + 1);
        result.push_str(head);
        let sep = &tail[..1];
        result.push_str(sep);
        let after = &tail[1..];
        if !is_secret_name(&head[name_start..]) {
            rest = after;
            continue;
        }
        let spaces = after.len() - after.trim_start_matches([' ', '\t']).len();
        let value = &after[spaces..];
        let end = value
            .find(|c: char| c.is_whitespace() || "\"',;".contains(c))
            .unwrap_or(value.len());
        result.push_str(&after[..spaces]);
        if end > 0 && &value[..end] != REDACTED {
            result.push_str(REDACTED);
        } else {
            result.push_str(&value[..end]);
        }
        rest = &value[end..];
    }
    result.push_str(rest);
    result
}

/// The first [`OUTPUT_LINES`] lines and at most [`OUTPUT_BYTES`] bytes of `raw`, as text
/// (invalid UTF-8 replaced, a trailing newline dropped, a cut marked with `…`).
pub fn bounded_output(raw: &[u8]) -> String {
    let mut end = raw.len().min(OUTPUT_BYTES);
    if let Some(nl) = raw
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(OUTPUT_LINES - 1)
        .map(|(i, _)| i)
    {
        end = end.min(nl);
    }
    let cut = end < raw.len() && raw[end..] != *b"\n";
    let mut text = String::from_utf8_lossy(&raw[..end]).into_owned();
    // A multi-byte character cut at the byte limit shows up as a replacement character.
    if text.ends_with('\n') {
        text.pop();
    }
    if cut {
        text.push('…');
    }
    text
}

/// One line for the log and the event's message: "before hook /usr/bin/x: exit 0 in 12 ms".
pub fn describe(r: &HookRecord) -> String {
    let how = if let Some(e) = &r.error {
        format!("not started: {e}")
    } else if r.timed_out {
        "timed out, killed".to_string()
    } else if let Some(code) = r.exit {
        format!("exit {code}")
    } else if let Some(sig) = r.signal {
        format!("killed by signal {sig}")
    } else {
        "ended, status unknown".to_string()
    };
    format!("{} hook {}: {how} in {} ms", r.when, r.argv0, r.took_ms)
}

/// Runs `template` for `ctx`, for at most `timeout`: at the timeout its process group is
/// SIGKILLed and it is reaped. Never fails: a hook that cannot be started is a record with
/// `error` set. The caller goes on with the restart whatever the outcome.
pub async fn run(when: When, template: &[String], ctx: &Context, timeout: Duration) -> HookRecord {
    let started = Instant::now();
    let argv = argv(template, ctx);
    let mut record = HookRecord {
        when: when.as_str().to_string(),
        argv0: argv.first().cloned().unwrap_or_default(),
        exit: None,
        signal: None,
        timed_out: false,
        error: None,
        output: String::new(),
        took_ms: 0,
    };
    match spawn(&argv, &env(ctx, when)) {
        Ok((child, reader)) => {
            let (status, output, timed_out) = supervise(child, reader, timeout).await;
            record.exit = status.and_then(|s| s.code());
            record.signal = status.and_then(|s| s.signal());
            record.timed_out = timed_out;
            let text = String::from_utf8_lossy(&output);
            record.output = bounded_output(redact(&text, &ctx.secrets).as_bytes());
        }
        Err(e) => record.error = Some(e),
    }
    record.took_ms = started.elapsed().as_millis() as u64;
    record
}

/// Starts the hook in a session of its own, stdout and stderr on one pipe.
fn spawn(
    argv: &[String],
    env: &[(&'static str, String)],
) -> Result<(tokio::process::Child, tokio::net::unix::pipe::Receiver), String> {
    let program = argv.first().ok_or("empty argv")?;
    // Close-on-exec: only the dup2'd copies on the hook's stdout and stderr reach it.
    let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| format!("cannot create a pipe: {e}"))?;
    let writer2 = writer
        .try_clone()
        .map_err(|e| format!("cannot duplicate a pipe: {e}"))?;
    // Checked again now, and executed from the checked descriptor (crate::policy::program).
    let checked = Program::open(Path::new(program)).map_err(|e| e.to_string())?;
    let mut cmd = checked.command(&argv[1..]);
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(Path::new("/"))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .kill_on_drop(true);
    // SAFETY: only async-signal-safe calls between fork and exec, on static data.
    unsafe {
        cmd.pre_exec(|| {
            // Its own process group, so the timeout kills whatever it started too.
            libc::setsid();
            // The daemon's OOM-killer shield (OOMScoreAdjust=-900) is not the hook's.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                libc::write(adj, b"0".as_ptr().cast(), 1);
                libc::close(adj);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    // The Command holds the pipe's write ends: dropped here, so EOF comes when the hook's
    // processes have closed theirs.
    drop(cmd);
    drop(checked);
    let reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader)
        .map_err(|e| format!("cannot watch the hook's output: {e}"))?;
    Ok((child, reader))
}

/// The hook's process group (its session leader's pid), SIGKILLed when the hook has exited, at
/// the timeout, or when the hook's future is dropped (its instance went away): nothing a hook
/// started in its group outlives it.
struct HookGroup(Option<nix::unistd::Pid>);

impl HookGroup {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for HookGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the hook's exit and reads its output (keeping the first [`CAPTURE_BYTES`], draining
/// the rest so it never blocks on a full pipe), until `timeout`; then kills its process group.
async fn supervise(
    mut child: tokio::process::Child,
    mut reader: tokio::net::unix::pipe::Receiver,
    timeout: Duration,
) -> (Option<std::process::ExitStatus>, Vec<u8>, bool) {
    let mut group = HookGroup(child.id().map(|pid| nix::unistd::Pid::from_raw(pid as i32)));
    let mut deadline = tokio::time::Instant::now() + timeout;
    let mut output = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut status = None;
    let mut eof = false;
    while status.is_none() || !eof {
        tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s.ok());
                // The leader is reaped now; while a process of its group lives, the group id
                // cannot be handed to another process, so this reaches only what it left.
                group.kill();
                deadline = deadline.min(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            n = reader.read(&mut chunk), if !eof => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => {
                    let keep = n.min((CAPTURE_BYTES + 1).saturating_sub(output.len()));
                    output.extend_from_slice(&chunk[..keep]);
                }
            },
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    match status {
        Some(s) => (s, output, false),
        None => {
            // Not reaped yet: the leader's pid is still its group's id.
            group.kill();
            let _ = child.start_kill();
            let s = child.wait().await.ok();
            (s, output, true)
        }
    }
}

#[cfg(test)]
mod tests;
