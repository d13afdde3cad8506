//! What oomguard refuses inside a container, on the real kernel: a container's group without
//! the memory controller (a runtime that gave it no memory limit), and a cgroup v1 mount where
//! cgroup v2 should be. Each refusal exits non-zero before anything starts, names what is wrong
//! and the runtime setting to change, and leaves the container's group as it found it.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::harness::*;

/// A parent group that does not pass the memory controller down, and the container under it.
const PARENT: &str = "/sys/fs/cgroup/nomem";
const NOMEM: &str = "/sys/fs/cgroup/nomem/ctr";
/// Where the VM mounts the cgroup v1 hierarchy a v1 container sees.
const V1: &str = "/tmp/cgroup-v1";

/// Runs `oomguard ARGS` as the entrypoint of a container whose group is `dir`, with `setup`
/// (a shell line) run inside first; returns its output.
fn in_container(dir: &str, setup: &str, args: &[&str]) -> Result<CmdOutput> {
    let line = format!("{setup}exec {OOMGUARD} {}", args.join(" "));
    run_cmd(
        TESTWORKER,
        &["--enter-container", dir, "--", "/bin/sh", "-c", &line],
        Duration::from_secs(30),
    )
}

fn entries(dir: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("listing {dir}"))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Refused: not zero, every word in `must` in the output, and no group made under `group`.
fn refused(what: &str, out: &CmdOutput, must: &[&str], group: &str) -> Result<()> {
    let text = out.text();
    let line = text.lines().find(|l| must.iter().any(|w| l.contains(w)));
    evidence(
        what,
        line.unwrap_or_else(|| text.trim().lines().last().unwrap_or("")),
    );
    ensure!(!out.status.success(), "{what}: oomguard started: {text}");
    for word in must {
        ensure!(
            text.contains(word),
            "{what}: the refusal lacks {word:?}: {text}"
        );
    }
    let made = entries(group)?;
    ensure!(
        made.is_empty(),
        "{what}: the refused start made {made:?} in {group}"
    );
    Ok(())
}

pub fn container_refusals() -> Result<()> {
    make_ledger_dir()?;
    let cmd = worker_command(&[]);
    write_policy(
        POLICY_DIR,
        "plain",
        &format!("run:\n  command: {cmd}\nmemory: {{high: 40M, max: 64M}}\n"),
    )?;

    // No memory controller: `nomem` has memory available but does not enable it for `ctr`, as
    // a runtime that sets no memory limit leaves a container.
    fs::create_dir_all(NOMEM).context("creating the container's group")?;
    let controllers = read_trimmed(Path::new(&format!("{NOMEM}/cgroup.controllers")))?;
    evidence("nomem/ctr cgroup.controllers", format!("{controllers:?}"));
    ensure!(
        !controllers.split_whitespace().any(|c| c == "memory"),
        "the test container has the memory controller: {controllers:?}"
    );
    let words = [
        "no memory controller",
        "--memory",
        "resources.limits.memory",
    ];
    let run = in_container(
        NOMEM,
        "",
        &["run", "--policies", POLICY_DIR, "--socket", SOCKET],
    )?;
    refused("run without memory", &run, &words, NOMEM)?;
    let exec = in_container(NOMEM, "", &["exec", "--socket", SOCKET, "--", TESTWORKER])?;
    refused("exec without memory", &exec, &words, NOMEM)?;
    let procs = read_trimmed(Path::new(&format!("{NOMEM}/cgroup.procs")))?;
    ensure!(
        procs.is_empty(),
        "processes left in the container: {procs:?}"
    );
    fs::remove_dir(NOMEM).context("removing the container's group")?;
    fs::remove_dir(PARENT).context("removing its parent")?;

    // cgroup v1: the container's /sys/fs/cgroup is a v1 hierarchy (a named one: the VM's
    // controllers are all on v2), as on a host still booted with cgroup v1. The kernel creates
    // a v1 hierarchy only from the initial cgroup namespace (EPERM inside the container), so it
    // is mounted out here and bound over the container's mount.
    fs::create_dir_all(V1).context("creating the v1 mount point")?;
    let mount = run_cmd(
        "/bin/busybox",
        &[
            "mount",
            "-t",
            "cgroup",
            "-o",
            "none,name=oomguard_v1",
            "cgroup",
            V1,
        ],
        Duration::from_secs(10),
    )?;
    ensure!(
        mount.status.success(),
        "mounting a v1 hierarchy: {}",
        mount.text()
    );
    crate::container::make_container()?;
    let v1 =
        format!("busybox umount /sys/fs/cgroup && busybox mount -o bind {V1} /sys/fs/cgroup && ");
    let v1 = v1.as_str();
    let run = in_container(
        crate::container::CTR,
        v1,
        &["run", "--policies", POLICY_DIR, "--socket", SOCKET],
    )?;
    refused(
        "run on cgroup v1",
        &run,
        &["cgroup v1", "--cgroupns=private", "cgroup v2"],
        crate::container::CTR,
    )?;
    let exec = in_container(
        crate::container::CTR,
        v1,
        &["exec", "--socket", SOCKET, "--", TESTWORKER],
    )?;
    refused(
        "exec on cgroup v1",
        &exec,
        &["cgroup v1"],
        crate::container::CTR,
    )?;
    Ok(())
}
