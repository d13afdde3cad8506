"""The Celery load client of the real-apps VM: keeps about --backlog tasks waiting in Redis's
`celery` list for --seconds (continuous load, no matter how fast the workers are), then stops
sending and drains: waits until every task sent has its ledger line, or until nothing has
completed for --quiet seconds with the queue empty (what is left is lost: a task stranded in
kombu's `unacked` hash comes back only after the 1 h visibility timeout), at most --drain s.

Prints `CELERY sent=N completed=N lost=N dup=N window=N cpu_ms=N`: completed counts distinct
task numbers in the ledger, window those completed while the load ran (the throughput figure),
dup the tasks that ran more than once."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tally  # noqa: E402

args = tally.parser(seconds=60, backlog=8, quiet=20).parse_args()
os.environ["LEDGER"] = args.ledger

import leaktasks  # noqa: E402
import redis as redislib  # noqa: E402

r = redislib.Redis(host="127.0.0.1", port=6379)


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
window = len(tally.ledger(args.ledger))
print("CELERY load over: sent=%d completed_so_far=%d" % (sent, window), flush=True)
done = tally.drain(args.ledger, sent, 0, args.drain, args.quiet, idle=lambda: r.llen("celery") == 0)
completed, lost, dup = tally.counts(done, sent)
for n in lost[:10]:
    print("CELERY lost-task %d %s" % (n, ids[n]), flush=True)
t = os.times()
print("CELERY sent=%d completed=%d lost=%d dup=%d window=%d cpu_ms=%d" % (
    sent, completed, len(lost), dup, window, (t.user + t.system) * 1000), flush=True)
