"""The leaking Celery app of the real-apps VM (tests/vm/apps), Redis broker, Celery's defaults
(acks early, prefetch multiplier 4).

Task `leaktasks.work(n)`: keeps LEAK_KB more memory for the life of the pool process (every page
written), burns WORK_MS of CPU, then appends `done <n> <pid>` to the ledger with one O_APPEND
write, so the load client can count completed, lost and duplicated tasks. Environment: LEAK_KB
(default 256), KEEP (default 1; 0 = allocate as much but free it: the no-leak
baseline), WORK_MS (default 20), LEDGER (default
/tmp/celery.ledger).
"""
import os
import time

from celery import Celery

import leak

WORK = leak.work_seconds("20")
LEDGER = os.environ.get("LEDGER", "/tmp/celery.ledger")

app = Celery("leaktasks", broker=os.environ.get("BROKER", "redis://127.0.0.1:6379/0"))


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
