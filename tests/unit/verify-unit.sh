#!/bin/sh
# Runs `systemd-analyze verify` on the shipped units and fails on any message about them.
#
# systemd-analyze checks that every Exec*= binary exists and is executable, so the units are
# verified through temporary copies in which /usr/bin/oomguard points at a real executable:
# the binary built from this tree if there is one (OOMGUARD_BIN, or target/{release,debug}),
# else a stub script. Every other line stays byte for byte what we ship.
#
# Usage: tests/unit/verify-unit.sh [UNIT...]   (default: systemd/*.service systemd/*.timer)
# Exit: 0 clean, 1 systemd-analyze printed anything about a unit or failed, 2 setup problem.
set -eu

here=$(cd "$(dirname "$0")/../.." && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "verify-unit: systemd-analyze missing, installing systemd" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >&2
    else
        echo "verify-unit: systemd-analyze not found (install the systemd package)" >&2
        exit 2
    fi
fi

if [ $# -eq 0 ]; then
    set -- "$here"/systemd/*.service "$here"/systemd/*.timer
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

bin=${OOMGUARD_BIN:-}
if [ -z "$bin" ]; then
    for t in "${CARGO_TARGET_DIR:-$here/target}/release/oomguard" "${CARGO_TARGET_DIR:-$here/target}/debug/oomguard"; do
        if [ -x "$t" ]; then bin=$t; break; fi
    done
fi
if [ -z "$bin" ]; then
    mkdir "$work/bin"
    bin=$work/bin/oomguard
    printf '#!/bin/sh\nexit 0\n' > "$bin"
    chmod 755 "$bin"
    echo "verify-unit: no built oomguard binary, verifying against a stub" >&2
fi

# Copies keep their file names: the unit name is part of what is verified (Unit= of a timer,
# instance names...). systemd-analyze resolves units named on the command line from their path
# and the ones they reference from the same directory.
mkdir "$work/units"
for u in "$@"; do
    [ -f "$u" ] || { echo "verify-unit: no such unit file: $u" >&2; exit 2; }
    sed "s|/usr/bin/oomguard|$bin|g" "$u" > "$work/units/$(basename "$u")"
done

# systemd-analyze 252 checks ExecStart=/ExecStartPre= binaries but not ExecReload= and the
# others: check that every Exec*= command names an executable here.
missing=$(sed -n 's/^Exec[A-Za-z]*=[-@+!:]*\([^ ]*\).*/\1/p' "$work"/units/* | sort -u |
    while read -r cmd; do [ -x "$cmd" ] || echo "Exec command $cmd is not executable"; done)

rc=0
# --man=no: the Documentation= pages are not installed here; checking them is not this test's job.
out=$(cd "$work/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$work"/units/* 2>&1) || rc=$?
out=$(printf '%s\n%s' "$out" "$missing" | grep . || true)
if [ -n "$out" ]; then
    printf '%s\n' "$out"
fi
if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    echo "verify-unit: FAILED (exit $rc, $(printf '%s\n' "$out" | grep -c . ) line(s) of output)" >&2
    exit 1
fi
echo "verify-unit: OK: $(for u in "$@"; do basename "$u"; done | tr '\n' ' ')(binary: $bin)"
