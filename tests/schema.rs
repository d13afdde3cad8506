//! `oomguard schema` against the repository's policy files: every example validates, typos do
//! not, and the copy shipped in docs/ is what the parser's types generate today.

use std::path::{Path, PathBuf};

use serde_json::Value;

const SHIPPED: &str = "docs/policy.schema.json";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&oomguard::policy::schema()).expect("the schema compiles")
}

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    yaml(&text)
}

fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).expect("YAML")
}

fn errors(v: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    v.iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// Every policy file in the repository: the examples in policies/ and the package's sample.
fn examples() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("policies"))
        .expect("policies/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    files.push(repo().join("packaging/example.yaml.sample"));
    files
}

#[test]
fn every_example_policy_validates_against_the_schema() {
    let v = validator();
    let files = examples();
    assert!(files.len() >= 3, "examples found: {files:?}");
    for f in files {
        let errs = errors(&v, &yaml_file(&f));
        assert!(errs.is_empty(), "{}: {errs:#?}", f.display());
    }
}

#[test]
fn the_examples_carry_the_modeline_for_the_shipped_schema() {
    for f in examples()
        .iter()
        .filter(|f| f.starts_with(repo().join("policies")))
    {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(
            text.lines()
                .any(|l| l == "# yaml-language-server: $schema=../docs/policy.schema.json"),
            "{} has no yaml-language-server modeline",
            f.display()
        );
    }
}

/// A positive control: the schema is not so loose that it accepts anything.
#[test]
fn typos_and_bad_values_are_refused() {
    let v = validator();
    let good = "run: {command: [/bin/sleep, '1000']}\nmemory: {high: 48M, max: 96M}\n\
                triggers: {pressure: {some: 100ms, window: 1s, for: 2s}}\n";
    assert_eq!(errors(&v, &yaml(good)), Vec::<String>::new());
    let bad = [
        ("run: {instnaces: 2}", "instnaces"),
        ("memory: {high: 2GB}", "2GB"),
        ("memory: {high: 1.5G}", "1.5G"),
        ("mode: enforcing", "enforcing"),
        ("triggers: {pressure: {window: soon}}", "soon"),
        ("triggers: {memory: {above: max}}", "max"),
        ("restart: {backoff: {initial: 1s, maximum: 5m}}", "maximum"),
        ("run: {env: {PORT: 8000}}", "8000"),
    ];
    for (doc, what) in bad {
        let errs = errors(&v, &yaml(doc));
        assert!(!errs.is_empty(), "`{doc}` was accepted");
        assert!(
            errs.iter().any(|e| e.contains(what)),
            "`{doc}`: no error names {what}: {errs:#?}"
        );
    }
}

/// docs/policy.schema.json is what the examples' modeline points at; it must be exactly what
/// `oomguard schema` prints, so a key added to the parser cannot leave it behind.
#[test]
fn the_shipped_schema_is_the_generated_one() {
    let generated = serde_json::to_string_pretty(&oomguard::policy::schema()).expect("json") + "\n";
    let shipped = std::fs::read_to_string(repo().join(SHIPPED)).unwrap_or_default();
    assert!(
        shipped == generated,
        "{SHIPPED} is out of date: run `cargo run -q -- schema > {SHIPPED}`"
    );
}

/// `oomguard schema` itself: the binary prints the generated schema.
#[test]
fn the_schema_subcommand_prints_it() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oomguard"))
        .arg("schema")
        .output()
        .expect("run oomguard schema");
    assert!(out.status.success(), "{out:?}");
    let printed: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(printed, oomguard::policy::schema());
    assert_eq!(printed["title"], "oomguard policy");
}
