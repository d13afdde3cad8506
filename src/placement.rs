//! Where an instance's processes live inside its group, in one place: flat (the group itself),
//! `children:` (the main process in `main`, each child in `child-<pid>`), `restart.overlap`
//! (a generation leaf, `gen-a` or `gen-b`) and both at once (a generation leaf holding the
//! `main` and `child-<pid>` leaves of one generation of a prefork server). Adoption, the drain
//! of an interrupted overlap and status all ask here, so the layouts cannot disagree (issue 18,
//! item 3 begins here; the prepare/flatten steps are still in `children::layout` and
//! `instance::overlap`).

use crate::cgroupfs::Group;

/// The two generation leaves of an instance's group with `restart.overlap`.
pub const GENERATIONS: [&str; 2] = ["gen-a", "gen-b"];
/// With `children:`, the main process's leaf.
pub const MAIN_LEAF: &str = "main";

/// Whether `home` has the overlap layout (any generation leaf).
pub fn has_generations(home: &Group) -> bool {
    GENERATIONS.iter().any(|g| home.child(g).exists())
}

/// The generation leaves of `home`, whether they exist or not.
pub fn generations(home: &Group) -> [Group; 2] {
    GENERATIONS.map(|g| home.child(g))
}

/// The generation leaf that is not `current` (`home` itself: the first one, `gen-a`).
pub fn other_generation(home: &Group, current: &Group) -> Group {
    let [a, b] = generations(home);
    if *current == a {
        b
    } else {
        a
    }
}

/// Whether `group` (an instance's group or a generation leaf) has the `children:` layout.
pub fn has_children(group: &Group) -> bool {
    group.child(MAIN_LEAF).exists()
}

/// The group the main process of `group`'s worker lives in: `main` with `children:`, else
/// `group` itself.
pub fn main_home(group: &Group) -> Group {
    if has_children(group) {
        group.child(MAIN_LEAF)
    } else {
        group.clone()
    }
}

/// The generation leaf whose worker's main process is `pid` (in the leaf itself, or in its
/// `main` leaf with `children:`), if `home` has the overlap layout.
pub fn generation_of(home: &Group, pid: u32) -> Option<Group> {
    generations(home)
        .into_iter()
        .find(|leaf| main_home(leaf).procs().is_ok_and(|p| p.contains(&pid)))
}

/// A child leaf's name as status shows it: relative to the instance's group `home`, so with
/// overlap it carries the generation (`gen-b/child-42`).
pub fn leaf_name(home: &Group, group: &Group, leaf: &str) -> String {
    match group.path().strip_prefix(home.path()) {
        Ok(rel) if !rel.as_os_str().is_empty() => format!("{}/{leaf}", rel.display()),
        _ => leaf.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_alternate_and_the_main_is_found_in_either_layout() {
        let dir = tempfile::tempdir().unwrap();
        let home = Group::new(dir.path().join("0"));
        home.create().unwrap();
        assert!(!has_generations(&home));
        let [a, b] = generations(&home);
        assert_eq!(other_generation(&home, &home), a, "the first one is gen-a");
        assert_eq!(other_generation(&home, &a), b);
        assert_eq!(other_generation(&home, &b), a);
        // gen-a flat, gen-b a prefork server's generation with its own leaves.
        a.create().unwrap();
        a.write(crate::cgroupfs::CGROUP_PROCS, "10\n").unwrap();
        b.create().unwrap();
        b.child(MAIN_LEAF).create().unwrap();
        b.child(MAIN_LEAF)
            .write(crate::cgroupfs::CGROUP_PROCS, "20\n")
            .unwrap();
        assert!(has_generations(&home));
        assert_eq!(main_home(&a), a);
        assert_eq!(main_home(&b), b.child(MAIN_LEAF));
        assert_eq!(generation_of(&home, 10), Some(a.clone()));
        assert_eq!(generation_of(&home, 20), Some(b.clone()));
        assert_eq!(generation_of(&home, 99), None);
        assert_eq!(leaf_name(&home, &b, "child-21"), "gen-b/child-21");
        assert_eq!(leaf_name(&home, &home, "child-21"), "child-21");
    }
}
