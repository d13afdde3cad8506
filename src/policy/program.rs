//! Programs oomguard runs as root: `restart.hooks.*`, and `run.command` when the worker keeps
//! root's uid. Whoever can change such a file, or the interpreter its `#!` line names, or any
//! directory above either, runs code as root at the next restart, so they pass the policy files'
//! rules (`perms`), every directory up to `/` included: at load (`oomguard check`, start,
//! reload) and again at each start, on the descriptor that is then executed (through
//! `/proc/self/fd`), so a rename between the check and the exec cannot swap the file.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::perms::open_program;
use crate::policy::{Policy, PolicyError};

/// The kernel reads this much of a file for its `#!` line (BINPRM_BUF_SIZE).
const HEADER_BYTES: usize = 256;

/// A program that failed the rules; displays as "`/srv/app/bin/drain` (run as root): ...".
#[derive(Debug, thiserror::Error)]
#[error("`{}` (run as root): {message}", program.display())]
pub struct ProgramError {
    pub program: PathBuf,
    /// What is wrong, with the command that fixes it.
    pub message: String,
}

/// A program that passed the rules, open: what [`Program::command`] executes.
#[derive(Debug)]
pub struct Program {
    /// As the policy writes it: the program's argv[0].
    path: PathBuf,
    file: File,
    script: Option<Script>,
}

/// A `#!` script: the kernel would open the interpreter by path; oomguard executes the checked
/// interpreter itself, with the kernel's argv (interpreter, its one optional argument, the
/// script, the arguments).
#[derive(Debug)]
struct Script {
    interpreter: PathBuf,
    file: File,
    arg: Option<OsString>,
}

impl Program {
    /// Opens `path` and, for a script, its interpreter, and checks both (see the module comment).
    pub fn open(path: &Path) -> Result<Program, ProgramError> {
        let fail = |message: String| ProgramError {
            program: path.to_path_buf(),
            message,
        };
        let file = open_program(path, "the file").map_err(|e| fail(e.message))?;
        let head = header(&file).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let script = match interpreter_line(&head).map_err(fail)? {
            None => None,
            Some((interpreter, arg)) => {
                let in_interp = |m: String| {
                    fail(format!(
                        "its interpreter {} (the #! line): {m}",
                        interpreter.display()
                    ))
                };
                let ifile =
                    open_program(&interpreter, "the file").map_err(|e| in_interp(e.message))?;
                let iheader =
                    header(&ifile).map_err(|e| in_interp(format!("cannot read it: {e}")))?;
                if iheader.starts_with(b"#!") {
                    return Err(in_interp(
                        "is itself a script: name the program that runs it on the #! line".into(),
                    ));
                }
                Some(Script {
                    interpreter,
                    file: low_fd_safe(ifile).map_err(|e| fail(e.to_string()))?,
                    arg,
                })
            }
        };
        Ok(Program {
            path: path.to_path_buf(),
            file: low_fd_safe(file).map_err(|e| fail(e.to_string()))?,
            script,
        })
    }

    /// A command that executes the checked file, not whatever the path names by the time it is
    /// spawned; `args` follow argv[0]. Keep `self` until the command is spawned: its
    /// descriptors are what the child executes. A script sees itself as `/proc/self/fd/N` (its
    /// `$0`), as it would under `fexecve`.
    pub fn command(&self, args: &[String]) -> tokio::process::Command {
        let Some(script) = &self.script else {
            let mut cmd = tokio::process::Command::new(fd_path(&self.file));
            cmd.arg0(&self.path).args(args);
            return cmd;
        };
        let mut cmd = tokio::process::Command::new(fd_path(&script.file));
        cmd.arg0(&script.interpreter);
        if let Some(arg) = &script.arg {
            cmd.arg(arg);
        }
        cmd.arg(fd_path(&self.file)).args(args);
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl is async-signal-safe; `fd` stays open in the parent until the spawn.
        unsafe {
            cmd.pre_exec(move || {
                // The interpreter opens the script by its /proc/self/fd name after the exec: the
                // descriptor must survive it (only in this child).
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

fn fd_path(file: &File) -> String {
    format!("/proc/self/fd/{}", file.as_raw_fd())
}

/// A descriptor below 3 would be replaced by the child's stdin/stdout/stderr before the exec
/// (a daemon started with one of them closed): such a one is moved up (try_clone dups to >= 3).
fn low_fd_safe(file: File) -> io::Result<File> {
    if file.as_raw_fd() < 3 {
        file.try_clone()
    } else {
        Ok(file)
    }
}

fn header(file: &File) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_BYTES];
    let mut len = 0;
    while len < buf.len() {
        match file.read_at(&mut buf[len..], len as u64)? {
            0 => break,
            n => len += n,
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// The `#!` line as the kernel reads it (fs/binfmt_script.c): the interpreter, then the rest of
/// the line, trimmed, as one optional argument. None for a file without one (a binary).
fn interpreter_line(header: &[u8]) -> Result<Option<(PathBuf, Option<OsString>)>, String> {
    let Some(rest) = header.strip_prefix(b"#!") else {
        return Ok(None);
    };
    let Some(end) = rest.iter().position(|b| *b == b'\n') else {
        return Err(format!(
            "its #! line is longer than {} bytes, more than the kernel reads: shorten it",
            HEADER_BYTES - 1
        ));
    };
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let line = &rest[..end];
    let line = &line[line.iter().position(|b| !blank(b)).unwrap_or(line.len())..];
    let name_end = line.iter().position(blank).unwrap_or(line.len());
    let (name, arg) = line.split_at(name_end);
    let arg = arg.trim_ascii();
    if !name.starts_with(b"/") {
        return Err(format!(
            "its #! line names `{}`, not an absolute path: write the interpreter's full path",
            String::from_utf8_lossy(name)
        ));
    }
    let arg = (!arg.is_empty()).then(|| OsString::from_vec(arg.to_vec()));
    Ok(Some((
        PathBuf::from(OsString::from_vec(name.to_vec())),
        arg,
    )))
}

/// Does the worker run as root: no `run.user`, or one whose uid is 0.
pub fn runs_as_root(user: Option<&str>) -> bool {
    user.is_none_or(|u| {
        nix::unistd::User::from_name(u)
            .ok()
            .flatten()
            .is_some_and(|u| u.uid.is_root())
    })
}

/// The root-run programs of `policy`, checked at load. A program that does not exist (yet) is
/// left to the check at its start, where it cannot run anyway.
pub(super) fn check(policy: &Policy) -> Vec<PolicyError> {
    let mut programs = Vec::new();
    if runs_as_root(policy.run.user.as_deref()) {
        programs.push(("run.command[0]", &policy.run.command));
    }
    let hooks = &policy.restart.hooks;
    for (key, argv) in [
        ("restart.hooks.before[0]", &hooks.before),
        ("restart.hooks.after[0]", &hooks.after),
    ] {
        if let Some(argv) = argv {
            programs.push((key, argv));
        }
    }
    let mut errors = Vec::new();
    for (key, argv) in programs {
        let Some(program) = argv.first().map(Path::new) else {
            continue;
        };
        if fs::metadata(program).is_err_and(|e| e.kind() == io::ErrorKind::NotFound) {
            continue;
        }
        if let Err(e) = Program::open(program) {
            errors.push(PolicyError::new(&policy.source, key, e.to_string()));
        }
    }
    errors
}

#[cfg(test)]
#[path = "program_tests.rs"]
mod tests;
