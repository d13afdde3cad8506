#!/bin/bash
# The systemd-oomd row of the goodput sweep (`tests/vm/run.sh bench_goodput_oomd`), run inside the
# systemd VM (Debian bookworm, systemd 252, with Debian's systemd-oomd unpacked into the image by
# tests/vm/systemd/run.sh). Per leak rate, for 40 s: a leaking testworker (50 ms jobs) in a
# service with MemoryHigh=40M MemoryMax=64M, Restart=always, in a slice with
# ManagedOOMMemoryPressure=kill (oomd's defaults otherwise: 60 % pressure for 30 s), beside two
# healthy twins in another slice. Prints the same `ROW`/`SAMPLE`/`MARK` lines as
# tests/vm/goodput.rs (fleet `systemd_oomd`), then `SCENARIO bench_goodput_oomd PASS|FAIL`.
set -uo pipefail

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
RATES=${OOMD_RATES:-5 20 1 50}
PHASE_S=40
LEDGERS=/var/lib/oomguard-test
UNITS=/run/systemd/system

fail() {
  echo "SCENARIO bench_goodput_oomd FAIL: $*"
  journalctl --no-pager -u systemd-oomd 2>&1 | tail -n 30
  sync
  echo o >/proc/sysrq-trigger
  sleep 30
  exit 1
}

( sleep 900; fail "in-VM budget of 900 s exceeded" ) &

mkdir -p "$LEDGERS" "$UNITS"
chmod 0777 "$LEDGERS"
systemctl daemon-reload
systemctl start systemd-oomd.socket systemd-oomd.service ||
  fail "systemd-oomd did not start: $(systemctl status systemd-oomd 2>&1 | tail -n 5 | tr '\n' ' ')"
echo "EVIDENCE systemd-oomd: $(systemd-oomd --version 2>/dev/null | head -n 1), $(systemctl is-active systemd-oomd)"
echo "EVIDENCE oomd.conf: $(grep -v '^#' /etc/systemd/oomd.conf 2>/dev/null | grep . | tr '\n' ' ')"

unit() { # <rate> <name> <slice> <leak> [--job-sleep]
  cat >"$UNITS/$2-$1.service" <<EOF
[Unit]
StartLimitIntervalSec=0
[Service]
Slice=$3.slice
ExecStart=/usr/bin/testworker --ledger $LEDGERS/$2-$1.ledger --leak-mb-per-s $4 --job-ms 50 ${5:-}
MemoryHigh=40M
MemoryMax=64M
Restart=always
RestartSec=100ms
EOF
}

done_jobs() { awk '$1 == "done" { n++ } END { print n + 0 }' "$1" 2>/dev/null || echo 0; }

# Jobs started and never finished by a pid that is gone: `start` without its `done`, except the
# last start of a pid still running (its job may be in flight).
lost_jobs() { # <ledger> <running pids, space-separated>
  awk -v running=" $2 " '
    $1 == "start" { s[$2 " " $3] = $2; last[$2] = $3 }
    $1 == "done" { delete s[$2 " " $3] }
    END {
      n = 0
      for (k in s) { split(k, f, " "); if (!(index(running, " " f[1] " ") && last[f[1]] == f[2])) n++ }
      print n
    }' "$1"
}

# Both job kinds of the busybox sweep: sleeping jobs (GOODPUT_JOB=sleep, the README's main table;
# these print the SAMPLE lines for the plot) and computing jobs. Unit names carry a `s` suffix
# for the sleeping kind, so every run starts from fresh units, slices and ledgers.
for job in sleep compute; do
for rate in $RATES; do
  if [ "$job" = sleep ]; then sfx=s flag=--job-sleep field=" job=sleep" plot=yes
  else sfx="" flag="" field="" plot=no; fi
  slice=oomd$rate$sfx
  cat >"$UNITS/$slice.slice" <<EOF
[Slice]
ManagedOOMMemoryPressure=kill
EOF
  rate=$rate$sfx
  unit "$rate" leaky "$slice" "${rate%s}" "$flag"
  unit "$rate" twin-a "twins$rate" 0 "$flag"
  unit "$rate" twin-b "twins$rate" 0 "$flag"
  systemctl daemon-reload
  systemctl start "leaky-$rate" "twin-a-$rate" "twin-b-$rate" || fail "cannot start the $rate MB/s units"
  cg=/sys/fs/cgroup/$slice.slice
  t0=$(date +%s%N)
  seen=" "
  while :; do
    ms=$((($(date +%s%N) - t0) / 1000000))
    [ "$ms" -lt $((PHASE_S * 1000)) ] || break
    kib=$(($(cat "$cg/memory.current" 2>/dev/null || echo 0) / 1024))
    [ "$plot" = no ] || echo "SAMPLE ${rate%s} systemd_oomd $ms $kib"
    while read -r pid; do
      case $seen in *" $pid "*) ;; *)
        [ "$seen" = " " ] || [ "$plot" = no ] || echo "MARK ${rate%s} systemd_oomd $ms"
        seen="$seen$pid " ;;
      esac
    done <"$cg/leaky-$rate.service/cgroup.procs" 2>/dev/null
    sleep 0.1
  done
  # The window ends: counts first, then a graceful stop.
  restarts=$(systemctl show -p NRestarts --value "leaky-$rate")
  running=$(tr '\n' ' ' <"$cg/leaky-$rate.service/cgroup.procs" 2>/dev/null)
  ledger=$LEDGERS/leaky-$rate.ledger
  leaky=$(done_jobs "$ledger")
  a=$(done_jobs "$LEDGERS/twin-a-$rate.ledger")
  b=$(done_jobs "$LEDGERS/twin-b-$rate.ledger")
  lost=$(lost_jobs "$ledger" "$running")
  ooms=$(awk '$1 == "oom_kill" {print $2}' "$cg/memory.events")
  # Graceful: exits with `exit <pid> clean` (the SIGTERM handler ran) among the restarts.
  clean=$(grep -c '^exit .* clean' "$ledger" || true)
  oomd_kills=$(journalctl --no-pager -u systemd-oomd 2>/dev/null | grep -c "Killed .*$slice" || true)
  # What oomd saw: the slice must be among its monitored cgroups (else "no kill" would mean a
  # misconfiguration, not oomd's choice), with the pressure it compares against its limit.
  echo "EVIDENCE oomd $rate MB/s: $(oomctl dump 2>&1 | grep -A4 "/$slice.slice" | tr -s ' \n' ' ' | cut -c1-400)"
  echo "EVIDENCE $slice.slice memory.pressure: $(tr '\n' ' ' <"$cg/memory.pressure")"
  systemctl stop "leaky-$rate" "twin-a-$rate" "twin-b-$rate"
  goodput=$(awk -v l="$leaky" -v a="$a" -v b="$b" 'BEGIN { t = (a + b) / 2; if (t < 1) t = 1; printf "%.3f", l / t }')
  [ "$clean" -le "$restarts" ] || clean=$restarts
  echo "ROW rate=${rate%s} run=1 fleet=systemd_oomd$field goodput=$goodput leaky_jobs=$leaky twin_jobs=$a,$b" \
    "oom_kills=$ooms lost=$lost restarts=$restarts graceful=$clean/$restarts oomd_kills=$oomd_kills"
done
done
journalctl --no-pager -u systemd-oomd 2>/dev/null | grep -i kill | tail -n 10 | sed 's/^/EVIDENCE oomd: /'
echo "SCENARIO bench_goodput_oomd PASS"
sync
echo o >/proc/sysrq-trigger
sleep 30
