"""The task ledger of the Celery load clients (celeryload.py, bigload.py): one `done <n> <pid>`
line per task run, appended by leaktasks.py (newer lines add the unix time: `done <n> <pid> <t>`)."""
import time


def ledger(path, first=0):
    """Task number -> times it ran, for the numbers above `first`."""
    done = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "done" and int(parts[1]) > first:
                    done[int(parts[1])] = done.get(int(parts[1]), 0) + 1
    except OSError:
        pass
    return done


def drain(path, sent, first, drain_s, quiet_s, idle=lambda: True):
    """Waits until tasks first+1..first+sent are all in the ledger, or nothing completed for
    quiet_s while idle() (the queue is empty), at most drain_s; returns the ledger."""
    end = time.time() + drain_s
    last_n, last_change = len(ledger(path, first)), time.time()
    while time.time() < end:
        n = len(ledger(path, first))
        if n >= sent:
            break
        if n != last_n:
            last_n, last_change = n, time.time()
        elif idle() and time.time() - last_change > quiet_s:
            break
        time.sleep(0.5)
    return ledger(path, first)


def counts(done, sent, first=0):
    """(completed, the lost task numbers, how many ran more than once)."""
    span = range(first + 1, first + sent + 1)
    return (sum(1 for k in span if k in done), [k for k in span if k not in done],
            sum(1 for v in done.values() if v > 1))


def parser(seconds, backlog, quiet):
    """The options both load clients take (load time, backlog, drain limits, ledger)."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=seconds)
    ap.add_argument("--backlog", type=int, default=backlog)
    ap.add_argument("--drain", type=float, default=120)
    ap.add_argument("--quiet", type=float, default=quiet)
    ap.add_argument("--ledger", default="/tmp/celery.ledger")
    return ap


def times(path, first=0):
    """The completion times (unix seconds, sorted) of the tasks above `first`."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 4 and parts[0] == "done" and int(parts[1]) > first:
                    out.append(float(parts[3]))
    except OSError:
        pass
    return sorted(out)


def stalls(ts, start, end, gap_s):
    """The gaps longer than gap_s in [start, end] with no completion at all, as (from, seconds)."""
    edges = [start] + [t for t in ts if start < t < end] + [end]
    return [(a, b - a) for a, b in zip(edges, edges[1:]) if b - a > gap_s]
