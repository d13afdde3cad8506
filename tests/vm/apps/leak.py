"""The leak and the work of one request or task, shared by the real-apps VM's leaking WSGI app
(leakweb.py) and Celery app (leaktasks.py). Environment: LEAK_KB (default 256) kept for the life
of the process, every page written; KEEP (default 1; 0 = the ceiling: write as many fresh pages
and give them back at once, so the process pays the leak's page faults but never grows);
WORK_MS of CPU (each app has its default).
"""
import mmap
import os
import time

LEAK = int(os.environ.get("LEAK_KB", "256")) * 1024
KEEP = os.environ.get("KEEP", "1") != "0"
kept = []  # the leak: never freed while the process lives
# KEEP=0: one mapping, filled and dropped (MADV_DONTNEED) per step, so every step faults in fresh
# zero pages as the leak does. Not `b"x" * LEAK` freed: glibc then serves the next one from heap
# pages already faulted in, and the baseline would skip the very cost it is there to show.
_scratch = mmap.mmap(-1, LEAK) if LEAK and not KEEP else None
_pattern = b"x" * LEAK if _scratch is not None else b""


def work_seconds(default_ms):
    """WORK_MS from the environment (each app has its own default), in seconds."""
    return float(os.environ.get("WORK_MS", default_ms)) / 1000.0


def step(work_s):
    """One request's or task's allocation (kept, or faulted and dropped with KEEP=0), then
    `work_s` of CPU."""
    if _scratch is not None:
        _scratch[:] = _pattern
        _scratch.madvise(mmap.MADV_DONTNEED)
    elif LEAK:
        # bytes of a repeated byte: every page is written, so it is charged to the cgroup at once.
        kept.append(b"x" * LEAK)
    end = time.perf_counter() + work_s
    while time.perf_counter() < end:
        pass
