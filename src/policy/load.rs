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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::policy::testutil::BASE;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn policy(name: &str) -> String {
        BASE.replacen("name: web", &format!("name: {name}"), 1)
    }

    /// tempfile makes its directories 0700 and owned by us: a safe place, unless a test opens it.
    fn safe_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn refused(path: &Path, needle: &str) {
        let err = check_file_permissions(path).unwrap_err();
        assert_eq!(err.key, PERMISSIONS, "{err}");
        assert!(err.message.contains(needle), "{err}");
    }

    #[test]
    fn owner_only_writable_file_is_accepted() {
        let dir = safe_dir();
        let path = write(dir.path(), "web.yaml", BASE, 0o644);
        check_file_permissions(&path).unwrap();
        assert_eq!(load_file(&path).unwrap().name, "web");
        let path = write(dir.path(), "ro.yaml", BASE, 0o400);
        check_file_permissions(&path).unwrap();
    }

    #[test]
    fn group_or_world_writable_file_is_refused() {
        let dir = safe_dir();
        let path = write(dir.path(), "web.yaml", BASE, 0o666);
        refused(&path, "writable by group or others (mode 0666)");
        refused(
            &path,
            &format!(
                "chown root:root {0} && chmod 644 {0}",
                fs::canonicalize(&path).unwrap().display()
            ),
        );
        let errs = load_file(&path).unwrap_err();
        assert_eq!(errs.len(), 1);
        let path = write(dir.path(), "g.yaml", BASE, 0o620);
        refused(&path, "mode 0620");
    }

    #[test]
    fn writable_directory_is_refused() {
        let dir = safe_dir();
        let path = write(dir.path(), "web.yaml", BASE, 0o644);
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        refused(&path, "its directory");
        refused(&path, "chmod 755");
    }

    #[test]
    fn file_owned_by_another_user_is_refused() {
        if !geteuid().is_root() {
            // Only root can give a file away; the mode tests above still run.
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = safe_dir();
        let path = write(dir.path(), "web.yaml", BASE, 0o644);
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        refused(&path, "owned by uid 65534");
    }

    #[test]
    fn symlinks_are_checked_at_both_ends() {
        let good = safe_dir();
        let open = safe_dir();
        fs::set_permissions(open.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let target = write(good.path(), "real.yaml", BASE, 0o644);
        let bad_target = write(good.path(), "loose.yaml", BASE, 0o666);
        let in_open = write(open.path(), "x.yaml", BASE, 0o644);

        symlink(&target, good.path().join("ok.yaml")).unwrap();
        check_file_permissions(&good.path().join("ok.yaml")).unwrap();

        // Anyone could replace this link, even though what it points at is fine.
        symlink(&target, open.path().join("link.yaml")).unwrap();
        refused(&open.path().join("link.yaml"), "its directory");

        // The target's own directory lets anyone swap the target.
        symlink(&in_open, good.path().join("to-open.yaml")).unwrap();
        refused(&good.path().join("to-open.yaml"), "its directory");

        symlink(&bad_target, good.path().join("to-loose.yaml")).unwrap();
        refused(&good.path().join("to-loose.yaml"), "mode 0666");

        symlink(
            good.path().join("gone.yaml"),
            good.path().join("dangling.yaml"),
        )
        .unwrap();
        let err = check_file_permissions(&good.path().join("dangling.yaml")).unwrap_err();
        assert_eq!(err.key, "(file)");
    }

    #[test]
    fn missing_file_and_directory_as_file() {
        let dir = safe_dir();
        let err = check_file_permissions(&dir.path().join("nope.yaml")).unwrap_err();
        assert_eq!(
            (err.key.as_str(), err.message.contains("does not exist")),
            ("(file)", true)
        );
        fs::create_dir(dir.path().join("d.yaml")).unwrap();
        let err = check_file_permissions(&dir.path().join("d.yaml")).unwrap_err();
        assert!(err.message.contains("not a regular file"), "{err}");
    }

    #[test]
    fn load_dir_takes_yaml_files_in_name_order() {
        let dir = safe_dir();
        write(dir.path(), "b.yml", &policy("bravo"), 0o644);
        write(dir.path(), "a.yaml", &policy("alpha"), 0o644);
        // None of these are policies, and none would parse as one.
        for skipped in [
            ".hidden.yaml",
            "c.yaml.dpkg-old",
            "README",
            "notes.txt",
            "d.yaml~",
            ".#e.yaml",
        ] {
            write(dir.path(), skipped, "not: [a policy", 0o644);
        }
        fs::create_dir(dir.path().join("sub")).unwrap();
        let names: Vec<String> = load_dir(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["alpha", "bravo"]);
        assert!(load_dir(safe_dir().path()).unwrap().is_empty());
    }

    #[test]
    fn load_dir_collects_errors_from_every_file() {
        let dir = safe_dir();
        write(
            dir.path(),
            "a.yaml",
            &policy("alpha").replacen("high: 1536M", "high: 3G", 1),
            0o644,
        );
        write(dir.path(), "b.yaml", &policy("bravo"), 0o666);
        write(dir.path(), "c.yaml", &policy("charlie"), 0o644);
        let errs = load_dir(dir.path()).unwrap_err();
        let got: Vec<(String, &str)> = errs
            .iter()
            .map(|e| {
                (
                    e.file.file_name().unwrap().to_string_lossy().into_owned(),
                    e.key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("a.yaml".into(), "memory.high"),
                ("b.yaml".into(), PERMISSIONS)
            ]
        );
    }

    #[test]
    fn duplicate_names_name_both_files() {
        let dir = safe_dir();
        let first = write(dir.path(), "celery.yaml", &policy("celery"), 0o644);
        let second = write(dir.path(), "worker.yaml", &policy("celery"), 0o644);
        let errs = load_dir(dir.path()).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(
            (errs[0].file.as_path(), errs[0].key.as_str()),
            (second.as_path(), "name")
        );
        assert!(
            errs[0].message.contains(&first.display().to_string()),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn missing_directory_says_to_create_it() {
        let dir = safe_dir();
        let errs = load_dir(&dir.path().join("policies")).unwrap_err();
        assert_eq!(errs[0].key, "(dir)");
        assert!(
            errs[0].message.contains("create it (install -d"),
            "{}",
            errs[0]
        );
    }

    #[test]
    fn load_paths_mixes_files_and_directories() {
        let dir = safe_dir();
        let a = write(dir.path(), "a.yaml", &policy("alpha"), 0o644);
        write(dir.path(), "b.yaml", &policy("bravo"), 0o644);
        let other = safe_dir();
        // An explicit path is loaded whatever its name.
        let c = write(other.path(), "charlie.policy", &policy("charlie"), 0o644);
        let missing = other.path().join("missing.yaml");
        let (policies, errors) = load_paths(&[
            dir.path().to_path_buf(),
            a.clone(),
            c,
            missing.clone(),
            other.path().join("nodir/"),
        ]);
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["alpha", "bravo", "charlie"],
            "a.yaml twice is not a duplicate"
        );
        let files: Vec<&Path> = errors.iter().map(|e| e.file.as_path()).collect();
        assert_eq!(
            files,
            [missing.as_path(), other.path().join("nodir/").as_path()],
            "{errors:?}"
        );
    }

    /// The shipped examples must load as shipped: parsed as-is, then through load_dir from a
    /// copy with the permissions an install would give them (the checkout's own modes depend on
    /// the umask).
    #[test]
    fn example_policies_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        let files = policy_files(&examples).unwrap();
        let installed = safe_dir();
        for file in &files {
            let text = fs::read_to_string(file).unwrap();
            if let Err(errs) = parse(file, &text) {
                panic!(
                    "{}",
                    errs.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            write(
                installed.path(),
                &file.file_name().unwrap().to_string_lossy(),
                &text,
                0o644,
            );
        }
        let names: Vec<String> = load_dir(installed.path())
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["celery", "gunicorn", "sidekiq"]);
    }
}
