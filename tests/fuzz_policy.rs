//! Bounded fuzzing of the policy parser and validator: any text in, a `Policy` or a list of
//! errors out, never a panic. Random bytes, YAML-ish text, and structure-aware mutations of the
//! shipped examples (policies/) and the seed corpus (tests/fuzz/corpus/policy/), which
//! `corpus_replays` also runs as it is. The case counts keep the whole file well under a minute
//! on the CI machine; PROPTEST_CASES=N runs longer (README, "Fuzzing").

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oomguard::policy::{parse, Policy, PolicyError};
use proptest::prelude::*;

#[path = "fuzz/common.rs"]
mod common;
use common::{apply, config, corpus, edit, files, Edit};

const FILE: &str = "/etc/oomguard/policies/fuzz.yaml";

fn run(bytes: &[u8]) -> Result<Policy, Vec<PolicyError>> {
    parse(Path::new(FILE), &String::from_utf8_lossy(bytes))
}

/// The examples and the corpus: the inputs mutations start from.
fn seeds() -> &'static [(PathBuf, Vec<u8>)] {
    static SEEDS: OnceLock<Vec<(PathBuf, Vec<u8>)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds = files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("policies"));
        seeds.extend(corpus("policy"));
        seeds
    })
}

/// Values that have broken, or could break, a parser or a validator.
const VALUES: &[&str] = &[
    "300000000000y",
    "1ns",
    "0",
    "-0",
    "-1",
    "-1s",
    "1.5G",
    "1.5s",
    "1e400",
    "0x10",
    "0o7",
    "18446744073709551615",
    "18446744073709551616",
    "9223372036854775808",
    "16777216T",
    "max",
    "MAX",
    "~",
    "null",
    "[]",
    "{}",
    "\"\"",
    "''",
    "[a, b]",
    "{a: 1}",
    "[[[[[]]]]]",
    "SIGKILL",
    "15",
    "TERM",
    "SIG",
    ".inf",
    "-.inf",
    ".nan",
    "!!binary aGVsbG8=",
    "!!str 5",
    "&a x",
    "*a",
    "*undefined",
    "\"\\0\"",
    "\"/bin/x\\u0000y\"",
    "\"é\"",
    "yes",
    "no",
    "true",
    "1h 30m",
    "5 parsecs",
    "584542046091y",
    "1000000000000000000000ns",
    "99999999999999999999s",
    "\"/srv/../etc\"",
    "/",
    "\"a=b\"",
    "[\"/bin/sh\", 1]",
    "{high: 1G}",
    "? x",
    "|\n  block",
    ">-\n  folded",
    "'quoted'",
    "\"\\uD800\"",
    "-",
    "---",
    "...",
    "#",
    ": :",
];

const KEYS: &[&str] = &[
    "name",
    "mode",
    "run",
    "command",
    "instances",
    "user",
    "group",
    "workdir",
    "env",
    "memory",
    "high",
    "max",
    "swap_max",
    "triggers",
    "pressure",
    "some",
    "full",
    "window",
    "for",
    "above",
    "restart",
    "signal",
    "grace",
    "backoff",
    "initial",
    "limit",
    "count",
    "within",
    "<<",
    "? x",
    "\"for\"",
    "FOR",
    "",
    "-",
];

/// One line-level change to a YAML seed.
#[derive(Clone, Debug)]
enum LineEdit {
    /// Replaces what follows the first `:` of the line.
    Value(usize, String),
    /// Replaces what precedes it.
    Key(usize, &'static str),
    Drop(usize),
    Repeat(usize),
    Swap(usize, usize),
    Indent(usize, u8),
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(VALUES).prop_map(str::to_string),
        1 => "[ -~]{0,24}",
        1 => "[0-9]{1,30}(ns|us|ms|s|m|h|d|y|K|M|G|T)?",
    ]
}

fn line_edit() -> impl Strategy<Value = LineEdit> {
    let n = any::<usize>();
    prop_oneof![
        4 => (n, value()).prop_map(|(i, v)| LineEdit::Value(i, v)),
        1 => (n, prop::sample::select(KEYS)).prop_map(|(i, k)| LineEdit::Key(i, k)),
        1 => n.prop_map(LineEdit::Drop),
        1 => n.prop_map(LineEdit::Repeat),
        1 => (n, n).prop_map(|(a, b)| LineEdit::Swap(a, b)),
        1 => (n, 0u8..9).prop_map(|(i, d)| LineEdit::Indent(i, d)),
    ]
}

fn mutate(seed: &[u8], line_edits: &[LineEdit], edits: &[Edit]) -> Vec<u8> {
    let text = String::from_utf8_lossy(seed);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for e in line_edits {
        if lines.is_empty() {
            break;
        }
        let len = lines.len();
        match e {
            LineEdit::Value(i, v) => {
                let line = &mut lines[i % len];
                if let Some(colon) = line.find(':') {
                    line.truncate(colon + 1);
                    line.push(' ');
                    line.push_str(v);
                }
            }
            LineEdit::Key(i, k) => {
                let line = &mut lines[i % len];
                let indent = line.len() - line.trim_start().len();
                if let Some(colon) = line.find(':') {
                    let tail = line[colon..].to_string();
                    *line = format!("{}{k}{tail}", " ".repeat(indent));
                }
            }
            LineEdit::Drop(i) => {
                lines.remove(i % len);
            }
            LineEdit::Repeat(i) => {
                let line = lines[i % len].clone();
                lines.insert(i % len, line);
            }
            LineEdit::Swap(a, b) => lines.swap(a % len, b % len),
            LineEdit::Indent(i, d) => {
                let line = &mut lines[i % len];
                *line = format!("{}{}", " ".repeat(usize::from(*d)), line.trim_start());
            }
        }
    }
    let mut bytes = lines.join("\n").into_bytes();
    bytes.push(b'\n');
    apply(&mut bytes, edits);
    bytes
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = run(&bytes);
    }

    #[test]
    fn yaml_like_text_never_panics(text in "[a-z0-9:{}\\[\\], \n\"'&*!|>#?~.-]{0,300}") {
        let _ = run(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn mutated_seeds_never_panic(
        seed in any::<prop::sample::Index>(),
        line_edits in prop::collection::vec(line_edit(), 1..6),
        edits in prop::collection::vec(edit(), 0..3),
    ) {
        let (_, seed) = seed.get(seeds());
        let bytes = mutate(seed, &line_edits, &edits);
        // A policy that passed validation must keep its invariants.
        if let Ok(p) = run(&bytes) {
            prop_assert!(!p.run.command.is_empty() && p.run.command[0].starts_with('/'));
            prop_assert!((1..=1000).contains(&p.run.instances));
            prop_assert!(p.restart.backoff_initial <= p.restart.backoff_max);
            prop_assert!(p.restart.backoff_max <= std::time::Duration::from_secs(3600));
            prop_assert!(p.restart.limit_within <= std::time::Duration::from_secs(7 * 86400));
            prop_assert!(p.triggers.pressure.is_some() || p.triggers.memory.is_some());
        }
    }
}

/// Every corpus file as it is: `ok-*` must be accepted, `bad-*` refused, and none may panic.
#[test]
fn corpus_replays() {
    let corpus = corpus("policy");
    assert!(corpus.len() >= 10, "the corpus went missing");
    for (path, bytes) in &corpus {
        let name = path.file_name().expect("a file name").to_string_lossy();
        let result = run(bytes);
        if name.starts_with("ok-") {
            assert!(result.is_ok(), "{name}: {:?}", result.err());
        } else if name.starts_with("bad-") {
            assert!(result.is_err(), "{name} was accepted");
        }
    }
}
