//! Policy files on disk: who may write them, which files in a directory count, and names that must
//! be unique across files.
//!
//! A policy says what oomguard (root) executes, so a file or directory a non-root user can write
//! is a privilege escalation; it is refused before it is read.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::geteuid;

use super::validate::parse;
use crate::policy::{Policy, PolicyError};

const PERMISSIONS: &str = "(permissions)";

/// Refuses `path` unless it, its directory, and (for a symlink) the target's directory are owned
/// by root (or by the current euid, so a developer can `oomguard check` their own files) and not
/// writable by group or others.
pub fn check_file_permissions(path: &Path) -> Result<(), PolicyError> {
    let link = fs::symlink_metadata(path).map_err(|e| read_error(path, &e))?;
    // The directory holding the name decides what the name points at, for links and files alike.
    check_dir(path, &parent(path))?;
    if link.file_type().is_symlink() {
        let target = fs::canonicalize(path).map_err(|e| read_error(path, &e))?;
        check_dir(path, &parent(&target))?;
    }
    let meta = fs::metadata(path).map_err(|e| read_error(path, &e))?;
    if !meta.is_file() {
        return Err(PolicyError::new(
            path,
            "(file)",
            "is not a regular file: policies are files named *.yaml",
        ));
    }
    let fix = format!(
        "chown root:root {0} && chmod 644 {0}",
        shown(&fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
    );
    check_owner_mode(path, "the file", &meta, &fix)
}

/// Permission check, read, parse.
pub fn load_file(path: &Path) -> Result<Policy, Vec<PolicyError>> {
    check_file_permissions(path).map_err(|e| vec![e])?;
    let text = fs::read_to_string(path).map_err(|e| vec![read_error(path, &e)])?;
    parse(path, &text)
}

/// Every `*.yaml` / `*.yml` file in `dir`, in file-name order. Hidden files and other names
/// (`.dpkg-old`, `README`, editor backups) are skipped so a package upgrade or an editor can't
/// add a policy by accident. All problems of all files are returned together.
pub fn load_dir(dir: &Path) -> Result<Vec<Policy>, Vec<PolicyError>> {
    let files = policy_files(dir).map_err(|e| vec![e])?;
    let (policies, errors) = load_all(&files);
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

/// For `oomguard check PATH...`: each path is a policy file (any name) or a directory (as
/// [`load_dir`]). Returns what loaded and every problem, so `check` can report both.
pub fn load_paths(paths: &[PathBuf]) -> (Vec<Policy>, Vec<PolicyError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.is_dir() {
            match policy_files(path) {
                Ok(found) => files.extend(found),
                Err(e) => errors.push(e),
            }
        } else {
            files.push(path.clone());
        }
    }
    // `check dir dir/a.yaml` names a file twice; that is not a duplicate policy.
    let mut seen = BTreeSet::new();
    files.retain(|f| seen.insert(f.clone()));
    let (policies, mut file_errors) = load_all(&files);
    errors.append(&mut file_errors);
    (policies, errors)
}

fn policy_files(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let entries = fs::read_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => PolicyError::new(
            dir,
            "(dir)",
            format!(
                "the policy directory does not exist: create it (install -d -m 755 -o root -g \
                 root {}) and put one *.yaml file per worker in it",
                shown(dir)
            ),
        ),
        _ => PolicyError::new(
            dir,
            "(dir)",
            format!("cannot list the policy directory: {e}"),
        ),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            PolicyError::new(
                dir,
                "(dir)",
                format!("cannot list the policy directory: {e}"),
            )
        })?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let is_policy = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_policy && !name.starts_with('.') {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// Loads each file; a policy whose name an earlier file already took is an error naming both.
fn load_all(files: &[PathBuf]) -> (Vec<Policy>, Vec<PolicyError>) {
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
    for file in files {
        match load_file(file) {
            Ok(policy) => match names.get(&policy.name) {
                Some(first) => errors.push(PolicyError::new(
                    file,
                    "name",
                    format!(
                        "policy name `{}` is already used by {}: each policy names its own cgroup \
                         directory, so names must be unique; set a different `name:` or rename \
                         one of the files",
                        policy.name,
                        first.display()
                    ),
                )),
                None => {
                    names.insert(policy.name.clone(), file.clone());
                    policies.push(policy);
                }
            },
            Err(mut e) => errors.append(&mut e),
        }
    }
    (policies, errors)
}

fn check_dir(file: &Path, dir: &Path) -> Result<(), PolicyError> {
    let meta = fs::metadata(dir).map_err(|e| {
        PolicyError::new(
            file,
            PERMISSIONS,
            format!("cannot check directory {}: {e}", dir.display()),
        )
    })?;
    let fix = format!("chown root:root {0} && chmod 755 {0}", shown(dir));
    check_owner_mode(
        file,
        &format!("its directory {}", dir.display()),
        &meta,
        &fix,
    )
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

fn read_error(path: &Path, e: &io::Error) -> PolicyError {
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
fn shown(path: &Path) -> String {
    let s = path.display().to_string();
    if s.contains(|c: char| c.is_whitespace() || "'\"$`\\".contains(c)) {
        format!("'{}'", s.replace('\'', r"'\''"))
    } else {
        s
    }
}
