"""The Celery load client of the real-apps VM: keeps about --backlog tasks waiting in Redis's
`celery` list for --seconds (continuous load, no matter how fast the workers are), then stops
sending and drains: waits until every task sent has its ledger line, or until nothing has
completed for --quiet seconds with the queue empty (what is left is lost: a task stranded in
kombu's `unacked` hash comes back only after the 1 h visibility timeout), at most --drain s.

Prints `CELERY sent=N completed=N lost=N dup=N window=N cpu_ms=N`: completed counts distinct
task numbers in the ledger, window those completed while the load ran (the throughput figure),
dup the tasks that ran more than once."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--seconds", type=float, default=60)
ap.add_argument("--backlog", type=int, default=8)
ap.add_argument("--drain", type=float, default=120)
ap.add_argument("--quiet", type=float, default=20)
ap.add_argument("--ledger", default="/tmp/celery.ledger")
args = ap.parse_args()
os.environ["LEDGER"] = args.ledger

import leaktasks  # noqa: E402
import redis as redislib  # noqa: E402

r = redislib.Redis(host="127.0.0.1", port=6379)


def ledger():
    done = {}
    try:
        with open(args.ledger) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] == "done":
                    done[int(parts[1])] = done.get(int(parts[1]), 0) + 1
    except OSError:
        pass
    return done


sent = 0
ids = {}  # task number -> Celery task id, to find a lost task in the worker's log
end = time.time() + args.seconds
with leaktasks.app.producer_or_acquire() as producer:
    while time.time() < end:
        missing = args.backlog - r.llen("celery")
        for _ in range(max(missing, 0)):
            sent += 1
            ids[sent] = leaktasks.app.send_task("leaktasks.work", args=[sent], producer=producer).id
        time.sleep(0.1)
window = len(ledger())
print("CELERY load over: sent=%d completed_so_far=%d" % (sent, window), flush=True)

drain_end = time.time() + args.drain
last_n, last_change = window, time.time()
while time.time() < drain_end:
    n = len(ledger())
    if n >= sent:
        break
    if n != last_n:
        last_n, last_change = n, time.time()
    elif r.llen("celery") == 0 and time.time() - last_change > args.quiet:
        break
    time.sleep(0.5)
done = ledger()
completed = sum(1 for k in done if 1 <= k <= sent)
for n in [k for k in range(1, sent + 1) if k not in done][:10]:
    print("CELERY lost-task %d %s" % (n, ids[n]), flush=True)
t = os.times()
print("CELERY sent=%d completed=%d lost=%d dup=%d window=%d cpu_ms=%d" % (
    sent, completed, sent - completed, sum(1 for v in done.values() if v > 1), window,
    (t.user + t.system) * 1000), flush=True)
