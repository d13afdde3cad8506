//! What the memory.high boundary reads and writes: memory.stat's split of memory.current,
//! swap, the group's own `high` events, and memory.reclaim.

use super::{parse_keyed, CgroupError, Group, Result, MEMORY_CURRENT};
use crate::engine::boundary::Reading;

pub const MEMORY_STAT: &str = "memory.stat";
pub const MEMORY_SWAP_CURRENT: &str = "memory.swap.current";
/// This group's own events (memory.events counts descendants too: with `children:` a child
/// crossing its own leaf's memory.high must not read as the instance crossing its sentinel).
pub const MEMORY_EVENTS_LOCAL: &str = "memory.events.local";
/// Linux 5.19+.
pub const MEMORY_RECLAIM: &str = "memory.reclaim";

impl Group {
    /// memory.current with memory.stat's anon/file/shmem and memory.swap.current. A kernel
    /// without swap accounting has no memory.swap.current: no swap. A memory.stat without the
    /// keys is an error, never a reading of zeros.
    pub fn memory_reading(&self) -> Result<Reading> {
        let current = self.number(MEMORY_CURRENT)?;
        let text = self.read(MEMORY_STAT)?;
        let stat = parse_keyed(&text);
        let key = |k: &str| {
            stat.get(k).copied().ok_or_else(|| CgroupError::Parse {
                path: self.file(MEMORY_STAT),
                content: format!("no {k:?} in {text:?}"),
            })
        };
        let swap = if self.file(MEMORY_SWAP_CURRENT).exists() {
            self.number(MEMORY_SWAP_CURRENT)?
        } else {
            0
        };
        Ok(Reading {
            current,
            anon: key("anon")?,
            file: key("file")?,
            shmem: key("shmem")?,
            swap,
        })
    }

    /// The `high` count of memory.events.local.
    pub fn high_events(&self) -> Result<u64> {
        let text = self.read(MEMORY_EVENTS_LOCAL)?;
        parse_keyed(&text)
            .get("high")
            .copied()
            .ok_or_else(|| CgroupError::Parse {
                path: self.file(MEMORY_EVENTS_LOCAL),
                content: text,
            })
    }

    /// Whether this kernel has memory.reclaim (5.19+).
    pub fn can_reclaim(&self) -> bool {
        self.file(MEMORY_RECLAIM).exists()
    }

    /// Asks the kernel to reclaim `bytes` from the group. EAGAIN means it got less than asked:
    /// an error the caller logs before reading the group again.
    pub fn reclaim(&self, bytes: u64) -> Result<()> {
        self.write(MEMORY_RECLAIM, &bytes.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::fake_group;
    use super::*;

    #[test]
    fn reading_from_memory_stat() {
        let (_d, g) = fake_group();
        g.write(MEMORY_CURRENT, "1000\n").unwrap();
        g.write(MEMORY_STAT, "anon 600\nfile 300\nkernel 100\nshmem 50\n")
            .unwrap();
        let r = g.memory_reading().unwrap();
        assert_eq!(
            r,
            Reading {
                current: 1000,
                anon: 600,
                file: 300,
                shmem: 50,
                swap: 0
            }
        );
        g.write(MEMORY_SWAP_CURRENT, "7\n").unwrap();
        assert_eq!(g.memory_reading().unwrap().swap, 7);
        g.write(MEMORY_STAT, "file 300\n").unwrap();
        let e = g.memory_reading().unwrap_err().to_string();
        assert!(e.contains("no \\\"anon\\\""), "{e}");
    }

    #[test]
    fn high_events_and_reclaim() {
        let (_d, g) = fake_group();
        assert!(g.high_events().is_err(), "missing file is an error");
        g.write(MEMORY_EVENTS_LOCAL, "low 0\nhigh 12\nmax 0\n")
            .unwrap();
        assert_eq!(g.high_events().unwrap(), 12);
        assert!(!g.can_reclaim());
        g.write(MEMORY_RECLAIM, "").unwrap();
        assert!(g.can_reclaim());
        g.reclaim(4096).unwrap();
        assert_eq!(g.read(MEMORY_RECLAIM).unwrap(), "4096");
    }
}
