//! Byte sizes and durations as they appear in policy files ("512M", "2G", "max", "150ms", "30s").
//!
//! Owned by: policy parsing. The rest of the crate only sees `u64` bytes, [`Limit`] and
//! `std::time::Duration`.

use std::time::Duration;

/// A byte count written with an optional binary suffix: "0", "4096", "512K", "512M", "2G", "1T".
/// Suffixes are powers of 1024, as the kernel's own memparse() reads them in cgroup files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A cgroup memory limit: a byte count, or "max" (no limit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Max,
    Bytes(u64),
}

impl Limit {
    /// The text the kernel expects in memory.high / memory.max / memory.swap.max.
    pub fn to_kernel(self) -> String {
        match self {
            Limit::Max => "max".to_string(),
            Limit::Bytes(b) => b.to_string(),
        }
    }

    /// `None` for "max".
    pub fn bytes(self) -> Option<u64> {
        match self {
            Limit::Max => None,
            Limit::Bytes(b) => Some(b),
        }
    }
}

/// A duration written the humantime way: "150ms", "1s", "30s", "5m", "1h".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

/// Bytes in the largest binary unit that keeps one decimal: "47.9M", "1.5G", "512K".
pub fn human_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)];
    for (suffix, size) in UNITS {
        if b >= size {
            let v = b as f64 / size as f64;
            return if v.fract() < 0.05 { format!("{v:.0}{suffix}") } else { format!("{v:.1}{suffix}") };
        }
    }
    format!("{b}")
}
