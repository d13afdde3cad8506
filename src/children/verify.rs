//! Before a process is moved into a child's leaf by its pid number (cgroup.procs takes nothing
//! else): the pid must still name the process that was seen. A pid read from cgroup.procs or a
//! fork event can be reused by the time of the move, and a process moved by mistake (root's,
//! another user's) would sit in a worker's leaf and die with it at its next recycle. So a pidfd
//! is opened first, the process is checked through /proc (by number), and the pidfd is asked
//! afterwards whether its process is still there: if it is, the pid was not reused in between
//! and the reads were of that process.

use crate::watch::PidFd;

/// What a move needs to know about the processes: /proc and pidfds, or a fake.
pub(super) trait Tree {
    /// A handle on the process that has `pid` now (a pidfd).
    type Handle;
    fn open(&self, pid: u32) -> Option<Self::Handle>;
    /// Its parent's pid, read by number.
    fn parent(&self, pid: u32) -> Option<u32>;
    /// Whether the handle's process has not been reaped (a zombie keeps its pid).
    fn alive(&self, h: &Self::Handle) -> bool;
}

/// Which processes may move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// A direct child of the main process, to a leaf of its own.
    Child,
    /// A descendant of this child of the main process (a grandchild), to that child's leaf.
    Under(u32),
}

/// Deeper than this is not a prefork tree (and a pid cycle read from a racing /proc must end).
const MAX_DEPTH: usize = 64;

/// The handle on `pid` when it may be moved now: opened, checked, and alive after the check.
pub(super) fn movable<T: Tree>(tree: &T, pid: u32, main: u32, want: Want) -> Option<T::Handle> {
    let h = tree.open(pid)?;
    let ok = match want {
        Want::Child => tree.parent(pid) == Some(main),
        Want::Under(ancestor) => {
            descends(tree, pid, ancestor) && tree.parent(ancestor) == Some(main)
        }
    };
    (ok && tree.alive(&h)).then_some(h)
}

fn descends<T: Tree>(tree: &T, pid: u32, ancestor: u32) -> bool {
    let mut cur = pid;
    for _ in 0..MAX_DEPTH {
        match tree.parent(cur) {
            Some(p) if p == ancestor => return true,
            Some(p) if p > 1 => cur = p,
            _ => return false,
        }
    }
    false
}

/// The real processes.
pub(super) struct Procs;

impl Tree for Procs {
    type Handle = PidFd;
    fn open(&self, pid: u32) -> Option<PidFd> {
        PidFd::open(pid).ok()
    }
    fn parent(&self, pid: u32) -> Option<u32> {
        crate::procfs::parent_pid(pid)
    }
    fn alive(&self, h: &PidFd) -> bool {
        h.alive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    /// pid -> (generation, parent). With `reuse` set, the first pid read goes to a new process
    /// with the same parent (it looks just as right) as soon as it has been read.
    #[derive(Default)]
    struct Fake {
        procs: RefCell<HashMap<u32, (u32, u32)>>,
        reuse: Cell<bool>,
    }

    impl Fake {
        fn read(&self, pid: u32) -> Option<(u32, u32)> {
            let p = self.procs.borrow().get(&pid).copied();
            if let (Some(p), true) = (p, self.reuse.take()) {
                self.procs.borrow_mut().insert(pid, (p.0 + 1, p.1));
            }
            p
        }
    }

    impl Tree for Fake {
        type Handle = (u32, u32);
        fn open(&self, pid: u32) -> Option<(u32, u32)> {
            self.procs.borrow().get(&pid).map(|p| (pid, p.0))
        }
        fn parent(&self, pid: u32) -> Option<u32> {
            self.read(pid).map(|p| p.1)
        }
        fn alive(&self, (pid, gen): &(u32, u32)) -> bool {
            self.procs.borrow().get(pid).is_some_and(|p| p.0 == *gen)
        }
    }

    const MAIN: u32 = 100;

    fn tree(procs: &[(u32, u32)]) -> Fake {
        let f = Fake::default();
        for &(pid, parent) in procs {
            f.procs.borrow_mut().insert(pid, (0, parent));
        }
        f
    }

    #[test]
    fn a_child_of_main_moves_and_a_stranger_does_not() {
        let t = tree(&[
            (MAIN, 1),
            (101, MAIN),
            (200, 1),
            (102, 101),
            (103, 102),
            (201, 200),
        ]);
        assert!(movable(&t, 101, MAIN, Want::Child).is_some());
        assert!(
            movable(&t, 200, MAIN, Want::Child).is_none(),
            "root's process"
        );
        assert!(
            movable(&t, 102, MAIN, Want::Child).is_none(),
            "a grandchild is not a child"
        );
        assert!(
            movable(&t, 103, MAIN, Want::Under(101)).is_some(),
            "a great-grandchild"
        );
        assert!(
            movable(&t, 201, MAIN, Want::Under(101)).is_none(),
            "another tree"
        );
        assert!(
            movable(&t, 201, MAIN, Want::Under(200)).is_none(),
            "200 is not main's child"
        );
        assert!(movable(&t, 300, MAIN, Want::Child).is_none(), "gone");
    }

    #[test]
    fn a_pid_reused_during_the_check_is_left_alone() {
        for want in [Want::Child, Want::Under(101)] {
            let t = tree(&[(MAIN, 1), (101, MAIN), (102, 101)]);
            let pid = if want == Want::Child { 101 } else { 102 };
            t.reuse.set(true);
            assert!(movable(&t, pid, MAIN, want).is_none(), "{want:?}");
        }
    }
}
