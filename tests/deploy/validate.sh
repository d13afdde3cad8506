#!/usr/bin/env bash
# deploy/kubernetes/ against the Kubernetes API schemas, offline: PyPI's kubernetes-validate
# ships the OpenAPI schemas of each Kubernetes release. It is installed once into a venv under
# tests/deploy/.cache/. Optional: when pip cannot reach PyPI (or python3 has no venv module) this
# says so and exits 0; the cargo test tests/deploy_manifests.rs checks the rest without it.
# `--strict` rejects fields the schema does not know (a misspelt key is otherwise ignored by the
# API server). The PodMonitor is a CRD of the Prometheus Operator, not in those schemas: reported
# as missing, not failed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=$here/.cache/venv
# The oldest release the manifests are meant for, and the newest the package knows.
versions=(1.30.0 "")
say() { printf '[kubernetes-validate] %s\n' "$*" >&2; }

if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    say "SKIPPED: python3 -m venv failed (apt-get install python3-venv); the manifests were not checked against the API schema"
    exit 0
  fi
  say "installing kubernetes-validate from PyPI into $venv"
  if ! "$venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate; then
    rm -rf "$venv"
    say "SKIPPED: pip could not install kubernetes-validate (no PyPI?); the manifests were not checked against the API schema"
    exit 0
  fi
fi
say "$("$venv/bin/pip" show kubernetes-validate 2>/dev/null | grep '^Version' || true)"
cd "$repo"
for k in "${versions[@]}"; do
  if [ -n "$k" ]; then
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$k" deploy/kubernetes/*.yaml
  else
    "$venv/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
    k="$("$venv/bin/kubernetes-validate" --help | sed -n 's/.*Defaults to \([0-9.]*\).*/\1/p')"
  fi
  say "deploy/kubernetes/*.yaml valid for Kubernetes ${k:-newest known}"
done
