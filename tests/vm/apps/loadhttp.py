"""The Python twin of apps-load (load.rs), kept only for apps_client_cost: the same loop with
threads and http.client, to measure which client costs less CPU under TCG."""
import http.client
import os
import sys
import threading
import time

threads, seconds, port = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
end = time.time() + seconds
lock = threading.Lock()
counts = {"served": 0, "failed": 0, "refused": 0}


def loop():
    while time.time() < end:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/", headers={"Connection": "close"})
            r = c.getresponse()
            r.read()
            c.close()
            kind = "served" if r.status == 200 else "failed"
        except ConnectionRefusedError:
            kind = "refused"
        except OSError:
            kind = "failed"
        with lock:
            counts[kind] += 1


ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
t = os.times()
print("LOAD served=%d failed=%d refused=%d pids=0 cpu_ms=%d" % (
    counts["served"], counts["failed"], counts["refused"], (t.user + t.system) * 1000))
