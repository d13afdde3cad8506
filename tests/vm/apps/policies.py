"""The policies the real-apps scenarios give oomguard: the shipped examples (policies/*.yaml)
cut to the VM's size (1.5 GB, two TCG vCPUs) and pointed at the leaking apps in /apps."""
import os

# gunicorn -w 2: each worker its own leaf. A worker's leaf holds what the worker itself
# allocated after the fork (a few MB, plus the leak); the envelope covers the arbiter and both
# workers. A worker is recycled (SIGTERM: it finishes its request, the arbiter forks a new one)
# once its leaf holds 80M: at 6-10 MB/s of leak under TCG that is 8 s or more, past
# oomguard's respawn-loop rule (3 children in a row tripping within 5 s of their start restart
# the instance). The room up to memory.high (48M, about 5 s of leak) covers one recycle of the
# other worker first: at_once is 1 and both leak at the same rate. (Tried first: 40M/56M/64M,
# where a worker that waited its turn reached its leaf's max once in 60 s; 32M/64M/80M, where
# workers lived under 5 s and the instance was restarted 3 times.)
GUNICORN_ENVELOPE = "memory:\n  high: 304M\n  max: 320M\n"
# bench_apps_gunicorn_x2: every per-worker budget doubled, so workers live twice as long.
GUNICORN_ENVELOPE_X2 = "memory:\n  high: 560M\n  max: 592M\n"


def _head(argv, env, envelope, triggers, grace):
    """run, memory, triggers and restart of a policy (the parts before `children:`)."""
    return "run:\n  command: [%s]\n  workdir: /apps\n  env: {%s}\n%striggers:\n%srestart:\n" \
        "  signal: SIGTERM\n  grace: %s\n" % (
            ", ".join('"%s"' % a for a in argv),
            ", ".join('%s: "%s"' % kv for kv in env), envelope, triggers, grace)


INSTANCE_PRESSURE = "  pressure: {some: 150ms, window: 1s, for: 2s}\n"


def gunicorn_children(leak_kb=256, x2=False):
    return _head(["/usr/bin/gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "--chdir", "/apps",
                  "leakweb:app"], [("LEAK_KB", leak_kb), ("PYTHONPATH", "/apps")],
                 GUNICORN_ENVELOPE_X2 if x2 else GUNICORN_ENVELOPE, INSTANCE_PRESSURE, "30s") + (
        "children:\n  memory: {high: 256M, max: 272M}\n  triggers:\n    memory: {above: 160M}\n"
        if x2 else "children:\n  memory: {high: 128M, max: 144M}\n  triggers:\n    memory: {above: 80M}\n") + """\
    pressure: {some: 100ms, window: 1s}
  restart: {signal: SIGTERM, grace: 30s, at_once: 1}
"""


def gunicorn_reuse_port(port, overlap, ready="15s"):
    """apps_gunicorn_overlap: gunicorn -w 2 --reuse-port with `children:` (each worker its own
    leaf, as gunicorn_children, leaking little: no recycle during the load), and with `overlap`
    the whole server restarted make-before-break (`ready` covers gunicorn's boot under TCG)."""
    text = _head(["/usr/bin/gunicorn", "-w", "2", "--reuse-port", "-b", "127.0.0.1:%d" % port,
                  "--chdir", "/apps", "leakweb:app"], [("LEAK_KB", 16), ("PYTHONPATH", "/apps")],
                 GUNICORN_ENVELOPE, INSTANCE_PRESSURE, "30s")
    if overlap:
        text += "  overlap: true\n  ready: %s\n" % ready
    return text + """\
children:
  memory: {high: 128M, max: 144M}
  triggers:
    memory: {above: 80M}
    pressure: {some: 100ms, window: 1s}
  restart: {signal: SIGTERM, grace: 30s, at_once: 1}
"""


# Debian's python3-celery has no /usr/bin/celery (that is the `celery` package): the module.
CELERY = ["/usr/bin/python3", "-m", "celery"]
CELERY_ARGS = ["-A", "leaktasks", "worker", "-c", "2", "-P", "prefork", "--loglevel=INFO",
               "--without-gossip", "--without-mingle", "--without-heartbeat",
               "--logfile=/tmp/celery-worker.log"]
# Celery's own knob, in KiB of the pool child's RSS (which counts the pages shared with the main
# process: about 40 MB before any task ran).
MAX_MEMORY_PER_CHILD_KB = 72000
CELERY_ENVELOPE = "memory:\n  high: 208M\n  max: 240M\n"


def _celery_env(leak_kb, ledger):
    return [("LEAK_KB", leak_kb), ("PYTHONPATH", "/apps"), ("LEDGER", ledger)]


def celery_children(ledger, leak_kb=256, scope="child"):
    """scope child: `signal: none` with --max-memory-per-child (Celery recycles the pool child
    after its task; oomguard lifts the leaf's memory.high and only kills it if it does not).
    scope instance: a child's offence restarts the whole worker (warm shutdown)."""
    if scope == "child":
        extra = ["--max-memory-per-child=%d" % MAX_MEMORY_PER_CHILD_KB]
        restart = "  restart: {signal: none, grace: 60s, at_once: 1}\n"
    else:
        extra = []
        restart = "  restart: {scope: instance}\n"
    return _head(CELERY + CELERY_ARGS + extra, _celery_env(leak_kb, ledger), CELERY_ENVELOPE,
                 INSTANCE_PRESSURE, "120s") + """\
children:
  memory: {high: 80M, max: 96M}
  triggers:
    memory: {above: 64M}
    pressure: {some: 100ms, window: 1s}
""" + restart


def children_supported():
    """Whether this oomguard knows `children:` (`oomguard check` on a children policy): the
    benchmarks run their baseline fleets either way."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        path = os.path.join(d, "gunicorn.yaml")
        with open(path, "w") as f:
            f.write(gunicorn_children())
        os.chmod(path, 0o644)
        r = subprocess.run(["/usr/bin/oomguard", "check", path], capture_output=True, text=True)
        if r.returncode != 0:
            print("EVIDENCE children: not supported by this oomguard: %s" % r.stderr.strip()[-300:], flush=True)
        return r.returncode == 0


def celery_instance(ledger, grace, leak_kb=512, pressure_only=False):
    """No `children:`: the whole worker is one group and an offence restarts it (Celery's warm
    shutdown), as the issue's first runs did. For apps_celery_warm. pressure_only: the issue's
    setup (memory.high 128M, max 160M, the README's PSI trigger alone), where the worker is
    already throttled when it is signalled; otherwise a level under memory.high restarts it
    before the throttling."""
    if pressure_only:
        return _head(CELERY + CELERY_ARGS, _celery_env(leak_kb, ledger),
                     "memory:\n  high: 128M\n  max: 160M\n", INSTANCE_PRESSURE, grace)
    return _head(CELERY + CELERY_ARGS, _celery_env(leak_kb, ledger), CELERY_ENVELOPE,
                 "  memory: {above: 176M}\n  pressure: {some: 150ms, window: 1s, for: 1s}\n", grace)


# Celery on RabbitMQ with the main process growing (issue 19; policies/celery-rabbitmq.yaml cut
# to the VM). The worker starts near 70M; the replacement grows while the old worker drains (no
# trigger checks on it until then), so the room from the trigger up to memory.high covers a warm
# shutdown's ~30 s of the leak.
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
RABBIT_ENVELOPE = "memory:\n  high: 448M\n  max: 512M\n  swap_max: 0\n"
# billiard's 30 s wait at a pool process's exit, plus room: the tasks here take milliseconds.
# With 1-4 MB messages the warm shutdown did not end within 120 s (apps_rabbitmq_guard).
RABBIT_GRACE = "45s"
RABBIT_TRIGGERS = "  memory: {above: 256M}\n  pressure: {some: 150ms, window: 1s, for: 1s}\n"


def celery_rabbitmq(ledger, children=False, main_keep=True, overlap=True, broker=AMQP,
                    grace=RABBIT_GRACE, main_extra=0):
    """overlap without `children:` (the shipped policy), or `children:` with the same instance
    triggers (overlap is refused there: a plain whole-worker restart; the pool children do not
    leak here, their leaves' line is only the required trigger). overlap=False: the plain
    whole-worker restart without `children:`. broker: the same policy on Redis (the benchmark's
    side-by-side rows). grace: the benchmark's short-grace row. main_extra: leaktasks.py's
    MAIN_EXTRA."""
    env = [("BROKER", broker), ("PYTHONPATH", "/apps"), ("LEDGER", ledger),
           ("MAIN_KEEP", "1" if main_keep else "0"), ("MAIN_EXTRA", main_extra)]
    text = _head(CELERY + CELERY_ARGS, env, RABBIT_ENVELOPE, RABBIT_TRIGGERS, grace)
    if children:
        return text + """\
children:
  memory: {high: 160M, max: 192M}
  triggers:
    memory: {above: 144M}
  restart: {signal: none, grace: 60s, at_once: 1}
"""
    return text + ("  overlap: true\n" if overlap else "")
