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
ceiling). The pool child decodes its own copy and keeps nothing.
"""
import os
import time

from celery import Celery, signals

import leak

WORK = leak.work_seconds("20")
LEDGER = os.environ.get("LEDGER", "/tmp/celery.ledger")

app = Celery("leaktasks", broker=os.environ.get("BROKER", "redis://127.0.0.1:6379/0"))


MAIN_KEEP = os.environ.get("MAIN_KEEP", "0") == "1"
main_kept = []  # the main process's leak: never freed while it lives


@signals.task_received.connect
def _received(request=None, **_):
    # Celery 5.2's main process decodes every message body (Request.__init__ reads
    # message.payload) and drops it after the task; keeping it is the only difference.
    kwargs = request.kwargs if request is not None else None
    if MAIN_KEEP and kwargs:
        main_kept.append(kwargs)


def _done(n):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, ("done %d %d\n" % (n, os.getpid())).encode())
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
