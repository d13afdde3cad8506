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

