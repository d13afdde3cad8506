"""Benchmarks of the real-apps VM (not in the default suite): bench_apps_gunicorn,
bench_apps_celery (fleets side by side in one boot, three runs each, medians), and
apps_client_cost (which load client costs less CPU under TCG)."""
import os
import re
import signal
import subprocess
import time

from common import (APPS, BENCH, ChildWatcher, Fail, evidence, http_get, kill_group,
                    make_group, read, spawn, wait_until)


def cpu_ticks(pids):
    total = 0
    for p in pids:
        stat = read("/proc/%d/stat" % p)
        if stat:
            f = stat.rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total


def parse_load(text):
    m = re.search(r"LOAD served=(\d+) failed=(\d+) refused=(\d+) pids=(\d+) cpu_ms=(\d+)", text)
    if not m:
        raise Fail("no LOAD line from the client: %r" % text[-500:])
    return dict(zip(("served", "failed", "refused", "pids", "cpu_ms"), map(int, m.groups())))


def gunicorn_plain(name, env, extra=(), high=None, maxi=None):
    """gunicorn -w 2 in a bench group (no oomguard); returns (proc, group)."""
    group = make_group(os.path.join(BENCH, name), high=high, maxi=maxi)
    proc = spawn(["gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "--chdir", APPS]
                 + list(extra) + ["leakweb:app"], "/tmp/gunicorn-%s.log" % name, group=group,
                 env=dict(env, PYTHONPATH=APPS))

    def ready():
        try:
            return http_get(8000, "/", timeout=5)[0].split()[1] == "200"
        except (OSError, IndexError):
            return False
    wait_until(120, "gunicorn (%s) to answer" % name, ready, every=0.5)
    return proc, group


def stop_plain(proc, group, sig=signal.SIGTERM):
    try:
        os.kill(proc.pid, sig)
        proc.wait(60)
    except (OSError, subprocess.TimeoutExpired):
        pass
    kill_group(group)


def client_cost():
    """The same no-leak gunicorn, loaded 20 s by each client with 4 threads."""
    make_group(BENCH)
    with open(BENCH + "/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids")
    proc, group = gunicorn_plain("cost", {"LEAK_KB": "0"})
    for client in (["apps-load", "--threads", "4", "--seconds", "20", "--port", "8000"],
                   ["python3", APPS + "/loadhttp.py", "4", "20", "8000"],
                   ["apps-load", "--threads", "4", "--seconds", "20", "--port", "8000"]):
        server = [int(p) for p in read(group + "/cgroup.procs", "").split()]
        before = cpu_ticks(server)
        out = subprocess.run(client, capture_output=True, text=True, timeout=120).stdout
        load = parse_load(out)
        served = max(load["served"], 1)
        server_ms = (cpu_ticks(server) - before) * 10
        evidence("client cost %s" % os.path.basename(client[0] if client[0] != "python3" else client[1]),
                 "%d served, %d failed in 20 s; client CPU %d ms (%.2f ms/request); gunicorn CPU %d ms (%.2f ms/request)" % (
                     load["served"], load["failed"], load["cpu_ms"], load["cpu_ms"] / served,
                     server_ms, server_ms / served))
    stop_plain(proc, group)


def parse_celery(text):
    m = re.search(r"CELERY sent=(\d+) completed=(\d+) lost=(\d+) dup=(\d+) window=(\d+) cpu_ms=(\d+)", text)
    if not m:
        raise Fail("no CELERY line from the client: %r" % text[-500:])
    return dict(zip(("sent", "completed", "lost", "dup", "window", "cpu_ms"), map(int, m.groups())))


# ---- the fleets ----
BENCH_S = 40
ROUNDS = 3


class Plain:
    """A fleet without oomguard: the server in a bench group with the given limits."""

    def __init__(self, name, start, high=None, maxi=None):
        self.name, self.start_fn, self.high, self.maxi = name, start, high, maxi

    def start(self):
        self.proc, self.group = self.start_fn(self.name, self.high, self.maxi)

    def main_pid(self):
        return self.proc.pid

    def oom_kills(self):
        from common import memory_events
        return memory_events(self.group).get("oom_kill", -1)

    def stop(self):
        stop_plain(self.proc, self.group)


class Guarded:
    """A fleet run by oomguard from a policy; ident is the instance (e.g. gunicorn/0)."""

    def __init__(self, name, policy_name, text, ready, ident):
        self.name, self.policy_name, self.text, self.ready, self.ident = name, policy_name, text, ready, ident

    def start(self):
        from common import Daemon, POLICIES, write_policy
        for f in os.listdir(POLICIES) if os.path.isdir(POLICIES) else []:
            os.unlink(os.path.join(POLICIES, f))
        write_policy(self.policy_name, self.text)
        self.daemon = Daemon(log="/tmp/oomguard-%s.log" % self.name)
        wait_until(180, "%s to be ready" % self.name, self.ready, every=0.5)

    def main_pid(self):
        inst = self.daemon.instance(self.ident) or {}
        return (inst.get("pids") or [0])[0]

    def oom_kills(self):
        from common import CGROOT, memory_events
        return memory_events(os.path.join(CGROOT, self.ident)).get("oom_kill", -1)

    def recycles(self):
        evs = [e for e in self.daemon.events() if e.get("instance") == self.ident]
        return (sum(1 for e in evs if "child_recycle" in str(e.get("action", ""))),
                sum(1 for e in evs if e.get("action") == "restart"))

    def stop(self):
        self.daemon.stop(limit=240)


def _table(kind, rows, keys):
    print("TABLE %s fleet | %s" % (kind, " | ".join(keys)), flush=True)
    out = {}
    for fleet, runs in rows.items():
        med = {k: median([r[k] for r in runs]) for k in keys}
        out[fleet] = med
        print("TABLE %s %s | %s   (runs: %s)" % (kind, fleet, " | ".join("%g" % med[k] for k in keys),
              "; ".join(",".join("%s=%g" % (k, r[k]) for k in keys) for r in runs)), flush=True)
    return out


def _order(fleets, round_no):
    # A different order each round, so no fleet always runs first (cold caches) or last.
    k = round_no % len(fleets)
    return fleets[k:] + fleets[:k]


def _gunicorn_fleets(x2=False):
    """x2: every per-worker budget doubled (workers live twice as long between recycles)."""
    import policies
    if x2:
        return _gunicorn_fleets_x2()

    def plain(env, extra=()):
        return lambda name, high, maxi: gunicorn_plain(name, env, extra, high, maxi)
    leak = {"LEAK_KB": "256"}
    from suite import _http_ok
    fleets = [
        # The same app without the leak: what the 90 % target is measured against.
        Plain("no_leak", plain({"LEAK_KB": "0"})),
        # The ceiling: the leak's fresh pages faulted in every request and dropped, so no
        # worker grows and nothing recycles; what any guard could serve at best.
        Plain("ceiling", plain({"LEAK_KB": "256", "KEEP": "0"})),
        # The same envelope as the oomguard fleet's instance (policies.GUNICORN_ENVELOPE).
        Plain("no_guard_high_only", plain(leak), high="304M"),
        Plain("max_respawn", plain(leak), maxi="320M"),
        # 300 requests x 256 KB = 75M per worker, about the oomguard fleet's 80M trigger.
        Plain("max_requests", plain(leak, ["--max-requests", "300", "--max-requests-jitter", "30"]), maxi="320M"),
    ]
    if policies.children_supported():
        fleets.append(Guarded("oomguard_children", "gunicorn", policies.gunicorn_children(),
                              lambda: _http_ok(8000), "gunicorn/0"))
    return fleets


def _gunicorn_fleets_x2():
    import policies
    from suite import _http_ok
    plain = lambda env, extra=(): lambda name, high, maxi: gunicorn_plain(name, env, extra, high, maxi)
    leak = {"LEAK_KB": "256"}
    return [
        Plain("no_leak", plain({"LEAK_KB": "0"})),
        Plain("ceiling", plain({"LEAK_KB": "256", "KEEP": "0"})),
        Plain("max_respawn", plain(leak), maxi="592M"),
        Plain("max_requests", plain(leak, ["--max-requests", "600", "--max-requests-jitter", "60"]), maxi="592M"),
        Guarded("oomguard_children", "gunicorn", policies.gunicorn_children(x2=True),
                lambda: _http_ok(8000), "gunicorn/0"),
    ]


def bench_apps_gunicorn_x2():
    bench_apps_gunicorn(x2=True)


def bench_apps_gunicorn(x2=False):
    from common import vmstat_oom_kill
    _bench_root()
    fleets = _gunicorn_fleets(x2)
    rows = {f.name: [] for f in fleets}
    for rnd in range(ROUNDS):
        for f in _order(fleets, rnd):
            f.start()
            vm0 = vmstat_oom_kill()
            out = subprocess.run(["apps-load", "--threads", "4", "--seconds", str(BENCH_S), "--port", "8000"],
                                 capture_output=True, text=True, timeout=BENCH_S + 120).stdout
            load = parse_load(out)
            row = dict(load, rps=load["served"] / BENCH_S, oom_kills=vmstat_oom_kill() - vm0,
                       group_oom=f.oom_kills(), new_workers=max(load["pids"] - 2, 0))
            # oomguard's own count of recycled workers, and of whole-server restarts (a restart
            # closes the listening socket: the refused column).
            row["recycles"], row["restarts"] = f.recycles() if isinstance(f, Guarded) else (row["new_workers"], 0)
            f.stop()
            print("RESULT bench_apps_gunicorn round=%d fleet=%s %s" % (
                rnd + 1, f.name, " ".join("%s=%s" % kv for kv in sorted(row.items()))), flush=True)
            rows[f.name].append(row)
    _table("gunicorn", rows, ["served", "rps", "failed", "refused", "oom_kills", "new_workers", "recycles", "restarts"])
    _ratios("gunicorn", rows, "rps", ["no_leak", "ceiling"])


def _ratios(kind, rows, key, bases):
    """Each fleet's `key` over each base fleet's in the same round, the median over rounds: a
    round's fleets run back to back in one boot, so a slow round slows them all."""
    for name, runs in rows.items():
        for base in bases:
            per_round = [r[key] / b[key] for r, b in zip(runs, rows.get(base, [])) if b[key] > 0]
            if per_round and name != base:
                print("TABLE %s %s %s_vs_%s %.2f   (rounds: %s)" % (
                    kind, name, key, base, median(per_round),
                    ", ".join("%.2f" % x for x in per_round)), flush=True)


def _bench_root():
    make_group(BENCH)
    with open(BENCH + "/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids")


def median(xs):
    from common import median as m
    return m(xs)


# ---- Celery ----
def celery_plain(name, env, extra=(), high=None, maxi=None):
    import policies
    group = make_group(os.path.join(BENCH, name), high=high, maxi=maxi)
    log = "/tmp/celery-worker.log"
    try:
        os.unlink(log)
    except OSError:
        pass
    proc = spawn(policies.CELERY + policies.CELERY_ARGS + list(extra), "/tmp/celery-%s.out" % name,
                 group=group, env=dict(env, PYTHONPATH=APPS))
    wait_until(180, "celery (%s) to be ready" % name, lambda: "ready." in (read(log, "") or ""), every=0.5)
    return proc, group


def _celery_reset(ledger):
    from common import redis
    redis("flushall")
    try:
        os.unlink(ledger)
    except OSError:
        pass
    try:
        os.unlink("/tmp/celery-worker.log")
    except OSError:
        pass


# Per task: 40 s at 3-6 tasks/s under TCG must take each pool process past its limits several
# times, and the group past memory.max (240M) for the max_respawn fleet.
CELERY_BENCH_LEAK_KB = 2048


def _celery_fleets(ledger):
    import policies
    leak = {"LEAK_KB": str(CELERY_BENCH_LEAK_KB), "LEDGER": ledger}

    def plain(env, extra=()):
        return lambda name, high, maxi: celery_plain(name, env, extra, high, maxi)
    knob = ["--max-memory-per-child=%d" % policies.MAX_MEMORY_PER_CHILD_KB]
    ready = lambda: "ready." in (read("/tmp/celery-worker.log", "") or "")
    fleets = [
        Plain("no_leak", plain({"LEAK_KB": "0", "LEDGER": ledger})),
        Plain("ceiling", plain({"LEAK_KB": str(CELERY_BENCH_LEAK_KB), "KEEP": "0", "LEDGER": ledger})),
        Plain("no_guard_high_only", plain(leak), high="208M"),
        Plain("max_respawn", plain(leak), maxi="240M"),
        Plain("max_memory_per_child", plain(leak, knob), maxi="240M"),
    ]
    if policies.children_supported():
        fleets += [
            Guarded("oomguard_children_none", "celery",
                    policies.celery_children(ledger, leak_kb=CELERY_BENCH_LEAK_KB), ready, "celery/0"),
            Guarded("oomguard_children_instance", "celery",
                    policies.celery_children(ledger, leak_kb=CELERY_BENCH_LEAK_KB, scope="instance"), ready, "celery/0"),
        ]
    return fleets


def bench_apps_celery():
    from common import redis, start_redis, vmstat_oom_kill
    _bench_root()
    start_redis()
    ledger = "/tmp/celery.ledger"
    fleets = _celery_fleets(ledger)
    rows = {f.name: [] for f in fleets}
    for rnd in range(ROUNDS):
        for f in _order(fleets, rnd):
            _celery_reset(ledger)
            f.start()
            vm0 = vmstat_oom_kill()
            pool = ChildWatcher(f.main_pid())
            out = subprocess.run(["python3", APPS + "/celeryload.py", "--seconds", str(BENCH_S),
                                  "--ledger", ledger, "--quiet", "15", "--drain", "90"],
                                 capture_output=True, text=True, timeout=BENCH_S + 200).stdout
            load = parse_celery(out)
            # Pool processes replaced (by Celery's knob, oomguard or the OOM killer): every
            # child of the main process seen beyond the first two.
            row = dict(load, tps=load["window"] / BENCH_S, oom_kills=vmstat_oom_kill() - vm0,
                       group_oom=f.oom_kills(), new_pool=max(len(pool.stop()) - 2, 0),
                       unacked=int(redis("hlen", "unacked") or 0))
            if isinstance(f, Guarded):
                row["recycles"], row["restarts"] = f.recycles()
            else:
                row["recycles"], row["restarts"] = 0, 0
            f.stop()
            print("RESULT bench_apps_celery round=%d fleet=%s %s" % (
                rnd + 1, f.name, " ".join("%s=%s" % kv for kv in sorted(row.items()))), flush=True)
            rows[f.name].append(row)
    _table("celery", rows, ["sent", "window", "tps", "completed", "lost", "dup", "oom_kills", "new_pool", "recycles", "restarts"])
    _ratios("celery", rows, "tps", ["no_leak", "ceiling", "max_memory_per_child"])


def apps_celery_warm():
    """Issue 8's Celery story (item C): the whole worker restarted by oomguard (no `children:`),
    with a 20 s grace and with a 120 s one, 60 s of load each: how long each warm shutdown took
    (signal_to_exit_ms of the restart events), whether the group was killed, lost and duplicated
    tasks, what was left in Redis, and billiard's own warnings from the worker's log."""
    import policies
    from common import redis, start_redis, vmstat_oom_kill
    start_redis()
    ledger = "/tmp/celery.ledger"
    ready = lambda: "ready." in (read("/tmp/celery-worker.log", "") or "")
    for name, grace, pressure_only in (("pressure_only_grace_20s", "20s", True),
                                       ("pressure_only_grace_120s", "120s", True),
                                       ("memory_level_grace_20s", "20s", False)):
        _celery_reset(ledger)
        f = Guarded(name, "celery", policies.celery_instance(ledger, grace, pressure_only=pressure_only),
                    ready, "celery/0")
        f.start()
        vm0 = vmstat_oom_kill()
        out = subprocess.run(["python3", APPS + "/celeryload.py", "--seconds", "60", "--ledger", ledger,
                              "--quiet", "20", "--drain", "150"], capture_output=True, text=True, timeout=400).stdout
        load = parse_celery(out)
        evs = [e for e in f.daemon.events() if e.get("instance") == "celery/0" and e.get("action") == "restart"]
        for e in evs:
            evidence("%s restart" % f.name, e)
        log = read("/tmp/celery-worker.log", "") or ""
        lost_ids = re.findall(r"CELERY lost-task \d+ (\S+)", out)
        for line in log.splitlines():
            if any(k in line for k in ["could not ensure", "Warm shutdown", "WorkerLost", "Restoring", "restor"] + lost_ids):
                print("    celery log | %s" % line[:300])
        for line in out.splitlines():
            if line.startswith("CELERY lost-task"):
                print("    " + line)
        print("RESULT apps_celery_warm fleet=%s sent=%d completed=%d lost=%d dup=%d window=%d restarts=%d "
              "signal_to_exit_ms=%s oom_kills=%d unacked=%s queue=%s billiard_warnings=%d" % (
                  name, load["sent"], load["completed"], load["lost"], load["dup"], load["window"],
                  len(evs), [e.get("signal_to_exit_ms") for e in evs], vmstat_oom_kill() - vm0,
                  redis("hlen", "unacked"), redis("llen", "celery"), log.count("could not ensure")), flush=True)
        f.stop()
