//! The read-only mode's snapshot: the container's own cgroup files (readable on a read-only
//! mount) and, from /proc, who is whose child and how much anonymous memory each holds. Both
//! roots are paths, so a tempdir stands in for tests.

use std::collections::HashMap;
use std::path::Path;

use super::{InstanceSample, Totals};
use crate::cgroupfs::{CgroupError, Group, MEMORY_MAX};
use crate::procfs::field_of;

/// memory.current, the page cache split, oom_kill and the PSI total of the container's root.
pub fn totals(root: &Group) -> Result<Totals, CgroupError> {
    let r = root.memory_reading()?;
    Ok(Totals {
        current: r.current,
        max: root.limit(MEMORY_MAX)?.bytes(),
        file: r.file,
        shmem: r.shmem,
        oom_kill: root.memory_events()?.get("oom_kill").copied().unwrap_or(0),
        psi_some_total_us: root.pressure().map_or(0, |p| p.some_total_us),
    })
}

/// Every process's parent, read once per poll.
#[derive(Clone, Debug, Default)]
pub struct ProcTable {
    parent: HashMap<u32, u32>,
}

impl ProcTable {
    /// Scans `proc_root` (normally /proc); a process that ends meanwhile is skipped.
    pub fn read(proc_root: &Path) -> ProcTable {
        let mut parent = HashMap::new();
        let Ok(dir) = std::fs::read_dir(proc_root) else {
            return ProcTable { parent };
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(ppid) = field_of(&stat, 4).and_then(|f| f.parse().ok()) {
                parent.insert(pid, ppid);
            }
        }
        ProcTable { parent }
    }

    pub fn children(&self, pid: u32) -> Vec<u32> {
        let mut kids: Vec<u32> = self
            .parent
            .iter()
            .filter(|&(_, &p)| p == pid)
            .map(|(&c, _)| c)
            .collect();
        kids.sort_unstable();
        kids
    }

    /// `pid` and everything below it.
    pub fn tree(&self, pid: u32) -> Vec<u32> {
        let mut out = vec![pid];
        let mut i = 0;
        while i < out.len() {
            out.extend(self.children(out[i]));
            i += 1;
        }
        out
    }
}

/// A process's anonymous memory: `Pss_Anon` of smaps_rollup (Linux 5.8+), else `Anonymous`.
/// Pss, not RssAnon: a prefork child shares its parent's pre-fork pages copy-on-write, and Rss
/// would charge all of them to every child, so each child of a big app would look big; Pss
/// charges a shared page 1/n to each of its n sharers, so the child that grew stands out and
/// the sum over processes counts no page twice. 0 once the process is gone.
pub fn anon(proc_root: &Path, pid: u32) -> u64 {
    let Ok(text) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("smaps_rollup"))
    else {
        return 0;
    };
    let kb = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(key)?.trim();
            rest.strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    kb("Pss_Anon:").or_else(|| kb("Anonymous:")).unwrap_or(0) * 1024
}

/// One instance's sample: its main process, each direct child with its descendants, the tree.
pub fn sample(
    proc_root: &Path,
    table: &ProcTable,
    id: &str,
    main: u32,
    children_policy: bool,
    observe: bool,
) -> InstanceSample {
    let sum = |pids: &[u32]| pids.iter().map(|&p| anon(proc_root, p)).sum::<u64>();
    let main_anon = anon(proc_root, main);
    let children: Vec<(u32, u64)> = table
        .children(main)
        .into_iter()
        .map(|c| (c, sum(&table.tree(c))))
        .collect();
    let tree_anon = main_anon + children.iter().map(|&(_, a)| a).sum::<u64>();
    InstanceSample {
        id: id.into(),
        children_policy,
        observe,
        main_anon,
        children,
        tree_anon,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(procs: &[(u32, u32, u64)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for &(pid, ppid, pss_kb) in procs {
            let d = dir.path().join(pid.to_string());
            std::fs::create_dir(&d).unwrap();
            // A command name with a space and a parenthesis, as /proc allows.
            std::fs::write(d.join("stat"), format!("{pid} (a (b) c) S {ppid} 1 1 0")).unwrap();
            std::fs::write(
                d.join("smaps_rollup"),
                format!("Rss: 9999 kB\nAnonymous: 8888 kB\nPss_Anon: {pss_kb} kB\n"),
            )
            .unwrap();
        }
        std::fs::create_dir(dir.path().join("self")).unwrap();
        dir
    }

    #[test]
    fn children_and_their_descendants_are_summed_by_pss() {
        // main 10 with children 11 (with a grandchild 14) and 12; 13 belongs to someone else.
        let p = fake_proc(&[
            (10, 1, 100),
            (11, 10, 200),
            (12, 10, 300),
            (13, 1, 5000),
            (14, 11, 50),
        ]);
        let table = ProcTable::read(p.path());
        assert_eq!(table.children(10), vec![11, 12]);
        let s = sample(p.path(), &table, "pf/0", 10, true, false);
        assert_eq!(s.main_anon, 100 << 10);
        assert_eq!(s.children, vec![(11, 250 << 10), (12, 300 << 10)]);
        assert_eq!(s.tree_anon, 650 << 10);
    }

    #[test]
    fn without_pss_anon_anonymous_is_used_and_a_gone_process_holds_nothing() {
        let p = fake_proc(&[]);
        let d = p.path().join("7");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("smaps_rollup"), "Rss: 10 kB\nAnonymous: 4 kB\n").unwrap();
        assert_eq!(anon(p.path(), 7), 4096);
        assert_eq!(anon(p.path(), 8), 0);
    }

    #[test]
    fn the_container_totals_come_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let w = |f: &str, t: &str| std::fs::write(dir.path().join(f), t).unwrap();
        w("memory.current", "104857600\n");
        w("memory.max", "201326592\n");
        w(
            "memory.stat",
            "anon 83886080\nfile 20971520\nshmem 1048576\n",
        );
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w(
            "memory.pressure",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=99\n",
        );
        let t = totals(&Group::new(dir.path())).unwrap();
        assert_eq!(t.max, Some(192 << 20));
        assert_eq!(t.oom_kill, 1);
        assert_eq!(t.psi_some_total_us, 1234);
        assert_eq!(t.usage(), (100 << 20) - (19 << 20));
    }
}
