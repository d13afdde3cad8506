//! Policy files on disk: who may write them, which files in a directory count, and names that must
//! be unique across files.
//!
//! Who may write them is `perms`: every file is read through its checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::perms::{read_policy, shown};
use super::validate::parse;
use crate::policy::{Policy, PolicyError};

/// Permission check and read (one open file, see `perms`), then parse, then the same rules for
/// the programs it runs as root (`program`).
pub fn load_file(path: &Path) -> Result<Policy, Vec<PolicyError>> {
    let text = read_policy(path).map_err(|e| vec![e])?;
    load_text(path, &text)
}

/// A policy's text, checked as a file's is once read (`oomguard exec` builds one from flags):
/// parse, then the rules for the programs it runs as root.
pub fn load_text(path: &Path, text: &str) -> Result<Policy, Vec<PolicyError>> {
    let policy = parse(path, text)?;
    let errors = super::program::check(&policy);
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::perms::PERMISSIONS;
    use crate::policy::testutil::{policy, safe_dir, write};

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
        assert_eq!(
            names,
            [
                // load_dir sorts by file name: "celery-children.yaml" < "celery.yaml".
                "celery-children",
                "celery-rabbitmq",
                "celery",
                "gunicorn-children",
                "gunicorn",
                "php-fpm",
                "puma",
                "sidekiq",
                "unicorn",
                "uwsgi"
            ]
        );
    }
}
