#!/usr/bin/env bash
# The real-kernel test suite, host side: builds one initramfs (busybox, oomguard, testworker,
# vm-scenarios) and boots a throwaway qemu VM per scenario with Debian's cloud kernel.
#
#   tests/vm/run.sh                 every test scenario (not the demo)
#   tests/vm/run.sh smoke observe   just those
#   tests/vm/run.sh demo            watch a leaking worker being restarted
#   tests/vm/run.sh bench_goodput   the goodput sweep: one VM per leak rate (1, 5, 20, 50 MB/s),
#                                   GOODPUT_RUNS (default 3) runs each (GOODPUT_JOB=sleep: jobs
#                                   that sleep instead of computing); then
#                                   `cargo run --example goodput-report -- table < LOGS` (README)
#   tests/vm/run.sh bench_goodput_oomd   its systemd-oomd row, in the systemd VM (by name only)
#   tests/vm/run.sh systemd         the real-systemd VM (tests/vm/systemd/run.sh; in the default suite)
#   tests/vm/run.sh apps_gunicorn apps_celery apps_runc   Debian's gunicorn and Celery under
#                                   oomguard, gunicorn in a runc container under `oomguard exec`
#                                   (tests/vm/apps/run.sh; in the default suite; also apps_gunicorn_overlap, bench_runc, apps_facts,
#                                   apps_client_cost, bench_apps_gunicorn, bench_apps_celery,
#                                   bench_celery_brokers: bench_celery_rabbitmq + bench_celery_redis)
#   tests/vm/run.sh --kernel 5.10 [SCENARIO...]   on Debian bullseye's 5.10 (or 6.1, the default, or 6.12)
#   tests/vm/run.sh --matrix [SCENARIO...]        the busybox test scenarios on 5.10, 6.1 and 6.12,
#                                                 then a kernel x scenario table
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
    /bin/busybox --list 2>/dev/null | grep -x poweroff >/dev/null
}


# ---- binaries ----
build_binaries() {
  if [ ! -x "$repo/target/release/oomguard" ]; then
    say "first run: compiling oomguard, the test worker and the scenarios (release; about 4 minutes"
    say "on 2 cores, once), then each scenario boots a throwaway VM (a few seconds each)"
  fi
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
  # Debian bookworm's earlyoom for bench_goodput's earlyoom fleet (only when a sweep is wanted).
  [ -z "${earlyoom_bin:-}" ] || copy_with_libs "$root" "$earlyoom_bin" /bin/earlyoom
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
  # brd (a RAM block device whose unwritten sectors read as zeros without using memory), for
  # the boundary scenarios' page-cache streamer: /lib/modules/<release>/brd.ko per kernel.
  local kv mod
  for kv in "${!kernel_of[@]}"; do
    for mod in "$(dirname "$(dirname "${kernel_of[$kv]}")")"/lib/modules/*/kernel/drivers/block/brd.ko; do
      [ -e "$mod" ] || continue
      local rel=${mod#*/lib/modules/}
      install -D -m 0644 "$mod" "$root/lib/modules/${rel%%/*}/brd.ko"
    done
  done
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

run_scenario() { # <name> <kernel version>: boots one VM; sets verdict and reason
  local name=$1 log limit=$((${budget[$1]} + 90)) rc=0
  log=$(log_path "$name" "$2")
  # sysrq_always_enabled: so a frozen guest can be asked for its stacks (see dump_when_frozen).
  local qemu=(timeout --foreground -k 5 "$limit" qemu-system-x86_64 -accel tcg -cpu max -smp 2
    -m "${mem[$1]}" -nographic -no-reboot -kernel "${kernel_of[$2]}" -initrd "$initramfs"
    -append "console=ttyS0 panic=-1 loglevel=4 sysrq_always_enabled oomguard.scenario=$name ${kargs[$name]}")
  if [ "${kind[$1]}" = demo ]; then
    # Demos and benchmarks are for watching: stream the console (without kernel lines) live.
    set +o pipefail
    "${qemu[@]}" </dev/null 2>&1 | tee "$log" | sed -u 's/\r$//' |
      grep --line-buffered -vE '^\[ *[0-9]+\.[0-9]+\]' | sed -u 's/^/    | /'
    rc=${PIPESTATUS[0]}
    set -o pipefail
  else
    # The console's input is a FIFO we hold open, so the watcher can send it keys.
    local fifo="$cache/console-in.$$" qin watcher
    rm -f "$fifo" && mkfifo "$fifo"
    exec {qin}<>"$fifo"
    dump_when_frozen "$name" "$log" $((limit - 25)) >&"$qin" &
    watcher=$!
    "${qemu[@]}" <"$fifo" >"$log" 2>&1 || rc=$?
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    exec {qin}>&-
    rm -f "$fifo"
  fi
  local line
  line=$(tr -d '\r' <"$log" | grep -E "^SCENARIO $name (PASS|FAIL)" | tail -n 1 || true)
  if { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ -z "$line" ]; then
    # Not even the in-VM watchdog (a thread that fails the scenario at its budget) got a line
    # out: the guest as a whole stopped running user space (or its console stopped).
    verdict=FAIL reason="VM timed out after ${limit}s; the guest froze: not even the in-VM watchdog printed (its kernel stacks are at the end of the log)"
    froze=yes
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    verdict=FAIL reason="VM timed out after ${limit}s"
  elif [ -z "$line" ]; then
    verdict=FAIL reason="no verdict on the console (qemu exit $rc)"
  elif [[ "$line" == "SCENARIO $name PASS" ]]; then
    verdict=PASS reason=""
  else
    verdict=FAIL reason=${line#"SCENARIO $name FAIL: "}
  fi
}

# What a frozen guest's kernel said when asked (dump_when_frozen), short enough for a CI log: the
# console's last lines, the blocked tasks, the CPUs' backtraces, and the stacks of user-space tasks
# (kernel threads, registers and the unreliable `?` frames left out).
frozen_digest() { # <log>
  tr -d '\r' <"$1" | awk '
    /sysrq: Changing Loglevel/ { dumping = 1 }
    !dumping { last[n++ % 15] = $0; next }
    /sysrq: Show State/ { state = 1; print; next }
    state && /task:/ { user = ($0 !~ /ppid:(0|2) /) }
    !state || user { print }
    END { if (!dumping) { print "(no answer to SysRq: the guest kernel did not take the serial interrupt)" }
          print "--- the console before the dump:"; for (i = n - 15; i < n; i++) if (i >= 0) print last[i % 15] }
  ' | sed -E 's/^\[ *[0-9]+\.[0-9]+\] //' |
    grep -vE '^ \? |^(Code|RSP|RAX|RDX|RBP|R10|R13|FS|CS|CR2|DR0|DR3|Hardware name):' | head -n 200
}

# Runs in the background beside a test VM, its stdout the VM's console input. If the scenario has
# printed no verdict by <at> seconds (shortly before the VM's time limit), the guest is hung: asks
# its kernel, through magic SysRq on the serial line (qemu's "Ctrl-a b" sends a break), for the
# console loglevel 9, the blocked tasks, every CPU's backtrace and every task's stack, so the log
# says where it hung. A guest whose interrupts are off prints nothing, which says that much.
dump_when_frozen() { # <name> <log> <at>
  local t
  for ((t = 0; t < $3; t += 2)); do sleep 2; done
  ! tr -d '\r' <"$2" | grep -qE "^SCENARIO $1 (PASS|FAIL)" || return 0
  local key
  for key in 9 w l t; do
    printf '\001b'
    sleep 0.5
    printf '%s' "$key"
    sleep 4
  done
}

# The real-apps VM (tests/vm/apps/run.sh): its own Debian rootfs, default kernel only.
APPS_TESTS=(apps_gunicorn apps_celery apps_runc)
APPS_OTHERS=(apps_gunicorn_overlap bench_runc apps_facts apps_client_cost apps_celery_warm apps_rabbitmq apps_rabbitmq_guard bench_apps_gunicorn bench_apps_gunicorn_x2 bench_apps_celery bench_celery_rabbitmq bench_celery_redis)
is_apps() { [[ " ${APPS_TESTS[*]} ${APPS_OTHERS[*]} " == *" $1 "* ]]; }

run_apps() { # <name>: sets verdict and reason; its own run.sh shows the console tail on failure
  local line
  line=$("$here/apps/run.sh" "$1" | tail -n 1 || true)
  if [ "$line" = "SCENARIO $1 PASS" ]; then
    verdict=PASS reason=""
  else
    verdict=FAIL reason=${line#"SCENARIO $1 FAIL: "}
    reason=${reason:-"tests/vm/apps/run.sh printed no verdict"}
  fi
}

run_systemd() { # [systemd | bench_goodput_oomd]: sets verdict and reason; its own run.sh shows
  # the console tail on failure
  local line name=${1:-systemd}
  line=$("$here/systemd/run.sh" "$name" | tail -n 1 || true)
  if [ "$line" = "SCENARIO $name PASS" ]; then
    verdict=PASS reason=""
  else
    verdict=FAIL reason=${line#"SCENARIO $name FAIL: "}
    reason=${reason:-"tests/vm/systemd/run.sh printed no verdict"}
  fi
}

# 6.1's logs keep their old names; the other kernels' get the version: smoke.log, smoke@5.10.log.
log_path() { # <name> <kernel version>
  if [ "$2" = "$default_kernel_version" ]; then echo "$logs/$1.log"; else echo "$logs/$1@$2.log"; fi
}

usage() {
  echo "usage: tests/vm/run.sh [--kernel 5.10|6.1|6.12 | --matrix] [SCENARIO...]" >&2
  exit 2
}

# Boots <name> on <kernel version>; sets verdict, reason and secs, and prints the result line.
boot_one() { # <name> <kernel version>
  local name=$1 kv=$2 start
  say "booting scenario $name on ${kernel_of[$kv]##*/}"
  start=$(date +%s)
  if [ "$name" = systemd ] || [ "$name" = bench_goodput_oomd ]; then run_systemd "$name"
  elif is_apps "$name"; then run_apps "$name"
  else
    froze=no
    run_scenario "$name" "$kv"
    if [ "$froze" = yes ]; then
      # A guest that froze gave no verdict on our code either way: keep its log (with the
      # kernel's stacks) and boot once more. The result line and the summary say so; a second
      # freeze, like any failure, fails.
      local first
      first="$(log_path "$name" "$kv").froze"
      mv "$(log_path "$name" "$kv")" "$first"
      say "the guest froze ($reason); booting $name once more (first log: $first)"
      frozen_digest "$first" | sed 's/^/    | /'
      frozen+=("$name [$kv]: $first")
      run_scenario "$name" "$kv"
      reason="${reason:+$reason; }after a frozen first boot (log: $first)"
    fi
  fi
  secs=$(($(date +%s) - start))
  if [ "${kind[$name]}" != demo ] && [ "$verdict" = FAIL ] && [ "$name" != systemd ] && ! is_apps "$name" &&
    [ "$name" != bench_goodput_oomd ]; then
    # A failure needs its evidence (demos showed theirs live; systemd prints its own).
    tr -d '\r' <"$(log_path "$name" "$kv")" | grep -vE '^\[ *[0-9]+\.[0-9]+\]' | tail -n 60 | sed 's/^/    | /'
  fi
  printf '%s %s [%s] (%ss)%s  log: %s\n' "$verdict" "$name" "$kv" "$secs" "${reason:+: $reason}" \
    "$(log_path "$name" "$kv")"
}

declare -A kernel_of
main() {
  local kernels=("$default_kernel_version") matrix=no
  while [ $# -gt 0 ]; do
    case $1 in
      --kernel)
        [ $# -ge 2 ] && kernel_suite "$2" >/dev/null || usage
        kernels=("$2")
        shift 2
        ;;
      --matrix)
        kernels=("${kernel_versions[@]}") matrix=yes
        shift
        ;;
      -*) usage ;;
      *) break ;;
    esac
  done
  ensure_packages
  local kv
  for kv in "${kernels[@]}"; do
    ensure_kernel "$(kernel_suite "$kv")"
    kernel_of[$kv]=$kernel
  done
  build_binaries
  load_scenarios
  # `systemd` is not in vm-scenarios' table: it boots a Debian rootfs with a real systemd
  # (tests/vm/systemd/run.sh) instead of the busybox initramfs, always on the default kernel.
  kind[systemd]="test"
  # The goodput sweep's systemd-oomd row runs in the same VM (by name only).
  kind[bench_goodput_oomd]="demo"
  # The real-apps VM's scenarios likewise (tests/vm/apps/run.sh); only the tests are in the
  # default suite, the fact-finding run and the benchmarks are run by name.
  for name in "${APPS_TESTS[@]}"; do kind[$name]="test"; done
  for name in "${APPS_OTHERS[@]}"; do kind[$name]="demo"; done
  local wanted=() name
  # `bench_goodput` is the whole sweep: one VM per leak rate (rows bench_goodput_<rate>).
  for name in "$@"; do
    if [ "$name" = bench_goodput ]; then wanted+=(bench_goodput_1 bench_goodput_5 bench_goodput_20 bench_goodput_50)
    # Issue 19's Celery rows: one boot per broker (both in one boot would not fit ~25 min).
    elif [ "$name" = bench_celery_brokers ]; then wanted+=(bench_celery_rabbitmq bench_celery_redis)
    else wanted+=("$name"); fi
  done
  if [ ${#wanted[@]} -eq 0 ]; then
    wanted=("${all_tests[@]}")
    [ "${kernels[*]}" != "$default_kernel_version" ] || wanted+=(systemd "${APPS_TESTS[@]}")
  fi
  for name in "${wanted[@]}"; do
    [ -n "${kind[$name]:-}" ] || { echo "unknown scenario: $name (known: ${!kind[*]})" >&2; exit 2; }
    if { [ "$name" = systemd ] || [ "$name" = bench_goodput_oomd ] || is_apps "$name"; } &&
      [ "${kernels[*]}" != "$default_kernel_version" ]; then
      echo "the $name scenario runs on the default kernel ($default_kernel_version) only" >&2
      exit 2
    fi
  done
  if [[ " ${wanted[*]} " == *" bench_goodput_"* ]]; then
    ensure_deb bookworm earlyoom
    earlyoom_bin="$deb_root/usr/bin/earlyoom"
    # Runs per rate (each 40 s of six fleets side by side), passed to the VM.
    for name in "${wanted[@]}"; do
      [[ "$name" != bench_goodput_* ]] || kargs[$name]+=" oomguard.runs=${GOODPUT_RUNS:-3}${GOODPUT_JOB:+ oomguard.job=$GOODPUT_JOB}"
    done
  fi
  build_initramfs

  local passed=0 failed=0 summary=()
  frozen=()
  declare -A cell
  for kv in "${kernels[@]}"; do
    for name in "${wanted[@]}"; do
      boot_one "$name" "$kv"
      cell[$name@$kv]="$verdict ${secs}s"
      if [ "$verdict" = PASS ]; then
        passed=$((passed + 1))
        summary+=("PASS $name [$kv] (${secs}s)${reason:+: $reason}")
      else
        failed=$((failed + 1))
        summary+=("FAIL $name [$kv] (${secs}s): $reason")
      fi
    done
  done
  echo
  printf '%s\n' "${summary[@]}"
  if [ "$matrix" = yes ]; then
    echo
    printf '%-22s' scenario
    for kv in "${kernels[@]}"; do printf ' %-12s' "$kv"; done
    echo
    for name in "${wanted[@]}"; do
      printf '%-22s' "$name"
      for kv in "${kernels[@]}"; do printf ' %-12s' "${cell[$name@$kv]}"; done
      echo
    done
  fi
  if [ ${#frozen[@]} -gt 0 ]; then
    echo
    echo "guests that froze and were booted once more (see the kernel stacks at the end of each log):"
    printf '  %s\n' "${frozen[@]}"
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}

main "$@"
