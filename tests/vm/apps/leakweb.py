"""The leaking WSGI app of the real-apps VM (tests/vm/apps): every request keeps LEAK_KB more
memory for the life of the worker process, every page written, and burns WORK_MS of CPU.

Served by gunicorn (`leakweb:app`) and uWSGI (`--wsgi-file leakweb.py`). Environment:
LEAK_KB (default 256), KEEP (default 1; 0 = allocate as much but free it: the no-leak
baseline), WORK_MS (default 2). `GET /?sleep=S` first
writes the worker's pid to /tmp/inflight and sleeps S seconds (the apps_facts probe).
"""
import os
import time

LEAK = int(os.environ.get("LEAK_KB", "256")) * 1024
# KEEP=0: the same allocation per request, freed at once: the no-leak baseline that pays the same
# page faults (under TCG they are a good part of a request's cost).
KEEP = os.environ.get("KEEP", "1") != "0"
WORK = float(os.environ.get("WORK_MS", "2")) / 1000.0
_kept = []  # the leak: never freed while the worker lives


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        # The apps_facts probe: a request in flight while its worker is signalled.
        with open("/tmp/inflight", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(query[6:]))
    if LEAK:
        # bytes of a repeated byte: every page is written, so it is charged to the cgroup at once.
        chunk = b"x" * LEAK
        if KEEP:
            _kept.append(chunk)
    end = time.perf_counter() + WORK
    while time.perf_counter() < end:
        pass
    body = ("ok %d %d\n" % (os.getpid(), len(_kept))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app
