//! Shared by tests/fuzz_policy.rs and tests/fuzz_protocol.rs: the case budget, the seed corpus
//! and byte-level edits. See README ("Fuzzing") for longer runs.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::Config;

/// `cases` unless PROPTEST_CASES asks for another number (a longer run); every other setting
/// comes from proptest's defaults and PROPTEST_* variables.
pub fn config(cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    config
}

/// Every file in tests/fuzz/corpus/`kind`, in name order, with its name.
pub fn corpus(kind: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fuzz/corpus")
            .join(kind),
    )
}

/// Every file in `dir` (not recursive), in name order.
pub fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// One byte-level change. Positions are taken modulo the input's length, so any edit applies
/// to any input.
#[derive(Clone, Debug)]
pub enum Edit {
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Flip(usize, u8),
    /// Copies a range to another place (repeats a key, a line, a bracket).
    Repeat(usize, usize, usize),
}

pub fn edit() -> impl Strategy<Value = Edit> {
    let pos = any::<usize>();
    prop_oneof![
        pos.prop_map(Edit::Truncate),
        (pos, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(p, b)| Edit::Insert(p, b)),
        (pos, 1usize..16).prop_map(|(p, n)| Edit::Delete(p, n)),
        (pos, any::<u8>()).prop_map(|(p, m)| Edit::Flip(p, m)),
        (pos, 1usize..64, pos).prop_map(|(a, n, b)| Edit::Repeat(a, n, b)),
    ]
}

pub fn apply(bytes: &mut Vec<u8>, edits: &[Edit]) {
    for e in edits {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % (len + 1) };
        let len = bytes.len();
        match e {
            Edit::Truncate(p) => bytes.truncate(at(*p, len)),
            Edit::Insert(p, b) => {
                let p = at(*p, len);
                bytes.splice(p..p, b.iter().copied());
            }
            Edit::Delete(p, n) => {
                let p = at(*p, len);
                bytes.drain(p..(p + n).min(len));
            }
            Edit::Flip(p, m) if len > 0 => bytes[p % len] ^= m | 1,
            Edit::Flip(..) => {}
            Edit::Repeat(a, n, b) => {
                let a = at(*a, len);
                let chunk = bytes[a..(a + n).min(len)].to_vec();
                let b = at(*b, len);
                bytes.splice(b..b, chunk);
            }
        }
    }
}
