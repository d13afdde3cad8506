//! The Kubernetes manifests in deploy/kubernetes/ agree with oomguard and with each other, without
//! a cluster or the network: every document has a kind this project ships, each Deployment's
//! oomguard command parses with the CLI's own definition, the policy in its ConfigMap passes
//! oomguard's own validation and fits the container's memory limit minus the in-container
//! reserve, the termination grace covers preStop and the restart grace, and the metrics port is
//! the one Prometheus is told to scrape. The Kubernetes API schema check (kubernetes-validate,
//! from PyPI) is tests/run.sh's optional step.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use oomguard::cli::{Cli, Cmd};
use oomguard::container::fit::{self, DEFAULT_RESERVE};
use oomguard::logging::LogFormat;
use oomguard::policy::{check_file_permissions, parse, Policy};
use oomguard::units::Limit;
use serde::Deserialize;
use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every document of every *.yaml / *.yml under deploy/kubernetes/, with its file's name.
fn documents() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(repo("deploy/kubernetes"))
        .expect("deploy/kubernetes/")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "only {files:?}");
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs::read_to_string(&file).expect("readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if !value.is_null() {
                docs.push((name.clone(), value));
            }
        }
    }
    docs
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(v, |v, key| v.get(key).unwrap_or(&Value::Null))
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    get(v, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string in {v:?}"))
}

fn seq<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    get(v, path).as_sequence().map_or(&[], |s| s.as_slice())
}

fn kinds(docs: &[(String, Value)], kind: &str) -> Vec<(String, Value)> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .cloned()
        .collect()
}

/// A Kubernetes quantity in bytes ("512Mi", "1Gi", "500M", "1048576").
fn quantity(q: &str) -> u64 {
    const UNITS: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (digits, unit) = UNITS
        .iter()
        .find_map(|(s, m)| q.strip_suffix(s).map(|d| (d, *m)))
        .unwrap_or((q, 1));
    digits.parse::<u64>().expect("a whole quantity") * unit
}

#[test]
fn every_document_is_a_kind_we_ship() {
    let allowed = [
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "Deployment"),
        ("node.k8s.io/v1", "RuntimeClass"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
    ];
    let docs = documents();
    for (file, d) in &docs {
        let pair = (str_at(d, "apiVersion"), str_at(d, "kind"));
        assert!(allowed.contains(&pair), "{file}: {pair:?}");
        let name = str_at(d, "metadata.name");
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "{file}: metadata.name {name:?}"
        );
    }
    let deployments = kinds(&docs, "Deployment");
    let names: Vec<&str> = deployments
        .iter()
        .map(|(_, d)| str_at(d, "metadata.name"))
        .collect();
    assert_eq!(names, ["celery", "gunicorn"]);
    for (file, d) in &deployments {
        let selector = get(d, "spec.selector.matchLabels").as_mapping().unwrap();
        let labels = get(d, "spec.template.metadata.labels")
            .as_mapping()
            .unwrap();
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{file}: selector {k:?} not on the pods"
            );
        }
        let class = str_at(d, "spec.template.spec.runtimeClassName");
        assert!(
            kinds(&docs, "RuntimeClass")
                .iter()
                .any(|(_, r)| str_at(r, "metadata.name") == class),
            "{file}: no RuntimeClass {class}"
        );
    }
}

/// What one Deployment's oomguard container says, read through the CLI's own parser.
struct Guarded {
    file: String,
    pod: Value,
    container: Value,
    policies_dir: PathBuf,
    metrics_port: u16,
    /// The ConfigMap policies mounted into the policy directory.
    policies: Vec<Policy>,
}

fn guarded_containers(docs: &[(String, Value)]) -> Vec<Guarded> {
    let mut out = Vec::new();
    for (file, d) in kinds(docs, "Deployment") {
        let pod = get(&d, "spec.template").clone();
        for c in seq(&pod, "spec.containers") {
            let argv: Vec<&str> = seq(c, "command").iter().filter_map(Value::as_str).collect();
            if argv.first() != Some(&"oomguard") {
                continue;
            }
            let cli =
                Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{file}: {argv:?}: {e}"));
            let Cmd::Run { policies, daemon } = cli.command else {
                panic!("{file}: {argv:?} is not `oomguard run`");
            };
            assert!(!daemon.dry_run, "{file}: a shipped manifest must enforce");
            assert_eq!(
                daemon.log_format,
                LogFormat::Json,
                "{file}: container logs want JSON"
            );
            let addr = daemon
                .metrics_listen
                .unwrap_or_else(|| panic!("{file}: no --metrics-listen"));
            assert!(
                addr.ip().is_unspecified(),
                "{file}: {addr} is not reachable from Prometheus"
            );
            let loaded = mounted_policies(docs, &file, &pod, c, &policies);
            out.push(Guarded {
                file: file.clone(),
                pod: pod.clone(),
                container: c.clone(),
                policies_dir: policies,
                metrics_port: addr.port(),
                policies: loaded,
            });
        }
    }
    assert_eq!(out.len(), 2, "one oomguard container per Deployment");
    out
}

/// The policies a container sees in `dir`: each a ConfigMap key mounted with subPath, parsed by
/// oomguard's own validation under the path it has in the container.
fn mounted_policies(
    docs: &[(String, Value)],
    file: &str,
    pod: &Value,
    container: &Value,
    dir: &Path,
) -> Vec<Policy> {
    let mut policies = Vec::new();
    for m in seq(container, "volumeMounts") {
        let path = Path::new(str_at(m, "mountPath"));
        if !path.starts_with(dir) {
            continue;
        }
        // The ConfigMap volume's own directory (0777, symlinks) is refused by oomguard.
        assert_eq!(
            path.parent(),
            Some(dir),
            "{file}: {path:?} must be a file in {dir:?}"
        );
        let key = get(m, "subPath")
            .as_str()
            .unwrap_or_else(|| panic!("{file}: {path:?} needs subPath (see the README)"));
        let volume = seq(pod, "spec.volumes")
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("{file}: no volume {:?}", m["name"]));
        let map_name = str_at(volume, "configMap.name");
        let map = kinds(docs, "ConfigMap")
            .into_iter()
            .find(|(_, c)| str_at(c, "metadata.name") == map_name)
            .unwrap_or_else(|| panic!("{file}: no ConfigMap {map_name}"));
        let text = get(&map.1, "data")[key]
            .as_str()
            .unwrap_or_else(|| panic!("{file}: ConfigMap {map_name} has no key {key}"));
        match parse(path, text) {
            Ok(p) => policies.push(p),
            Err(errors) => panic!(
                "{file}: ConfigMap {map_name} key {key}:\n{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    assert!(
        !policies.is_empty(),
        "{file}: no policy mounted into {dir:?}"
    );
    policies
}

#[test]
fn each_policy_fits_its_container_limit_minus_the_reserve() {
    for g in guarded_containers(&documents()) {
        let limits = get(&g.container, "resources.limits");
        let requests = get(&g.container, "resources.requests");
        // Guaranteed QoS: GKE's writable cgroups require it, and a pod that can be squeezed
        // below its limit would leave the envelope a fiction.
        for r in ["cpu", "memory"] {
            assert_eq!(
                limits[r], requests[r],
                "{}: requests.{r} != limits.{r}",
                g.file
            );
        }
        let limit = Limit::Bytes(quantity(str_at(limits, "memory")));
        let envelope =
            fit::envelope(limit, DEFAULT_RESERVE).unwrap_or_else(|e| panic!("{}: {e}", g.file));
        fit::check(&g.policies, envelope, limit).unwrap_or_else(|e| panic!("{}: {e}", g.file));
        // Not trivially: the sum is within 10 % of the envelope, so a wrong reserve would show.
        let peak: u64 = g.policies.iter().filter_map(fit::policy_peak).sum();
        assert!(
            peak * 10 > envelope.unwrap() * 9,
            "{}: {peak} of {envelope:?}",
            g.file
        );
    }
}

#[test]
fn the_termination_grace_covers_prestop_and_the_restart_grace() {
    for g in guarded_containers(&documents()) {
        let grace = get(&g.pod, "spec.terminationGracePeriodSeconds")
            .as_u64()
            .unwrap_or(30);
        let pre_stop: Vec<&str> = seq(&g.container, "lifecycle.preStop.exec.command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let pre_stop = match pre_stop.as_slice() {
            [] => 0,
            ["sleep", s] => s.parse::<u64>().expect("sleep seconds"),
            other => panic!("{}: a preStop this test cannot time: {other:?}", g.file),
        };
        let restart = g.policies.iter().map(|p| p.restart.grace).max().unwrap();
        // Kubernetes counts preStop in the grace; then SIGTERM to oomguard, which stops every
        // worker within restart.grace (all at once) and kills what is left. 5 s for that.
        let needed = Duration::from_secs(pre_stop) + restart + Duration::from_secs(5);
        assert!(
            Duration::from_secs(grace) >= needed,
            "{}: terminationGracePeriodSeconds {grace} < preStop {pre_stop}s + restart.grace {restart:?} + 5s",
            g.file
        );
    }
}

#[test]
fn the_metrics_port_is_the_one_prometheus_scrapes() {
    let docs = documents();
    let monitors = kinds(&docs, "PodMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor = &monitors[0].1;
    let scrape: Value = serde_yaml::from_str(
        &fs::read_to_string(repo("deploy/prometheus/kubernetes-scrape.yml")).unwrap(),
    )
    .expect("deploy/prometheus/kubernetes-scrape.yml");
    let job = seq(&scrape, "scrape_configs")
        .iter()
        .find(|j| j["job_name"] == "oomguard")
        .expect("an oomguard scrape job");
    let keeps: BTreeMap<String, String> = seq(job, "relabel_configs")
        .iter()
        .filter(|r| r["action"] == "keep")
        .map(|r| {
            let label = r["source_labels"][0].as_str().expect("one source label");
            (label.to_string(), str_at(r, "regex").to_string())
        })
        .collect();
    for g in guarded_containers(&docs) {
        let port = seq(&g.container, "ports")
            .iter()
            .find(|p| p["containerPort"].as_u64() == Some(u64::from(g.metrics_port)))
            .unwrap_or_else(|| panic!("{}: port {} not declared", g.file, g.metrics_port));
        let port_name = str_at(port, "name");
        let annotations = get(&g.pod, "metadata.annotations");
        assert_eq!(
            annotations["prometheus.io/port"].as_str(),
            Some(g.metrics_port.to_string().as_str()),
            "{}",
            g.file
        );
        assert_eq!(
            annotations["prometheus.io/scrape"].as_str(),
            Some("true"),
            "{}",
            g.file
        );
        // The PodMonitor selects these pods and scrapes this port by name.
        let labels = get(&g.pod, "metadata.labels").as_mapping().unwrap();
        let selector = get(monitor, "spec.selector.matchLabels")
            .as_mapping()
            .unwrap();
        for (k, v) in selector {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{}: PodMonitor selector {k:?}",
                g.file
            );
            // Prometheus' pod label meta name: every character outside [a-zA-Z0-9_] becomes _.
            let meta = format!(
                "__meta_kubernetes_pod_label_{}",
                k.as_str()
                    .unwrap()
                    .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
            );
            assert_eq!(
                keeps.get(&meta).map(String::as_str),
                v.as_str(),
                "scrape job keeps {meta}"
            );
        }
        assert!(
            seq(monitor, "spec.podMetricsEndpoints")
                .iter()
                .any(|e| e["port"].as_str() == Some(port_name)),
            "{}: PodMonitor does not scrape port {port_name}",
            g.file
        );
        assert_eq!(
            keeps
                .get("__meta_kubernetes_pod_container_port_name")
                .map(String::as_str),
            Some(port_name),
            "the scrape job keeps another port name"
        );
        assert!(g.policies_dir.is_absolute());
    }
}

#[test]
fn the_exec_entrypoint_is_shown_as_the_alternative_in_each_deployment() {
    for file in ["gunicorn.yaml", "celery.yaml"] {
        let text = fs::read_to_string(repo(&format!("deploy/kubernetes/{file}"))).unwrap();
        let planned = text
            .lines()
            .find(|l| l.contains(r#""oomguard", "exec", "--children", "--""#))
            .unwrap_or_else(|| panic!("{file}: no `oomguard exec` alternative"));
        assert!(planned.trim_start().starts_with('#'), "{file}: {planned}");
        assert!(text.contains("ALTERNATIVE"), "{file}");
        assert!(
            !text.contains("PLANNED"),
            "{file}: exec is built; nothing is planned"
        );
    }
}

/// Why the manifests mount each policy with subPath: a ConfigMap volume is a 0777 directory whose
/// files are symlinks through `..data`, and oomguard refuses a policy reached through a
/// directory others may write. The same layout under a safe parent, then the subPath one.
#[test]
fn a_configmap_directory_is_refused_and_a_subpath_file_is_not() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let euid = nix::unistd::geteuid().as_raw();
    let unsafe_ancestor = base.ancestors().find(|d| {
        let m = fs::metadata(d).expect("stat");
        (m.uid() != 0 && m.uid() != euid) || m.mode() & 0o022 != 0
    });
    if let Some(d) = unsafe_ancestor {
        eprintln!(
            "skipped: {} is writable by others, so every layout under it is refused",
            d.display()
        );
        return;
    }
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let text = "run:\n  command: [/bin/true]\nmemory:\n  max: 64M\n";

    let subpath = dir.path().join("policies.d");
    fs::create_dir(&subpath).unwrap();
    fs::write(subpath.join("app.yaml"), text).unwrap();
    fs::set_permissions(subpath.join("app.yaml"), fs::Permissions::from_mode(0o644)).unwrap();
    check_file_permissions(&subpath.join("app.yaml")).expect("a plain file in a 0755 directory");

    // What the kubelet's atomic writer makes.
    let volume = dir.path().join("volume");
    let stamp = volume.join("..2026_12_07_15_00_00.1");
    fs::create_dir_all(&stamp).unwrap();
    fs::write(stamp.join("app.yaml"), text).unwrap();
    fs::set_permissions(stamp.join("app.yaml"), fs::Permissions::from_mode(0o644)).unwrap();
    symlink("..2026_12_07_15_00_00.1", volume.join("..data")).unwrap();
    symlink("..data/app.yaml", volume.join("app.yaml")).unwrap();
    fs::set_permissions(&volume, fs::Permissions::from_mode(0o755)).unwrap();
    check_file_permissions(&volume.join("app.yaml")).expect("the same links in a 0755 directory");
    fs::set_permissions(&volume, fs::Permissions::from_mode(0o777)).unwrap();
    let err =
        check_file_permissions(&volume.join("app.yaml")).expect_err("a 0777 ConfigMap directory");
    assert!(err.to_string().contains("volume"), "{err}");
}

/// The Docker image's policy is the gunicorn ConfigMap's, under its header comment.
#[test]
fn the_docker_image_ships_the_configmap_policy() {
    let docs = documents();
    let map = kinds(&docs, "ConfigMap")
        .into_iter()
        .find(|(_, c)| str_at(c, "metadata.name") == "oomguard-gunicorn")
        .expect("the gunicorn ConfigMap");
    let shipped = fs::read_to_string(repo("deploy/docker/gunicorn.yaml")).unwrap();
    let body: String = shipped
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let policy = get(&map.1, "data")["gunicorn.yaml"]
        .as_str()
        .expect("the policy");
    assert_eq!(
        body, policy,
        "deploy/docker/gunicorn.yaml differs from the ConfigMap"
    );
    let dockerfile = fs::read_to_string(repo("deploy/docker/Dockerfile")).unwrap();
    assert!(dockerfile.contains("deploy/docker/gunicorn.yaml /etc/oomguard/policies.d/"));
}
