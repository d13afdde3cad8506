"""bench_celery_rabbitmq and bench_celery_redis (by name; `tests/vm/run.sh bench_celery_brokers`
boots both, one broker per boot): issue 19's benchmark rows. Celery `-c 2` whose main process
grows (bigload.py's 1-4 MB kwargs, kept by MAIN_KEEP=1), the same envelope for every fleet
(policies.RABBIT_ENVELOPE: memory.max 512M), one fleet after another in one boot:

  ceiling               MAIN_KEEP=fresh: the same messages received, their bytes written into
                        fresh pages and dropped; no limit, nothing grows
  no_guard              memory.max only: the kernel kills, nothing restarts the worker
  max_respawn           memory.max, and the worker started again 100 ms after its main process
                        died (what is left of its group killed first, as systemd would)
  max_memory_per_child  the same plus Celery's --max-memory-per-child (pool processes only)
  oomguard_instance     policies.celery_rabbitmq without overlap: a warm shutdown, then the
                        replacement
  oomguard_overlap      the shipped policy (restart.overlap)
  oomguard_overlap_grace10  the same with a 10 s grace: a kill during the warm shutdown's wait
  oomguard_children     `children:` (overlap is refused with children)

Per fleet: tasks done in the load window and after, lost (sent, never in the ledger after the
drain, each traced: in the worker log, left in the broker), executed twice, kernel OOM kills
(/proc/vmstat), restarts, dead time (the ledger's gaps over GAP_S with no task completed, summed,
per restart) and tasks/s against the ceiling's of the same round. Kernel arguments
`oomguard.seconds=` (load per fleet, default 90), `oomguard.rounds=` (default 1) and
`oomguard.fleets=a,b` (a smoke) come through APPS_KARGS (tests/vm/apps/run.sh)."""
import os
import re
import subprocess
import sys
import threading
import time

import policies
import tally
from bench import Guarded, _order, _ratios, _table, parse_celery
from common import (APPS, BENCH, Fail, evidence, kill_group, make_group, median, read,
                    redis, spawn, start_rabbitmq, start_redis, vmstat_oom_kill, wait_until,
                    write)
from rabbit import _stuck


def karg(name, default):
    m = re.search(r"oomguard\.%s=(\S+)" % name, read("/proc/cmdline", "") or "")
    return m.group(1) if m else default


LOG = "/tmp/celery-worker.log"
SHAPES = "/tmp/bigload-shapes.pickle"
REDIS = "redis://127.0.0.1:6379/0"
# The envelope's memory.max (policies.RABBIT_ENVELOPE), for the fleets without oomguard.
MAX = "512M"
# Above a pool process's own high-water mark here (57-64 MB of decoding, plus the pages it shares
# with the main process: apps_rabbitmq), so Celery's knob recycles only a pool process that
# grows, as one would set it. The pool processes do not grow here: the main process does.
KNOB_KB = 160000
# The main process also keeps 8 x each body's bytes (leaktasks.py MAIN_EXTRA): about 24 MB a
# task, so it reaches the 256M trigger and the 512M memory.max within a row even at the 0.2-0.3
# tasks/s a loaded host leaves the VM (1.6 x the body alone: 4 MB a task, no restart in 90 s).
# oomguard.extra= on the kernel command line overrides it.
MAIN_EXTRA = int(karg("extra", "8"))
# A gap in the ledger longer than this, or than 3 x the row's median gap, counts as dead time.
# The ceiling's own (no restart there) are the noise floor, printed with it.
GAP_S = 3.0


def _ready():
    return "ready." in (read(LOG, "") or "")


class Respawned:
    """A fleet without oomguard: the worker in a bench group with memory.max. respawn: started
    again 100 ms after its main process died, what is left of the group killed first (systemd's
    Restart=always with KillMode=control-group)."""

    def __init__(self, name, env, extra=(), maxi=MAX, respawn=True):
        self.name, self.env, self.extra, self.maxi, self.respawn = name, env, list(extra), maxi, respawn
        self.lock = threading.Lock()

    def _spawn(self):
        return spawn(policies.CELERY + policies.CELERY_ARGS + self.extra, "/tmp/celery-%s.out" % self.name,
                     group=self.group, env=dict(self.env, PYTHONPATH=APPS))

    def start(self):
        self.group = make_group(os.path.join(BENCH, self.name), maxi=self.maxi)
        self.deaths, self.stopping = [], False
        self.proc = self._spawn()
        wait_until(180, "celery (%s) to be ready" % self.name, _ready, every=0.5)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self):
        while True:
            self.proc.wait()
            with self.lock:
                if self.stopping:
                    return
                self.deaths.append(time.time())
                if not self.respawn:
                    return
                _kill_procs(self.group)
                time.sleep(0.1)
                self.proc = self._spawn()

    def restarts(self):
        return [{"at": t, "reason": "died"} for t in self.deaths]

    def stop(self):
        with self.lock:
            self.stopping = True
        # The row's counts are taken: no warm shutdown to wait for.
        kill_group(self.group)
        self.thread.join(10)


def _kill_procs(group):
    """SIGKILL everything in the group and wait until it is empty; the group stays."""
    try:
        write(os.path.join(group, "cgroup.kill"), "1")
    except OSError:
        return
    for _ in range(100):
        if "populated 0" in (read(os.path.join(group, "cgroup.events"), "") or "populated 0"):
            return
        time.sleep(0.1)


class Daemoned(Guarded):
    def restarts(self):
        return [dict(e, at=e.get("time_ms", 0) / 1000.0) for e in self.daemon.events()
                if e.get("instance") == self.ident and e.get("action") in ("restart", "respawn")]


def fleets(broker):
    """(name, make(ledger) -> fleet) in the order they run, cut to oomguard.fleets= if given."""
    env = lambda keep, ledger: {"BROKER": broker, "LEDGER": ledger, "MAIN_KEEP": keep,
                                "MAIN_EXTRA": str(MAIN_EXTRA)}
    pol = lambda name, **kw: lambda ledger: Daemoned(name, "celery", policies.celery_rabbitmq(
        ledger, broker=broker, main_extra=MAIN_EXTRA, **kw), _ready, "celery/0")
    out = [
        ("ceiling", lambda ledger: Respawned("ceiling", env("fresh", ledger), maxi=None, respawn=False)),
        ("no_guard", lambda ledger: Respawned("no_guard", env("1", ledger), respawn=False)),
        ("max_respawn", lambda ledger: Respawned("max_respawn", env("1", ledger))),
        ("max_memory_per_child", lambda ledger: Respawned(
            "max_memory_per_child", env("1", ledger), ["--max-memory-per-child=%d" % KNOB_KB])),
        ("oomguard_instance", pol("oomguard_instance", overlap=False)),
        ("oomguard_overlap", pol("oomguard_overlap")),
        # Whether a grace shorter than billiard's 30 s wait at a pool process's exit loses work.
        ("oomguard_overlap_grace10", pol("oomguard_overlap_grace10", grace="10s")),
        ("oomguard_children", pol("oomguard_children", children=True)),
    ]
    wanted = [f for f in karg("fleets", "").split(",") if f]
    return [(n, f) for n, f in out if not wanted or n in wanted]


# ---- the broker ----
# As Celery declares its default queue: RabbitMQ refuses a declaration that differs (py-amqp's
# own default is auto_delete=True).
CELERY_QUEUE = {"durable": True, "auto_delete": False}


def _amqp_channel():
    from kombu import Connection
    conn = Connection(policies.AMQP)
    return conn, conn.channel()


def broker_reset(broker):
    """Nothing left from the previous fleet: its queue (and Redis's unacked hash) emptied."""
    if broker == REDIS:
        redis("flushall")
        return
    conn, ch = _amqp_channel()
    try:
        ch.queue_declare("celery", **CELERY_QUEUE)
        ch.queue_purge("celery")
    finally:
        conn.release()


def broker_left(broker):
    """What the broker still holds: the queue, and Redis's unacked (a killed worker's prefetched
    messages, restored only after kombu's visibility timeout, 1 h)."""
    if broker == REDIS:
        return {"queued": int(redis("llen", "celery") or 0), "unacked": int(redis("hlen", "unacked") or 0)}
    conn, ch = _amqp_channel()
    try:
        return {"queued": ch.queue_declare("celery", **CELERY_QUEUE).message_count}
    finally:
        conn.release()


def trace_lost(broker, out):
    """Per lost task: whether the worker's log saw it (received, started) and whether the broker
    still holds it."""
    log = read(LOG, "") or ""
    held = redis("hvals", "unacked") + redis("lrange", "celery", "0", "-1") if broker == REDIS else ""
    for n, tid in re.findall(r"CELERY lost-task (\d+) (\S+)", out):
        lines = [ln for ln in log.splitlines() if tid in ln]
        evidence("lost task %s" % n, "%s: %s; %s" % (
            tid, "in Redis (queue or unacked)" if tid in held else "not in Redis" if broker == REDIS
            else "RabbitMQ: see queued", "; ".join(ln[:160] for ln in lines) or "no line of the worker log"))


# ---- one fleet ----
def run_fleet(kind, broker, name, make, seconds, first):
    ledger = "/tmp/bench-%s-%s.ledger" % (kind, name)
    for path in (ledger, LOG):
        if os.path.exists(path):
            os.unlink(path)
    broker_reset(broker)
    fleet = make(ledger)
    fleet.start()
    guarded = isinstance(fleet, Daemoned)
    stuck = []
    if guarded:
        # Past a quick warm shutdown (2-5 s), inside billiard's 30 s wait if there is one.
        _stuck(fleet.daemon, "celery/0", 8, stuck, restarts=6, within_s=seconds + 60)
    try:
        vm0 = vmstat_oom_kill()
        # The drain outwaits a grace (45 s) where oomguard may still be killing an old worker
        # whose tasks RabbitMQ requeues; without oomguard only the respawn.
        quiet = 70 if guarded else 30
        out = subprocess.run([sys.executable, APPS + "/bigload.py", "--seconds", str(seconds),
                              "--ledger", ledger, "--first", str(first), "--cache", SHAPES,
                              "--quiet", str(quiet), "--drain", "240"], capture_output=True, text=True,
                             timeout=seconds + 400, env=dict(os.environ, BROKER=broker)).stdout
        load = parse_celery(out)
        start = float(re.search(r"CELERY load start at=([\d.]+)", out).group(1))
        oom = vmstat_oom_kill() - vm0
        restarts = fleet.restarts()
        in_window = [r for r in restarts if start <= r["at"] <= start + seconds]
        ts = tally.times(ledger, first)
        gaps = [b - a for a, b in zip(ts, ts[1:]) if start <= a and b <= start + seconds]
        gap_s = max(GAP_S, 3 * median(gaps)) if gaps else GAP_S
        stalls = tally.stalls(ts, start, start + seconds, gap_s)
        dead = sum(s for _, s in stalls)
        left = broker_left(broker)
        if load["lost"]:
            trace_lost(broker, out)
        for line in out.splitlines():
            if line.startswith("CELERY lost-task"):
                print("    " + line, flush=True)
        for r in restarts:
            if guarded:
                evidence("%s %s restart" % (kind, name), {k: r.get(k) for k in (
                    "action", "reason", "ending", "signal_to_exit_ms", "exit_to_exec_ms",
                    "overlap_ms", "dead_time_ms")})
        for line in stuck:
            evidence("%s %s 8 s into a restart" % (kind, name), line)
        evidence("%s %s stalls over %.1fs" % (kind, name, gap_s),
                 ", ".join("%.1fs at +%.0fs" % (s, a - start) for a, s in stalls) or "none")
        log = read(LOG, "") or ""
        row = dict(sent=load["sent"], done=load["completed"], window=load["window"],
                   tps=load["window"] / float(seconds), lost=load["lost"], dup=load["dup"],
                   oom_kills=oom, restarts=len(restarts), dead_s=dead,
                   dead_per_restart=dead / len(in_window) if in_window else 0,
                   killed=sum(1 for r in restarts if "killed_after_grace" in str(r.get("ending"))),
                   # billiard's warning when a pool process gave up its 30 s wait at exit.
                   billiard_waits=log.count("could not ensure all messages"),
                   **left)
        if guarded:
            row["daemon_dead_ms"] = median([r.get("dead_time_ms") or 0 for r in restarts])
            row["signal_to_exit_ms"] = median([r.get("signal_to_exit_ms") or 0 for r in restarts])
        return row
    finally:
        fleet.stop()


def _bench(kind, broker):
    seconds = int(karg("seconds", "90"))
    rounds = int(karg("rounds", "1"))
    make_group(BENCH)
    write(BENCH + "/cgroup.subtree_control", "+memory +pids")
    wanted = fleets(broker)
    rows = {n: [] for n, _ in wanted}
    first = 0
    for rnd in range(rounds):
        for name, make in _order(wanted, rnd):
            first += 10000
            t0 = time.time()
            row = run_fleet(kind, broker, name, make, seconds, first)
            print("RESULT bench_celery_%s round=%d fleet=%s %s fleet_s=%.0f" % (
                kind, rnd + 1, name, " ".join("%s=%s" % (k, ("%.2f" % v) if isinstance(v, float) else v)
                                           for k, v in sorted(row.items())), time.time() - t0), flush=True)
            rows[name].append(row)
    keys = ["sent", "done", "window", "tps", "lost", "dup", "oom_kills", "restarts", "killed",
            "dead_s", "dead_per_restart"]
    _table(kind, rows, keys)
    _ratios(kind, rows, "tps", ["ceiling"])
    if not any(r["done"] for runs in rows.values() for r in runs):
        raise Fail("no fleet completed a task")


def bench_celery_rabbitmq():
    # A loaded host once kept it from listening within 300 s.
    print("RESULT bench_celery_rabbitmq start_seconds=%.1f" % start_rabbitmq(900), flush=True)
    _bench("rabbitmq", policies.AMQP)


def bench_celery_redis():
    start_redis()
    _bench("redis", REDIS)
