#!/usr/bin/env bash
# The real-kernel test suite, host side: builds one initramfs (busybox, oomguard, testworker,
# vm-scenarios) and boots a throwaway qemu VM per scenario with Debian's cloud kernel.
#
#   tests/vm/run.sh                 every test scenario (not the demo)
#   tests/vm/run.sh smoke observe   just those
#   tests/vm/run.sh demo            watch a leaking worker being restarted
#   tests/vm/run.sh systemd         the real-systemd VM (tests/vm/systemd/run.sh; in the default suite)
#
# Console logs: tests/vm/.cache/logs/<scenario>.log. See tests/vm/README.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$here/.cache"
logs="$cache/logs"
mkdir -p "$cache" "$logs"

say() { printf '[vm] %s\n' "$*" >&2; }
# shellcheck source=tests/vm/lib.sh
. "$here/lib.sh"

# ---- host packages ----

ensure_packages() {
  local missing=()
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  # The image gets /bin/busybox alone, so it must be the static build (Debian's plain `busybox`
  # package is dynamically linked).
  static_busybox || missing+=(busybox-static)
  command -v cpio >/dev/null || missing+=(cpio)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  static_busybox || { echo "/bin/busybox is still not a static busybox with poweroff" >&2; exit 1; }
}

static_busybox() {
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 &&
    /bin/busybox --list 2>/dev/null | grep -qx poweroff
}


# ---- binaries ----
build_binaries() {
  say "cargo build --release"
  (cd "$repo" && cargo build --release --bin oomguard --example testworker --example vm-scenarios)
  local target
  target=${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  bin_oomguard="$target/release/oomguard"
  bin_worker="$target/release/examples/testworker"
  bin_scenarios="$target/release/examples/vm-scenarios"
}

# ---- initramfs ----
copy_with_libs() { # <image root> <binary> <path inside the image>
  local root=$1 src=$2 dst=$3 lib
  install -D -m 0755 "$src" "$root$dst"
  for lib in $(ldd "$src" | grep -o '/[^ ]*'); do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

build_initramfs() {
  local root="$cache/initramfs-root"
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,root}
  install -m 0755 /bin/busybox "$root/bin/busybox"
  copy_with_libs "$root" "$bin_oomguard" /bin/oomguard
  copy_with_libs "$root" "$bin_worker" /bin/testworker
  copy_with_libs "$root" "$bin_scenarios" /bin/vm-scenarios
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
worker:x:1000:1000:worker:/tmp:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
worker:x:1000:
nogroup:x:65534:
EOF
  printf 'passwd: files\ngroup: files\n' >"$root/etc/nsswitch.conf"
  install -m 0755 "$here/init.sh" "$root/init"
  initramfs="$cache/initramfs.cpio.gz"
  (cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$initramfs"
  say "initramfs: $(du -h "$initramfs" | cut -f1)"
}

# ---- scenarios ----
# From `vm-scenarios --list`: name, kind (test|demo), in-VM budget in seconds, VM memory in MiB,
# extra kernel args.
declare -A kind budget mem kargs
load_scenarios() {
  local name k b m a
  all_tests=()
  while IFS=$'\t' read -r name k b m a; do
    kind[$name]=$k budget[$name]=$b mem[$name]=$m kargs[$name]=$a
    if [ "$k" = test ]; then all_tests+=("$name"); fi
  done < <("$bin_scenarios" --list)
}

run_scenario() { # <name>: boots one VM; sets verdict and reason
  local name=$1 log="$logs/$1.log" limit=$((${budget[$1]} + 90)) rc=0
  local qemu=(timeout --foreground -k 5 "$limit" qemu-system-x86_64 -accel tcg -cpu max -smp 2
    -m "${mem[$1]}" -nographic -no-reboot -kernel "$kernel" -initrd "$initramfs"
    -append "console=ttyS0 panic=-1 loglevel=4 oomguard.scenario=$name ${kargs[$name]}")
  if [ "${kind[$1]}" = demo ]; then
    # Demos and benchmarks are for watching: stream the console (without kernel lines) live.
    set +o pipefail
    "${qemu[@]}" </dev/null 2>&1 | tee "$log" | sed -u 's/\r$//' |
      grep --line-buffered -vE '^\[ *[0-9]+\.[0-9]+\]' | sed -u 's/^/    | /'
    rc=${PIPESTATUS[0]}
    set -o pipefail
  else
    "${qemu[@]}" </dev/null >"$log" 2>&1 || rc=$?
  fi
  local line
  line=$(tr -d '\r' <"$log" | grep -E "^SCENARIO $name (PASS|FAIL)" | tail -n 1 || true)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    verdict=FAIL reason="VM timed out after ${limit}s"
  elif [ -z "$line" ]; then
    verdict=FAIL reason="no verdict on the console (qemu exit $rc)"
  elif [[ "$line" == "SCENARIO $name PASS" ]]; then
    verdict=PASS reason=""
  else
    verdict=FAIL reason=${line#"SCENARIO $name FAIL: "}
  fi
}

run_systemd() { # sets verdict and reason; its own run.sh shows the console tail on failure
  local line
  line=$("$here/systemd/run.sh" | tail -n 1 || true)
  if [ "$line" = "SCENARIO systemd PASS" ]; then
    verdict=PASS reason=""
  else
    verdict=FAIL reason=${line#"SCENARIO systemd FAIL: "}
    reason=${reason:-"tests/vm/systemd/run.sh printed no verdict"}
  fi
}

main() {
  ensure_packages
  ensure_kernel
  build_binaries
  load_scenarios
  # `systemd` is not in vm-scenarios' table: it boots a Debian rootfs with a real systemd
  # (tests/vm/systemd/run.sh) instead of the busybox initramfs.
  kind[systemd]="test"
  local wanted=("$@") name
  [ ${#wanted[@]} -gt 0 ] || wanted=("${all_tests[@]}" systemd)
  for name in "${wanted[@]}"; do
    [ -n "${kind[$name]:-}" ] || { echo "unknown scenario: $name (known: ${!kind[*]})" >&2; exit 2; }
  done
  build_initramfs
  say "kernel: $kernel"

  local passed=0 failed=0 start secs summary=()
  for name in "${wanted[@]}"; do
    say "booting scenario $name"
    start=$(date +%s)
    if [ "$name" = systemd ]; then run_systemd; else run_scenario "$name"; fi
    secs=$(($(date +%s) - start))
    if [ "${kind[$name]}" != demo ] && [ "$verdict" = FAIL ] && [ "$name" != systemd ]; then
      # A failure needs its evidence (demos showed theirs live; systemd prints its own).
      tr -d '\r' <"$logs/$name.log" | grep -vE '^\[ *[0-9]+\.[0-9]+\]' | tail -n 60 | sed 's/^/    | /'
    fi
    if [ "$verdict" = PASS ]; then
      passed=$((passed + 1))
      summary+=("PASS $name (${secs}s)")
    else
      failed=$((failed + 1))
      summary+=("FAIL $name (${secs}s): $reason")
    fi
    printf '%s %s (%ss)%s  log: %s\n' "$verdict" "$name" "$secs" "${reason:+: $reason}" "$logs/$name.log"
  done
  echo
  printf '%s\n' "${summary[@]}"
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

main "$@"
