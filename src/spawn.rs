//! Starting a worker: already inside its cgroup, as the policy's user, with a clean environment.
//!
//! The child moves itself into the instance's group between fork and exec, so the worker's program
//! never runs an instruction outside its group and every page it touches is charged to it. Only
//! async-signal-safe calls happen there (write, setrlimit, setgroups, setgid, setuid, chdir,
//! setsid, and the journal stream's socket calls): everything that reads /etc/passwd or allocates is done in the parent first. The
//! working directory is entered after the privilege drop, so a worker can only run in a directory
//! its own user may enter.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Stdio;

use nix::unistd::{Gid, Group as UnixGroup, Uid, User};

use crate::cgroupfs::{Group, CGROUP_PROCS};
use crate::policy::{Program, Run};

pub mod stream;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("user {0:?} does not exist on this host")]
    NoUser(String),
    #[error("group {0:?} does not exist on this host")]
    NoGroup(String),
    #[error("cannot look up user or group {name:?}: {source}")]
    Lookup { name: String, source: nix::Error },
    #[error("cannot open {path} to place the worker: {source}")]
    OpenProcs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {command:?}{context}: {source}")]
    Exec {
        command: String,
        /// The user and workdir it was started with, when set: a refused chdir or setuid shows
        /// up here as the bare errno.
        context: String,
        source: std::io::Error,
    },
    #[error("refused to start it: {0}")]
    Unsafe(String),
    #[error("run.workdir {0:?} contains a NUL byte")]
    Workdir(PathBuf),
}

/// The open-files soft limit every worker starts with (its hard limit is left as inherited). The
/// daemon raises its own to the hard limit (two fds per instance: the PSI trigger and
/// memory.events), and under the unit it starts with LimitNOFILE=65536 anyway; workers get the
/// usual 1024, as select()-based code expects (systemd's advice for services that raise it).
pub const WORKER_NOFILE: u64 = 1024;

/// Raises this process's open-files soft limit to its hard limit. Returns (old soft, new soft).
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to / read from the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let old = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_max;
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((old, lim.rlim_cur))
}

/// Who the worker runs as, resolved in the parent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub name: String,
    pub home: PathBuf,
}

/// Resolves `run.user` / `run.group`. `None` when the worker keeps the daemon's identity (root).
pub fn resolve_identity(run: &Run) -> Result<Option<Identity>, SpawnError> {
    let group = match &run.group {
        Some(name) => Some(
            UnixGroup::from_name(name)
                .map_err(|source| SpawnError::Lookup {
                    name: name.clone(),
                    source,
                })?
                .ok_or_else(|| SpawnError::NoGroup(name.clone()))?,
        ),
        None => None,
    };
    let Some(name) = &run.user else {
        return Ok(group.map(|g| Identity {
            uid: Uid::current().as_raw(),
            gid: g.gid.as_raw(),
            groups: vec![g.gid.as_raw()],
            name: "root".into(),
            home: "/root".into(),
        }));
    };
    let user = User::from_name(name)
        .map_err(|source| SpawnError::Lookup {
            name: name.clone(),
            source,
        })?
        .ok_or_else(|| SpawnError::NoUser(name.clone()))?;
    let gid = group.map_or(user.gid, |g| g.gid);
    let cname = CString::new(name.as_str()).map_err(|_| SpawnError::NoUser(name.clone()))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, gid)
        .map_err(|source| SpawnError::Lookup {
            name: name.clone(),
            source,
        })?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if !groups.contains(&gid.as_raw()) {
        groups.push(gid.as_raw());
    }
    Ok(Some(Identity {
        uid: user.uid.as_raw(),
        gid: gid.as_raw(),
        groups,
        name: name.clone(),
        home: user.dir,
    }))
}

/// Builds and starts the worker inside `group` (None: in the daemon's own group, the read-only
/// container mode). `instance` ("celery/0") is passed in the environment as OOMGUARD_INSTANCE so
/// a worker can log which instance it is.
pub fn spawn(
    run: &Run,
    identity: Option<&Identity>,
    group: Option<&Group>,
    instance: &str,
) -> Result<tokio::process::Child, SpawnError> {
    // Opened in the parent: the child only write()s to it. CLOEXEC closes it at exec.
    let procs: Option<OwnedFd> = match group {
        Some(g) => {
            let procs_path = g.file(CGROUP_PROCS);
            Some(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC)
                    .open(&procs_path)
                    .map_err(|source| SpawnError::OpenProcs {
                        path: procs_path.clone(),
                        source,
                    })?
                    .into(),
            )
        }
        None => None,
    };

    // A worker that keeps root's uid runs a program root's policy files' rules allow, checked
    // again now and executed from the checked descriptor (crate::policy::program).
    let program = if identity.is_none_or(|id| id.uid == 0) {
        Some(
            Program::open(std::path::Path::new(&run.command[0]))
                .map_err(|e| SpawnError::Unsafe(e.to_string()))?,
        )
    } else {
        None
    };
    let mut cmd = match &program {
        Some(p) => p.command(&run.command[1..]),
        None => {
            let mut cmd = tokio::process::Command::new(&run.command[0]);
            cmd.args(&run.command[1..]);
            cmd
        }
    };
    cmd.stdin(Stdio::null()).kill_on_drop(false);
    // A clean environment: the daemon's own (NOTIFY_SOCKET, RUST_LOG, ...) is not the worker's.
    cmd.env_clear().env(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    if let Ok(lang) = std::env::var("LANG") {
        cmd.env("LANG", lang);
    }
    if let Some(id) = identity {
        cmd.env("USER", &id.name)
            .env("LOGNAME", &id.name)
            .env("HOME", &id.home);
    }
    cmd.env("OOMGUARD_INSTANCE", instance);
    cmd.envs(&run.env);
    // Entered in the child after the privilege drop (std's current_dir() would chdir as root,
    // before pre_exec): prepared here, as the child may not allocate.
    let workdir = match &run.workdir {
        Some(dir) => Some(
            CString::new(dir.as_os_str().as_encoded_bytes())
                .map_err(|_| SpawnError::Workdir(dir.clone()))?,
        ),
        None => None,
    };

    let fd = procs.as_ref().map(|p| p.as_raw_fd());
    let creds = identity.map(|id| (id.uid, id.gid, id.groups.clone()));
    let journal = crate::logging::to_journal()
        .then(|| stream::JournalStream::new(instance))
        .flatten();
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe system
    // calls on memory prepared before the fork (the fd, the credential vector, the workdir).
    unsafe {
        cmd.pre_exec(move || {
            // Own session: a Ctrl-C at the daemon's terminal is not the workers'.
            libc::setsid();
            let zero = b"0";
            if let Some(fd) = fd {
                if libc::write(fd, zero.as_ptr().cast(), zero.len()) != zero.len() as isize {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // The daemon runs with OOMScoreAdjust=-900 so the kernel spares it; its workers must
            // not inherit that shield from the system-wide OOM killer.
            let adj = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if adj >= 0 {
                libc::write(adj, zero.as_ptr().cast(), zero.len());
                libc::close(adj);
            }
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur = WORKER_NOFILE.min(lim.rlim_max);
                libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            }
            if let Some((uid, gid, groups)) = &creds {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(*gid) != 0
                    || libc::setuid(*uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(dir) = &workdir {
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // Last: journald takes the stream's pid, uid and cgroup from this connection.
            if let Some(journal) = &journal {
                journal.attach();
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SpawnError::Exec {
        command: run.command.join(" "),
        context: exec_context(identity, run.workdir.as_deref()),
        source,
    })?;
    drop(procs);
    drop(program);
    Ok(child)
}

/// " as user app in workdir /srv/app", for a start that failed.
fn exec_context(identity: Option<&Identity>, workdir: Option<&std::path::Path>) -> String {
    let mut context = String::new();
    if let Some(id) = identity {
        context.push_str(&format!(" as user {} (uid {})", id.name, id.uid));
    }
    if let Some(dir) = workdir {
        context.push_str(&format!(" in workdir {}", dir.display()));
    }
    context
}
