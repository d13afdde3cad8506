"""Issue 20's proof with a real OCI runtime: gunicorn -w 2 in a runc container (tests/vm/apps/
runc.py: memory.max 192M, memory.oom.group=1, a cgroup namespace, restartPolicy Always), every
request leaking 256 KB, loaded from outside the container.

bench_runc: one row per configuration in the same boot, ROUNDS rounds in a rotating order,
  medians in TABLE lines and METRIC lines: no oomguard; gunicorn's own --max-requests;
  `oomguard exec --children` as the entrypoint with writable cgroups; the same with read-only
  cgroups (READ_ONLY_MODE below); the app without the leak (the requests/s ceiling).
apps_runc: the oomguard row alone, paced load: 0 container OOM kills, 0 failed or refused
  requests, no container restart, at least one worker recycled, a clean stop (exit 0).
"""
import re
import subprocess
import time

import runc
from bench import _order, _ratios, _table, parse_load
from common import Fail, ensure, evidence, read, vmstat_oom_kill, wait_until
from suite import _http_ok

# The read-only (signals-only) mode's row; False: the row starts its container once and reports
# oomguard's refusal (for a build without the mode).
READ_ONLY_MODE = True

GUNICORN = ["gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "--chdir", "/apps", "leakweb:app"]
# --max-requests: each worker may keep (192M - about 30M for the arbiter, the interpreter's
# shared pages and page cache - a margin) / 2 workers / 256 KB a request. 240 with a jitter of
# 24 is at most 264 x 256 KB = 66M of leak a worker, two of them 132M + 30M under 192M.
MAX_REQUESTS = ["--max-requests", "240", "--max-requests-jitter", "24"]
# exec's defaults for 192M: instance high 134M / max 168M, children 67M / 84M. Both workers leak
# together, so the instance's boundary (its 126M sentinel) is crossed before either child's own;
# it recycles the biggest child first, and restarts the whole server only when the arbiter owns
# the most (docs/policy.md, "The envelope's boundary").
OOMGUARD = ["oomguard", "exec", "--children", "--"]


def rows():
    """name -> (config.json, whether oomguard is the entrypoint)."""
    leak = ["LEAK_KB=256"]
    return {
        "no_oomguard": (runc.spec(GUNICORN, leak), False),
        "max_requests": (runc.spec(GUNICORN + MAX_REQUESTS, leak), False),
        "oomguard_writable": (runc.spec(OOMGUARD + GUNICORN, leak), True),
        "oomguard_read_only": (runc.spec(OOMGUARD + GUNICORN, leak, writable_cgroups=False), True),
        "no_leak": (runc.spec(GUNICORN, ["LEAK_KB=0"]), False),
    }


def kernel_arg(name, default):
    m = re.search(r"oomguard\.%s=(\d+)" % name, read("/proc/cmdline", ""))
    return int(m.group(1)) if m else default


def daemon_sample(c):
    """(resident KiB, CPU ticks) of oomguard's processes in the container (the PID 1 init and
    the daemon), read from the VM's side."""
    rss = ticks = 0
    for pid in c.pids():
        if (read("/proc/%d/comm" % pid, "") or "").strip() != "oomguard":
            continue
        for line in (read("/proc/%d/status" % pid, "") or "").splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
        stat = read("/proc/%d/stat" % pid, "")
        if stat:
            f = stat.rsplit(")", 1)[1].split()
            ticks += int(f[11]) + int(f[12])
    return rss, ticks


def oomguard_counts(c):
    """(child recycles, instance restarts) from `oomguard events` run in the container, as
    `kubectl exec POD -- oomguard events` would."""
    r = c.exec("oomguard", "events", "--json", "--last", "1000")
    if r.returncode != 0:
        evidence("oomguard events in %s" % c.id, "exit %d: %s" % (r.returncode, r.stderr.strip()))
        return -1, -1
    acts = [l for l in r.stdout.splitlines() if l.startswith("{")]
    return (sum('"child_recycle"' in l for l in acts),
            sum('"action":"restart"' in l.replace(" ", "") for l in acts))


def decisions(c, most=12):
    """The daemon's restart and recycle lines from the container's log (its stderr): the first
    `most`, and every whole-instance restart after them."""
    keys = ("restart (", "recycle", "escalat", "WARN", "ERROR", "whole instance")
    whole = ("restart (", "whole instance", "escalat")
    lines = [l for l in (read(c.log, "") or "").splitlines() if any(k in l for k in keys)]
    late = [l for l in lines[most:] if any(k in l for k in whole)]
    return [l[:600] for l in lines[:most] + late]


def refused(name, c):
    """The read-only row while the mode is not built: oomguard's own words from the first start."""
    try:
        wait_until(60, "%s to end" % c.id, lambda: c.exits, every=0.5)
    except Fail:
        c.stop()
        print("RESULT bench_runc row=%s ran: oomguard did not refuse the read-only mount; set "
              "READ_ONLY_MODE = True in runc_bench.py" % name, flush=True)
        return
    c.stop(limit=10)
    said = [l for l in (read(c.log, "") or "").splitlines() if "oomguard" in l.lower()]
    evidence("%s oomguard said" % name, said[-1:] or c.tail(5))
    print("RESULT bench_runc row=%s refused: read-only mode not available (exit %s)" % (
        name, c.exits[0][1] if c.exits else "?"), flush=True)


def run_row(name, config, guarded, seconds, rate=0):
    """One container under load; returns the row's figures."""
    c = runc.Container(name, config)
    try:
        wait_until(180, "gunicorn in %s to answer" % c.id, lambda: _http_ok(8000), every=0.5)
        restarts0 = c.restarts()
        if guarded:
            time.sleep(5)
        rss_idle, t0 = daemon_sample(c)
        idle_s = 10 if guarded else 0
        time.sleep(idle_s)
        rss_idle2, t1 = daemon_sample(c)
        ev0, vm0 = c.events(), vmstat_oom_kill()
        cmd = ["apps-load", "--threads", "4", "--seconds", str(seconds), "--port", "8000"]
        out = subprocess.run(cmd + (["--rate", str(rate)] if rate else []), capture_output=True,
                             text=True, timeout=seconds + 120).stdout
        load = parse_load(out)
        ev1 = c.events()
        rss_load, t2 = daemon_sample(c)
        row = dict(load, rps=load["served"] / seconds,
                   oom_group_kills=ev1.get("oom_group_kill", 0) - ev0.get("oom_group_kill", 0),
                   oom_kills=ev1.get("oom_kill", 0) - ev0.get("oom_kill", 0),
                   vm_oom_kills=vmstat_oom_kill() - vm0, restarts=c.restarts() - restarts0,
                   new_workers=max(load["pids"] - 2, 0), recycles=0)
        if guarded:
            row["recycles"], row["instance_restarts"] = oomguard_counts(c)
            # Ticks are 10 ms: percent of one CPU = ticks / seconds.
            row.update(daemon_rss_idle_kb=max(rss_idle, rss_idle2), daemon_rss_load_kb=rss_load,
                       daemon_cpu_idle_pct=(t1 - t0) / idle_s, daemon_cpu_load_pct=(t2 - t1) / seconds)
            evidence("%s status" % c.id, c.exec("oomguard", "status").stdout.strip())
            for line in decisions(c):
                evidence("%s decided" % c.id, line)
        evidence("%s pod memory.events" % c.id, ev1)
    finally:
        row_exit = c.stop()
    row["exit"] = row_exit
    for t, rc in c.exits:
        evidence("%s runc run ended" % c.id, "status %d" % rc)
    return row


def bench_runc():
    runc.ensure_rootfs()
    seconds, rounds = kernel_arg("seconds", 60), kernel_arg("rounds", 3)
    table = rows()
    names = list(table)
    results = {n: [] for n in names if READ_ONLY_MODE or n != "oomguard_read_only"}
    for rnd in range(rounds):
        for name in _order(names, rnd):
            config, guarded = table[name]
            if name == "oomguard_read_only" and not READ_ONLY_MODE:
                if rnd == 0:
                    refused(name, runc.Container(name, config))
                continue
            row = run_row(name, config, guarded, seconds)
            print("RESULT bench_runc round=%d row=%s %s" % (
                rnd + 1, name, " ".join("%s=%s" % kv for kv in sorted(row.items()))), flush=True)
            results[name].append(row)
    keys = ["served", "rps", "failed", "refused", "oom_group_kills", "oom_kills", "restarts",
            "new_workers", "recycles"]
    med = _table("runc", results, keys)
    _ratios("runc", results, "rps", ["no_leak"])
    for name, m in med.items():
        for k in keys:
            print("METRIC runc_%s_%s %g" % (name, k, m[k]))
    for k in ("daemon_rss_idle_kb", "daemon_rss_load_kb", "daemon_cpu_idle_pct", "daemon_cpu_load_pct"):
        from common import median
        print("METRIC runc_oomguard_writable_%s %g" % (
            k, median([r[k] for r in results["oomguard_writable"]])))


def apps_runc():
    runc.ensure_rootfs()
    config, _ = rows()["oomguard_writable"]
    # Paced as apps_gunicorn: a worker lives long enough between recycles on any host.
    row = run_row("oomguard_writable", config, True, kernel_arg("seconds", 40),
                  rate=kernel_arg("rate", 40))
    print("RESULT apps_runc %s" % " ".join("%s=%s" % kv for kv in sorted(row.items())), flush=True)
    ensure(row["served"] > 0, "no request served")
    ensure(row["oom_kills"] == 0 and row["oom_group_kills"] == 0 and row["vm_oom_kills"] == 0,
           "OOM kills in the container: %d (group kills %d, /proc/vmstat %d)" % (
               row["oom_kills"], row["oom_group_kills"], row["vm_oom_kills"]))
    ensure(row["failed"] == 0 and row["refused"] == 0,
           "%d failed and %d refused requests" % (row["failed"], row["refused"]))
    ensure(row["restarts"] == 0, "the container was restarted %d times" % row["restarts"])
    ensure(row["recycles"] >= 1 and row["pids"] >= 3,
           "no worker recycled (%d child_recycle events, %d worker pids answered)" % (
               row["recycles"], row["pids"]))
    ensure(row["instance_restarts"] == 0, "gunicorn was restarted whole %d times" % row["instance_restarts"])
    ensure(row["exit"] == 0, "the container's stop ended with status %s, want 0" % row["exit"])
