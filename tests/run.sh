#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit and socket tests on the host, the systemd unit
# check, the Prometheus alert rules' unit tests (promtool), the Kubernetes manifests against the
# API schemas (kubernetes-validate, optional), then the real-kernel suite in
# throwaway VMs (tests/vm/run.sh and tests/prometheus/run.sh fetch what they need).
# Arguments go to tests/vm/run.sh: `tests/run.sh --matrix` runs the busybox VM scenarios on the
# 5.10, 6.1 and 6.12 kernels instead of everything on 6.1; `tests/run.sh smoke` runs one scenario.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
# Root-only tests fail instead of skipping: this suite runs as root (CI does).
export OOMGUARD_ROOT_TESTS=required
# tests/package_contents.rs builds the .deb: dpkg-shlibdeps (dpkg-dev) and strip (binutils).
missing=()
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v strip >/dev/null || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (the package test builds the .deb)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "== cargo test (host: parsing, engine, fake cgroup tree, socket)"
cargo test --all-targets
if [ -x tests/unit/verify-unit.sh ]; then
  echo "== systemd unit"
  tests/unit/verify-unit.sh
fi
echo "== alert rules (promtool check rules, promtool test rules)"
tests/prometheus/run.sh
echo "== deploy/kubernetes/ against the Kubernetes API schemas (kubernetes-validate; skipped without PyPI)"
tests/deploy/validate.sh
echo "== real-kernel suite (qemu)"
tests/vm/run.sh "$@"
