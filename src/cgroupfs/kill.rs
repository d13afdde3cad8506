//! Killing a whole group: `cgroup.kill` where the kernel has it (5.14), otherwise freeze the
//! subtree, SIGKILL every pid in every group of it, and thaw.

use std::time::{Duration, Instant};

use super::{parse_keyed, CgroupError, Group, Result, CGROUP_EVENTS, CGROUP_FREEZE, CGROUP_KILL};

impl Group {
    /// SIGKILLs every process in the subtree, forks in flight included: `cgroup.kill` (Linux
    /// 5.14). Older kernels get [`Group::kill_by_freezing`]. Callers wait for `populated 0` and
    /// repeat, which the fallback needs when a racing fork or a freeze that did not settle let a
    /// process through.
    pub fn kill(&self) -> Result<()> {
        if self.file(CGROUP_KILL).exists() && !cgroup_kill_disabled_for_tests() {
            return self.write(CGROUP_KILL, "1");
        }
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::warn!(
                "no {CGROUP_KILL} (Linux < 5.14): killing groups by freezing the subtree \
                 (cgroup.freeze, 5.2), SIGKILLing every pid in every descendant group, then thawing"
            );
        });
        self.kill_by_freezing(FREEZE_WAIT).map(|_| ())
    }

    /// The fallback for kernels without cgroup.kill. Freezing first stops every task in the
    /// subtree, so none can fork a child into a group already listed (the kernel freezes a child
    /// that races the freeze along with its parent), and the pid lists stay put while they are
    /// read. Frozen tasks still die of SIGKILL (cgroup-v2.rst: "Processes in the frozen cgroup
    /// can be killed by a fatal signal"); the thaw afterwards matters for the group's next worker,
    /// which would otherwise start frozen. A freeze that does not settle within `freeze_wait`
    /// (a task in uninterruptible sleep delays it) or a kernel without cgroup.freeze only makes
    /// the kill racy, and the caller's repeat catches what got through. Returns how many pids
    /// were signalled; the first error other than a group vanishing, after signalling the rest.
    pub fn kill_by_freezing(&self, freeze_wait: Duration) -> Result<usize> {
        let mut first_error = None;
        // A freeze that cannot be written must not stop the kill: kill unfrozen, report it after.
        let frozen = self.file(CGROUP_FREEZE).exists()
            && match self.write(CGROUP_FREEZE, "1") {
                Ok(()) => self.wait_frozen(freeze_wait),
                Err(CgroupError::Gone { .. }) => false,
                Err(e) => {
                    first_error = Some(e);
                    false
                }
            };
        let mut signalled = 0;
        for group in self.subtree() {
            let pids = match group.and_then(|g| g.procs()) {
                Ok(pids) => pids,
                Err(CgroupError::Gone { .. }) => continue,
                Err(e) => {
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            for pid in pids {
                let pid = nix::unistd::Pid::from_raw(pid as i32);
                // ESRCH: it exited since the list was read, which is what we want.
                if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).is_ok() {
                    signalled += 1;
                }
            }
        }
        if self.file(CGROUP_FREEZE).exists() {
            if let Err(e) = self.write(CGROUP_FREEZE, "0") {
                first_error.get_or_insert(e);
            }
        }
        if !frozen && first_error.is_none() && self.file(CGROUP_FREEZE).exists() {
            // Abnormal (a task in uninterruptible sleep): say so, once per pass.
            tracing::warn!(
                group = %self.path.display(),
                "the group did not report frozen within {freeze_wait:?}: killed it unfrozen, \
                 a racing fork may need another pass"
            );
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(signalled),
        }
    }

    /// Polls cgroup.events until `frozen 1`, for at most `limit`, with short sleeps growing from
    /// 0.2 ms (a freeze of a few tasks settled within the 100 ms bound in every VM run).
    fn wait_frozen(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_micros(200);
        loop {
            let frozen = self
                .read(CGROUP_EVENTS)
                .map(|t| parse_keyed(&t).get("frozen").copied() == Some(1));
            if matches!(frozen, Ok(true)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || frozen.is_err() {
                return false;
            }
            std::thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }
}

/// How long the kill fallback waits for a subtree to report `frozen 1`. Kept short: the kill
/// blocks the caller's thread, which is the daemon's only runtime thread (current-thread tokio),
/// and an unsettled freeze only costs the caller's next pass.
const FREEZE_WAIT: Duration = Duration::from_millis(100);

/// TEST ONLY: `OOMGUARD_TEST_NO_CGROUP_KILL=1` in the daemon's environment makes [`Group::kill`]
/// ignore cgroup.kill, so the VM suite exercises the pre-5.14 fallback on every kernel. Read once.
fn cgroup_kill_disabled_for_tests() -> bool {
    static DISABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DISABLED
        .get_or_init(|| std::env::var_os("OOMGUARD_TEST_NO_CGROUP_KILL").is_some_and(|v| v == "1"))
}

#[cfg(test)]
mod tests {
    use super::super::tests::fake_group;
    use super::super::CGROUP_PROCS;
    use super::*;

    /// Real children (`sleep`) listed in a fake tree's cgroup.procs files: the group, a child and
    /// a grandchild group. Returns the tree and the children, innermost last.
    fn fake_tree_with_sleepers() -> (tempfile::TempDir, Group, Vec<std::process::Child>) {
        let (dir, g) = fake_group();
        let mut sleepers = Vec::new();
        for group in [g.clone(), g.child("a"), g.child("a").child("b")] {
            group.create().expect("create");
            let child = std::process::Command::new("sleep")
                .arg("100")
                .spawn()
                .expect("spawn sleep");
            group
                .write(CGROUP_PROCS, &format!("{}\n", child.id()))
                .expect("write procs");
            sleepers.push(child);
        }
        (dir, g, sleepers)
    }

    fn assert_sigkilled(sleepers: Vec<std::process::Child>) {
        use std::os::unix::process::ExitStatusExt;
        for mut child in sleepers {
            let pid = child.id();
            // Bounded: a survivor would otherwise hang the test for the sleep's 100 s.
            let deadline = Instant::now() + Duration::from_secs(5);
            let status = loop {
                if let Some(status) = child.try_wait().expect("try_wait") {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(
                status.and_then(|s| s.signal()),
                Some(libc::SIGKILL),
                "pid {pid} was not SIGKILLed"
            );
        }
    }

    #[test]
    fn the_kill_fallback_covers_descendant_groups() {
        // No cgroup.kill in the fake tree: the pre-5.14 path.
        let (_dir, g, sleepers) = fake_tree_with_sleepers();
        g.kill().expect("kill");
        assert_sigkilled(sleepers);
    }

    #[test]
    fn the_kill_fallback_freezes_then_thaws() {
        let (_dir, g, sleepers) = fake_tree_with_sleepers();
        g.write(CGROUP_FREEZE, "0").unwrap();
        g.write(CGROUP_EVENTS, "populated 1\nfrozen 1\n").unwrap();
        assert_eq!(g.kill_by_freezing(Duration::from_secs(5)).expect("kill"), 3);
        assert_sigkilled(sleepers);
        assert_eq!(g.read(CGROUP_FREEZE).unwrap(), "0", "left frozen");
    }

    #[test]
    fn a_freeze_that_never_settles_still_kills_within_its_bound() {
        let (_dir, g, sleepers) = fake_tree_with_sleepers();
        g.write(CGROUP_FREEZE, "0").unwrap();
        g.write(CGROUP_EVENTS, "populated 1\nfrozen 0\n").unwrap();
        let started = Instant::now();
        assert_eq!(
            g.kill_by_freezing(Duration::from_millis(50)).expect("kill"),
            3
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_sigkilled(sleepers);
        assert_eq!(g.read(CGROUP_FREEZE).unwrap(), "0", "left frozen");
    }

    #[test]
    fn an_unreadable_procs_file_is_an_error_after_killing_the_rest() {
        let (_dir, g, sleepers) = fake_tree_with_sleepers();
        let bad = g.child("bad");
        bad.create().unwrap();
        // A directory where cgroup.procs should be: reading it fails with EISDIR, not "gone".
        std::fs::create_dir(bad.file(CGROUP_PROCS)).unwrap();
        let err = g.kill().unwrap_err();
        assert!(matches!(err, CgroupError::Read { .. }), "{err}");
        assert_sigkilled(sleepers);
    }

    #[test]
    fn a_freeze_that_cannot_be_written_still_kills_and_says_so() {
        let (_dir, g, sleepers) = fake_tree_with_sleepers();
        // A directory where cgroup.freeze should be: it exists but cannot be written.
        std::fs::create_dir(g.file(CGROUP_FREEZE)).unwrap();
        let err = g.kill_by_freezing(Duration::from_millis(50)).unwrap_err();
        assert!(matches!(err, CgroupError::Write { .. }), "{err}");
        assert_sigkilled(sleepers);
    }
}
