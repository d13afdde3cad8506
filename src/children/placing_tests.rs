use super::*;
use crate::units::Limit;

fn memory() -> MemoryLimits {
    MemoryLimits {
        high: Limit::Bytes(48 << 20),
        max: Limit::Bytes(96 << 20),
        swap_max: None,
        boundary: true,
    }
}

struct Sleeper(std::process::Child);

impl Sleeper {
    fn start() -> Sleeper {
        Sleeper(
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn job(root: &Group, pid: u32) -> Job {
    Job {
        pid,
        leaf: root.child(&format!("child-{pid}")),
        pidfd: PidFd::open(pid).unwrap(),
        memory: memory(),
        forked: None,
    }
}

#[tokio::test]
async fn one_placement_at_a_time_in_the_order_seen() {
    let dir = tempfile::tempdir().unwrap();
    let root = Group::new(dir.path().to_path_buf());
    let kids: Vec<Sleeper> = (0..3).map(|_| Sleeper::start()).collect();
    let mut placer = Placer::new();
    for k in &kids {
        placer.push(job(&root, k.pid()));
    }
    assert_eq!(placer.len(), 3);
    assert!(kids.iter().all(|k| placer.has(k.pid())));
    let mut order = Vec::new();
    for _ in &kids {
        // Only the first one in the queue is out on the blocking pool.
        assert_eq!(placer.busy, placer.pids().next());
        assert_eq!(placer.queue.len() + 1, placer.len());
        let done = placer.rx.recv().await.unwrap();
        assert_eq!(Some(done.job.pid), placer.busy);
        assert_eq!(done.outcome, Outcome::Placed);
        let leaf = &done.job.leaf;
        assert_eq!(leaf.read(CGROUP_PROCS).unwrap(), done.job.pid.to_string());
        assert_eq!(leaf.number(crate::cgroupfs::MEMORY_MAX).unwrap(), 96 << 20);
        order.push(done.job.pid);
        placer.finished();
    }
    let seen: Vec<u32> = kids.iter().map(Sleeper::pid).collect();
    assert_eq!(order, seen);
    assert_eq!(placer.len(), 0);
    assert!(!placer.has(seen[0]));
}

#[tokio::test]
async fn a_child_that_ended_gets_no_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let root = Group::new(dir.path().to_path_buf());
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let j = job(&root, gone.id());
    gone.wait().unwrap();
    assert_eq!(place(&j, &AtomicBool::new(false)), Outcome::Gone);
    // On cgroupfs the leaf is removed too; a tempdir keeps it for the limits' files in it.
    assert!(j.leaf.read(CGROUP_PROCS).is_err(), "nothing was moved");
}

#[tokio::test]
async fn a_dropped_set_moves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = Group::new(dir.path().to_path_buf());
    let kid = Sleeper::start();
    let j = job(&root, kid.pid());
    assert_eq!(place(&j, &AtomicBool::new(true)), Outcome::Gone);
    assert!(!j.leaf.exists());
}

#[tokio::test]
async fn a_leaf_that_cannot_be_made_is_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let root = Group::new(dir.path().join("no-such-instance"));
    let kid = Sleeper::start();
    let j = job(&root, kid.pid());
    assert!(matches!(
        place(&j, &AtomicBool::new(false)),
        Outcome::Failed(_)
    ));
}
