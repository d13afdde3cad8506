//! The .deb as packaging/build-deb.sh builds it: a man page per subcommand and the bash, zsh and
//! fish completions, at the paths Debian's tools read. Built from the test's own binary
//! (`--binary`), so no release build; skipped with a note where dpkg-deb is missing, except under
//! tests/run.sh (`OOMGUARD_ROOT_TESTS=required`), which installs it.

use std::path::Path;
use std::process::Command;

use clap::CommandFactory;

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_package_ships_a_man_page_per_subcommand_and_three_completions() {
    if !["dpkg-deb", "dpkg-shlibdeps", "strip"]
        .iter()
        .all(|t| have(t))
    {
        // tests/run.sh installs them and says a skip is a failure there.
        assert!(
            std::env::var_os("OOMGUARD_ROOT_TESTS").is_none_or(|v| v != "required"),
            "dpkg-deb, dpkg-shlibdeps or strip missing (apt-get install dpkg-dev binutils)"
        );
        eprintln!("skipped: dpkg-deb, dpkg-shlibdeps or strip missing (dpkg-dev, binutils)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("tempdir");
    let built = Command::new(root.join("packaging/build-deb.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_oomguard"), "--out"])
        .arg(out.path())
        .output()
        .expect("run build-deb.sh");
    let stdout = String::from_utf8_lossy(&built.stdout);
    assert!(
        built.status.success(),
        "build-deb.sh failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = stdout.lines().last().expect("the .deb's path").trim();
    let listing = Command::new("dpkg-deb")
        .args(["-c", deb])
        .output()
        .expect("dpkg-deb -c");
    let listing = String::from_utf8_lossy(&listing.stdout);
    let mut want: Vec<String> = vec![
        "./usr/share/man/man1/oomguard.1.gz".into(),
        "./usr/share/bash-completion/completions/oomguard".into(),
        "./usr/share/zsh/vendor-completions/_oomguard".into(),
        "./usr/share/fish/vendor_completions.d/oomguard.fish".into(),
    ];
    let cli = oomguard::cli::Cli::command();
    for sub in cli.get_subcommands() {
        want.push(format!(
            "./usr/share/man/man1/oomguard-{}.1.gz",
            sub.get_name()
        ));
    }
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !listing.lines().any(|l| l.ends_with(w.as_str())))
        .collect();
    assert!(missing.is_empty(), "not in {deb}: {missing:?}\n{listing}");
}

/// Each subcommand's page is titled and used as `oomguard <name>`, from the parser itself.
#[test]
fn each_subcommand_page_names_its_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    oomguard::cli::write_man_pages(dir.path()).expect("write the man pages");
    let page =
        std::fs::read_to_string(dir.path().join("oomguard-restart.1")).expect("restart page");
    assert!(page.contains("oomguard\\-restart"), "{page}");
    assert!(page.contains("Gracefully restart"), "{page}");
    assert!(page.contains("oomguard restart"), "{page}");
}
