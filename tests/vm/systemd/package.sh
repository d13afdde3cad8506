# shellcheck shell=bash
# shellcheck disable=SC2317,SC2015,SC2012  # ls: our own .deb names; helpers are called through wait_for; `a && b || fail` is intended
# The package's life in the `systemd` VM scenario, sourced by scenario.sh (whose helpers it uses:
# fail, evidence, wait_for, status_json, inst, pids_of, all_pids, main_pid, active,
# instances_running, policy, write_policy, now, secs_since). The .debs are built on the host by
# packaging/build-deb.sh (tests/vm/systemd/run.sh): revision 1 is installed, revision 2 is the
# upgrade.
#   package_install    `dpkg -i` of revision 1 before any other step: nothing of oomguard is in
#                      the image before it
#   package_lifecycle  after the other steps: upgrade with workers running, `dpkg -r`, `dpkg -P`

DEBS=/var/cache/oomguard-test
UNIT_DIRS="/lib/systemd/system /usr/lib/systemd/system"
# oomguard-metrics.service's default directory: Debian's prometheus-node-exporter reads it.
TEXTFILE=/var/lib/prometheus/node-exporter

deb_of_revision() { ls "$DEBS"/oomguard_*-"$1"_*.deb 2>/dev/null | head -n 1; }
deb_status() { dpkg-query -W -f='${Status}' oomguard 2>/dev/null || echo "not in the dpkg database"; }
journal_since() { journalctl --no-pager -u oomguard.service -u oomguard-workers.service --since "$1" 2>/dev/null; }
# run_dpkg <step> <args...>: dpkg's output as evidence; fails the step on a non-zero exit.
run_dpkg() {
  local step=$1 out rc t
  shift
  t=$(now)
  out=$(dpkg "$@" 2>&1)
  rc=$?
  evidence "$step: dpkg $*" "exit $rc after $(secs_since "$t")s: $(tr '\n' ' ' <<<"$out")"
  [ "$rc" = 0 ] || fail "$step: dpkg $* exited $rc: $out"
}

package_install() {
  echo "=== install: dpkg -i of revision 1"
  local deb
  deb=$(deb_of_revision 1)
  [ -n "$deb" ] || fail "install: no revision 1 .deb in $DEBS: $(ls "$DEBS" 2>&1)"
  [ ! -e /usr/bin/oomguard ] || fail "install: /usr/bin/oomguard exists before the package is installed"
  run_dpkg install -i "$deb"
  [ "$(deb_status)" = "install ok installed" ] || fail "install: dpkg status is '$(deb_status)'"
  [ -x /usr/bin/oomguard ] || fail "install: no /usr/bin/oomguard after dpkg -i"
  evidence "install: version" "$(dpkg-query -W -f='${Version}' oomguard), $(/usr/bin/oomguard --version)"
  evidence "install: unit" "$(systemctl show -P FragmentPath oomguard.service), $(systemctl is-enabled oomguard.service)"
  [ "$(systemctl is-enabled oomguard.service 2>&1)" = enabled ] ||
    fail "install: oomguard.service is '$(systemctl is-enabled oomguard.service 2>&1)' after dpkg -i, want enabled"
  # No policy yet (only the *.sample): a fresh install starts nothing.
  active oomguard.service && fail "install: dpkg -i started oomguard.service"
  [ "$(systemctl is-enabled oomguard-metrics.timer 2>&1)" = disabled ] ||
    fail "install: oomguard-metrics.timer is '$(systemctl is-enabled oomguard-metrics.timer 2>&1)', want disabled"
  getent group oomguard >/dev/null || fail "install: postinst made no oomguard group"
  local dir
  dir=$(stat -c '%U:%G %a' "$POLICIES" 2>&1)
  evidence "install: $POLICIES" "$dir: $(ls "$POLICIES" | tr '\n' ' ')"
  [ "$dir" = "root:root 755" ] || fail "install: $POLICIES is '$dir', want root:root 755"
  [ -f "$POLICIES/example.yaml.sample" ] || fail "install: no example.yaml.sample in $POLICIES"
}

package_lifecycle() {
  local d1 h0 h1 holder_pid since t out n deb2
  # ======== h. upgrade with the workers running ========
  echo "=== h. dpkg -i of revision 2 while the workers run: kept and adopted"
  # The package steps test the shipped unit (WatchdogSec=30s), not step g's 8 s drop-in: under
  # TCG on a loaded host the new daemon's start and adoption once ran past 8 s of guest time
  # ("Watchdog timeout (limit 8s)!" 9 s after READY=1), which says nothing about the package.
  rm -f /run/systemd/system/oomguard.service.d/watchdog.conf
  systemctl daemon-reload
  deb2=$(deb_of_revision 2)
  [ -n "$deb2" ] || fail "h: no revision 2 .deb in $DEBS"
  rm -f "$POLICIES/leaky.yaml" "$POLICIES/slow.yaml"
  write_policy healthy "$(policy healthy 2 64M)"
  systemctl start oomguard.service || fail "h: systemctl start before the upgrade failed"
  wait_for 30 "healthy/0 and healthy/1 running before the upgrade" instances_running healthy/0 healthy/1
  d1=$(main_pid) h0=$(pids_of healthy/0) h1=$(pids_of healthy/1)
  holder_pid=$(systemctl show -P MainPID oomguard-workers.service)
  evidence "h: before the upgrade" "daemon $d1, holder $holder_pid, healthy/0=$h0 healthy/1=$h1"
  # An installed policy the new binary refuses: postinst must fail and leave the old daemon
  # guarding (issue 17, item 4), never restart into a daemon that will not start.
  echo "=== h0. dpkg -i of revision 2 with a policy it refuses: dpkg fails, the old daemon keeps guarding"
  write_policy refused "$(policy refused 1 32M | sed 's/^  instances:/  instnaces:/')"
  out=$(dpkg -i "$deb2" 2>&1)
  n=$?
  evidence "h0: dpkg -i (refused policy)" "exit $n: $(tr '\n' ' ' <<<"$out")"
  [ "$n" != 0 ] || fail "h0: dpkg -i exited 0 with a policy the new version refuses"
  grep -q "$POLICIES/refused.yaml" <<<"$out" && grep -q instnaces <<<"$out" &&
    grep -q 'was NOT restarted' <<<"$out" && grep -q 'dpkg --configure oomguard' <<<"$out" ||
    fail "h0: dpkg's output does not name the file, the error and what to do: $out"
  [ "$(main_pid)" = "$d1" ] && active oomguard.service ||
    fail "h0: the old daemon $d1 is not running after the refused upgrade (MainPID $(main_pid), $(systemctl is-active oomguard.service))"
  instances_running healthy/0 healthy/1 && [ "$(pids_of healthy/0)" = "$h0" ] && [ "$(pids_of healthy/1)" = "$h1" ] ||
    fail "h0: the old daemon does not report healthy/0=$h0 healthy/1=$h1 after the refused upgrade"
  rm -f "$POLICIES/refused.yaml"
  evidence "h0: after the refused upgrade" "daemon $d1 still active and guarding healthy/0=$h0 healthy/1=$h1; dpkg status '$(deb_status)'"
  since=$(date '+%Y-%m-%d %H:%M:%S')
  t=$(now)
  run_dpkg h -i "$deb2"
  evidence "h: upgrade took" "$(secs_since "$t")s"
  [ "$(dpkg-query -W -f='${Version}' oomguard)" = "$(dpkg-deb -f "$deb2" Version)" ] ||
    fail "h: installed version is $(dpkg-query -W -f='${Version}' oomguard), want $(dpkg-deb -f "$deb2" Version)"
  # postinst's try-restart waits for the new daemon's READY=1, so it is up when dpkg returns.
  active oomguard.service || fail "h: oomguard.service is $(systemctl is-active oomguard.service) after the upgrade"
  [ "$(main_pid)" != "$d1" ] || fail "h: the daemon was not restarted by the upgrade (MainPID still $d1)"
  [ "$(systemctl show -P MainPID oomguard-workers.service)" = "$holder_pid" ] ||
    fail "h: oomguard-workers.service was restarted by the upgrade (holder $holder_pid -> $(systemctl show -P MainPID oomguard-workers.service))"
  for p in $h0 $h1; do
    kill -0 "$p" 2>/dev/null || fail "h: worker $p died in the upgrade"
    grep -q "^exit $p " "$LEDGERS/healthy.ledger" && fail "h: worker $p exited during the upgrade"
  done
  wait_for 30 "the new daemon's status" instances_running healthy/0 healthy/1
  [ "$(pids_of healthy/0)" = "$h0" ] && [ "$(pids_of healthy/1)" = "$h1" ] ||
    fail "h: pids changed by the upgrade: healthy/0 $h0 -> $(pids_of healthy/0), healthy/1 $h1 -> $(pids_of healthy/1)"
  out=$(journal_since "$since")
  grep -E 'SIGUSR2|adopted the running worker|shutting down' <<<"$out" | sed 's/^/EVIDENCE h: journal: /'
  grep -q 'shutting down: stopping workers' <<<"$out" && fail "h: the upgrade stopped the daemon with SIGTERM (workers drained)"
  n=$(grep -c 'adopted the running worker' <<<"$out")
  [ "$n" -ge 2 ] || fail "h: the new daemon logged $n 'adopted the running worker' lines, want one per instance"
  evidence "h: after the upgrade" "daemon $d1 -> $(main_pid), holder $holder_pid kept, healthy/0=$h0 healthy/1=$h1 kept and adopted"
  # Adopted means guarded: the new daemon restarts a worker of the old one gracefully.
  timeout 60 oomguard restart healthy/1 >/dev/null || fail "h: oomguard restart healthy/1 after the upgrade failed"
  h1_replaced() { instances_running healthy/1 && [ "$(pids_of healthy/1)" != "$h1" ]; }
  wait_for 30 "healthy/1 restarted by the new daemon" h1_replaced
  # The metrics unit writes where Debian's prometheus-node-exporter reads.
  systemctl start oomguard-metrics.service ||
    fail "h: systemctl start oomguard-metrics.service failed: $(journalctl --no-pager -u oomguard-metrics.service | tail -n 8 | tr '\n' ' ')"
  grep -q '^oomguard_' "$TEXTFILE/oomguard.prom" 2>/dev/null ||
    fail "h: no oomguard_ series in $TEXTFILE/oomguard.prom: $(ls -la "$TEXTFILE" 2>&1)"
  evidence "h: metrics textfile" "$(grep -c '^oomguard_' "$TEXTFILE/oomguard.prom") series in $TEXTFILE/oomguard.prom"
  grep -qx "exit $h1 clean" "$LEDGERS/healthy.ledger" || fail "h: adopted pid $h1 has no 'exit $h1 clean' after oomguard restart"
  evidence "h: adopted healthy/1 restarted" "$h1 -> $(pids_of healthy/1), exit clean"

  # ======== i. dpkg -r: workers drained, nothing left, config kept ========
  echo "=== i. dpkg -r oomguard: every worker stopped gracefully, config kept"
  local last policy_before
  status_json || fail "i: status before dpkg -r"
  last=$(all_pids)
  policy_before=$(cat "$POLICIES/healthy.yaml")
  since=$(date '+%Y-%m-%d %H:%M:%S')
  run_dpkg i -r oomguard
  [ "$(deb_status)" = "deinstall ok config-files" ] || fail "i: dpkg status after -r is '$(deb_status)', want 'deinstall ok config-files'"
  for p in $last; do
    kill -0 "$p" 2>/dev/null && fail "i: worker $p still alive after dpkg -r"
    grep -qx "exit $p clean" "$LEDGERS/healthy.ledger" || fail "i: worker $p has no 'exit $p clean' (not stopped gracefully)"
  done
  out=$(pgrep -a -x oomguard || true)
  [ -z "$out" ] || fail "i: oomguard processes left after dpkg -r: $out"
  out=$(pgrep -a testworker || true)
  [ -z "$out" ] || fail "i: test workers left after dpkg -r: $out"
  for u in oomguard.service oomguard-workers.service oomguard-metrics.timer; do
    active "$u" && fail "i: $u still active after dpkg -r"
  done
  journal_since "$since" | grep -q 'shutting down: stopping workers gracefully' ||
    fail "i: no 'shutting down: stopping workers gracefully' in the journal: the daemon was not stopped by SIGTERM"
  # The daemon's root is $WORKERS, inside oomguard-workers.service's cgroup: systemd removes the
  # whole unit cgroup once the unit is stopped and empty.
  holder_gone() { [ ! -e "$HOLDER" ]; }
  wait_for 10 "systemd to remove $HOLDER (a stray cgroup otherwise)" holder_gone
  [ ! -e /usr/bin/oomguard ] || fail "i: /usr/bin/oomguard still there after dpkg -r"
  for d in $UNIT_DIRS; do
    [ ! -e "$d/oomguard.service" ] || fail "i: $d/oomguard.service still there after dpkg -r"
  done
  [ ! -e /run/oomguard ] || fail "i: /run/oomguard still there after dpkg -r: $(ls -la /run/oomguard)"
  [ "$(cat "$POLICIES/healthy.yaml" 2>&1)" = "$policy_before" ] || fail "i: $POLICIES/healthy.yaml changed or gone after dpkg -r"
  [ -f "$POLICIES/example.yaml.sample" ] || fail "i: the conffile example.yaml.sample is gone after dpkg -r"
  [ ! -e "$TEXTFILE/oomguard.prom" ] || fail "i: $TEXTFILE/oomguard.prom still there after dpkg -r"
  evidence "i: after dpkg -r" "workers $last gone (exit clean), no oomguard process, $HOLDER gone, kept: $(ls "$POLICIES" | tr '\n' ' ')"

  # ======== j. dpkg -P: config gone ========
  echo "=== j. dpkg -P oomguard: configuration gone"
  run_dpkg j -P oomguard
  case "$(deb_status)" in
    "unknown ok not-installed" | "not in the dpkg database") ;;
    *) fail "j: dpkg status after -P is '$(deb_status)'" ;;
  esac
  # The operator's policy is not the package's: purge keeps it, and deletes only the conffile.
  [ "$(cat "$POLICIES/healthy.yaml" 2>&1)" = "$policy_before" ] ||
    fail "j: dpkg -P deleted or changed the operator's $POLICIES/healthy.yaml: $(find /etc/oomguard 2>&1 | tr '\n' ' ')"
  [ ! -e "$POLICIES/example.yaml.sample" ] || fail "j: the conffile example.yaml.sample is still there after dpkg -P"
  [ ! -e /var/lib/oomguard ] || fail "j: /var/lib/oomguard still there after dpkg -P"
  # (oomguard-scenario.service is this test's own unit.)
  out=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
    /var/lib/systemd/deb-systemd-helper-masked \( -name 'oomguard.service*' -o \
    -name 'oomguard-workers.service*' -o -name 'oomguard-metrics.*' \) 2>/dev/null | tr '\n' ' ')
  [ -z "$out" ] || fail "j: unit state left after dpkg -P: $out"
  evidence "j: after dpkg -P" "kept: $(find /etc/oomguard | tr '\n' ' '); conffile and /var/lib/oomguard gone, no unit links or deb-systemd-helper state; group kept: $(getent group oomguard)"
}
