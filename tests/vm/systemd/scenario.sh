#!/bin/bash
# shellcheck disable=SC2317,SC2015  # helpers are called through wait_for; `a && b || fail` is intended
# The `systemd` VM scenario, run inside a Debian bookworm VM with a real systemd 252 by
# oomguard-scenario.service (packed by tests/vm/systemd/run.sh). It installs the .deb (package.sh),
# drives oomguard.service and oomguard-workers.service through start, reload (good and bad),
# restart, SIGKILL of the daemon and stop, then upgrades, removes and purges the package
# (package.sh), prints `EVIDENCE ...` lines, ends with `SCENARIO systemd PASS` or
# `SCENARIO systemd FAIL: <why>`, and powers the VM off.
set -uo pipefail

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
POLICIES=/etc/oomguard/policies.d
LEDGERS=/var/lib/oomguard-test
HOLDER=/sys/fs/cgroup/system.slice/oomguard-workers.service
WORKERS=$HOLDER/workers
BUDGET_S=${OOMGUARD_SCENARIO_BUDGET:-900}
T0=$(date +%s.%N)

evidence() { printf 'EVIDENCE %s: %s\n' "$1" "$2"; }
now() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

poweroff_now() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 30
  exit 1
}

dump() {
  echo "---- systemctl status ----"
  systemctl --no-pager status oomguard.service oomguard-workers.service 2>&1 | tail -n 40
  echo "---- journal (oomguard, oomguard-workers) ----"
  journalctl --no-pager -u oomguard.service -u oomguard-workers.service 2>&1 |
    grep -v ': [0-9]* jobs done, ' | tail -n 80
  echo "---- workers subtree ----"
  find "$WORKERS" -name cgroup.procs 2>/dev/null | while read -r f; do
    echo "  ${f#"$WORKERS"/}: $(tr '\n' ' ' <"$f")"
  done
  echo "---- ledgers ----"
  for f in "$LEDGERS"/*.ledger; do
    [ -e "$f" ] && echo "  $f: $(grep -c . "$f") lines, exits: $(grep '^exit' "$f" | tr '\n' ';')"
  done
}

fail() {
  echo "FAIL: $*"
  dump
  evidence "scenario seconds" "$(secs_since "$T0")"
  echo "SCENARIO systemd FAIL: $*"
  poweroff_now
}

# In-VM watchdog: a hung step still ends with a verdict and the journal.
(
  sleep "$BUDGET_S"
  echo "SCENARIO watchdog: budget of ${BUDGET_S}s exceeded"
  dump
  echo "SCENARIO systemd FAIL: in-VM budget of ${BUDGET_S}s exceeded"
  poweroff_now
) &
WATCHDOG=$!

# wait_for <timeout s> <description> <command...>: polls every 0.5 s.
wait_for() {
  local limit=$1 what=$2 start
  shift 2
  start=$(date +%s)
  until "$@"; do
    [ $(($(date +%s) - start)) -lt "$limit" ] || fail "timed out after ${limit}s waiting for $what"
    sleep 0.5
  done
}

# ---- reading the daemon ----
STATUS=""
status_json() { STATUS=$(timeout 10 oomguard status --json 2>/dev/null) && [ -n "$STATUS" ]; }
# inst <id> <jq expression on the instance>: from the last status_json.
inst() { jq -r --arg id "$1" ".policies[].instances[] | select(.id == \$id) | $2" <<<"$STATUS"; }
pids_of() { inst "$1" '.pids | map(tostring) | join(" ")'; }
all_pids() { jq -r '[.policies[].instances[].pids[]] | sort | map(tostring) | join(" ")' <<<"$STATUS"; }
main_pid() { systemctl show -P MainPID oomguard.service; }
active() { [ "$(systemctl is-active "$1" 2>/dev/null)" = active ]; }

# instances_running <id>...: a fresh status in which every named instance runs with one pid.
# One jq per poll: under TCG, with the workers busy, every process start costs.
instances_running() {
  status_json || return 1
  jq -e --args '[.policies[].instances[] | select(.id as $i | $ARGS.positional | index($i))
    | select(.state == "running" and (.pids | length) == 1)] | length == ($ARGS.positional | length)' \
    "$@" <<<"$STATUS" >/dev/null
}

group_of() { sed -n 's/^0:://p' "/proc/$1/cgroup" 2>/dev/null; }
read_file() { cat "$1" 2>/dev/null || echo "<missing $1>"; }

# boundary: false keeps memory.high at the written value, which the steps read back from the
# kernel; the memory.high boundary (the default) has its own scenarios (tests/vm/boundary.rs).
policy() { # <name> <instances> <memory.high> [extra testworker args...]
  local name=$1 n=$2 high=$3
  shift 3
  local args="\"--ledger\", \"$LEDGERS/$name.ledger\""
  local a
  for a in "$@"; do args="$args, \"$a\""; done
  cat <<EOF
mode: enforce
run:
  command: ["/usr/bin/testworker", $args]
  instances: $n
memory:
  high: $high
  max: 96M
  boundary: false
triggers:
  pressure: {some: 100ms, window: 1s, for: 1s}
restart:
  grace: 10s
EOF
}

write_policy() { # <name> <yaml>: root:root 0644, written atomically
  local tmp="$POLICIES/.$1.tmp"
  printf '%s\n' "$2" >"$tmp"
  chown root:root "$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$POLICIES/$1.yaml"
}

# shellcheck source=tests/vm/systemd/package.sh
. "$(dirname "$0")/package.sh"

echo "scenario: $(systemctl --version | head -n 1), kernel $(uname -r)"
evidence "boot to scenario" "$(cut -d' ' -f1 /proc/uptime)s since kernel start"
package_install
mkdir -p "$LEDGERS"
chmod 0777 "$LEDGERS"
# The fleet the steps below work on: 2 healthy instances, memory.high 48M.
write_policy healthy "$(policy healthy 2 48M)"
evidence "policies before start" "$(stat -c '%A %U:%G %n' "$POLICIES"/* | tr '\n' ';')"

# ======== a. start ========
echo "=== a. systemctl start oomguard"
t=$(now)
systemctl start oomguard.service || fail "a: systemctl start oomguard failed"
START_S=$(secs_since "$t")
evidence "a: systemctl start took" "${START_S}s"
active oomguard.service || fail "a: oomguard.service is $(systemctl is-active oomguard.service) after start"
active oomguard-workers.service || fail "a: oomguard-workers.service is not active (Requires=)"
wait_for 30 "healthy/0 and healthy/1 running" instances_running healthy/0 healthy/1
H0=$(pids_of healthy/0) H1=$(pids_of healthy/1)
evidence "a: healthy pids" "healthy/0=$H0 healthy/1=$H1"
for id in healthy/0 healthy/1; do
  pid=$(pids_of "$id")
  want="/system.slice/oomguard-workers.service/workers/$id"
  got=$(group_of "$pid")
  evidence "a: cgroup of $id ($pid)" "$got"
  [ "$got" = "$want" ] || fail "a: $id (pid $pid) is in $got, want $want"
done
DPID=$(main_pid)
dgroup=$(group_of "$DPID")
evidence "a: daemon pid $DPID cgroup" "$dgroup"
[ "$dgroup" = /system.slice/oomguard.service ] ||
  fail "a: the daemon (pid $DPID) is in $dgroup, want /system.slice/oomguard.service"
adj_d=$(read_file "/proc/$DPID/oom_score_adj") adj_w=$(read_file "/proc/$H0/oom_score_adj")
evidence "a: oom_score_adj" "daemon $adj_d, worker $adj_w"
[ "$adj_w" = 0 ] || fail "a: worker $H0 has oom_score_adj $adj_w (inherited OOMScoreAdjust=), want 0"
evidence "a: holder cgroup.procs" "$(read_file "$HOLDER/holder/cgroup.procs" | tr '\n' ' ')"
evidence "a: holder subtree_control" "$(read_file "$HOLDER/cgroup.subtree_control")"
evidence "a: daemon cgroup_root" "$(jq -r .daemon.cgroup_root <<<"$STATUS")"
HIGH_FILE=$WORKERS/healthy/0/memory.high
evidence "a: healthy/0 memory.high" "$(read_file "$HIGH_FILE")"
[ "$(read_file "$HIGH_FILE")" = 50331648 ] || fail "a: healthy/0 memory.high is $(read_file "$HIGH_FILE"), want 50331648 (48M)"

# ======== b. reload ========
echo "=== b. systemctl reload oomguard (memory.high 48M -> 64M)"
write_policy healthy "$(policy healthy 2 64M)"
t=$(now)
systemctl reload oomguard.service || fail "b: systemctl reload failed on a good policy"
high_is_64m() { [ "$(cat "$WORKERS/healthy/0/memory.high" 2>/dev/null)" = 67108864 ] &&
  [ "$(cat "$WORKERS/healthy/1/memory.high" 2>/dev/null)" = 67108864 ]; }
wait_for 20 "memory.high of healthy/0 and healthy/1 to become 64M" high_is_64m
evidence "b: reload applied after" "$(secs_since "$t")s"
RELOAD_S=$(secs_since "$t")
status_json || fail "b: status after reload"
[ "$(pids_of healthy/0)" = "$H0" ] && [ "$(pids_of healthy/1)" = "$H1" ] ||
  fail "b: pids changed by the reload: healthy/0=$(pids_of healthy/0) (was $H0) healthy/1=$(pids_of healthy/1) (was $H1)"
evidence "b: after good reload" "memory.high=$(cat "$HIGH_FILE") status.memory_high=$(inst healthy/0 .memory_high) pids $H0 $H1 unchanged"

echo "=== b. a bad key: systemctl reload and oomguard reload must fail and change nothing"
bad=$(policy healthy 3 32M | sed 's/^  instances:/  instnaces:/')
write_policy healthy "$bad"
out=$(systemctl reload oomguard.service 2>&1)
rc=$?
evidence "b: systemctl reload (bad key) exit" "$rc: $(tr '\n' ' ' <<<"$out")"
[ "$rc" != 0 ] || fail "b: systemctl reload succeeded with a bad key in healthy.yaml"
out=$(timeout 30 oomguard reload 2>&1)
rc=$?
evidence "b: oomguard reload (bad key) exit" "$rc: $(tr '\n' ' ' <<<"$out")"
[ "$rc" = 1 ] || fail "b: oomguard reload exited $rc with a bad key, want 1"
grep -q instnaces <<<"$out" || fail "b: oomguard reload does not name the bad key instnaces: $out"
sleep 1
active oomguard.service || fail "b: oomguard.service is $(systemctl is-active oomguard.service) after a bad reload"
[ "$(main_pid)" = "$DPID" ] || fail "b: the daemon pid changed after a bad reload ($DPID -> $(main_pid))"
status_json || fail "b: status after the bad reload"
[ "$(pids_of healthy/0)" = "$H0" ] && [ "$(pids_of healthy/1)" = "$H1" ] ||
  fail "b: pids changed by the bad reload"
[ -z "$(inst healthy/2 .id)" ] || fail "b: the bad file's instance count was applied (healthy/2 exists)"
high_is_64m || fail "b: memory.high changed by the bad reload: $(cat "$HIGH_FILE")"
journalctl --no-pager -u oomguard.service | grep -i instnaces | tail -n 2 | sed 's/^/EVIDENCE b: journal: /'
journalctl --no-pager -u oomguard.service | grep -qi instnaces || fail "b: the bad key is not in the journal"
evidence "b: after bad reload" "active, pid $DPID, pids $H0 $H1, memory.high $(cat "$HIGH_FILE")"
write_policy healthy "$(policy healthy 2 64M)"
out=$(timeout 30 oomguard reload 2>&1) || fail "b: oomguard reload of the restored file failed: $out"
evidence "b: oomguard reload (restored)" "$(tr '\n' ' ' <<<"$out")"
systemctl is-failed -q oomguard.service && fail "b: unit is failed after the restored reload"

# A counter to carry across the restart: one manual restart of healthy/1.
echo "=== manual restart of healthy/1 (a restart counter to preserve)"
timeout 60 oomguard restart healthy/1 >/dev/null || fail "oomguard restart healthy/1 failed"
h1_restarted() { instances_running healthy/1 && [ "$(pids_of healthy/1)" != "$H1" ] &&
  [ "$(inst healthy/1 .restarts)" = 1 ]; }
wait_for 30 "healthy/1 restarted once" h1_restarted
grep -qx "exit $H1 clean" "$LEDGERS/healthy.ledger" || fail "healthy/1's old pid $H1 has no 'exit clean'"
H1=$(pids_of healthy/1)
evidence "manual restart" "healthy/1 now $H1, restarts=$(inst healthy/1 .restarts) reason=$(inst healthy/1 .last_restart_reason)"

# ======== c. systemctl restart ========
echo "=== c. systemctl restart oomguard"
t=$(now)
systemctl restart oomguard.service || fail "c: systemctl restart failed"
evidence "c: systemctl restart returned after" "$(secs_since "$t")s"
wait_for 60 "oomguard active after restart" active oomguard.service
wait_for 60 "status after restart" instances_running healthy/0 healthy/1
RESTART_S=$(secs_since "$t")
evidence "c: restart to status answering" "${RESTART_S}s"
DPID2=$(main_pid)
[ "$DPID2" != "$DPID" ] || fail "c: MainPID did not change ($DPID): not restarted"
evidence "c: daemon pid" "$DPID -> $DPID2 in $(group_of "$DPID2")"
[ "$(pids_of healthy/0)" = "$H0" ] && [ "$(pids_of healthy/1)" = "$H1" ] ||
  fail "c: worker pids changed across restart: healthy/0 $H0 -> $(pids_of healthy/0), healthy/1 $H1 -> $(pids_of healthy/1)"
evidence "c: pids after restart" "healthy/0=$(pids_of healthy/0) healthy/1=$(pids_of healthy/1) (adopted)"
r1=$(inst healthy/1 .restarts) why1=$(inst healthy/1 .last_restart_reason) r0=$(inst healthy/0 .restarts)
evidence "c: counters after restart" "healthy/0 restarts=$r0, healthy/1 restarts=$r1 last=$why1"
[ "$r1" = 1 ] && [ "$why1" = manual ] && [ "$r0" = 0 ] ||
  fail "c: restart counters not preserved: healthy/1 restarts=$r1 last=$why1 (want 1 manual), healthy/0 restarts=$r0"
for p in $H0 $H1; do grep -q "^exit $p " "$LEDGERS/healthy.ledger" && fail "c: worker $p exited during the restart"; done
journalctl --no-pager -o short-precise -u oomguard.service | grep -vE ': [0-9]+ jobs done, |testworker' |
  grep -A 12 SIGUSR2 | sed 's/^/EVIDENCE c: journal: /'
[ "$(read_file "$WORKERS/healthy/0/memory.high")" = 67108864 ] || fail "c: memory.high lost across the restart"

# ======== d. SIGKILL of the daemon, then a leak ========
echo "=== d. add a leaking policy, kill -9 the daemon, check the new daemon restarts the leaker"
nrestarts=$(systemctl show -P NRestarts oomguard.service)
write_policy leaky "$(policy leaky 1 48M --leak-mb-per-s 8)"
out=$(timeout 30 oomguard reload 2>&1) || fail "d: oomguard reload adding leaky failed: $out"
evidence "d: reload adding leaky" "$(tr '\n' ' ' <<<"$out")"
# Kill the daemon as soon as the leaker runs: it reaches memory.high about 6 s after it starts,
# and the old daemon must not be the one that restarts it. Straight from cgroupfs, no jq.
leaky_proc() { [ -n "$(cat "$WORKERS/leaky/0/cgroup.procs" 2>/dev/null)" ]; }
wait_for 20 "a process in workers/leaky/0" leaky_proc
L0=$(head -n 1 "$WORKERS/leaky/0/cgroup.procs")
t=$(now)
kill_ms=$(date +%s%3N)
kill -9 "$DPID2"
evidence "d: leaky/0" "pid $L0 in $(group_of "$L0")"
evidence "d: killed daemon" "pid $DPID2 with SIGKILL, NRestarts was $nrestarts"
sleep 0.5
for p in $H0 $H1 $L0; do kill -0 "$p" 2>/dev/null || fail "d: worker $p died with the daemon"; done
new_daemon() { [ "$(systemctl show -P NRestarts oomguard.service)" -gt "$nrestarts" ] &&
  active oomguard.service && [ "$(main_pid)" != "$DPID2" ] && [ "$(main_pid)" != 0 ]; }
wait_for 60 "systemd to restart the killed daemon" new_daemon
wait_for 60 "status from the new daemon" instances_running healthy/0 healthy/1 leaky/0
CRASH_S=$(secs_since "$t")
DPID3=$(main_pid)
evidence "d: back after SIGKILL (status answering, as polled)" "${CRASH_S}s, daemon $DPID3, NRestarts=$(systemctl show -P NRestarts oomguard.service)"
[ "$(pids_of healthy/0)" = "$H0" ] && [ "$(pids_of healthy/1)" = "$H1" ] ||
  fail "d: healthy pids changed across the SIGKILL: $(pids_of healthy/0) $(pids_of healthy/1) (were $H0 $H1)"
[ "$(inst healthy/1 .restarts)" = 1 ] || fail "d: healthy/1 restarts=$(inst healthy/1 .restarts) after SIGKILL, want 1"
evidence "d: leaky/0 after adoption" "pids=$(pids_of leaky/0) restarts=$(inst leaky/0 .restarts)"
# The old daemon is dead, so a graceful restart of $L0 can only be the new daemon's doing.
leaky_restarted() { status_json && [ "$(inst leaky/0 .state)" = running ] &&
  [ -n "$(pids_of leaky/0)" ] && [ "$(pids_of leaky/0)" != "$L0" ] &&
  [ "$(inst leaky/0 .last_restart_reason)" = pressure ]; }
wait_for 60 "the new daemon to restart leaky/0 under pressure" leaky_restarted
evidence "d: leaky/0 restarted" "$L0 -> $(pids_of leaky/0), restarts=$(inst leaky/0 .restarts) by $(inst leaky/0 '.restarts_by_reason | tostring')"
grep -qx "exit $L0 clean" "$LEDGERS/leaky.ledger" ||
  fail "d: the adopted leaky pid $L0 has no 'exit $L0 clean' in its ledger (not graceful)"
evidence "d: leaky ledger" "$(grep -c '^done' "$LEDGERS/leaky.ledger") jobs done, exits: $(grep '^exit' "$LEDGERS/leaky.ledger" | tr '\n' ';')"
events=$(timeout 10 oomguard events --json 2>/dev/null | grep -F '"leaky/0"')
sed 's/^/EVIDENCE d: event: /' <<<"$events"
first_ms=$(jq -s 'map(select(.action == "restart")) | first | .time_ms // empty' <<<"$events")
[ -n "$first_ms" ] || fail "d: no restart event for leaky/0 from the new daemon"
RELEAK_S=$(awk -v a="$kill_ms" -v b="$first_ms" 'BEGIN { printf "%.1f", (b - a) / 1000 }')
evidence "d: new daemon restarted the adopted leaker" "${RELEAK_S}s after the SIGKILL (event time)"

# ======== j. the journal's structured fields ========
# Self-contained: only reads the journal, after d. (leaky/0 restarted under pressure by the new
# daemon) and the manual restart of healthy/1. The MESSAGE_IDs are the contract listed in
# docs/install.md (src/events/journal.rs).
journal_fields() {
  echo "=== journal. journalctl -u oomguard with field matches: MESSAGE_ID, OOMGUARD_* and the figures"
  # Few journalctl and jq runs: each costs a second or more under TCG with the workers busy.
  local restart_id=931ff1f3ccd24e48ab311b16fb7477f2 out all e msg n t
  t=$(now)
  out=$(journalctl --no-pager -o json -u oomguard OOMGUARD_INSTANCE=leaky/0 MESSAGE_ID=$restart_id)
  all=$(journalctl --no-pager -o json -u oomguard MESSAGE_ID=$restart_id)
  evidence "journal: journalctl -u oomguard OOMGUARD_INSTANCE=leaky/0 MESSAGE_ID=<restart>" \
    "$(grep -c . <<<"$out") of $(grep -c . <<<"$all") restart entries"
  e=$(head -n 1 <<<"$out")
  [ -n "$e" ] || fail "journal: no restart entry for leaky/0 in the journal"
  evidence "journal: leaky/0 restart entry" "$(jq -c '{MESSAGE, MESSAGE_ID, PRIORITY, SYSLOG_IDENTIFIER,
    _SYSTEMD_UNIT} + with_entries(select(.key | startswith("OOMGUARD_")))' <<<"$e")"
  # The match filters (only leaky/0's entries, and fewer than all restarts); the entry has its
  # fields, and figures that are numbers within what the policy allows (memory.max 96M).
  jq -n -e --argjson all "$(grep -c . <<<"$all")" '[inputs] | . as $es | $es[0] as $e
    | ($es | all(.OOMGUARD_INSTANCE == "leaky/0")) and ($es | length) < $all
    and $e.OOMGUARD_POLICY == "leaky" and $e.OOMGUARD_INDEX == "0"
    and $e.OOMGUARD_REASON == "pressure" and $e.OOMGUARD_ACTION == "restart"
    and $e._SYSTEMD_UNIT == "oomguard.service" and $e.PRIORITY == "5"
    and ($e.MESSAGE | startswith("restart (pressure)"))
    and ($e.OOMGUARD_MEMORY_CURRENT | tonumber) > 0 and ($e.OOMGUARD_MEMORY_CURRENT | tonumber) <= 100663296
    and ($e.OOMGUARD_PSI_SOME_AVG10 | tonumber) >= 0 and ($e.OOMGUARD_SIGNAL_TO_EXIT_MS | tonumber) >= 0
    and ($e.OOMGUARD_MEMORY_EVENTS | test("high=[0-9]+"))' <<<"$out" >/dev/null ||
    fail "journal: the leaky/0 restart entries lack a field, have a wrong one, or the match did not filter: $e"
  # Among all restarts: healthy/1's manual one (the first daemon's), none for healthy/0.
  n=$(jq -r '.OOMGUARD_INSTANCE + " " + .OOMGUARD_REASON' <<<"$all" | sort | uniq -c | tr '\n' ';')
  evidence "journal: restart entries by instance and reason" "$n"
  grep -q ' healthy/1 manual;' <<<"$n" || fail "journal: no manual restart entry for healthy/1: $n"
  grep -q ' healthy/0 ' <<<"$n" && fail "journal: a restart entry for healthy/0, which was never restarted: $n"
  # The message is one of the daemon's events, and in the journal once: no plain-text copy
  # beside the structured entry (MESSAGE= is an indexed match, cheaper than reading the unit's
  # whole journal, which also holds every worker's output).
  msg=$(jq -r .MESSAGE <<<"$e")
  # (`[inputs | select(..)]`: jq 1.6's -e judges a stream by its last input, not its matches.)
  timeout 10 oomguard events --json 2>/dev/null |
    jq -n -e --arg m "$msg" '[inputs | select(.message == $m)] | length == 1' >/dev/null ||
    fail "journal: the journal's restart message is not an event of the daemon: $msg"
  n=$(journalctl --no-pager -o cat -u oomguard "MESSAGE=$msg" | grep -c .)
  [ "$n" = 1 ] || fail "journal: the restart message is in the journal $n times, want once"
  # Ordinary lines carry the instance too ("started ...", "adopted the running worker").
  out=$(journalctl --no-pager -o cat -u oomguard OOMGUARD_INSTANCE=healthy/0)
  evidence "journal: lines for OOMGUARD_INSTANCE=healthy/0" "$(grep -c . <<<"$out"): $(head -n 3 <<<"$out" | tr '\n' ';')"
  grep -q . <<<"$out" || fail "journal: no journal line carries OOMGUARD_INSTANCE=healthy/0"
  # Workers on journal streams of their own (issue 17 item 5): their lines are
  # oomguard-workers.service's, tagged with the instance, so they count against that unit's rate
  # limit and none of them can pass for one of the daemon's.
  out=$(journalctl --no-pager -o json _SYSTEMD_UNIT=oomguard-workers.service SYSLOG_IDENTIFIER=healthy/0)
  evidence "journal: healthy/0's own lines" "$(grep -c . <<<"$out"): $(jq -r .MESSAGE <<<"$out" | head -n 2 | tr '\n' ';')"
  jq -n -e '[inputs | select(.MESSAGE | test("^testworker [0-9]+: started"))] | length >= 1' <<<"$out" >/dev/null ||
    fail "journal: healthy/0's start line is not in oomguard-workers.service's journal under SYSLOG_IDENTIFIER=healthy/0"
  n=$(journalctl --no-pager -o cat _SYSTEMD_UNIT=oomguard.service | grep -c '^testworker ')
  evidence "journal: worker lines in the daemon's stream" "$n"
  [ "$n" = 0 ] || fail "journal: $n worker lines in oomguard.service's stream (want their own streams)"
  evidence "journal: step took" "$(secs_since "$t")s"
}
journal_fields

# ======== g. a SIGHUP reload that waits out a slow stop ========
# The reload stops a policy whose worker ignores SIGTERM: 14 s of grace. With WatchdogSec=8s a
# daemon whose main loop waited for the reload was SIGABRTed; now the reload runs beside it.
echo "=== g. WatchdogSec=8s; a SIGHUP reload that has to stop a slow policy (grace 14s)"
slow_policy() { policy slow 1 48M --ignore-sigterm | sed "s/grace: 10s/grace: $1/"; }
mkdir -p /run/systemd/system/oomguard.service.d
printf '[Service]\nWatchdogSec=8s\n' >/run/systemd/system/oomguard.service.d/watchdog.conf
systemctl daemon-reload
write_policy slow "$(slow_policy 14s)"
systemctl restart oomguard.service || fail "g: systemctl restart with WatchdogSec=8s failed"
wait_for 60 "healthy and slow/0 running" instances_running healthy/0 healthy/1 slow/0
DPID4=$(main_pid)
NR4=$(systemctl show -P NRestarts oomguard.service)
S0=$(pids_of slow/0)
evidence "g: daemon" "pid $DPID4, WatchdogUSec=$(systemctl show -P WatchdogUSec oomguard.service), NRestarts=$NR4, slow/0 pid $S0"
rm -f "$POLICIES/slow.yaml"
t=$(now)
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl reload oomguard.service || fail "g: systemctl reload removing slow failed"
slow_gone() { ! kill -0 "$S0" 2>/dev/null; }
wait_for 60 "slow/0 (pid $S0) to be killed after its 14 s grace" slow_gone
evidence "g: slow/0 gone after" "$(secs_since "$t")s"
sleep 2
dogs=$(journalctl --no-pager -u oomguard.service --since "$since" | grep -i 'watchdog')
[ -z "$dogs" ] || fail "g: the watchdog fired during the reload: $dogs"
active oomguard.service || fail "g: oomguard.service is $(systemctl is-active oomguard.service) after the slow reload"
[ "$(main_pid)" = "$DPID4" ] || fail "g: MainPID changed during the slow reload ($DPID4 -> $(main_pid))"
[ "$(systemctl show -P NRestarts oomguard.service)" = "$NR4" ] || fail "g: NRestarts changed during the slow reload"
status_json || fail "g: status after the slow reload"
[ -z "$(inst slow/0 .id)" ] || fail "g: slow/0 still listed after the reload removed it"
evidence "g: after the slow reload" "daemon $DPID4 still up, no watchdog in the journal, NRestarts=$NR4"

# ======== e. stop ========
echo "=== e. systemctl stop oomguard, with a slow policy: restart and reload refused meanwhile"
write_policy slow "$(slow_policy 8s)"
out=$(timeout 30 oomguard reload 2>&1) || fail "e: oomguard reload adding slow failed: $out"
wait_for 30 "slow/0 running" instances_running slow/0
status_json || fail "e: status before stop"
LAST=$(all_pids)
t=$(now)
since=$(date '+%Y-%m-%d %H:%M:%S')
systemctl stop oomguard.service &
STOPPER=$!
stopping() { journalctl --no-pager -u oomguard.service --since "$since" | grep -q 'shutting down: stopping workers'; }
wait_for 20 "the daemon to start shutting down" stopping
out=$(timeout 30 oomguard reload 2>&1)
rc=$?
evidence "e: oomguard reload during the stop" "exit $rc: $(tr '\n' ' ' <<<"$out")"
[ "$rc" = 1 ] && grep -q 'shutting down' <<<"$out" || fail "e: a reload during the stop exited $rc: $out"
out=$(timeout 30 oomguard restart slow/0 2>&1)
rc=$?
evidence "e: oomguard restart during the stop" "exit $rc: $(tr '\n' ' ' <<<"$out")"
[ "$rc" = 1 ] && grep -q 'shutting down' <<<"$out" || fail "e: a restart during the stop exited $rc: $out"
out=$(timeout 10 oomguard status 2>&1) || fail "e: status during the stop failed: $out"
evidence "e: status during the stop" "$(tr '\n' ';' <<<"$out")"
wait "$STOPPER" || fail "e: systemctl stop failed"
rm -f "$POLICIES/slow.yaml"
STOP_S=$(secs_since "$t")
evidence "e: systemctl stop took" "${STOP_S}s (workers before: $LAST)"
active oomguard.service && fail "e: oomguard.service still active after stop"
for p in $LAST; do kill -0 "$p" 2>/dev/null && fail "e: worker $p still alive after stop"; done
procs=$(find "$WORKERS" -name cgroup.procs -exec cat {} + 2>/dev/null | tr '\n' ' ')
evidence "e: processes left under workers/" "[${procs}]"
[ -z "${procs// /}" ] || fail "e: processes left under workers/: $procs"
evidence "e: groups left under workers/" "$(cd "$WORKERS" && find . -mindepth 1 -type d | tr '\n' ' ')"
active oomguard-workers.service || fail "e: oomguard-workers.service is $(systemctl is-active oomguard-workers.service) after stopping oomguard"
for f in "$LEDGERS"/healthy.ledger "$LEDGERS"/leaky.ledger; do
  started=$(awk '$1 == "start" { print $2 }' "$f" | sort -u)
  for p in $started; do
    grep -qx "exit $p clean" "$f" || fail "e: pid $p in $(basename "$f") has no 'exit $p clean' (not stopped gracefully)"
  done
  lost=$(awk '$1 == "start" { s[$2" "$3] = 1 } $1 == "done" { delete s[$2" "$3] } END { for (k in s) print k }' "$f")
  [ -z "$lost" ] || fail "e: lost jobs in $(basename "$f"): $(tr '\n' ';' <<<"$lost")"
  evidence "e: $(basename "$f")" "pids $(tr '\n' ' ' <<<"$started")all 'exit clean', $(grep -c '^done' "$f") jobs done, none lost"
done
if [ -e /run/oomguard ]; then evidence "e: /run/oomguard after stop" "still there"; else
  evidence "e: /run/oomguard after stop" "removed"; fi

# ======== f. start again after a stop ========
# The stop must leave the holder's workers group usable: the next start puts the workers there
# again, inside systemd's delegation, not somewhere else.
echo "=== f. systemctl start oomguard after the stop"
systemctl start oomguard.service || fail "f: systemctl start after stop failed"
wait_for 30 "healthy/0 running again" instances_running healthy/0
p=$(pids_of healthy/0)
g=$(group_of "$p")
evidence "f: healthy/0 after start-after-stop" "pid $p in $g"
case "$g" in
  */oomguard-workers.service/workers/healthy/0) ;;
  *) fail "f: healthy/0 (pid $p) runs in $g, not under oomguard-workers.service/workers" ;;
esac
systemctl stop oomguard.service || fail "f: second stop failed"

# ======== h, i, j. upgrade, remove, purge (package.sh) ========
t=$(now)
package_lifecycle
PACKAGE_S=$(secs_since "$t")

kill "$WATCHDOG" 2>/dev/null
evidence "timings" "(stop includes an 8 s grace) start ${START_S}s, reload ${RELOAD_S}s, restart ${RESTART_S}s, sigkill-recovery ${CRASH_S}s, adopted leaker restarted ${RELEAK_S}s after the kill, stop ${STOP_S}s, upgrade+remove+purge ${PACKAGE_S}s"
evidence "scenario seconds" "$(secs_since "$T0")"
echo "SCENARIO systemd PASS"
poweroff_now
