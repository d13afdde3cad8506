use std::time::Duration;

use super::*;

fn ctx() -> Context {
    Context {
        instance: "web/0".into(),
        reason: "memory".into(),
        pid: 4242,
        new_pid: None,
        current: Some(1_000_000),
        high: Limit::Bytes(2_000_000),
        max: Limit::Max,
        cgroup: "/sys/fs/cgroup/oomguard/web/0".into(),
        secrets: vec![],
    }
}

/// Whether `pid` is gone: no such process, or a zombie (reaped by init once its parent is gone).
fn gone(pid: i32) -> bool {
    (0..50).any(|_| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty() || stat.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
        false
    })
}

fn read_pid(path: &std::path::Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn placeholders_are_substituted_in_arguments_only() {
    let mut c = ctx();
    c.new_pid = Some(77);
    let got = argv(
        &strings(&[
            "/usr/bin/{pid}",
            "--pid",
            "{pid}",
            "{instance}:{reason}",
            "new={new_pid}",
            "$PID",
        ]),
        &c,
    );
    assert_eq!(
        got,
        strings(&[
            "/usr/bin/{pid}",
            "--pid",
            "4242",
            "web/0:memory",
            "new=77",
            "$PID"
        ])
    );
    // A value with spaces stays one argument: there is no shell.
    c.instance = "a b; rm -rf /".into();
    assert_eq!(
        argv(&strings(&["/x", "{instance}"]), &c)[1],
        "a b; rm -rf /"
    );
}

#[test]
fn env_carries_the_figures_and_nothing_of_the_daemon() {
    let before = env(&ctx(), When::Before);
    let get =
        |env: &[(&str, String)], k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(get(&before, "OOMGUARD_HOOK").as_deref(), Some("before"));
    assert_eq!(get(&before, "OOMGUARD_INSTANCE").as_deref(), Some("web/0"));
    assert_eq!(get(&before, "OOMGUARD_REASON").as_deref(), Some("memory"));
    assert_eq!(get(&before, "OOMGUARD_PID").as_deref(), Some("4242"));
    assert_eq!(
        get(&before, "OOMGUARD_MEMORY_CURRENT").as_deref(),
        Some("1000000")
    );
    assert_eq!(
        get(&before, "OOMGUARD_MEMORY_HIGH").as_deref(),
        Some("2000000")
    );
    assert_eq!(get(&before, "OOMGUARD_MEMORY_MAX").as_deref(), Some("max"));
    assert_eq!(
        get(&before, "OOMGUARD_CGROUP").as_deref(),
        Some("/sys/fs/cgroup/oomguard/web/0")
    );
    assert_eq!(get(&before, "OOMGUARD_NEW_PID"), None);
    assert_eq!(get(&before, "HOME"), None);
    let mut c = ctx();
    c.new_pid = Some(9);
    c.current = None;
    let after = env(&c, When::After);
    assert_eq!(get(&after, "OOMGUARD_NEW_PID").as_deref(), Some("9"));
    assert_eq!(get(&after, "OOMGUARD_MEMORY_CURRENT").as_deref(), Some(""));
}

#[test]
fn output_is_bounded_by_lines_and_bytes() {
    assert_eq!(bounded_output(b""), "");
    assert_eq!(bounded_output(b"one\n"), "one");
    assert_eq!(bounded_output(b"1\n2\n3\n4\n"), "1\n2\n3\n4");
    assert_eq!(bounded_output(b"1\n2\n3\n4\n5\n"), "1\n2\n3\n4…");
    let long = vec![b'x'; 2000];
    let out = bounded_output(&long);
    assert_eq!(out.len(), OUTPUT_BYTES + '…'.len_utf8());
    assert!(out.ends_with('…'));
    assert_eq!(bounded_output(b"caf\xff\n"), "caf\u{fffd}");
}

#[test]
fn describe_says_how_it_ended() {
    let mut r = HookRecord {
        when: "before".into(),
        argv0: "/x".into(),
        exit: Some(3),
        signal: None,
        timed_out: false,
        error: None,
        output: String::new(),
        took_ms: 12,
    };
    assert_eq!(describe(&r), "before hook /x: exit 3 in 12 ms");
    r.exit = None;
    r.signal = Some(9);
    r.timed_out = true;
    assert_eq!(describe(&r), "before hook /x: timed out, killed in 12 ms");
    r.timed_out = false;
    assert_eq!(describe(&r), "before hook /x: killed by signal 9 in 12 ms");
}

#[tokio::test]
async fn a_hook_runs_with_its_env_and_its_output_is_kept() {
    let r = run(
        When::Before,
        &strings(&[
            "/bin/sh",
            "-c",
            "echo pid={pid} $OOMGUARD_PID; echo err >&2; exit 3",
        ]),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.exit, Some(3), "{r:?}");
    assert!(!r.timed_out);
    assert_eq!(r.output, "pid=4242 4242\nerr");
    assert_eq!(r.argv0, "/bin/sh");
}

#[tokio::test]
async fn a_hook_that_hangs_is_killed_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let script = format!(
        "sleep 1000 & echo $! > {}; echo started; wait",
        pidfile.display()
    );
    let r = run(
        When::Before,
        &strings(&["/bin/sh", "-c", &script]),
        &ctx(),
        Duration::from_millis(500),
    )
    .await;
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.signal, Some(libc::SIGKILL));
    assert_eq!(r.output, "started");
    // The background sleep was in the hook's process group: killed too.
    assert!(
        gone(read_pid(&pidfile)),
        "the hook's background process survived its timeout"
    );
}

#[tokio::test]
async fn a_hook_that_leaves_a_process_holding_its_output_is_not_waited_for() {
    let r = run(
        When::After,
        &strings(&["/bin/sh", "-c", "sleep 5 & echo bye"]),
        &ctx(),
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert!(!r.timed_out);
    assert_eq!(r.output, "bye");
}

#[tokio::test]
async fn a_hook_that_cannot_start_is_recorded() {
    let r = run(
        When::Before,
        &strings(&["/nonexistent/hook"]),
        &ctx(),
        Duration::from_secs(1),
    )
    .await;
    assert!(
        r.error.as_deref().unwrap().contains("does not exist"),
        "{r:?}"
    );
    assert_eq!((r.exit, r.signal), (None, None));
    assert!(describe(&r).contains("not started"));
}

#[tokio::test]
async fn a_hook_that_fails_the_ownership_rules_is_not_run() {
    // Checked at each run, not only at load: here under /tmp, which anyone can write to.
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let hook = dir.path().join("hook");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = run(
        When::Before,
        &strings(&[hook.to_str().unwrap()]),
        &ctx(),
        Duration::from_secs(5),
    )
    .await;
    let error = r.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("(run as root): directory /")
            && error.contains("writable by group or others"),
        "{r:?}"
    );
    assert!(!ran.exists(), "the hook ran");
}

#[tokio::test]
async fn what_a_hook_leaves_running_is_killed_when_it_exits() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let script = format!("sleep 1000 & echo $! > {}; echo done", pidfile.display());
    let r = run(
        When::After,
        &strings(&["/bin/sh", "-c", &script]),
        &ctx(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!((r.exit, r.timed_out), (Some(0), false), "{r:?}");
    assert_eq!(r.output, "done");
    assert!(
        gone(read_pid(&pidfile)),
        "the hook's background process outlived the hook"
    );
}

#[tokio::test]
async fn a_hook_whose_run_is_dropped_is_killed_with_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("bg");
    let script = format!(
        "sleep 1000 & echo \"$$ $!\" > {}.tmp; mv {0}.tmp {0}; wait",
        pidfile.display()
    );
    let task = tokio::spawn(async move {
        run(
            When::After,
            &strings(&["/bin/sh", "-c", &script]),
            &ctx(),
            Duration::from_secs(60),
        )
        .await
    });
    while !pidfile.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let pids = std::fs::read_to_string(&pidfile).unwrap();
    for pid in pids.split_whitespace() {
        assert!(gone(pid.parse().unwrap()), "pid {pid} of {pids} survived");
    }
}

#[test]
fn secrets_are_redacted_from_the_output() {
    let secrets = vec!["hunter2-long".to_string(), "s3cr3t".to_string()];
    assert_eq!(
        redact("db=postgres://app:s3cr3t@db ok\nsaw hunter2-long", &secrets),
        "db=postgres://app:[redacted]@db ok\nsaw [redacted]"
    );
    assert_eq!(
        redact(
            "API_KEY=abc123 user=app Token: \"xyz\" db_password: p4ss, mode=x",
            &[]
        ),
        "API_KEY=[redacted] user=app Token: \"xyz\" db_password: [redacted], mode=x"
    );
    assert_eq!(
        redact("keys: 3\nno secret here", &[]),
        "keys: [redacted]\nno secret here"
    );
    assert_eq!(redact("plain text: fine", &[]), "plain text: fine");
}

#[test]
fn secret_values_come_from_secret_names_only() {
    let env = [
        ("DATABASE_PASSWORD", "pw-value"),
        ("api_token", "tok-value-long"),
        ("PORT", "8000"),
        ("SIGNING_KEY", "k"),
    ];
    assert_eq!(
        secret_values(env)
            .into_iter()
            .filter(|v| v.ends_with("value") || v.ends_with("long") || v == "k" || v == "8000")
            .collect::<Vec<_>>(),
        ["tok-value-long", "pw-value"]
    );
}

#[tokio::test]
async fn a_hook_printing_the_worker_s_secret_does_not_reach_the_event() {
    let mut c = ctx();
    c.secrets = vec!["s3cr3t-value".into()];
    let r = run(
        When::Before,
        &strings(&["/bin/sh", "-c", "echo conn s3cr3t-value; echo LB_TOKEN=abc"]),
        &c,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(r.output, "conn [redacted]\nLB_TOKEN=[redacted]");
}
