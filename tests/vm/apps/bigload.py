"""The large-kwargs Celery load client (issue 19): sends `leaktasks.big(n, payload)` with 1-4 MB
of nested dicts per task (one of --shapes seeded nested dicts of varying keys, depth and leaf
sizes, under a key of its own: the same run sends the same bytes) to BROKER
(amqp:// or redis://), keeping at most --backlog tasks sent and not yet in the ledger (works for
either broker), for --seconds; then drains as celeryload.py does (every task sent in the ledger,
or --quiet s without progress, at most --drain s).

Prints `CELERY load start at=T` (unix time) when it starts sending, `CELERY lost-task N ID`
per lost task (at most 20), and `CELERY sent=N completed=N lost=N dup=N window=N cpu_ms=N
bytes=N`, as celeryload.py."""
import json
import os
import pickle
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tally  # noqa: E402

ap = tally.parser(seconds=30, backlog=4, quiet=40)
ap.add_argument("--min-kb", type=int, default=1024)
ap.add_argument("--max-kb", type=int, default=4096)
# Task numbers start after this one: the worker's ledger may already hold other tasks' lines.
ap.add_argument("--first", type=int, default=0)
ap.add_argument("--shapes", type=int, default=16)
# The shapes pickled here once and read back by later runs of the same boot: building them costs
# the VM about 16 s of CPU, which a benchmark of many rows would otherwise pay per row.
ap.add_argument("--cache", default="")
args = ap.parse_args()
os.environ["LEDGER"] = args.ledger

import leaktasks  # noqa: E402

rng = random.Random(19)


def payload(kb):
    """About kb KB of JSON as nested dicts whose keys, depth and leaf sizes vary per task."""
    out, size, i = {}, 0, 0
    while size < kb * 1024:
        depth = rng.randint(1, 4)
        leaf = "v%d-" % i + "x" * rng.randint(200, 4000)
        node = {"k%d" % rng.randint(0, 9): leaf, "n": i}
        for d in range(depth):
            node = {"d%d_%d" % (d, rng.randint(0, 99)): node}
        out["e%d" % i] = node
        size += len(leaf) + 40 * depth + 30
        i += 1
    return out


# Made once: building a payload costs about a second of the VM's CPU, as much as the worker
# spends on a task. Each task still gets a shape of its own (below); the main process decodes a
# fresh copy of every message whatever the client reuses.
def shapes():
    if args.cache and os.path.exists(args.cache):
        with open(args.cache, "rb") as f:
            return pickle.load(f)
    made = [payload(rng.randint(args.min_kb, args.max_kb)) for _ in range(args.shapes)]
    if args.cache:
        with open(args.cache + ".tmp", "wb") as f:
            pickle.dump(made, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.rename(args.cache + ".tmp", args.cache)
    return made


SHAPES = shapes()
SIZES = [len(json.dumps(p)) for p in SHAPES]
pick = random.Random(20)  # which shape each task gets: the same sequence with or without the cache


sent, nbytes = 0, 0
ids = {}  # task number -> Celery task id, to trace a lost task in the worker's log or the broker
start = time.time()
print("CELERY load start at=%.3f" % start, flush=True)
end = start + args.seconds
with leaktasks.app.producer_or_acquire() as producer:
    while time.time() < end:
        if sent - len(tally.ledger(args.ledger, args.first)) < args.backlog:
            sent += 1
            i = pick.randrange(len(SHAPES))
            body = {"t%d" % sent: SHAPES[i]}
            nbytes += SIZES[i]
            ids[sent] = leaktasks.app.send_task("leaktasks.big", args=[args.first + sent],
                                                kwargs={"payload": body}, producer=producer).id
        else:
            time.sleep(0.05)
window = len(tally.ledger(args.ledger, args.first))
print("CELERY load over: sent=%d completed_so_far=%d" % (sent, window), flush=True)
done = tally.drain(args.ledger, sent, args.first, args.drain, args.quiet)
completed, lost, dup = tally.counts(done, sent, args.first)
for n in lost[:20]:
    print("CELERY lost-task %d %s" % (n, ids[n - args.first]), flush=True)
t = os.times()
print("CELERY sent=%d completed=%d lost=%d dup=%d window=%d cpu_ms=%d bytes=%d" % (
    sent, completed, len(lost), dup, window, (t.user + t.system) * 1000, nbytes), flush=True)
