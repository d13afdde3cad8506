//! Who may write a policy file (or a program oomguard runs as root), and reading it without a
//! window between the check and the read.
//!
//! A policy says what oomguard (root) executes, so a file a non-root user can change, or can swap
//! for another, is a privilege escalation. Two rules:
//! - the file is opened once (`O_NOFOLLOW` on its resolved path) and the owner/mode check is an
//!   `fstat` of that open descriptor, which is also what is read: nothing can be swapped between
//!   the check and the read;
//! - the directories that decide which file a name reaches must be root's: for a plain path, the
//!   file's directory; when a symlink is on the way (the file itself, or a directory of its path),
//!   every directory on the resolved path and every directory that held a link, up to `/`, because
//!   whoever can write any of them can repoint the chain (a link in `/etc` pointing through `/tmp`
//!   is as good as a file in `/tmp`).

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::unistd::geteuid;

use crate::policy::PolicyError;

pub(super) const PERMISSIONS: &str = "(permissions)";

/// Real policies are a few hundred bytes; the bound keeps a policy name that reaches a huge file
/// from costing the daemon its memory.
const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Symlinks followed while resolving one path, as the kernel's own limit (MAXSYMLINKS).
const MAX_HOPS: usize = 40;

/// Refuses `path` unless the file and the directories that decide what it names are owned by root
/// (or by the current euid, so a developer can `oomguard check` their own files) and not writable
/// by group or others. Opens the file to check it; see [`read_policy`] to also read it.
pub fn check_file_permissions(path: &Path) -> Result<(), PolicyError> {
    open_checked(path).map(|_| ())
}

/// The permission checks of [`check_file_permissions`], then the text, read from the very
/// descriptor that was checked.
pub(super) fn read_policy(path: &Path) -> Result<String, PolicyError> {
    let file = open_checked(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, &e))?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(PolicyError::new(
            path,
            "(file)",
            format!(
                "is larger than {MAX_POLICY_BYTES} bytes: a policy is a short YAML file; check \
                 that the path names the right file"
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|e| PolicyError::new(path, "(file)", format!("is not UTF-8 text: {e}")))
}

fn open_checked(path: &Path) -> Result<File, PolicyError> {
    let resolved = resolve(path)?;
    let file = open_resolved(path, &resolved)?;
    let meta = file.metadata().map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(PolicyError::new(
            path,
            "(file)",
            "is not a regular file: policies are files named *.yaml",
        ));
    }
    let fix = format!("chown root:root {0} && chmod 644 {0}", shown(&resolved));
    check_owner_mode(path, "the file", &meta, &fix)?;
    Ok(file)
}

/// A program oomguard runs as root (`crate::policy::program`), opened and checked like a policy
/// file, and every directory above it too, whether or not a symlink is on the way: a program
/// usually lives in an application's tree (`/srv/app/bin`) whose upper directories its user may
/// own, and whoever can rename one of them can put another file under the name. `what` names it
/// in messages ("the file", "its interpreter /usr/bin/python3").
pub(super) fn open_program(path: &Path, what: &str) -> Result<File, PolicyError> {
    let resolved = resolve(path)?;
    for dir in parent(&resolved).ancestors() {
        let fix = format!("chown root: {0}; chmod go-w {0}", shown(dir));
        check_dir_with(path, dir, &format!("directory {}", dir.display()), &fix)?;
    }
    let file = open_resolved(path, &resolved)?;
    let meta = file.metadata().map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(PolicyError::new(
            path,
            PERMISSIONS,
            format!("{what} is not a regular file: name the program itself"),
        ));
    }
    let fix = format!("chown root: {0}; chmod go-w {0}", shown(&resolved));
    check_owner_mode(path, what, &meta, &fix)?;
    Ok(file)
}

/// Opens the checked, symlink-free `resolved` for reading.
fn open_resolved(path: &Path, resolved: &Path) -> Result<File, PolicyError> {
    // O_NOFOLLOW: if the last component became a symlink since `resolve` looked, the open fails
    // instead of following it. O_NONBLOCK: a FIFO planted under the name must not hang the daemon
    // (the callers refuse it as not a regular file).
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(resolved)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => PolicyError::new(
                path,
                PERMISSIONS,
                format!(
                    "{} was replaced by a symlink while it was being checked: check who else \
                     writes to its directory, then try again",
                    resolved.display()
                ),
            ),
            _ => read_error(path, &e),
        })
}

/// One step of a path being resolved.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn push_steps(stack: &mut Vec<Step>, path: &Path) {
    // Reversed, so popping the stack walks the path from its start.
    for c in path.components().rev() {
        match c {
            Component::RootDir => stack.push(Step::Root),
            Component::ParentDir => stack.push(Step::Up),
            Component::Normal(name) => stack.push(Step::Name(name.to_os_string())),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Resolves `path` one component at a time, as the kernel would, and checks the directories that
/// decide what it names (see the module comment). Returns the resolved (symlink-free) path.
fn resolve(path: &Path) -> Result<PathBuf, PolicyError> {
    let mut dir = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        // getcwd(3) gives a resolved path: the directories on it are checked like the others.
        std::env::current_dir().map_err(|e| read_error(path, &e))?
    };
    let mut stack = Vec::new();
    push_steps(&mut stack, path);
    // Directories that held a symlink we followed: whoever writes one of them repoints the link.
    let mut link_dirs: Vec<PathBuf> = Vec::new();
    while let Some(step) = stack.pop() {
        match step {
            Step::Root => dir = PathBuf::from("/"),
            Step::Up => {
                dir.pop();
            }
            Step::Name(name) => {
                let next = dir.join(&name);
                let meta = fs::symlink_metadata(&next).map_err(|e| read_error(path, &e))?;
                if meta.file_type().is_symlink() {
                    if link_dirs.len() >= MAX_HOPS {
                        return Err(PolicyError::new(
                            path,
                            "(file)",
                            format!("more than {MAX_HOPS} symlinks to follow: is there a loop?"),
                        ));
                    }
                    link_dirs.push(dir.clone());
                    let target = fs::read_link(&next).map_err(|e| read_error(path, &e))?;
                    push_steps(&mut stack, &target);
                } else if !stack.is_empty() && !meta.is_dir() {
                    return Err(read_error(
                        path,
                        &io::Error::from_raw_os_error(libc::ENOTDIR),
                    ));
                } else {
                    dir = next;
                }
            }
        }
    }
    let parent = parent(&dir);
    if link_dirs.is_empty() {
        // No symlink: the directory holding the name decides what it is.
        check_dir(path, &parent)?;
        return Ok(dir);
    }
    link_dirs.push(parent);
    let fix = "point the symlink at a file whose every directory is root's and not writable by \
               group or others (e.g. keep the file itself in the policy directory)";
    for link_dir in &link_dirs {
        for ancestor in link_dir.ancestors() {
            let what = format!(
                "directory {} (on the path through a symlink)",
                ancestor.display()
            );
            check_dir_with(path, ancestor, &what, fix)?;
        }
    }
    Ok(dir)
}

pub(super) fn check_dir(file: &Path, dir: &Path) -> Result<(), PolicyError> {
    let fix = format!("chown root:root {0} && chmod 755 {0}", shown(dir));
    check_dir_with(file, dir, &format!("its directory {}", dir.display()), &fix)
}

fn check_dir_with(file: &Path, dir: &Path, what: &str, fix: &str) -> Result<(), PolicyError> {
    let meta = fs::metadata(dir).map_err(|e| {
        PolicyError::new(
            file,
            PERMISSIONS,
            format!("cannot check directory {}: {e}", dir.display()),
        )
    })?;
    check_owner_mode(file, what, &meta, fix)
}

fn check_owner_mode(
    file: &Path,
    what: &str,
    meta: &fs::Metadata,
    fix: &str,
) -> Result<(), PolicyError> {
    let euid = geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(PolicyError::new(
            file,
            PERMISSIONS,
            format!(
                "{what} is owned by uid {}, so that user could change what oomguard runs as \
                 root: {fix}",
                meta.uid()
            ),
        ));
    }
    let mode = meta.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(PolicyError::new(
            file,
            PERMISSIONS,
            format!(
                "{what} is writable by group or others (mode {:04o}), so they could change what \
                 oomguard runs as root: {fix}",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

pub(super) fn read_error(path: &Path, e: &io::Error) -> PolicyError {
    let message = match e.kind() {
        io::ErrorKind::NotFound => {
            "does not exist (or is a dangling symlink): check the path".to_string()
        }
        _ => format!("cannot read: {e}"),
    };
    PolicyError::new(path, "(file)", message)
}

/// `Path::parent` gives "" for a bare file name; the directory is then the current one.
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Paths in suggested shell commands, quoted when they would otherwise split.
pub(super) fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if s.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
        format!("'{}'", s.replace('\'', r"'\''"))
    } else {
        s
    }
}

#[cfg(test)]
#[path = "perms_tests.rs"]
mod tests;
