//! Tests for `perms`: owner and mode of the file and of the directories that decide what a name
//! reaches. Chains that must be accepted live under the checkout (see `checkout_dir`).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::unistd::geteuid;

use super::*;
use crate::policy::load_file;
use crate::policy::testutil::{checkout_dir, safe_dir, write, BASE};

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
        crate::testing::skip_without_root("needs root to chown");
        return;
    }
    let dir = safe_dir();
    let path = write(dir.path(), "web.yaml", BASE, 0o644);
    nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    refused(&path, "owned by uid 65534");
}

#[test]
fn symlinks_are_checked_at_both_ends() {
    let good = checkout_dir();
    let open = checkout_dir();
    fs::set_permissions(open.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let target = write(good.path(), "real.yaml", BASE, 0o644);
    let bad_target = write(good.path(), "loose.yaml", BASE, 0o666);
    let in_open = write(open.path(), "x.yaml", BASE, 0o644);

    symlink(&target, good.path().join("ok.yaml")).unwrap();
    check_file_permissions(&good.path().join("ok.yaml")).unwrap();
    // Relative links resolve from the link's directory.
    symlink("real.yaml", good.path().join("rel.yaml")).unwrap();
    assert_eq!(
        load_file(&good.path().join("rel.yaml")).unwrap().name,
        "web"
    );

    // Anyone could replace this link, even though what it points at is fine.
    symlink(&target, open.path().join("link.yaml")).unwrap();
    refused(&open.path().join("link.yaml"), "(mode 0777)");

    // The target's own directory lets anyone swap the target.
    symlink(&in_open, good.path().join("to-open.yaml")).unwrap();
    refused(&good.path().join("to-open.yaml"), "(mode 0777)");

    symlink(&bad_target, good.path().join("to-loose.yaml")).unwrap();
    refused(&good.path().join("to-loose.yaml"), "mode 0666");

    symlink(
        good.path().join("gone.yaml"),
        good.path().join("dangling.yaml"),
    )
    .unwrap();
    let err = check_file_permissions(&good.path().join("dangling.yaml")).unwrap_err();
    assert_eq!(err.key, "(file)");

    symlink("loop-b.yaml", good.path().join("loop-a.yaml")).unwrap();
    symlink("loop-a.yaml", good.path().join("loop-b.yaml")).unwrap();
    let err = check_file_permissions(&good.path().join("loop-a.yaml")).unwrap_err();
    assert!(err.message.contains("symlinks to follow"), "{err}");
}

/// Issue 7, defect 11: the old check looked at the link's directory and the target's
/// directory only, so a link in a safe directory to a safe-looking directory under /tmp
/// passed, though /tmp (world-writable) lies on the way.
#[test]
fn a_symlink_through_a_world_writable_directory_is_refused() {
    let good = checkout_dir();
    // 0755 and ours: the old check's "target directory" passed; /tmp above it is 1777.
    let under_tmp = safe_dir();
    let target = write(under_tmp.path(), "real.yaml", BASE, 0o644);
    symlink(&target, good.path().join("web.yaml")).unwrap();
    refused(
        &good.path().join("web.yaml"),
        "directory /tmp (on the path through a symlink) is writable by group or others",
    );
    // A directory symlink on the way counts too, even when the name's last part is a file.
    symlink(under_tmp.path(), good.path().join("policies")).unwrap();
    refused(
        &good.path().join("policies/real.yaml"),
        "(on the path through a symlink)",
    );
    let errs = load_file(&good.path().join("policies/real.yaml")).unwrap_err();
    assert_eq!(errs[0].key, PERMISSIONS);
    // Without a symlink only the file's own directory is checked, as before.
    check_file_permissions(&target).unwrap();
}

#[test]
fn a_symlink_through_a_directory_owned_by_another_user_is_refused() {
    if !geteuid().is_root() {
        crate::testing::skip_without_root("needs root to chown");
        return;
    }
    let good = checkout_dir();
    let theirs = checkout_dir();
    let inner = theirs.path().join("inner");
    fs::create_dir(&inner).unwrap();
    fs::set_permissions(&inner, fs::Permissions::from_mode(0o755)).unwrap();
    let target = write(&inner, "real.yaml", BASE, 0o644);
    nix::unistd::chown(theirs.path(), Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
    symlink(&target, good.path().join("web.yaml")).unwrap();
    refused(&good.path().join("web.yaml"), "is owned by uid 65534");
}

/// The checks are on the opened descriptor: a FIFO under the name is refused without
/// blocking on the open, and what is read is bounded.
#[test]
fn special_and_huge_files_are_refused_without_hanging() {
    let dir = safe_dir();
    let fifo = dir.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let errs = load_file(&fifo).unwrap_err();
    assert!(
        errs[0].message.contains("not a regular file"),
        "{}",
        errs[0]
    );
    let big = format!("{BASE}# {}\n", "x".repeat(2 << 20));
    let path = write(dir.path(), "big.yaml", &big, 0o644);
    let errs = load_file(&path).unwrap_err();
    assert!(errs[0].message.contains("is larger than"), "{}", errs[0]);
    let path = dir.path().join("bin.yaml");
    fs::write(&path, b"name: \xff\n").unwrap();
    let errs = load_file(&path).unwrap_err();
    assert!(errs[0].message.contains("not UTF-8"), "{}", errs[0]);
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
