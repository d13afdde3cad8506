#!/usr/bin/env bash
# shellcheck disable=SC2012  # ls vmlinuz-<version>: no odd file names there
# The `systemd` VM scenario, host side: builds the .deb twice (packaging/build-deb.sh, revisions 1
# and 2), runs lintian on it, boots a Debian bookworm rootfs with a real systemd (252) in qemu TCG
# and runs scenario.sh in it: `dpkg -i`, start, reload (good and bad policy), restart (workers
# adopted), SIGKILL of the daemon (Restart= and re-adoption, then a leaking worker restarted
# gracefully), stop (workers drained), then the package's life (package.sh): upgrade to revision 2
# with workers running (kept and adopted), `dpkg -r` (workers drained, config kept), `dpkg -P`.
#
#   tests/vm/systemd/run.sh        (also run by `tests/vm/run.sh systemd` and the default suite)
#
# Needs root (debootstrap, chroot, apt-get). The rootfs is cached in
# tests/vm/.cache/systemd-rootfs (delete it to rebuild); the console log is
# tests/vm/.cache/logs/systemd.log. Prints the verdict line `SCENARIO systemd PASS|FAIL: ...` last;
# exits 0 only on PASS.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
vmdir=$(cd "$here/.." && pwd)
repo=$(cd "$vmdir/../.." && pwd)
cache="$vmdir/.cache"
logs="$cache/logs"
rootfs="$cache/systemd-rootfs"
image="$cache/systemd-image"
initrd="$cache/systemd-initrd.cpio"
# `run.sh bench_goodput_oomd`: the same VM without the package, with Debian's systemd-oomd, running
# the goodput sweep's systemd-oomd row (bench_oomd.sh) instead of the scenario.
mode=${1:-systemd}
case $mode in
  systemd | bench_goodput_oomd) ;;
  *) echo "usage: tests/vm/systemd/run.sh [bench_goodput_oomd]" >&2; exit 2 ;;
esac
log="$logs/$mode.log"
mkdir -p "$cache" "$logs"

# Packages in the VM. jq reads `oomguard status --json` in scenario.sh. Changing this list
# rebuilds the cached rootfs.
ROOTFS_PACKAGES=systemd,systemd-sysv,dbus,procps,jq
ROOTFS_STAMP="bookworm minbase $ROOTFS_PACKAGES"
# debootstrap uses the Debian mirror this host's apt is already set up with (or DEBIAN_MIRROR).
host_mirror() {
  {
    sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
    awk '$1 == "deb" {print $2}' /etc/apt/sources.list 2>/dev/null
  } | grep -m 1 -E '/debian/?$' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
# In-VM budget of scenario.sh (its own watchdog), and the host's hard limit for the whole boot
# (about 100 s to multi-user under TCG, plus the budget, plus shutdown).
BUDGET_S=900
VM_LIMIT_S=$((BUDGET_S + 240))

say() { printf '[vm/systemd] %s\n' "$*" >&2; }
# shellcheck source=tests/vm/lib.sh
. "$vmdir/lib.sh"

# ---- host packages ----

ensure_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
  command -v cpio >/dev/null || missing+=(cpio)
  # packaging/build-deb.sh needs dpkg-shlibdeps and strip; the package is linted before the boot.
  command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
  command -v strip >/dev/null || missing+=(binutils)
  command -v lintian >/dev/null || missing+=(lintian)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_update_once
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}


# Failing before the boot still ends with a verdict line (tests/vm/run.sh reads the last one).
fail_early() {
  echo "SCENARIO $mode FAIL: $*"
  exit 1
}

# ---- binaries and the package ----
build_binaries() {
  say "cargo build --release --bin oomguard --example testworker"
  (cd "$repo" && cargo build --release --bin oomguard --example testworker)
  local target
  target=${CARGO_TARGET_DIR:-$(cd "$repo" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  bin_oomguard="$target/release/oomguard"
  bin_worker="$target/release/examples/testworker"
}

# Two builds of the package from the same binary: revision 1 is installed, revision 2 is the
# upgrade. Only the version differs, which is all dpkg and the maintainer scripts look at.
build_debs() {
  rm -rf "$cache/debs"
  local r
  for r in 1 2; do
    "$repo/packaging/build-deb.sh" --binary "$bin_oomguard" --revision "$r" --out "$cache/debs" >/dev/null ||
      fail_early "packaging/build-deb.sh --revision $r failed"
  done
  debs=("$cache"/debs/oomguard_*-[12]_*.deb)
  [ ${#debs[@]} = 2 ] || fail_early "expected two .debs in $cache/debs, found: ${debs[*]}"
  # Errors, warnings and info tags: every one is fixed or overridden with its reason in
  # packaging/deb/lintian-overrides. Experimental tags (X:) are not shown.
  say "lintian ${debs[0]##*/}"
  local out
  out=$(lintian --display-info --fail-on error,warning,info "${debs[0]}" 2>&1 |
    grep -v '^running with root privileges' || true)
  if [ -n "$out" ]; then
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    fail_early "lintian: $(printf '%s' "$out" | tr '\n' ';')"
  fi
}

# ---- rootfs: debootstrap once, cached ----
ensure_rootfs() {
  if [ "$(cat "$rootfs/.oomguard-rootfs" 2>/dev/null || true)" = "$ROOTFS_STAMP" ]; then
    return
  fi
  [ -n "$MIRROR" ] || { echo "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2; exit 1; }
  say "debootstrap bookworm ($ROOTFS_PACKAGES) from $MIRROR into $rootfs (about a minute)"
  rm -rf "$rootfs" "$rootfs.tmp"
  debootstrap --variant=minbase --include="$ROOTFS_PACKAGES" bookworm "$rootfs.tmp" "$MIRROR" \
    >"$logs/debootstrap.log" 2>&1 || { tail -n 20 "$logs/debootstrap.log" >&2; exit 1; }
  # Nothing in the VM reads these; a smaller initramfs boots faster under TCG.
  rm -rf "$rootfs.tmp"/usr/share/{doc,man,info,locale} "$rootfs.tmp"/var/cache/apt/*.bin \
    "$rootfs.tmp"/var/cache/apt/archives/*.deb "$rootfs.tmp"/var/lib/apt/lists/*
  echo "$ROOTFS_STAMP" >"$rootfs.tmp/.oomguard-rootfs"
  mv "$rootfs.tmp" "$rootfs"
}

# ---- image: a copy of the rootfs with the two .debs, the test worker and the scenario ----
# oomguard itself is not installed here: the scenario installs the package with `dpkg -i` under
# the running systemd, as an operator would (its dependencies, adduser included, are in the
# minbase rootfs).
build_image() {
  rm -rf "$image"
  cp -a "$rootfs" "$image"
  install -m 0755 "$bin_worker" "$image/usr/bin/testworker"
  local missing
  missing=$(chroot "$image" ldd /usr/bin/testworker | grep 'not found' || true)
  [ -z "$missing" ] || { echo "libraries missing in the VM: $missing" >&2; exit 1; }
  if [ "$mode" = bench_goodput_oomd ]; then
    # The unit runs .../scenario.sh: here that is the oomd bench, with Debian's systemd-oomd
    # unpacked into the image (its user comes from sysusers.d at boot).
    install -D -m 0755 "$here/bench_oomd.sh" "$image/usr/local/lib/oomguard-test/scenario.sh"
    ensure_deb bookworm systemd-oomd
    # tar, not cp: the package's /lib must land in the rootfs's /lib -> usr/lib symlink.
    tar -C "$deb_root" -cf - . | tar -C "$image" -xf - --keep-directory-symlink
  else
    install -D -m 0644 -t "$image/var/cache/oomguard-test" "${debs[@]}"
    # The scenario, started once multi-user is reached.
    install -D -m 0755 "$here/scenario.sh" "$image/usr/local/lib/oomguard-test/scenario.sh"
  fi
  install -m 0755 "$here/package.sh" "$image/usr/local/lib/oomguard-test/package.sh"
  install -m 0644 "$here/oomguard-scenario.service" "$image/etc/systemd/system/"
  ln -sf /etc/systemd/system/oomguard-scenario.service \
    "$image/etc/systemd/system/multi-user.target.wants/oomguard-scenario.service"
  # Quiet, quick boot: no login prompts on the scenario's console, no periodic jobs.
  local u
  for u in serial-getty@ttyS0.service getty@tty1.service apt-daily.timer apt-daily-upgrade.timer \
    dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-pstore.service; do
    ln -sf /dev/null "$image/etc/systemd/system/$u"
  done
  echo oomguard-vm >"$image/etc/hostname"
  # Uncompressed: gunzip of ~120 MB under TCG costs more than copying 2x the bytes.
  (cd "$image" && find . -print0 | cpio --null -o -H newc --quiet) >"$initrd"
  say "initramfs: $(du -h "$initrd" | cut -f1)"
}

boot() {
  local rc=0
  say "booting (hard limit ${VM_LIMIT_S}s; console: $log)"
  timeout --foreground -k 5 "$VM_LIMIT_S" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 1536 \
    -nographic -no-reboot -nic none -kernel "$kernel" -initrd "$initrd" \
    -append "console=ttyS0 rdinit=/sbin/init panic=-1 loglevel=4 systemd.show_status=error" \
    </dev/null >"$log" 2>&1 || rc=$?
  local line
  line=$(console_verdict "$mode" "$rc" "$VM_LIMIT_S" "$log")
  tr -d '\r' <"$log" | grep -E '^EVIDENCE (timings|scenario seconds|boot to)' | sed 's/^/    /' >&2 || true
  [ "$mode" = systemd ] || tr -d '\r' <"$log" | grep -E '^(ROW|EVIDENCE)' | sed 's/^/    /' >&2 || true
  echo "$line"
  [ "$line" = "SCENARIO $mode PASS" ]
}

main() {
  ensure_packages
  ensure_kernel bookworm
  build_binaries
  [ "$mode" = bench_goodput_oomd ] || build_debs
  ensure_rootfs
  build_image
  boot
}

main "$@"
