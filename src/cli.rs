//! Command line: parses arguments and calls into the library. Kept thin: every subcommand is one
//! call into `daemon`, `policy` or `client`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::daemon::{self, DEFAULT_POLICIES, DEFAULT_SOCKET};
use crate::policy;

#[derive(Parser, Debug)]
#[command(name = "oomguard", version, about = "Keeps the kernel OOM killer away from worker processes")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// Directory of policy files (*.yaml).
        #[arg(long, default_value = DEFAULT_POLICIES)]
        policies: PathBuf,
        /// Unix socket for the CLI.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// cgroup under which each policy gets a group [default: the group oomguard-workers.service
        /// holds when it runs, else /sys/fs/cgroup/oomguard].
        #[arg(long)]
        cgroup_root: Option<PathBuf>,
        /// Decide and report only: every policy in observe mode.
        #[arg(long)]
        dry_run: bool,
    },
    /// Hold the workers' cgroup subtree (run by oomguard-workers.service; see docs/install.md).
    Hold,
    /// Validate policy files or directories; exits 1 on any error.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { policies, socket, cgroup_root, dry_run } => {
            init_logging();
            let opts = daemon::Options { policies, socket, cgroup_root, dry_run };
            block_on(daemon::run(opts))
        }
        Cmd::Hold => {
            init_logging();
            block_on(crate::holder::hold())
        }
        Cmd::Check { paths } => check(&paths),
    }
}

/// Runs a daemon-side future on a single-threaded runtime: one thread is plenty for a process
/// that sleeps on kernel wake-ups, and it keeps the daemon's footprint small.
fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oomguard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let (policies, errors) = policy::load_paths(paths);
    for p in &policies {
        println!("ok: {} ({}): {} instance(s), mode {:?}", p.source.display(), p.name, p.run.instances, p.mode);
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

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr).init();
}
