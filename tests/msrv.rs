//! The MSRV is honest: no locked dependency declares a `rust-version` newer than this crate's.
//! Only one toolchain can be installed where this runs (so no `cargo +1.89 check`): instead this
//! reads each locked package's own Cargo.toml from cargo's registry sources, which is where a
//! newer requirement would show first (README, "Minimum Rust version").

use std::path::{Path, PathBuf};

/// "1.89" and "1.89.0" compare equal.
fn version(text: &str) -> [u32; 3] {
    let mut v = [0; 3];
    for (slot, part) in v.iter_mut().zip(text.split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    v
}

/// The `rust-version = "..."` line of a manifest, if any (workspace-inherited ones are resolved
/// into the published Cargo.toml, so a plain line search is enough).
fn rust_version(manifest: &str) -> Option<String> {
    manifest.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("rust-version")?.trim_start();
        let value = rest.strip_prefix('=')?.trim().trim_matches('"');
        Some(value.to_owned())
    })
}

/// (name, version) of every registry package in Cargo.lock.
fn locked(lock: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for block in lock.split("[[package]]").skip(1) {
        let field = |key: &str| {
            block.lines().find_map(|l| {
                let v = l.strip_prefix(key)?.strip_prefix(" = ")?;
                Some(v.trim_matches('"').to_owned())
            })
        };
        if field("source").is_some_and(|s| s.starts_with("registry+")) {
            out.push((
                field("name").expect("name"),
                field("version").expect("version"),
            ));
        }
    }
    out
}

fn registry_dirs() -> Vec<PathBuf> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    std::fs::read_dir(home.join("registry/src"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_ours() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ours = rust_version(&std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml"))
        .expect("Cargo.toml sets rust-version");
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).expect("Cargo.lock");
    let dirs = registry_dirs();
    let (mut newer, mut missing) = (Vec::new(), Vec::new());
    for (name, ver) in locked(&lock) {
        let manifest = dirs
            .iter()
            .map(|d| d.join(format!("{name}-{ver}/Cargo.toml")))
            .find(|p| p.exists());
        let Some(manifest) = manifest else {
            missing.push(format!("{name} {ver}"));
            continue;
        };
        let text = std::fs::read_to_string(&manifest).expect("read a registry manifest");
        if let Some(needs) = rust_version(&text) {
            if version(&needs) > version(&ours) {
                newer.push(format!("{name} {ver} needs {needs}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "not in cargo's registry sources (run `cargo fetch`): {missing:?}"
    );
    assert!(
        newer.is_empty(),
        "Cargo.toml says rust-version {ours}, but: {newer:?}; raise rust-version (README, \"Minimum Rust version\")"
    );
}

#[test]
fn the_parsers_read_what_cargo_writes() {
    assert_eq!(
        rust_version("[package]\nrust-version = \"1.89.0\"\n"),
        Some("1.89.0".into())
    );
    assert!(version("1.89") > version("1.88.1"));
    assert_eq!(version("1.89.0"), version("1.89"));
    let lock = "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+https://x\"\n\n[[package]]\nname = \"me\"\nversion = \"0.1.0\"\n";
    assert_eq!(locked(lock), vec![("a".into(), "1.0.0".into())]);
}
