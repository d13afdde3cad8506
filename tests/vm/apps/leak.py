"""The leak and the work of one request or task, shared by the real-apps VM's leaking WSGI app
(leakweb.py) and Celery app (leaktasks.py). Environment: LEAK_KB (default 256) kept for the life
of the process, every page written; KEEP (default 1; 0 = allocate as much but free it at once:
the no-leak baseline that pays the same page faults); WORK_MS of CPU (each app has its default).
"""
import os
import time

LEAK = int(os.environ.get("LEAK_KB", "256")) * 1024
KEEP = os.environ.get("KEEP", "1") != "0"
kept = []  # the leak: never freed while the process lives


def work_seconds(default_ms):
    """WORK_MS from the environment (each app has its own default), in seconds."""
    return float(os.environ.get("WORK_MS", default_ms)) / 1000.0


def step(work_s):
    """One request's or task's allocation, kept unless KEEP=0, then `work_s` of CPU."""
    if LEAK:
        # bytes of a repeated byte: every page is written, so it is charged to the cgroup at once.
        chunk = b"x" * LEAK
        if KEEP:
            kept.append(chunk)
    end = time.perf_counter() + work_s
    while time.perf_counter() < end:
        pass
