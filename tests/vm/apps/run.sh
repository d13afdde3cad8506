#!/usr/bin/env bash
# The real-apps VM scenarios, host side: boots Debian bookworm's own gunicorn, Celery + Redis,
# uWSGI, PHP-FPM, Puma and Unicorn (a debootstrap minbase rootfs, shell /init, no systemd) in
# qemu TCG, with this checkout's oomguard and the leaking apps of tests/vm/apps, and runs
# `scenario.py <name>` in it, one boot per scenario.
#
#   tests/vm/apps/run.sh apps_gunicorn apps_celery     (also through tests/vm/run.sh NAME)
#
# Needs root (debootstrap, chroot). The rootfs is cached in tests/vm/.cache/apps-rootfs (rebuilt
# when the package lists in rootfs.sh change; about a minute), its cpio in .cache/apps-base.cpio.
# Console logs: tests/vm/.cache/logs/<name>.log. APPS_KARGS (e.g. "oomguard.seconds=30") is
# appended to the kernel command line, for the scenarios that read such options. Prints `SCENARIO <name> PASS|FAIL: ...` per
# scenario, the last scenario's verdict last; exits 0 only if all passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vmdir=$(cd "$here/.." && pwd)
repo=$(cd "$vmdir/../.." && pwd)
cache="$vmdir/.cache"
logs="$cache/logs"
mkdir -p "$cache" "$logs"

say() { printf '[vm/apps] %s\n' "$*" >&2; }
# shellcheck source=tests/vm/lib.sh
. "$vmdir/lib.sh"
# shellcheck source=tests/vm/apps/rootfs.sh
. "$here/rootfs.sh"

# In-VM budget (scenario.py's own watchdog) per scenario, in seconds. The host kills the VM
# at the budget + 120 s (boot, unpacking the initramfs, power-off).
declare -A BUDGET=(
  [apps_gunicorn]=240 [apps_celery]=300 [apps_facts]=600
  [bench_apps_gunicorn]=1800 [bench_apps_celery]=2400 [apps_client_cost]=300 [apps_celery_warm]=1200 [bench_apps_gunicorn_x2]=1800
  [apps_rabbitmq]=600 [apps_rabbitmq_guard]=1200
  [bench_celery_rabbitmq]=2400 [bench_celery_redis]=2400
  [apps_runc]=240 [bench_runc]=1800 [apps_gunicorn_overlap]=480
)
known() { [ -n "${BUDGET[$1]:-}" ]; }

ensure_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  command -v cpio >/dev/null || missing+=(cpio)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

build_binaries() {
  say "cargo build --release --bin oomguard --example apps-load"
  (cd "$repo" && cargo build --release --bin oomguard --example apps-load)
  local target
  target=${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  bin_oomguard="$target/release/oomguard"
  bin_load="$target/release/examples/apps-load"
}

# The initramfs is two cpio archives back to back (the kernel unpacks both): the rootfs, packed
# once per rootfs, and a small overlay with this checkout's binaries and apps, packed every run.
# Uncompressed: gunzip of ~280 MB under TCG costs more than copying the bytes.
build_initrd() {
  # Per run: two runs may pack at the same time.
  local base="$cache/apps-base.cpio" overlay="$cache/apps-overlay.$$"
  if [ "$(cat "$base.stamp" 2>/dev/null || true)" != "$APPS_STAMP" ] || [ ! -s "$base" ]; then
    say "packing the rootfs"
    (cd "$rootfs" && find . -print0 | cpio --null -o -H newc --quiet) >"$base.tmp"
    mv "$base.tmp" "$base"
    echo "$APPS_STAMP" >"$base.stamp"
  fi
  rm -rf "$overlay"
  mkdir -p "$overlay/usr/bin" "$overlay/apps" "$overlay/etc/oomguard/policies.d"
  install -m 0755 "$bin_oomguard" "$overlay/usr/bin/oomguard"
  install -m 0755 "$bin_load" "$overlay/usr/bin/apps-load"
  install -m 0755 "$here/init.sh" "$overlay/init"
  local f
  for f in "$here"/*.py "$here"/*.php "$here"/*.ru "$here"/*.rb "$here"/*.conf; do
    [ -e "$f" ] && install -m 0644 "$f" "$overlay/apps/"
  done
  local missing
  cp "$bin_oomguard" "$rootfs/tmp/.oomguard-ldd"
  missing=$(chroot "$rootfs" ldd /tmp/.oomguard-ldd | grep 'not found' || true)
  rm -f "$rootfs/tmp/.oomguard-ldd"
  [ -z "$missing" ] || { echo "libraries missing in the VM: $missing" >&2; exit 1; }
  initrd="$cache/apps-initrd.cpio"
  # Renamed into place: a VM of another run may be reading the previous one.
  { cat "$base"; (cd "$overlay" && find . -print0 | cpio --null -o -H newc --quiet); } >"$initrd.tmp.$$"
  mv "$initrd.tmp.$$" "$initrd"
  rm -rf "$overlay"
  say "initramfs: $(du -h "$initrd" | cut -f1)"
}

boot() { # <scenario>: prints the verdict line
  local name=$1 rc=0 limit=$((BUDGET[$1] + 120)) log="$logs/$1.log" t0
  t0=$(date +%s)
  say "booting $name (hard limit ${limit}s; console: $log)"
  timeout --foreground -k 5 "$limit" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1536 \
    -nographic -no-reboot -nic none -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 rdinit=/init panic=-1 loglevel=4 oomguard.scenario=$name oomguard.budget=${BUDGET[$1]}${APPS_KARGS:+ $APPS_KARGS}" \
    </dev/null >"$log" 2>&1 || rc=$?
  local line
  line=$(console_verdict "$name" "$rc" "$limit" "$log")
  tr -d '\r' <"$log" | grep -E '^(RESULT|TABLE|METRIC)' | sed 's/^/    /' >&2 || true
  say "$name: $(($(date +%s) - t0))s"
  echo "$line"
  [ "$line" = "SCENARIO $name PASS" ]
}

main() {
  [ $# -gt 0 ] || { echo "usage: tests/vm/apps/run.sh SCENARIO... (${!BUDGET[*]})" >&2; exit 2; }
  local name
  for name in "$@"; do known "$name" || { echo "unknown apps scenario: $name (known: ${!BUDGET[*]})" >&2; exit 2; }; done
  ensure_packages
  ensure_kernel bookworm
  build_binaries
  ensure_apps_rootfs
  build_initrd
  local failed=0
  for name in "$@"; do boot "$name" || failed=1; done
  return "$failed"
}

main "$@"
