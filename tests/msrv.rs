//! The MSRV is honest: no dependency this crate builds with declares a `rust-version` newer than
//! this crate's. Only one toolchain can be installed where this runs (so no `cargo +1.89 check`):
//! instead this asks `cargo metadata` for the resolved tree on this host's target (so Windows- or
//! wasm-only crates, which cargo never downloads here, are not asked for) and reads each
//! package's declared `rust_version` (README, "Minimum Rust version").

use std::path::Path;
use std::process::Command;

/// "1.89" and "1.89.0" compare equal.
fn version(text: &str) -> [u32; 3] {
    let mut v = [0; 3];
    for (slot, part) in v.iter_mut().zip(text.split('.')) {
        *slot = part.parse().unwrap_or(0);
    }
    v
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("run rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host")
}

/// (name version, rust_version) of every package in the host's resolved tree, ours included.
fn resolved(metadata: &serde_json::Value) -> Vec<(String, Option<String>)> {
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            (
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or("?"),
                    p["version"].as_str().unwrap_or("?")
                ),
                p["rust_version"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn no_dependency_needs_a_newer_rust_than_ours() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO"))
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
        ])
        .arg(host_triple())
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = resolved(&metadata);
    let ours = packages
        .iter()
        .find(|(id, _)| id.starts_with(&format!("{} ", env!("CARGO_PKG_NAME"))))
        .and_then(|(_, v)| v.clone())
        .expect("Cargo.toml sets rust-version");
    let newer: Vec<String> = packages
        .iter()
        .filter_map(|(id, needs)| {
            let needs = needs.as_deref()?;
            (version(needs) > version(&ours)).then(|| format!("{id} needs {needs}"))
        })
        .collect();
    // A tree this small would mean cargo answered about something else.
    assert!(
        packages.len() > 50,
        "only {} packages resolved",
        packages.len()
    );
    assert!(
        newer.is_empty(),
        "Cargo.toml says rust-version {ours}, but: {newer:?}; raise rust-version (README, \"Minimum Rust version\")"
    );
}

#[test]
fn versions_compare_by_number() {
    assert!(version("1.89") > version("1.88.1"));
    assert!(version("1.100") > version("1.89"));
    assert_eq!(version("1.89.0"), version("1.89"));
    let meta = serde_json::json!({"packages": [
        {"name": "a", "version": "1.0.0", "rust_version": "1.95"},
        {"name": "b", "version": "2.0.0", "rust_version": null}
    ]});
    assert_eq!(
        resolved(&meta),
        vec![
            ("a 1.0.0".to_owned(), Some("1.95".to_owned())),
            ("b 2.0.0".to_owned(), None)
        ]
    );
}
