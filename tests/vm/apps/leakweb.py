"""The leaking WSGI app of the real-apps VM (tests/vm/apps): every request keeps LEAK_KB more
memory for the life of the worker process, every page written, and burns WORK_MS of CPU.

Served by gunicorn (`leakweb:app`) and uWSGI (`--wsgi-file leakweb.py`). Environment:
LEAK_KB (default 256), KEEP (default 1; 0 = allocate as much but free it: the no-leak
baseline), WORK_MS (default 2). `GET /?sleep=S` first
writes the worker's pid to /tmp/inflight and sleeps S seconds (the apps_facts probe).
"""
import os
import time

import leak

WORK = leak.work_seconds("2")


def app(environ, start_response):
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        # The apps_facts probe: a request in flight while its worker is signalled.
        with open("/tmp/inflight", "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(query[6:]))
    leak.step(WORK)
    body = ("ok %d %d\n" % (os.getpid(), len(leak.kept))).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = app
