"""apps_facts: which signal ends ONE child of each real prefork server gracefully, and whether
its master respawns it (issue 8, item 3). For each framework and signal: a slow request (or
task) is put in flight, its child is sent the signal, and the scenario records whether the
request completed, when the child exited, whether the master forked a replacement, and whether
the master lived. Facts, not assertions: the verdict fails only if a probe could not run."""
import os
import signal
import threading
import time

from common import (APPS, Fail, alive, children, evidence, fcgi_get, http_get, kill_group,
                    make_group, read, redis, sig_masks, spawn, start_redis, wait_until, cmdline)

FACTS = "/sys/fs/cgroup/facts"


class Server:
    def __init__(self, name, cmd, ready, request, env=None, stop=signal.SIGTERM, kids=None):
        self.name, self.cmd, self.ready, self.request = name, cmd, ready, request
        self.env, self.stop_sig = env or {}, stop
        # Which of the master's children are the workers (default: all of them).
        self.kids = kids or (lambda pids: pids)

    def start(self):
        self.group = make_group(os.path.join(FACTS, self.name))
        self.log = "/tmp/facts-%s.log" % self.name
        t0 = time.time()
        self.proc = spawn(self.cmd, self.log, group=self.group, env=self.env)
        wait_until(120, "%s to answer" % self.name, self.ready, every=0.5)
        self.workers = wait_until(60, "%s workers" % self.name, lambda: self.workers_now() if len(self.workers_now()) >= 2 else None)
        evidence("%s up" % self.name, "%.1fs, master %d (%s), workers %s" % (
            time.time() - t0, self.proc.pid, sig_masks(self.proc.pid), self.workers))
        for w in self.workers:
            rss = [l for l in read("/proc/%d/status" % w, "").splitlines() if l.startswith("VmRSS")]
            evidence("%s worker %d" % (self.name, w), "%s; %s; %s" % (cmdline(w)[:60], sig_masks(w), rss))

    def workers_now(self):
        return self.kids(children(self.proc.pid))

    def stop(self):
        try:
            os.kill(self.proc.pid, self.stop_sig)
            self.proc.wait(30)
        except Exception:
            pass
        kill_group(self.group)

    def probe(self, sig):
        """Puts a slow request in flight, signals its child, records what happened."""
        try:
            os.unlink("/tmp/inflight")
        except OSError:
            pass
        before = self.workers_now()
        outcome = {}

        def go():
            t = time.time()
            try:
                outcome["result"] = self.request()
            except Exception as e:  # the request's fate is the fact being recorded
                outcome["result"] = "error: %s" % e
            outcome["took"] = time.time() - t
        th = threading.Thread(target=go)
        th.start()
        pid = int(wait_until(30, "%s: a request in flight" % self.name,
                             lambda: read("/tmp/inflight", "").strip() or None))
        t_sig = time.time()
        os.kill(pid, sig)
        exited = None
        end = t_sig + 20
        while time.time() < end:
            if not alive(pid) or pid not in self.workers_now():
                exited = time.time() - t_sig
                break
            time.sleep(0.05)
        th.join(40)
        respawned = None
        end = time.time() + 30
        while time.time() < end:
            now = self.workers_now()
            new = [p for p in now if p not in before]
            if new and len(now) >= len(before):
                respawned = (new, time.time() - t_sig)
                break
            time.sleep(0.1)
        master = alive(self.proc.pid)
        evidence("FACT %s %s to one worker" % (self.name, signal.Signals(sig).name),
                 "in-flight request -> %s (%.1fs); worker %d %s; replacement %s; master %s" % (
                     outcome.get("result", "still running"), outcome.get("took", -1), pid,
                     "exited %.2fs after the signal" % exited if exited is not None else "still alive after 20s",
                     "forked %.1fs after the signal (%s)" % (respawned[1], respawned[0]) if respawned else "none within 30s",
                     "alive" if master else "GONE"))
        if exited is None:
            # Leave a clean pair of workers for the next probe.
            os.kill(pid, signal.SIGKILL)
            time.sleep(2)
        return master


def probe_master(server, sig):
    """A slow request in flight, then sig to the MASTER: does the request complete, does the
    master exit (the instance-level `restart.signal`)? Starts the server again afterwards."""
    try:
        os.unlink("/tmp/inflight")
    except OSError:
        pass
    outcome = {}

    def go():
        try:
            outcome["result"] = server.request()
        except Exception as e:  # the request's fate is the fact being recorded
            outcome["result"] = "error: %s" % e
    th = threading.Thread(target=go)
    th.start()
    wait_until(30, "%s: a request in flight" % server.name, lambda: read("/tmp/inflight", "").strip() or None)
    t = time.time()
    os.kill(server.proc.pid, sig)
    code = None
    try:
        code = server.proc.wait(30)
    except Exception:
        pass
    took = time.time() - t
    th.join(40)
    evidence("FACT %s %s to the master" % (server.name, signal.Signals(sig).name),
             "in-flight request -> %s; master %s" % (
                 outcome.get("result", "still running"),
                 "exited (%s) %.1fs after the signal" % (code, took) if code is not None else "still running after 30s"))
    server.stop()


def http_ready(port):
    def ready():
        try:
            return http_get(port, "/", timeout=5)[0].split()[1] == "200"
        except (OSError, IndexError):
            return False
    return ready


def http_slow(port):
    def request():
        status, body = http_get(port, "/?sleep=4", timeout=60)
        return "%s, body %r" % (status, body.strip())
    return request


def servers():
    py = {"LEAK_KB": "0", "PYTHONPATH": APPS}
    return [
        (Server("gunicorn", ["gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "--chdir", APPS,
                             "leakweb:app"], http_ready(8000), http_slow(8000), env=py),
         [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT], [signal.SIGTERM]),
        (Server("uwsgi", ["uwsgi", "--plugin", "python3", "--master", "--processes", "2",
                          "--http-socket", "127.0.0.1:8001", "--wsgi-file", APPS + "/leakweb.py",
                          "--chdir", APPS, "--die-on-term"],
                http_ready(8001), http_slow(8001), env=py, stop=signal.SIGTERM),
         [signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT],
         [signal.SIGTERM, signal.SIGQUIT, signal.SIGINT]),
        (Server("php-fpm", ["php-fpm8.2", "-F", "-R", "-y", APPS + "/php-fpm.conf"],
                lambda: _fcgi_ready(), lambda: "%s, body %r" % fcgi_get(9000, APPS + "/slow.php", "sleep=4", timeout=60),
                stop=signal.SIGQUIT),
         [signal.SIGQUIT, signal.SIGTERM], [signal.SIGQUIT]),
        (Server("puma", ["puma", "-w", "2", "-b", "tcp://127.0.0.1:8003", APPS + "/config.ru"],
                http_ready(8003), http_slow(8003)),
         [signal.SIGTERM, signal.SIGINT], [signal.SIGTERM]),
        (Server("unicorn", ["unicorn", "-c", APPS + "/unicorn.conf.rb", APPS + "/config.ru"],
                http_ready(8004), http_slow(8004), stop=signal.SIGQUIT),
         [signal.SIGQUIT, signal.SIGTERM], [signal.SIGQUIT]),
    ]


def _fcgi_ready():
    try:
        return fcgi_get(9000, APPS + "/slow.php", timeout=5)[0].startswith("200")
    except OSError:
        return False


class Celery(Server):
    """Celery -c 2 with Redis: the 'request' is a 4 s task; done means its ledger line."""
    n = 0

    def __init__(self):
        env = {"LEAK_KB": "0", "PYTHONPATH": APPS, "LEDGER": "/tmp/facts-celery.ledger"}
        super().__init__("celery", ["python3", "-m", "celery", "-A", "leaktasks", "worker", "-c", "2", "-P",
                                    "prefork", "--loglevel=INFO", "--without-gossip",
                                    "--without-mingle", "--without-heartbeat"],
                         self.is_ready, self.task, env=env)
        os.environ["LEDGER"] = env["LEDGER"]

    def is_ready(self):
        return "ready." in (read("/tmp/facts-celery.log", "") or "")

    def task(self):
        import sys
        sys.path.insert(0, APPS)
        import leaktasks
        Celery.n += 1
        n = Celery.n
        leaktasks.app.send_task("leaktasks.slow", args=[n, 4])
        end = time.time() + 30
        while time.time() < end:
            if ("done %d " % n) in (read("/tmp/facts-celery.ledger", "") or ""):
                return "task %d done" % n
            time.sleep(0.2)
        return "task %d NOT done within 30s" % n


def run():
    start_redis()
    make_group(FACTS)
    write_sub = "+memory +pids"
    with open(FACTS + "/cgroup.subtree_control", "w") as f:
        f.write(write_sub)
    ran, broken = 0, []
    for server, sigs, master_sigs in servers() + [(Celery(), [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1], [])]:
        try:
            server.start()
        except Exception as e:
            evidence("FACT %s" % server.name, "could not start: %s; log: %s" % (
                e, (read(getattr(server, "log", ""), "") or "")[-1500:]))
            server.stop()
            broken.append(server.name)
            continue
        for sig in sigs:
            try:
                if not server.probe(sig):
                    evidence("FACT %s" % server.name, "master gone; log tail: %s" % (read(server.log, "") or "")[-1500:].replace("\n", " | "))
                    break
                ran += 1
            except Fail as e:
                evidence("FACT %s %s" % (server.name, signal.Signals(sig).name), "probe failed: %s" % e)
        lines = (read(server.log, "") or "").splitlines()
        # Celery's tracebacks would push its own log lines out of a plain tail.
        tail = [l for l in lines if l.startswith("[20")][-40:] if server.name == "celery" else lines[-25:]
        for line in tail:
            print("    %s log | %s" % (server.name, line))
        server.stop()
        for sig in master_sigs:
            try:
                server.start()
                probe_master(server, sig)
            except Fail as e:
                evidence("FACT %s %s to the master" % (server.name, signal.Signals(sig).name), "probe failed: %s" % e)
                server.stop()
    if server.name == "celery":
        evidence("redis after celery", "queue %s, unacked %s" % (redis("llen", "celery"), redis("hlen", "unacked")))
    if broken or ran == 0:
        raise Fail("could not probe %s (%d probes ran)" % (", ".join(broken) or "anything", ran))
