//! `oomguard exec [FLAGS] -- COMMAND...`: a container's one-line entrypoint. The flags become one
//! policy file's text, with limits derived from the container's memory.max where no flag gives
//! them; that text goes through the policy parser like any file and is then run by `run` itself.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::container::fit::{self, DEFAULT_RESERVE};
use crate::units::{human_bytes, Dur, Limit};

/// What the flags say; None: derived (see [`build`]).
#[derive(Clone, Debug, Default)]
pub struct Flags {
    pub name: Option<String>,
    pub instances: u32,
    pub children: bool,
    pub memory_high: Option<u64>,
    pub memory_max: Option<u64>,
    pub child_memory_high: Option<u64>,
    pub child_memory_max: Option<u64>,
    pub signal: String,
    pub grace: std::time::Duration,
    pub user: Option<String>,
    pub command: Vec<String>,
}

/// memory.high as a share of memory.max: the gap is where a worker finishes its job after its
/// signal (memory.high is lifted for the grace), below the kernel's kill.
const HIGH_PERCENT: u64 = 80;
/// Without `--child-memory-max`, a child may use half its instance's memory.max: one leaking
/// child is recycled while the master and the other children keep the other half.
const CHILD_SHARE: u64 = 2;
/// A 2 s window: PSI triggers of openers without CAP_SYS_RESOURCE (Docker's default
/// capabilities lack it) need a multiple of 2 s.
const PRESSURE: &str = "{some: 200ms, window: 2s, for: 2s}";

/// The policy built from the flags: its YAML text (the derivation in comments at the top) and
/// one line saying how each limit was reached, for the start log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Built {
    pub name: String,
    pub yaml: String,
    pub derivation: String,
}

/// Where the limits come from: the container's memory.max (None: not limited, or a host).
pub fn build(flags: &Flags, container_max: Option<u64>) -> Result<Built, String> {
    let command = flags.command.first().ok_or("no COMMAND after `--`")?;
    let name = match &flags.name {
        Some(n) => n.clone(),
        None => name_from(command),
    };
    let instances = u64::from(flags.instances.max(1));
    let mut why = Vec::new();
    let max = match (flags.memory_max, container_max) {
        (Some(m), _) => {
            why.push(format!("memory.max {} (--memory-max)", human_bytes(m)));
            m
        }
        (None, Some(limit)) => {
            let envelope = fit::envelope(Limit::Bytes(limit), DEFAULT_RESERVE)?
                .expect("a limited container has an envelope");
            let m = mib_floor(envelope / instances);
            why.push(format!(
                "memory.max {} = the workers' envelope {} (the container's memory.max {} minus \
                 oomguard's reserve {}) / {instances} instance(s)",
                human_bytes(m),
                human_bytes(envelope),
                human_bytes(limit),
                human_bytes(DEFAULT_RESERVE)
            ));
            m
        }
        (None, None) => {
            return Err(
                "no memory limit to derive the workers' from (a host, or a container \
                        whose memory.max is max): pass --memory-max (and --memory-high), give \
                        the container a limit (docker --memory, resources.limits.memory), or \
                        use --policy FILE"
                    .into(),
            )
        }
    };
    let high = derive_high(
        "memory.high",
        flags.memory_high,
        max,
        "--memory-high",
        &mut why,
    );
    let children = flags
        .children
        .then(|| children_limits(flags, max, &mut why));
    let mut yaml: String = why.iter().map(|l| format!("# {l}\n")).collect();
    let user = flags
        .user
        .as_ref()
        .map_or(String::new(), |u| format!("  user: {}\n", quote(u)));
    let restart = format!(
        "{{signal: {}, grace: {}}}",
        quote(&flags.signal),
        Dur(flags.grace)
    );
    let _ = write!(
        yaml,
        "name: {}\nrun:\n  command: {}\n  instances: {instances}\n{user}\
         memory: {{high: {}, max: {}}}\ntriggers:\n  pressure: {PRESSURE}\nrestart: {restart}\n",
        quote(&name),
        serde_json::to_string(&flags.command).expect("strings serialize"),
        human_bytes(high),
        human_bytes(max),
    );
    if let Some((cmax, chigh)) = children {
        let _ = write!(
            yaml,
            "children:\n  memory: {{high: {}, max: {}}}\n  triggers:\n    pressure: {PRESSURE}\n\
             \x20 restart: {restart}\n",
            human_bytes(chigh),
            human_bytes(cmax),
        );
    }
    Ok(Built {
        name,
        yaml,
        derivation: why.join("; "),
    })
}

fn children_limits(flags: &Flags, max: u64, why: &mut Vec<String>) -> (u64, u64) {
    let cmax = match flags.child_memory_max {
        Some(m) => {
            why.push(format!(
                "children.memory.max {} (--child-memory-max)",
                human_bytes(m)
            ));
            m
        }
        None => {
            let m = mib_floor(max / CHILD_SHARE);
            why.push(format!(
                "children.memory.max {} = memory.max / {CHILD_SHARE}",
                human_bytes(m)
            ));
            m
        }
    };
    let chigh = derive_high(
        "children.memory.high",
        flags.child_memory_high,
        cmax,
        "--child-memory-high",
        why,
    );
    (cmax, chigh)
}

fn derive_high(key: &str, flag: Option<u64>, max: u64, name: &str, why: &mut Vec<String>) -> u64 {
    match flag {
        Some(h) => {
            why.push(format!("{key} {} ({name})", human_bytes(h)));
            h
        }
        None => {
            let h = mib_floor(max / 100 * HIGH_PERCENT);
            why.push(format!(
                "{key} {} = {HIGH_PERCENT}% of its memory.max",
                human_bytes(h)
            ));
            h
        }
    }
}

/// Down to a whole MiB (when at least one), so the policy reads "195M", not a byte count.
fn mib_floor(n: u64) -> u64 {
    if n >= 1 << 20 {
        n & !((1 << 20) - 1)
    } else {
        n
    }
}

/// A JSON string is a YAML flow scalar: any text, quoted safely.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// The policy name from the program's file name: `[a-z0-9][a-z0-9_-]{0,62}`, else "app".
pub fn name_from(command: &str) -> String {
    let base = Path::new(command)
        .file_name()
        .map_or(String::new(), |b| b.to_string_lossy().to_lowercase());
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    match name.chars().next() {
        Some(c) if c.is_ascii_alphanumeric() => name,
        _ => "app".into(),
    }
}

/// A bare program name is looked up in `path` (the entrypoint's PATH) once, as a shell would:
/// a policy names its program by absolute path. A name with a slash is kept as written.
pub fn resolve_program(program: &str, path: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        return Ok(PathBuf::from(program));
    }
    use std::os::unix::fs::PermissionsExt;
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            format!("{program}: not found in PATH ({path}): give its absolute path after `--`")
        })
}

/// Where `exec` keeps the policy it built, under the socket's directory: root's, as a policy
/// directory must be. Cleared of older policies before each start.
pub const EXEC_DIR: &str = "exec";

/// The PATH a bare COMMAND is looked up in when the entrypoint has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The container's memory.max, when we are in a container that has one. A container that
/// cannot be guarded (cgroup v1, no memory controller) is refused here with `run`'s words: the
/// limits cannot be derived from it, and "no memory limit" would send the operator to the
/// wrong setting.
fn container_limit() -> Result<Option<u64>, String> {
    let mount = Path::new(crate::layout::CGROUP_MOUNT);
    let probe = crate::container::detect::Probe::read(mount);
    let found = crate::container::detect::detect(mount, &probe, |_| false);
    Ok(found
        .map_err(|e| e.to_string())?
        .and_then(|c| c.memory_max.bytes()))
}

/// [`build`] here: the program looked up in PATH, the limits from this container.
fn build_here(flags: &Flags) -> Result<Built, String> {
    let mut flags = flags.clone();
    if let Some(program) = flags.command.first_mut() {
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        *program = resolve_program(program, &path)?
            .to_string_lossy()
            .into_owned();
    }
    build(&flags, container_limit()?)
}

fn policy_path(dir: &Path, b: &Built) -> PathBuf {
    dir.join(format!("{}.yaml", b.name))
}

/// `exec --print-policy`: the policy and its verdict from the policy parser. Needs no root.
pub fn print(flags: &Flags) -> std::process::ExitCode {
    let b = match build_here(flags) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("oomguard exec: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    print!("{}", b.yaml);
    match crate::policy::load_text(Path::new(&format!("{}.yaml", b.name)), &b.yaml) {
        Ok(_) => {
            eprintln!("ok: a valid policy (oomguard exec runs it as `oomguard run` would)");
            std::process::ExitCode::SUCCESS
        }
        Err(errors) => {
            errors.iter().for_each(|e| eprintln!("error: {e}"));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Builds the policy, checks it with the policy parser, logs how its limits were derived and
/// writes it as the only file of `<socket dir>/exec/`, which it returns for `run` to load.
pub fn write(flags: &Flags, socket: &Path) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    crate::daemon::require_root()?;
    let b = build_here(flags).map_err(|e| anyhow::anyhow!("oomguard exec: {e}"))?;
    let parent = socket.parent().unwrap_or(Path::new("/run"));
    crate::daemon::RuntimeDir::open(parent)?;
    let dir_path = parent.join(EXEC_DIR);
    let dir = crate::daemon::RuntimeDir::open(&dir_path)?;
    let path = policy_path(&dir_path, &b);
    if let Err(errors) = crate::policy::load_text(&path, &b.yaml) {
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::bail!(
            "oomguard exec: the policy the flags make is refused (see it with --print-policy): {}",
            all.join("; ")
        );
    }
    // A previous start's policy (a restarted container keeps /run) would run beside this one.
    for old in std::fs::read_dir(&dir_path).into_iter().flatten().flatten() {
        let _ = std::fs::remove_file(old.path());
    }
    let name = format!("{}.yaml", b.name);
    dir.write_named(&name, &format!(".{name}.tmp"), b.yaml.as_bytes(), 0o644)
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(policy = %b.name, file = %path.display(), "exec: {}", b.derivation);
    Ok(dir_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(command: &[&str]) -> Flags {
        Flags {
            instances: 1,
            signal: "SIGTERM".into(),
            grace: std::time::Duration::from_secs(20),
            command: command.iter().map(|s| s.to_string()).collect(),
            ..Flags::default()
        }
    }

    fn parses(b: &Built) -> crate::policy::Policy {
        crate::policy::parse(Path::new("exec.yaml"), &b.yaml)
            .unwrap_or_else(|e| panic!("{e:?}\n{}", b.yaml))
    }

    #[test]
    fn limits_come_from_the_containers_memory_max_less_the_reserve() {
        let mut f = flags(&["/usr/bin/gunicorn", "app:wsgi"]);
        f.instances = 2;
        let b = build(&f, Some(512 << 20)).unwrap();
        let p = parses(&b);
        // (512M - 24M) / 2 = 244M; 80% of it is 195.2M, down to 195M.
        assert_eq!(p.memory.max, Limit::Bytes(244 << 20));
        assert_eq!(p.memory.high, Limit::Bytes(195 << 20));
        assert_eq!(p.name, "gunicorn");
        assert_eq!(p.run.instances, 2);
        assert!(
            b.derivation.contains("envelope 488M") && b.derivation.contains("512M"),
            "{}",
            b.derivation
        );
        // What fits the envelope passes the check `run` makes in the container.
        let env = fit::envelope(Limit::Bytes(512 << 20), DEFAULT_RESERVE).unwrap();
        assert_eq!(fit::check(&[p], env, Limit::Bytes(512 << 20)), Ok(()));
    }

    #[test]
    fn children_get_half_the_instance_and_flags_win() {
        let mut f = flags(&["/usr/bin/gunicorn"]);
        f.children = true;
        f.memory_max = Some(400 << 20);
        f.child_memory_high = Some(100 << 20);
        f.name = Some("web".into());
        f.user = Some("root".into());
        let b = build(&f, None).unwrap();
        let p = parses(&b);
        let c = p.children.expect("children");
        assert_eq!(p.memory.max, Limit::Bytes(400 << 20));
        assert_eq!(c.memory.max, Limit::Bytes(200 << 20));
        assert_eq!(c.memory.high, Limit::Bytes(100 << 20));
        assert_eq!(p.name, "web");
        assert!(
            b.yaml
                .starts_with("# memory.max 400M (--memory-max)\n# memory.high 320M = 80%"),
            "{}",
            b.yaml
        );
    }

    #[test]
    fn with_no_limit_anywhere_a_flag_is_asked_for() {
        let err = build(&flags(&["/bin/true"]), None).unwrap_err();
        assert!(err.contains("--memory-max"), "{err}");
    }

    #[test]
    fn bad_flags_are_refused_by_the_policy_parser() {
        let mut f = flags(&["/bin/true"]);
        f.signal = "SIGKILL".into();
        f.memory_high = Some(900 << 20);
        f.memory_max = Some(100 << 20);
        let b = build(&f, None).unwrap();
        let errors = crate::policy::parse(Path::new("exec.yaml"), &b.yaml).unwrap_err();
        let text = format!("{errors:?}");
        assert!(
            text.contains("SIGKILL") && text.contains("memory.high"),
            "{text}"
        );
    }

    #[test]
    fn names_and_programs() {
        assert_eq!(name_from("/usr/bin/Celery"), "celery");
        assert_eq!(name_from("python3.11"), "python3-11");
        assert_eq!(name_from(".hidden"), "app");
        assert_eq!(
            resolve_program("sh", "relative:/nonexistent:/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(resolve_program("no-such-program-here", "/bin")
            .unwrap_err()
            .contains("absolute path"));
        assert_eq!(
            resolve_program("./x", "/bin").unwrap(),
            PathBuf::from("./x")
        );
    }
}
