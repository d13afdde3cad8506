//! Command line: parses arguments and calls into the library. Kept thin: every subcommand is one
//! call into `daemon`, `holder`, `policy` or `client`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::client;
use crate::daemon::{self, DEFAULT_POLICIES, DEFAULT_SOCKET};
use crate::layout::CGROUP_MOUNT;
use crate::logging::LogFormat;
use crate::policy;
use crate::protocol::DEFAULT_EVENTS_LAST;
use crate::units::{ByteSize, Dur};

impl ExecPolicy {
    fn flags(&self) -> crate::exec::Flags {
        crate::exec::Flags {
            name: self.name.clone(),
            instances: self.instances,
            children: self.children,
            memory_high: self.memory_high.map(|b| b.0),
            memory_max: self.memory_max.map(|b| b.0),
            child_memory_high: self.child_memory_high.map(|b| b.0),
            child_memory_max: self.child_memory_max.map(|b| b.0),
            signal: self.signal.clone(),
            grace: self.grace.0,
            user: self.user.clone(),
            command: self.command.clone(),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "oomguard",
    version,
    about = "Keeps the kernel OOM killer away from worker processes"
)]
pub struct Cli {
    /// The daemon's unix socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon in the foreground (as root). Exit status: 0 after a clean stop, 1 when
    /// the start is refused or the daemon fails, 4 when --stop-timeout ran out and the workers
    /// left were killed.
    Run {
        /// Directory of policy files (*.yaml, *.yml).
        #[arg(long, default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        #[command(flatten)]
        daemon: DaemonFlags,
    },
    /// Run one command under oomguard, e.g. as a container's entrypoint: `ENTRYPOINT
    /// ["oomguard", "exec", "--children", "--"]`. The flags make one policy (limits derived from
    /// the container's memory.max unless given), validated as a policy file and run as `run`
    /// runs it. Exit status as `run`'s.
    Exec {
        #[command(flatten)]
        policy: ExecPolicy,
        /// Print the policy the flags make (the derivation in comments) and whether it is
        /// valid, then exit (0 valid, 1 not).
        #[arg(long, conflicts_with = "policy")]
        print_policy: bool,
        #[command(flatten)]
        daemon: DaemonFlags,
    },
    /// Validate policy files or directories; exits 1 on any error.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Where `run` would put the groups, to check `restart.overlap` against the memory.max
        /// of the groups above [default: as `run`].
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
    },
    /// Show every instance: state, memory, pressure, restarts.
    Status {
        /// A policy ("celery") or an instance ("celery/0").
        target: Option<String>,
        /// The full status as JSON, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show the last decisions with their evidence.
    Events {
        /// How many past events.
        #[arg(long, default_value_t = DEFAULT_EVENTS_LAST)]
        last: usize,
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Gracefully restart an instance ("celery/0") or every instance of a policy, one at a time.
    Restart { target: String },
    /// Re-read the policies; a bad file changes nothing and its errors are printed.
    Reload,
    /// Print Prometheus metrics (text exposition format).
    Metrics,
    /// Hold the workers' cgroup subtree (run by oomguard-workers.service; see docs/install.md).
    Hold,
    /// Propose memory.high, memory.max and a trigger from what the daemon observed of a
    /// policy's workers (run it in `mode: observe` first; docs/recommend.md). Exit 1 when there
    /// is not enough data yet.
    Recommend {
        /// A policy name ("celery") or a policy file.
        policy: String,
        /// The recommendation, its evidence and the YAML snippet as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a policy file (for editors: see docs/install.md).
    Schema,
    /// Print shell completions.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Manpage {
        /// Write oomguard.1 and one oomguard-<subcommand>.1 per subcommand into this directory
        /// instead (what the Debian package ships).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// What `run` and `exec` share: everything but where the policies come from.
#[derive(clap::Args, Debug)]
pub struct DaemonFlags {
    /// cgroup under which each policy gets a group [default: the group
    /// oomguard-workers.service holds when it runs, else /sys/fs/cgroup/oomguard; inside a
    /// container the container's own `workers` group, and the flag is refused].
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Decide and report only: every policy in observe mode.
    #[arg(long)]
    pub dry_run: bool,
    /// Group whose members may read status, events and metrics [default: oomguard].
    #[arg(long)]
    pub socket_group: Option<String>,
    /// A non-root uid that may also restart and reload (repeatable).
    #[arg(long = "admin-uid")]
    pub admin_uids: Vec<u32>,
    /// Where worker observations are kept across restarts (for `recommend`).
    #[arg(long, default_value = daemon::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Also serve `oomguard metrics` over HTTP for Prometheus (`GET /metrics`), e.g.
    /// 0.0.0.0:9101 in a pod, 127.0.0.1:9101 on a host. Off by default: anyone who can
    /// reach the port reads the metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The whole stop's budget (SIGTERM, the runtime's stop): every worker gets its signal at
    /// once, and what is still running when this runs out is killed; exit status 4 then
    /// [default: 25s inside a container, within Kubernetes' 30 s terminationGracePeriodSeconds;
    /// none on a host, where systemd's TimeoutStopSec bounds it].
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<Dur>,
    /// How the log is written: `auto` is the journal under systemd, else plain text on
    /// stderr; `text` always plain text; `json` one JSON object per line on stderr (for
    /// container log pipelines: docs/containers.md).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

impl DaemonFlags {
    fn options(self, policies: PathBuf, socket: PathBuf) -> daemon::Options {
        daemon::Options {
            policies,
            socket,
            cgroup_root: self.cgroup_root,
            dry_run: self.dry_run,
            socket_group: self.socket_group,
            admin_uids: self.admin_uids,
            state_dir: self.state_dir,
            metrics_listen: self.metrics_listen,
            stop_timeout: self.stop_timeout.map(|d| d.0),
        }
    }
}

/// `exec`'s policy: a file, or the flags (every one optional, see docs/containers.md).
#[derive(clap::Args, Debug)]
pub struct ExecPolicy {
    /// A whole policy file instead of the flags (e.g. a ConfigMap mount); no COMMAND then.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "name", "instances", "children", "memory_high", "memory_max", "child_memory_high",
        "child_memory_max", "signal", "grace", "user", "command"])]
    policy: Option<PathBuf>,
    /// The policy's name [default: from the program's file name].
    #[arg(long)]
    name: Option<String>,
    /// How many instances of COMMAND, each in its own cgroup.
    #[arg(long, default_value_t = 1)]
    instances: u32,
    /// A cgroup leaf for each process COMMAND forks (gunicorn's workers, Celery's pool), the
    /// offender recycled alone.
    #[arg(long)]
    children: bool,
    /// Per instance [default: 80% of memory.max].
    #[arg(long, value_name = "SIZE")]
    memory_high: Option<ByteSize>,
    /// Per instance [default: (the container's memory.max - 24M reserve) / instances].
    #[arg(long, value_name = "SIZE")]
    memory_max: Option<ByteSize>,
    /// Per child, with --children [default: 80% of the child's memory.max].
    #[arg(long, value_name = "SIZE", requires = "children")]
    child_memory_high: Option<ByteSize>,
    /// Per child, with --children [default: half the instance's memory.max].
    #[arg(long, value_name = "SIZE", requires = "children")]
    child_memory_max: Option<ByteSize>,
    /// The graceful shutdown signal (instance and children).
    #[arg(long, default_value = "SIGTERM")]
    signal: String,
    /// From the signal to the kill (instance and children); keep it under --stop-timeout.
    #[arg(long, value_name = "DURATION", default_value = "20s")]
    grace: Dur,
    /// Run COMMAND as this user.
    #[arg(long)]
    user: Option<String>,
    /// The program and its arguments; a bare name is looked up in PATH.
    #[arg(
        last = true,
        required_unless_present = "policy",
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.socket;
    match cli.command {
        Cmd::Run { policies, daemon } => {
            crate::logging::init(daemon.log_format);
            if let Some(code) = crate::container::init::split_if_needed() {
                return code;
            }
            block_on(daemon::run(daemon.options(policies, socket)))
        }
        Cmd::Exec {
            policy,
            print_policy,
            daemon,
        } => {
            if print_policy {
                return crate::exec::print(&policy.flags());
            }
            crate::logging::init(daemon.log_format);
            let policies = match policy.policy.clone() {
                Some(file) => file,
                None => match crate::exec::write(&policy.flags(), &socket) {
                    Ok(dir) => dir,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        return ExitCode::FAILURE;
                    }
                },
            };
            if let Some(code) = crate::container::init::split_if_needed() {
                return code;
            }
            block_on(daemon::run(daemon.options(policies, socket)))
        }
        Cmd::Hold => {
            crate::logging::init(LogFormat::Auto);
            block_on(async { crate::holder::hold().await.map(|()| 0) })
        }
        Cmd::Check { paths, cgroup_root } => check(&paths, cgroup_root.as_deref()),
        Cmd::Status { target, json } => client_cmd(client::cmd_status(&socket, target, json)),
        Cmd::Events { last, follow, json } => {
            client_cmd(client::cmd_events(&socket, last, follow, json))
        }
        Cmd::Restart { target } => client_cmd(client::cmd_restart(&socket, &target)),
        Cmd::Reload => client_cmd(client::cmd_reload(&socket)),
        Cmd::Metrics => client_cmd(client::cmd_metrics(&socket)),
        Cmd::Recommend { policy, json } => {
            client_cmd(client::cmd_recommend(&socket, &policy, json))
        }
        Cmd::Schema => match serde_json::to_string_pretty(&policy::schema()) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("oomguard: cannot print the schema: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "oomguard",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Manpage { dir } => {
            let done = match dir {
                None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()),
                Some(dir) => write_man_pages(&dir),
            };
            match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("oomguard: cannot write the man pages: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// oomguard.1, and oomguard-<name>.1 for each subcommand (as git-commit.1), titled and used as
/// `oomguard <name>`: generated from the parser, so they cannot drift from it.
pub fn write_man_pages(dir: &Path) -> std::io::Result<()> {
    let top = Cli::command();
    let mut out = std::fs::File::create(dir.join("oomguard.1"))?;
    clap_mangen::Man::new(top.clone()).render(&mut out)?;
    for sub in top.get_subcommands() {
        let name = format!("oomguard-{}", sub.get_name());
        let page = sub
            .clone()
            .name(name.clone())
            .bin_name(format!("oomguard {}", sub.get_name()));
        let mut out = std::fs::File::create(dir.join(format!("{name}.1")))?;
        clap_mangen::Man::new(page).render(&mut out)?;
    }
    Ok(())
}

/// Threads for blocking work: worker starts (`instance::launch`, `START_GATE` of them at once),
/// a child's placement (`children::placing`, one at a time) and the group-membership check, so
/// a placement never waits for a thread behind the starts.
const BLOCKING_THREADS: usize = 6;

/// One thread, polling for I/O after every task: with the default interval of 61 tasks a socket
/// request waited behind ~60 of them per step (status timed out at 1,000 instances in the VM).
/// Worker starts and children's placements run on the blocking pool: a few threads are enough
/// to keep the kernel busy, and 512 (tokio's default) would cost an instance fleet's worth of
/// stacks in a fork storm.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .event_interval(1)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
}

/// Runs a daemon-side future on a single-threaded runtime: one thread is plenty for a process
/// that sleeps on kernel wake-ups, and it keeps the daemon's footprint small.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<u8>>) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oomguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The client commands print their own output and return the documented exit code.
fn client_cmd(fut: impl std::future::Future<Output = u8>) -> ExitCode {
    match runtime() {
        Ok(rt) => ExitCode::from(rt.block_on(fut)),
        Err(e) => {
            eprintln!("oomguard: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(paths: &[PathBuf], cgroup_root: Option<&Path>) -> ExitCode {
    let (policies, errors) = policy::load_paths(paths);
    let mut errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let mount = Path::new(CGROUP_MOUNT);
    for p in &policies {
        match overlap_fits(p, mount, cgroup_root) {
            Err(e) => errors.push(format!("{}: {e}", p.source.display())),
            Ok(note) => {
                println!(
                    "ok: {} ({}): {} instance(s), mode {:?}",
                    p.source.display(),
                    p.name,
                    p.run.instances,
                    p.mode
                );
                if let Some(note) = note {
                    println!("  {note}");
                }
            }
        }
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("{} error(s)", errors.len());
        ExitCode::FAILURE
    }
}

/// `restart.overlap` against the limits above the cgroup root `run` would use: the check `run`
/// makes at load (supervisor::envelope), made before the policy is deployed. Ok(Some(note))
/// says what was (or could not be) checked; Err refuses the policy, as `run` would.
fn overlap_fits(
    policy: &policy::Policy,
    mount: &Path,
    explicit_root: Option<&Path>,
) -> Result<Option<String>, String> {
    if policy.restart.overlap.is_none() {
        return Ok(None);
    }
    if !mount.join("cgroup.controllers").exists() {
        return Ok(Some(format!(
            "restart.overlap not checked against the machine's limits: no cgroup v2 hierarchy at {} \
             (`run` checks it at load)",
            mount.display()
        )));
    }
    let root = crate::layout::cgroup_root(mount, explicit_root).map_err(|e| e.to_string())?;
    crate::supervisor::envelope::check(policy, &crate::cgroupfs::Group::new(&root))?;
    Ok(Some(format!(
        "restart.overlap: two generations fit under the memory.max of {} and the groups above",
        root.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testutil::{accepts, BASE};

    #[test]
    fn check_measures_overlap_against_the_limits_above_the_cgroup_root() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path();
        let plain = accepts(BASE);
        let overlap = accepts(&format!("{BASE}restart:\n  overlap: true\n"));
        let root = mount.join("slice/oomguard");
        // No cgroup v2 here (the host of these tests): said, not refused.
        let note = overlap_fits(&overlap, mount, Some(&root)).unwrap().unwrap();
        assert!(note.contains("not checked"), "{note}");
        std::fs::write(mount.join("cgroup.controllers"), "memory pids\n").unwrap();
        assert_eq!(overlap_fits(&plain, mount, Some(&root)), Ok(None));
        // BASE is one instance of memory.max 2G: 4G while it overlaps. The root does not exist
        // yet (as before the first `run`); the slice above it does.
        std::fs::create_dir_all(mount.join("slice")).unwrap();
        std::fs::write(mount.join("slice/memory.max"), format!("{}\n", 3u64 << 30)).unwrap();
        let err = overlap_fits(&overlap, mount, Some(&root)).unwrap_err();
        assert!(
            err.contains("memory.max 3G") && err.contains("up to 4G"),
            "{err}"
        );
        std::fs::write(mount.join("slice/memory.max"), "max\n").unwrap();
        let note = overlap_fits(&overlap, mount, Some(&root)).unwrap().unwrap();
        assert!(note.contains("two generations fit"), "{note}");
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_and_completions_render() {
        let mut man = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut man)
            .unwrap();
        assert!(String::from_utf8(man).unwrap().contains("oomguard"));
        let mut bash = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "oomguard",
            &mut bash,
        );
        assert!(String::from_utf8(bash).unwrap().contains("restart"));
    }
}
