//! The `children:` layout of an instance's group: the `main` leaf, the `child-<pid>` leaves, and
//! going back to one flat group.

use tracing::debug;

use super::LEAF_PREFIX;
use crate::cgroupfs::Group;
use crate::placement::{has_children, MAIN_LEAF};

/// Makes `group` an inner group for `children:`: controllers enabled for its leaves, the `main`
/// leaf created, leaves of children that are gone removed. Returns the `main` leaf.
pub fn prepare(group: &Group) -> Result<Group, String> {
    group
        .create_with_controllers(crate::layout::CONTROLLERS)
        .map_err(|e| e.to_string())?;
    let main = group.child(MAIN_LEAF);
    main.create().map_err(|e| e.to_string())?;
    sweep(group, |_| false);
    Ok(main)
}

/// Undoes [`prepare`] for a start without `children:` (a reload removed it): the leaves are
/// removed and the controllers disabled, or the kernel would refuse the worker in the group
/// itself (EBUSY: no processes in a group that enables controllers for its children). The group
/// is empty when this runs (leftovers are stopped before a start).
pub fn flatten(group: &Group) -> Result<(), String> {
    if !has_children(group) {
        return Ok(());
    }
    for (_, leaf) in child_leaves(group) {
        leaf.remove().map_err(|e| e.to_string())?;
    }
    group.child(MAIN_LEAF).remove().map_err(|e| e.to_string())?;
    controllers_off(group)
}

/// Disables every controller `group` enables for its children, so that it can hold processes
/// itself again (also for `restart.overlap`'s generation leaves, in `instance::overlap`).
pub fn controllers_off(group: &Group) -> Result<(), String> {
    let enabled = group
        .read(crate::cgroupfs::SUBTREE_CONTROL)
        .map_err(|e| e.to_string())?;
    let off: Vec<String> = enabled
        .split_whitespace()
        .map(|c| format!("-{c}"))
        .collect();
    if !off.is_empty() {
        group
            .write(crate::cgroupfs::SUBTREE_CONTROL, &off.join(" "))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Removes the empty `child-*` leaves of children not `tracked`. A leaf that still holds
/// processes (orphaned grandchildren) is left: it is the instance's, killed with it.
pub(super) fn sweep(group: &Group, tracked: impl Fn(u32) -> bool) {
    for (pid, leaf) in child_leaves(group) {
        if tracked(pid) {
            continue;
        }
        if crate::shutdown::emptiness(&leaf).is_empty() {
            if let Err(e) = leaf.remove() {
                debug!(leaf = %leaf.path().display(), "cannot remove an empty child leaf: {e}");
            }
        }
    }
}

/// The `child-<pid>` leaves under an instance's group.
pub(super) fn child_leaves(group: &Group) -> Vec<(u32, Group)> {
    let Ok(entries) = std::fs::read_dir(group.path()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix(LEAF_PREFIX)?.parse().ok()?;
            Some((pid, group.child(&name)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroupfs::SUBTREE_CONTROL;

    #[test]
    fn prepare_makes_the_layout_and_flatten_undoes_it() {
        let dir = tempfile::tempdir().unwrap();
        let g = Group::new(dir.path().join("0"));
        g.create().unwrap();
        g.write(SUBTREE_CONTROL, "").unwrap();
        // A leaf of a child that is gone: empty (no cgroup.events reads as gone, so empty).
        g.child("child-77").create().unwrap();
        let main = prepare(&g).unwrap();
        assert_eq!(main, g.child(MAIN_LEAF));
        assert!(has_children(&g));
        assert!(!g.child("child-77").exists(), "the empty leaf was swept");
        assert_eq!(g.read(SUBTREE_CONTROL).unwrap(), "+memory +pids");
        g.child("child-78").create().unwrap();
        // What the kernel would show once the controllers are on.
        g.write(SUBTREE_CONTROL, "memory pids").unwrap();
        flatten(&g).unwrap();
        assert!(!has_children(&g) && !g.child("child-78").exists());
        assert_eq!(g.read(SUBTREE_CONTROL).unwrap(), "-memory -pids");
        flatten(&g).expect("a flat group stays as it is");
        let leaves: Vec<u32> = child_leaves(&g).into_iter().map(|(p, _)| p).collect();
        assert!(leaves.is_empty());
    }
}
