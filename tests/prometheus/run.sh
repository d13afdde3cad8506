#!/usr/bin/env bash
# The alerting rules in deploy/prometheus/ under Prometheus' own tools: `promtool check rules`
# (syntax, PromQL) and `promtool test rules` (the unit tests in this directory: series in, alerts
# out). promtool comes from Debian's `prometheus` package. Rather than installing that package
# (a server that Debian would start), the .deb is downloaded once and only promtool is unpacked
# into tests/prometheus/.cache/; a promtool already on PATH is used as it is.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=$here/.cache

say() { printf '[promtool] %s\n' "$*" >&2; }

find_promtool() {
  if command -v promtool >/dev/null; then
    command -v promtool
  elif [ -x "$cache/usr/bin/promtool" ]; then
    echo "$cache/usr/bin/promtool"
  else
    return 1
  fi
}

fetch_promtool() {
  local dl
  mkdir -p "$cache"
  dl=$(mktemp -d)
  # apt-get download runs as _apt where it can write the directory.
  chown _apt: "$dl" 2>/dev/null || true
  # Needs apt's lists: a fresh machine has none (apt-get download finds nothing).
  say "apt-get update"
  apt-get update -qq
  say "downloading Debian's prometheus package for promtool"
  (cd "$dl" && apt-get download -qq prometheus)
  dpkg -x "$dl"/prometheus_*.deb "$dl/x"
  mkdir -p "$cache/usr/bin"
  install -m 0755 "$dl/x/usr/bin/promtool" "$cache/usr/bin/promtool"
  rm -rf "$dl"
}

promtool=$(find_promtool) || { fetch_promtool && promtool=$(find_promtool); }
say "$("$promtool" --version 2>&1 | head -n 1)"
cd "$repo"
"$promtool" check rules deploy/prometheus/oomguard.rules.yml
"$promtool" test rules tests/prometheus/oomguard.rules.test.yml
