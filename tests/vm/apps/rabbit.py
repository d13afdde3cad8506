"""apps_rabbitmq (by name, issue 19 items 1 and 2): Debian's rabbitmq-server started outside the
guarded groups, its start time under TCG measured, and Celery's leaking app on `amqp://`
(py-amqp), Celery's defaults otherwise: a plain worker (-c 2, MAIN_KEEP=1) runs TASKS small tasks
and every one is in the ledger; then bigload.py sends 1-4 MB kwargs for BIG_S seconds and the
scenario prints where the memory went (main process vs pool children, /proc smaps_rollup) and
checks the main process grew by at least half the bytes it received. No oomguard here: this
proves the broker, the client and the leak, not a policy."""
import os
import subprocess
import sys
import time

from common import (APPS, BENCH, children, ensure, evidence, make_group, read, spawn,
                    start_rabbitmq, wait_until)
from policies import CELERY

TASKS = 40
BROKER = "amqp://guest:guest@127.0.0.1:5672//"
LEDGER = "/tmp/celery-amqp.ledger"
BIG_S = 20


def rollup(pid):
    """Rss and Anonymous of a process in MB, from /proc/PID/smaps_rollup."""
    out = {}
    for line in (read("/proc/%d/smaps_rollup" % pid, "") or "").splitlines():
        k, _, v = line.partition(":")
        if k in ("Rss", "Anonymous", "Pss"):
            out[k] = int(v.split()[0]) // 1024
    return out


def stat_mb(group):
    """anon and file of a group's memory.stat, and memory.current, in MB."""
    out = {"current": int(read(group + "/memory.current", "0")) >> 20}
    for line in (read(group + "/memory.stat", "") or "").splitlines():
        k, _, v = line.partition(" ")
        if k in ("anon", "file"):
            out[k] = int(v) >> 20
    return out


def where(main_pid, group):
    return {"main": rollup(main_pid), "children": [rollup(c) for c in children(main_pid)],
            "group": stat_mb(group)}


def _ledger():
    try:
        with open(LEDGER) as f:
            return {int(line.split()[1]) for line in f if line.startswith("done ")}
    except OSError:
        return set()


def apps_rabbitmq():
    secs = start_rabbitmq()
    print("RESULT apps_rabbitmq start_seconds=%.1f" % secs, flush=True)
    env = {"BROKER": BROKER, "LEDGER": LEDGER, "LEAK_KB": "256", "PYTHONPATH": "/apps",
           "MAIN_KEEP": "1"}
    make_group(BENCH)
    with open(BENCH + "/cgroup.subtree_control", "w") as f:
        f.write("+memory +pids")
    group = make_group(BENCH + "/rmq")  # no limits: only to read its memory.stat
    worker = spawn(CELERY + ["-A", "leaktasks", "worker", "-c", "2", "--loglevel", "INFO"],
                   "/tmp/celery-worker.log", group=group, env=env)
    try:
        wait_until(180, "the amqp celery worker to be ready",
                   lambda: "ready." in open("/tmp/celery-worker.log").read(), every=1)
        os.environ.update(env)
        import leaktasks
        for n in range(1, TASKS + 1):
            leaktasks.app.send_task("leaktasks.work", args=[n])
        wait_until(180, "%d tasks in the ledger" % TASKS, lambda: len(_ledger()) >= TASKS, every=0.5)
        done = _ledger()
        print("RESULT apps_rabbitmq sent=%d completed=%d" % (TASKS, len(done)), flush=True)
        ensure(len(done) == TASKS, "%d of %d tasks done" % (len(done), TASKS))
        before = where(worker.pid, group)
        evidence("memory before the large kwargs (MB)", before)
        out = subprocess.run([sys.executable, APPS + "/bigload.py", "--seconds", str(BIG_S),
                              "--ledger", LEDGER, "--first", "1000"], capture_output=True, text=True,
                             timeout=BIG_S + 300, env=dict(os.environ, **env)).stdout
        print(out, end="")
        line = [ln for ln in out.splitlines() if ln.startswith("CELERY sent=")][-1]
        big = dict(kv.split("=") for kv in line.split()[1:])
        after = where(worker.pid, group)
        evidence("memory after the large kwargs (MB)", after)
        grew = after["main"].get("Anonymous", 0) - before["main"].get("Anonymous", 0)
        kids = [c.get("Anonymous", 0) for c in after["children"]]
        sent_mb = int(big["bytes"]) // (1024 * 1024)
        print("RESULT apps_rabbitmq_big sent=%s completed=%s lost=%s payload_mb=%d main_grew_mb=%d "
              "main_anon_mb=%d children_anon_mb=%s" % (big["sent"], big["completed"], big["lost"],
                                                      sent_mb, grew, after["main"].get("Anonymous", 0),
                                                      kids), flush=True)
        ensure(int(big["lost"]) == 0, "%s large tasks lost" % big["lost"])
        ensure(grew >= sent_mb // 2, "the main process grew %d MB for %d MB of kwargs received"
               % (grew, sent_mb))
    finally:
        os.killpg(worker.pid, 9)  # the end of the boot: no warm shutdown to wait for
        worker.wait(30)


GUARD_S = 90


def _stuck(daemon, ident, after_s, out, restarts=1, within_s=GUARD_S + 60):
    """Once ident has been restarting for after_s, what its old processes wait on (wchan, the
    kernel stack's top) and the worker log's shutdown lines: why a warm shutdown takes long.
    Looks at up to `restarts` restarts that begin within within_s."""
    import threading
    from common import CGROOT

    def old_pids():
        inst = daemon.instance(ident) or {}
        if inst.get("state") != "restarting":
            return None
        if inst.get("draining_pid"):
            return [inst["draining_pid"]]
        return [int(p) for p in (read(os.path.join(CGROOT, ident, "main", "cgroup.procs"), "")
                                 or read(os.path.join(CGROOT, ident, "cgroup.procs"), "")
                                 or "").split()]

    def run():
        end = time.time() + within_s
        for _ in range(restarts):
            try:
                pids = wait_until(max(end - time.time(), 1), "a restart", old_pids, every=1)
            except Exception:
                return
            look(pids)
            try:
                wait_until(600, "the restart's end", lambda: (daemon.instance(ident) or {}).get(
                    "state") != "restarting", every=1)
            except Exception:
                return

    def look(pids):
        time.sleep(after_s)
        if (daemon.instance(ident) or {}).get("state") != "restarting":
            out.append("restart over within %ds" % after_s)
            return
        for pid in pids:
            for p in [pid] + children(pid):
                stack = (read("/proc/%d/stack" % p, "") or "").split()
                out.append("pid %d %s wchan=%s stack=%s" % (
                    p, "main" if p == pid else "child", read("/proc/%d/wchan" % p, "?"),
                    [w for w in stack if "+" in w][:4]))
        lines = [ln for ln in (read("/tmp/celery-worker.log", "") or "").splitlines()
                 if any(k in ln for k in ("Warm shutdown", "ERROR", "WARNING", "Restoring"))]
        out.extend("celery log | " + ln[:200] for ln in lines[-10:])
    threading.Thread(target=run, daemon=True).start()


def apps_rabbitmq_guard():
    """Issue 19 item 3: the growing main process under oomguard, on RabbitMQ. Per variant (the
    shipped policy's overlap, then `children:` without overlap) GUARD_S s of bigload.py, then its
    drain: restarts for the memory trigger happened, no task lost, no kernel OOM kill, and with
    overlap no dead time."""
    import policies
    from bench import Guarded, parse_celery
    from common import CGROOT, memory_events, vmstat_oom_kill
    print("RESULT apps_rabbitmq start_seconds=%.1f" % start_rabbitmq(), flush=True)
    ready = lambda: "ready." in (read("/tmp/celery-worker.log", "") or "")
    for k, (name, kids) in enumerate((("overlap", False), ("children", True))):
        ledger = "/tmp/celery-%s.ledger" % name
        if os.path.exists("/tmp/celery-worker.log"):
            os.rename("/tmp/celery-worker.log", "/tmp/celery-worker.log.before-" + name)
        fleet = Guarded(name, "celery", policies.celery_rabbitmq(ledger, children=kids), ready,
                        "celery/0")
        fleet.start()
        try:
            vm0 = vmstat_oom_kill()
            stuck = []
            _stuck(fleet.daemon, "celery/0", 35, stuck)
            # The drain outwaits a grace: tasks requeued by a killed worker run after it.
            out = subprocess.run([sys.executable, APPS + "/bigload.py", "--seconds", str(GUARD_S),
                                  "--ledger", ledger, "--first", str(10000 * (k + 1)),
                                  "--quiet", "90", "--drain", "240"],
                                 capture_output=True, text=True, timeout=GUARD_S + 400,
                                 env=dict(os.environ, BROKER=policies.AMQP)).stdout
            print(out, end="")
            load = parse_celery(out)
            for line in stuck:
                evidence("%s after 35 s of restart" % name, line)
            wait_until(120, "no restart in progress", lambda: (fleet.daemon.instance(
                "celery/0") or {}).get("state") != "restarting", every=1)
            evs = [e for e in fleet.daemon.events() if e.get("instance") == "celery/0"]
            restarts = [e for e in evs if e.get("action") == "restart"]
            for e in evs:
                if e.get("action") not in ("child_placed",):
                    evidence("%s event" % name, e)
            vm_oom = vmstat_oom_kill() - vm0
            group_oom = memory_events(os.path.join(CGROOT, "celery/0")).get("oom_kill", 0)
            log = read("/tmp/celery-worker.log", "") or ""
            print("RESULT apps_rabbitmq_guard fleet=%s sent=%d completed=%d lost=%d dup=%d "
                  "window=%d restarts=%d reasons=%s signal_to_exit_ms=%s dead_time_ms=%s "
                  "oom_kills=%d group_oom_kill=%d billiard_warnings=%d" % (
                      name, load["sent"], load["completed"], load["lost"], load["dup"],
                      load["window"], len(restarts), [e.get("reason") for e in restarts],
                      [e.get("signal_to_exit_ms") for e in restarts],
                      [e.get("dead_time_ms") for e in restarts], vm_oom, group_oom,
                      log.count("could not ensure")), flush=True)
            ensure(load["completed"] > 0, "%s: no task completed" % name)
            ensure(any(e.get("reason") == "memory" for e in restarts),
                   "%s: no restart for the memory trigger (%d restarts)" % (name, len(restarts)))
            ensure(load["lost"] == 0, "%s: %d tasks lost" % (name, load["lost"]))
            ensure(vm_oom == 0 and group_oom == 0, "%s: OOM kills: vmstat +%d, celery/0 %d"
                   % (name, vm_oom, group_oom))
            if not kids:
                ensure(all(e.get("dead_time_ms") == 0 for e in restarts),
                       "overlap: dead time %s" % [e.get("dead_time_ms") for e in restarts])
        finally:
            fleet.stop()
            print(fleet.daemon.tail(30))
