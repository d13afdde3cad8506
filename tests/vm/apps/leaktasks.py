"""The leaking Celery app of the real-apps VM (tests/vm/apps), broker BROKER (Redis by
default), Celery's defaults (acks early, prefetch multiplier 4).

Task `leaktasks.work(n)`: keeps LEAK_KB more memory for the life of the pool process (every page
written), burns WORK_MS of CPU, then appends `done <n> <pid>` to the ledger with one O_APPEND
write, so the load client can count completed, lost and duplicated tasks. Environment: LEAK_KB
(default 256), KEEP (default 1; 0 = allocate as much but free it: the no-leak
baseline), WORK_MS (default 20), LEDGER (default
/tmp/celery.ledger).

Task `leaktasks.big(n, payload)` (issue 19): the caller sends 1-4 MB of nested dicts of varying
shape (bigload.py). With MAIN_KEEP=1 a `task_received` handler in the main process (the consumer,
which receives every message) keeps the decoded kwargs for the life of the process: the report's
growing main process, made deterministic. MAIN_KEEP=0 decodes them as much and drops them (the
ceiling, without the fresh pages); MAIN_KEEP=fresh also writes as many bytes as the body into
fresh pages and drops them (the benchmarks' ceiling). The pool child decodes its own copy and
keeps nothing. Ledger lines: `done <n> <pid> <unix time>`.
"""
import mmap
import os
import time

from celery import Celery, signals

import leak

WORK = leak.work_seconds("20")
LEDGER = os.environ.get("LEDGER", "/tmp/celery.ledger")

app = Celery("leaktasks", broker=os.environ.get("BROKER", "redis://127.0.0.1:6379/0"))


MAIN_KEEP = os.environ.get("MAIN_KEEP", "0") == "1"
# MAIN_KEEP=fresh: the ceiling of the main process's leak. As many bytes as each message's body
# written into fresh pages and given back at once (one mapping, MADV_DONTNEED, as leak.py's
# KEEP=0): the main process pays the leak's page faults and charges but never grows.
MAIN_FRESH = os.environ.get("MAIN_KEEP", "0") == "fresh"
# MAIN_EXTRA=N: the main process also keeps N times each body's bytes in written pages (with
# MAIN_KEEP=fresh: writes them as fresh pages and drops them too). The benchmarks set it so the
# main process reaches its limits within a row even when the host gives the VM little CPU:
# decoding is what costs CPU, writing pages costs little.
MAIN_EXTRA = int(os.environ.get("MAIN_EXTRA", "0"))
main_kept = []  # the main process's leak: never freed while it lives
_fresh = {"map": None, "pattern": b""}


def _write_fresh(nbytes):
    if _fresh["map"] is None or len(_fresh["map"]) < nbytes:
        # Grown once to the largest write (32 MB covers bigload's 4 MB with MAIN_EXTRA 3, and
        # Redis's base64): the pattern is not allocated per message, so only the mapping's pages
        # are fresh each time.
        size = max(nbytes, 32 << 20)
        _fresh["map"], _fresh["pattern"] = mmap.mmap(-1, size), b"x" * size
    _fresh["map"][:nbytes] = memoryview(_fresh["pattern"])[:nbytes]
    _fresh["map"].madvise(mmap.MADV_DONTNEED)


@signals.task_received.connect
def _received(request=None, **_):
    # Celery 5.2's main process decodes every message body (Request.__init__ reads
    # message.payload) and drops it after the task; keeping it is the only difference.
    kwargs = request.kwargs if request is not None else None
    body = (getattr(request, "body", None) or b"") if request is not None else b""
    if MAIN_KEEP and kwargs:
        main_kept.append(kwargs)
        if MAIN_EXTRA:
            main_kept.append(b"x" * (MAIN_EXTRA * len(body)))
    elif MAIN_FRESH:
        _write_fresh((1 + MAIN_EXTRA) * len(body))


def _done(n):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        # The time: the benchmarks measure how long no task completed around a restart.
        os.write(fd, ("done %d %d %.3f\n" % (n, os.getpid(), time.time())).encode())
    finally:
        os.close(fd)


@app.task(name="leaktasks.slow")
def slow(n, secs):
    """The apps_facts probe: a task in flight while its pool process is signalled."""
    with open("/tmp/inflight", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(secs)
    _done(n)
    return n


@app.task(name="leaktasks.work")
def work(n):
    leak.step(WORK)
    _done(n)
    return n


@app.task(name="leaktasks.big")
def big(n, payload=None):
    _done(n)
    return n
