//! The README, docs/policy.md and the example policies agree with the parser and with each other.
//!
//! - The set of policy keys is derived from the parser itself: a probe key is put under each
//!   section and `deny_unknown_fields` answers with the keys it expected, recursively. A key
//!   added to `src/policy/raw.rs` (a whole new section included) makes this test fail until it is
//!   documented; a documented key the parser no longer knows fails it too.
//! - Every key must have a row in docs/policy.md's reference tables ("Every key"; see
//!   `reference_rows` for the form), the one copy of the reference.
//! - Every example policy (policies/*.yaml, packaging/example.yaml.sample, and each YAML block
//!   of the README and docs/*.md that holds a whole policy) parses.
//! - Every mention of the policy directory is the daemon's default, `/etc/oomguard/policies.d`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use oomguard::daemon::DEFAULT_POLICIES;
use oomguard::policy::parse;

/// A key no policy will ever have, to make the parser list the ones it expects.
const PROBE: &str = "zz_probe_key";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The keys the parser accepts directly under `section` (a dotted path, "" for the top level),
/// or None when `section` is a leaf (a value, not a mapping with fixed keys).
fn keys_under(section: &[&str]) -> Option<Vec<String>> {
    let mut yaml = String::new();
    for (depth, key) in section.iter().enumerate() {
        yaml.push_str(&format!("{}{key}:\n", "  ".repeat(depth)));
    }
    yaml.push_str(&format!("{}{PROBE}: 1\n", "  ".repeat(section.len())));
    let errors = parse(Path::new("/probe/probe.yaml"), &yaml).err()?;
    let probe_key = section
        .iter()
        .copied()
        .chain([PROBE])
        .collect::<Vec<_>>()
        .join(".");
    // "line 2: unknown key: expected one of `high`, `max`, `swap_max`; fix ..." or
    // "expected `x`" for a single key. Any other error (a free map such as `run.env` refusing
    // the probe's value) means no fixed keys here.
    let error = errors
        .iter()
        .find(|e| e.key == probe_key && e.message.contains("unknown key"))?;
    let expected = error.message.split("expected").nth(1)?;
    let expected = expected.split(';').next()?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Every key path the parser accepts, sections included: `restart`, `restart.backoff`,
/// `restart.backoff.initial`, ...
fn parser_keys() -> BTreeSet<String> {
    fn walk(path: &mut Vec<String>, out: &mut BTreeSet<String>) {
        let refs: Vec<&str> = path.iter().map(String::as_str).collect();
        let Some(children) = keys_under(&refs) else {
            return;
        };
        for child in children {
            path.push(child);
            out.insert(path.join("."));
            walk(path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(&mut Vec::new(), &mut out);
    out
}

/// The text of a markdown section: from the heading line `heading` to the next heading of the
/// same or a higher level.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no `{heading}` heading"))
        + 1;
    let level = heading.chars().take_while(|&c| c == '#').count();
    let body = &doc[start + heading.len()..];
    let end = body
        .lines()
        .scan(0, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|&c| c == '#').count();
            hashes > 0 && hashes <= level && line.chars().nth(hashes) == Some(' ')
        })
        .map_or(body.len(), |(at, _)| at);
    &doc[start..start + heading.len() + end]
}

/// The first backticked span of `s`, if `s` starts with one.
fn leading_code(s: &str) -> Option<&str> {
    s.strip_prefix('`')?.split('`').next()
}

/// The keys docs/policy.md's reference documents. A table row's first cell names a key relative to
/// the current section: a heading naming one key path in backticks (`#### \`run\``) or a line
/// starting with one (`` `triggers.pressure`: ... ``) sets the section; any other heading resets
/// it to the top level. So `| \`backoff.initial\` |` under `#### \`restart\`` is
/// `restart.backoff.initial`.
fn reference_rows(reference: &str) -> BTreeSet<String> {
    let mut context = String::new();
    let mut keys = BTreeSet::new();
    for line in reference.lines() {
        if line.starts_with('#') {
            let title = line.trim_start_matches('#').trim();
            context = leading_code(title).unwrap_or_default().to_string();
        } else if let Some(path) = leading_code(line) {
            if line[path.len() + 2..].starts_with(':') {
                context = path.to_string();
            }
        } else if let Some(cell) = line.strip_prefix("| ").and_then(leading_code) {
            keys.insert(if context.is_empty() {
                cell.to_string()
            } else {
                format!("{context}.{cell}")
            });
        }
    }
    keys
}

/// A section is documented by its keys (`restart.backoff` by `restart.backoff.initial`), so the
/// ancestors of every documented key count as documented.
fn compare(what: &str, documented: &BTreeSet<String>, parser: &BTreeSet<String>) {
    let documented: BTreeSet<String> = documented
        .iter()
        .flat_map(|k| {
            k.match_indices('.')
                .map(|(at, _)| k[..at].to_string())
                .chain([k.clone()])
                .collect::<Vec<_>>()
        })
        .collect();
    let missing: Vec<_> = parser.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(parser).collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "{what} and the parser disagree.\n  keys the parser accepts but {what} does not \
         document: {missing:?}\n  keys {what} documents but the parser refuses: {unknown:?}"
    );
}

#[test]
fn the_key_probe_sees_nested_sections() {
    let keys = parser_keys();
    for key in [
        "name",
        "run.command",
        "triggers.pressure.for",
        "restart.backoff.initial",
    ] {
        assert!(keys.contains(key), "{key} not derived: {keys:?}");
    }
    assert!(
        !keys.iter().any(|k| k.starts_with("run.env.")),
        "env is a free map, not a section: {keys:?}"
    );
}

#[test]
fn every_key_has_a_row_in_the_policy_reference() {
    let doc = read("docs/policy.md");
    let reference = section(&doc, "## Every key");
    compare(
        "docs/policy.md's key reference",
        &reference_rows(reference),
        &parser_keys(),
    );
}

/// The YAML blocks of a markdown file.
fn yaml_blocks(doc: &str) -> Vec<&str> {
    doc.split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().expect("closed block"))
        .collect()
}

/// Parses an example; run.user and run.group name accounts of the documented host (`app`),
/// which this host need not have, so only those lookups may fail.
fn assert_example_parses(what: &str, text: &str) {
    if let Err(errors) = parse(Path::new("/etc/oomguard/policies.d/example.yaml"), text) {
        let real: Vec<String> = errors
            .iter()
            .filter(|e| {
                !((e.key == "run.user" || e.key == "run.group")
                    && e.message.contains("does not exist"))
            })
            .map(ToString::to_string)
            .collect();
        assert!(
            real.is_empty(),
            "{what} does not parse:\n{}",
            real.join("\n")
        );
    }
}

#[test]
fn every_example_policy_parses() {
    let mut checked = 0;
    for entry in fs::read_dir(repo("policies")).expect("policies/") {
        let path = entry.expect("dir entry").path();
        let text = fs::read_to_string(&path).expect("readable");
        assert_example_parses(&path.display().to_string(), &text);
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} example policies");
    assert_example_parses(
        "packaging/example.yaml.sample",
        &read("packaging/example.yaml.sample"),
    );
    // Whole policies (a block with run, memory and triggers) in any doc; fragments that show
    // one section are not policies on their own.
    let mut docs = vec!["README.md".to_string()];
    for entry in fs::read_dir(repo("docs")).expect("docs/") {
        let name = entry.expect("dir entry").file_name();
        let name = name.to_string_lossy();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in &docs {
        let text = read(doc);
        let blocks = yaml_blocks(&text)
            .into_iter()
            .filter(|b| {
                ["run:", "memory:", "triggers:"]
                    .iter()
                    .all(|k| b.contains(k))
            })
            .collect::<Vec<_>>();
        if doc == "README.md" || doc == "docs/policy.md" {
            assert!(!blocks.is_empty(), "{doc} has no example policy");
        }
        for block in blocks {
            assert_example_parses(&format!("a YAML block of {doc}"), block);
        }
    }
}

/// Every place that names the policy directory, and the one name they must use.
#[test]
fn one_policy_directory_everywhere() {
    assert_eq!(DEFAULT_POLICIES, "/etc/oomguard/policies.d");
    let mut files = vec![
        "README.md".to_string(),
        "systemd/oomguard.service".into(),
        "packaging/example.yaml.sample".into(),
        "Cargo.toml".into(),
    ];
    for dir in ["docs", "policies"] {
        for entry in fs::read_dir(repo(dir)).expect("listable") {
            let name = entry.expect("dir entry").file_name();
            files.push(format!("{dir}/{}", name.to_string_lossy()));
        }
    }
    let mut wrong = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = read(file);
        // Without the leading slash: Cargo.toml names the packaged path that way.
        for (at, _) in text.match_indices("etc/oomguard/polic") {
            let rest = &text[at..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || "/._-".contains(*c))
                .collect();
            // A sentence may end right after the name.
            let dir = name.trim_end_matches(['/', '.']);
            let want = DEFAULT_POLICIES.trim_start_matches('/');
            let ok = dir == want || dir.strip_prefix(want).is_some_and(|r| r.starts_with('/'));
            if !ok {
                wrong.push(format!("{file}: {name}"));
            }
            seen += 1;
        }
    }
    assert!(
        seen >= 10,
        "only {seen} mentions found: is the scan broken?"
    );
    assert!(
        wrong.is_empty(),
        "policy directory other than {DEFAULT_POLICIES}:\n{}",
        wrong.join("\n")
    );
}
