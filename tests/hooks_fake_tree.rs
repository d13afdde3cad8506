//! `restart.hooks` on the host, against the fake cgroup tree: a before hook that runs ahead of
//! the signal and sees the restart's environment, one that fails, one that hangs past its
//! timeout (killed, the restart goes on), and an after hook that sees the replacement's pid.
//! The hooks are /bin/sh scripts in the test's tempdir (a test's convenience: oomguard itself
//! never involves a shell).

mod fake_tree;

use std::path::Path;
use std::time::Duration;

use oomguard::supervisor::{Fleet, SavedState};
use oomguard::vocabulary::InstanceState;

use fake_tree::*;

/// A directory only root can write to all the way up, as the directories above a program
/// oomguard runs as root must be (`oomguard::policy::Program`): where the hooks live.
fn hooks_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(".hooks-test-")
        .tempdir_in(oomguard::testing::tight_base())
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// An executable script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

async fn running(dir: &Path, name: &str, hooks: &str) -> std::sync::Arc<Fleet> {
    let fleet = fleet(dir, &[name]);
    fleet
        .start_policy(
            policy(
                name,
                r#"["/bin/sleep", "1000"]"#,
                &format!("restart:\n  grace: 5s\n  hooks:\n{hooks}"),
            ),
            &SavedState::new(),
        )
        .unwrap();
    wait_for(&fleet, &format!("{name}/0"), "running", |s| {
        s.state == InstanceState::Running
    })
    .await;
    fleet
}

fn env_of(file: &Path) -> String {
    std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[tokio::test]
async fn before_runs_ahead_of_the_signal_and_after_sees_the_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    // The before hook records whether the worker is still alive (kill -0) when it runs.
    let before = script(
        hooks.path(),
        "before",
        &format!(
            "env > {0}/before.env; kill -0 $OOMGUARD_PID && echo alive > {0}/alive; echo \"dump of $1\"",
            d.display()
        ),
    );
    let after = script(
        hooks.path(),
        "after",
        &format!("env > {}/after.env; echo \"new $1\"", d.display()),
    );
    let fleet = running(
        d,
        "hooked",
        &format!(
            "    before: [\"{before}\", \"{{pid}}\"]\n    after: [\"{after}\", \"{{new_pid}}\"]\n"
        ),
    )
    .await;
    let old = main_pid(&fleet, "hooked/0").unwrap();
    fleet.restart("hooked/0").await.unwrap();
    assert_eq!(env_of(&d.join("alive")).trim(), "alive");
    let env = env_of(&d.join("before.env"));
    for want in [
        "OOMGUARD_HOOK=before".to_string(),
        "OOMGUARD_INSTANCE=hooked/0".into(),
        "OOMGUARD_REASON=manual".into(),
        format!("OOMGUARD_PID={old}"),
        "OOMGUARD_MEMORY_HIGH=50331648".into(),
        "OOMGUARD_MEMORY_MAX=100663296".into(),
        format!("OOMGUARD_CGROUP={}/oomguard/hooked/0", d.display()),
    ] {
        assert!(env.lines().any(|l| l == want), "{want} not in\n{env}");
    }
    let ev = restart_event(&fleet);
    assert_eq!(ev.hooks.len(), 1, "{ev:?}");
    let h = &ev.hooks[0];
    assert_eq!(
        (h.when.as_str(), h.exit, h.timed_out),
        ("before", Some(0), false)
    );
    assert_eq!(h.argv0, before);
    assert_eq!(h.output, format!("dump of {old}"));
    assert!(ev.message.contains("before hook"), "{}", ev.message);

    let ah = event(&fleet, "after_hook").await;
    let new = main_pid(&fleet, "hooked/0").unwrap();
    assert_ne!(new, old);
    assert_eq!(ah.hooks[0].exit, Some(0), "{ah:?}");
    assert_eq!(ah.hooks[0].output, format!("new {new}"));
    let env = env_of(&d.join("after.env"));
    assert!(
        env.lines().any(|l| l == format!("OOMGUARD_NEW_PID={new}")),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == format!("OOMGUARD_PID={old}")),
        "{env}"
    );
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_failing_before_hook_does_not_stop_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    let before = script(hooks.path(), "fails", "echo 'lb unreachable' >&2; exit 7");
    let fleet = running(d, "failing", &format!("    before: [\"{before}\"]\n")).await;
    let old = main_pid(&fleet, "failing/0").unwrap();
    fleet.restart("failing/0").await.unwrap();
    let ev = restart_event(&fleet);
    assert_eq!(ev.hooks[0].exit, Some(7), "{ev:?}");
    assert_eq!(ev.hooks[0].output, "lb unreachable");
    assert!(!alive(old));
    wait_for(&fleet, "failing/0", "respawned", |s| {
        s.state == InstanceState::Running && s.restarts == 1
    })
    .await;
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_before_hook_that_hangs_is_killed_at_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    let before = script(hooks.path(), "hangs", "echo draining; exec sleep 1000");
    let fleet = running(
        d,
        "hanging",
        &format!("    before: [\"{before}\"]\n    timeout: 300ms\n"),
    )
    .await;
    let old = main_pid(&fleet, "hanging/0").unwrap();
    // A watchdog only: the restart must not wait for the hook's sleep.
    tokio::time::timeout(Duration::from_secs(30), fleet.restart("hanging/0"))
        .await
        .expect("the restart does not hang with its hook")
        .unwrap();
    let ev = restart_event(&fleet);
    let h = &ev.hooks[0];
    assert!(h.timed_out, "{h:?}");
    assert_eq!(h.signal, Some(libc::SIGKILL));
    assert_eq!(h.output, "draining");
    assert!(ev.message.contains("timed out, killed"), "{}", ev.message);
    assert!(!alive(old));
    fleet.stop_all().await;
}

#[tokio::test]
async fn a_stop_during_the_before_hook_stops_the_worker_without_waiting_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    let before = script(
        hooks.path(),
        "slow",
        &format!("echo $$ > {}/hook.pid; exec sleep 1000", d.display()),
    );
    let fleet = running(
        d,
        "slowhook",
        &format!("    before: [\"{before}\"]\n    timeout: 5m\n"),
    )
    .await;
    let old = main_pid(&fleet, "slowhook/0").unwrap();
    let restart = {
        let fleet = fleet.clone();
        tokio::spawn(async move { fleet.restart("slowhook/0").await })
    };
    let pid_file = d.join("hook.pid");
    let hook = wait_until_some("the hook to run", || {
        std::fs::read_to_string(&pid_file)
            .ok()?
            .trim()
            .parse::<u32>()
            .ok()
    })
    .await;
    // A watchdog, not a timing check: the hook would hold the stop for its 5 minutes.
    tokio::time::timeout(Duration::from_secs(30), fleet.stop_all())
        .await
        .expect("a stop during the before hook does not wait for it");
    assert!(!alive(old), "the worker was stopped");
    wait_until_some("the hook to be killed", || (!alive(hook)).then_some(())).await;
    assert!(restart.await.unwrap().is_err());
}

/// Polls `f` every 20 ms, for at most 30 s (a watchdog for a loaded machine).
async fn wait_until_some<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_after_hook_still_running_is_killed_at_the_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    let pidfile = d.join("after.pid");
    let after = script(
        hooks.path(),
        "after",
        &format!(
            "echo $$ > {0}.tmp; mv {0}.tmp {0}; exec sleep 1000",
            pidfile.display()
        ),
    );
    let fleet = running(
        d,
        "tracked",
        &format!("    after: [\"{after}\"]\n    timeout: 5m\n"),
    )
    .await;
    fleet.restart("tracked/0").await.unwrap();
    let started = std::time::Instant::now();
    while !pidfile.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the after hook did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hook: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(hook));
    fleet.stop_all().await;
    // Not left to run out its 5 minutes after the daemon stopped.
    let killed = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        // Gone, or a zombie waiting for the runtime's reaper.
        let stat = std::fs::read_to_string(format!("/proc/{hook}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    });
    assert!(killed, "the after hook {hook} outlived the stop");
}

#[tokio::test]
async fn observe_mode_runs_no_hook() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let hooks = hooks_dir();
    let marker = d.join("ran");
    let before = script(
        hooks.path(),
        "before",
        &format!("touch {}", marker.display()),
    );
    let fleet = fleet(d, &["watched"]);
    std::fs::write(d.join("oomguard/watched/0/memory.current"), "52428800").unwrap();
    let mut p = policy(
        "watched",
        r#"["/bin/sleep", "1000"]"#,
        &format!("mode: observe\nrestart:\n  hooks:\n    before: [\"{before}\"]\n"),
    );
    p.triggers.memory = Some(oomguard::policy::MemoryTrigger {
        above: 40 << 20,
        sustain: Duration::ZERO,
    });
    fleet.start_policy(p, &SavedState::new()).unwrap();
    let ev = event(&fleet, "would_restart").await;
    assert!(ev.hooks.is_empty(), "{ev:?}");
    assert!(!marker.exists(), "the before hook ran in observe mode");
    fleet.stop_all().await;
}
