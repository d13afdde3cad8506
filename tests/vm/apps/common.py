"""Helpers of the real-apps VM scenarios (tests/vm/apps/scenario.py): evidence lines, cgroups,
processes, HTTP/FastCGI probes, Redis, the oomguard daemon. Runs inside the VM as root."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

OOMGUARD = "/usr/bin/oomguard"
SOCK = "/run/oomguard.sock"
CGROOT = "/sys/fs/cgroup/oomguard"
POLICIES = "/etc/oomguard/policies.d"
BENCH = "/sys/fs/cgroup/bench"
APPS = "/apps"


class Fail(Exception):
    pass


def evidence(key, value):
    print("EVIDENCE %s: %s" % (key, value), flush=True)


def ensure(cond, why):
    if not cond:
        raise Fail(why)


def poweroff():
    sys.stdout.flush()
    # Let the serial console drain first: the kernel's own "sysrq: Power Off" line once cut the
    # verdict line in two ("SCENARIO apps_gunicorn PAS[ 76.46] sysrq: Power Off" / "S").
    try:
        import termios
        termios.tcdrain(sys.stdout.fileno())
    except (OSError, ValueError, ImportError):
        pass
    time.sleep(1)
    os.sync()
    with open("/proc/sysrq-trigger", "w") as f:
        f.write("o")
    time.sleep(30)


def watchdog(name, budget_s, dump):
    """An in-VM watchdog: a hung step still ends with a verdict and the logs."""
    def fire():
        time.sleep(budget_s)
        print("SCENARIO watchdog: budget of %ds exceeded" % budget_s, flush=True)
        dump()
        print("SCENARIO %s FAIL: in-VM budget of %ds exceeded" % (name, budget_s), flush=True)
        poweroff()
    threading.Thread(target=fire, daemon=True).start()


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def vmstat_oom_kill():
    for line in read("/proc/vmstat", "").splitlines():
        k, _, v = line.partition(" ")
        if k == "oom_kill":
            return int(v)
    raise Fail("/proc/vmstat has no oom_kill")


def memory_events(group):
    out = {}
    for line in read(os.path.join(group, "memory.events"), "").splitlines():
        k, _, v = line.partition(" ")
        out[k] = int(v)
    return out


def make_group(path, high=None, maxi=None):
    """A cgroup under the root with the memory and pids controllers for its children."""
    parent = os.path.dirname(path)
    os.makedirs(path, exist_ok=True)
    if high is not None:
        write(os.path.join(path, "memory.high"), str(high))
    if maxi is not None:
        write(os.path.join(path, "memory.max"), str(maxi))
        write(os.path.join(path, "memory.swap.max"), "0")
    return path


def kill_group(path):
    """SIGKILL everything in the group and remove it (and its child groups)."""
    if not os.path.isdir(path):
        return
    try:
        write(os.path.join(path, "cgroup.kill"), "1")
    except OSError:
        pass
    for _ in range(100):
        if "populated 0" in read(os.path.join(path, "cgroup.events"), "populated 0"):
            break
        time.sleep(0.1)
    for root, dirs, _ in os.walk(path, topdown=False):
        for d in dirs:
            try:
                os.rmdir(os.path.join(root, d))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass


def children(pid):
    """The direct children of pid (all its threads' children)."""
    out = []
    for tid in os.listdir("/proc/%d/task" % pid) if os.path.isdir("/proc/%d/task" % pid) else []:
        text = read("/proc/%d/task/%s/children" % (pid, tid), "")
        out.extend(int(p) for p in text.split())
    return sorted(set(out))


def alive(pid):
    stat = read("/proc/%d/stat" % pid)
    return stat is not None and stat.rsplit(")", 1)[1].split()[0] != "Z"


def sig_masks(pid):
    """SigBlk/SigIgn/SigCgt of a process, and whether SIGTERM is caught, ignored or default."""
    status = read("/proc/%d/status" % pid, "")
    masks = {}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("SigBlk", "SigIgn", "SigCgt"):
            masks[k] = int(v.strip(), 16)
    bit = 1 << (signal.SIGTERM - 1)
    term = "caught" if masks.get("SigCgt", 0) & bit else (
        "ignored" if masks.get("SigIgn", 0) & bit else "default")
    return "SIGTERM %s (SigBlk %x SigIgn %x SigCgt %x)" % (
        term, masks.get("SigBlk", 0), masks.get("SigIgn", 0), masks.get("SigCgt", 0))


def cmdline(pid):
    return read("/proc/%d/cmdline" % pid, "").replace("\0", " ").strip()


def wait_until(limit_s, what, pred, every=0.2):
    end = time.time() + limit_s
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise Fail("timed out after %ss waiting for %s" % (limit_s, what))


def spawn(cmd, log, group=None, env=None, cwd=APPS):
    """Starts cmd (its own session) with output to log, inside group if given."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    out = open(log, "ab")

    def pre():
        os.setsid()
        if group:
            write(os.path.join(group, "cgroup.procs"), str(os.getpid()))
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=full_env, cwd=cwd, preexec_fn=pre)


def exchange(port, request, timeout):
    """Sends request to 127.0.0.1:port and reads the reply to EOF; raises OSError."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(request)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
    finally:
        s.close()


def http_get(port, path="/", timeout=30):
    """(status line, body) of one HTTP/1.0 GET, or raises OSError."""
    data = exchange(port, ("GET %s HTTP/1.0\r\nHost: vm\r\n\r\n" % path).encode(), timeout)
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0].decode(errors="replace"), body.decode(errors="replace")


def fcgi_get(port, script, query="", timeout=30):
    """(status, body) of one FastCGI request to a responder (PHP-FPM), or raises OSError."""
    def rec(kind, content):
        return struct.pack("!BBHHBx", 1, kind, 1, len(content), 0) + content

    def nv(k, v):
        k, v = k.encode(), v.encode()
        ln = lambda x: bytes([len(x)]) if len(x) < 128 else struct.pack("!I", len(x) | 0x80000000)
        return ln(k) + ln(v) + k + v
    params = {"SCRIPT_FILENAME": script, "SCRIPT_NAME": os.path.basename(script),
              "REQUEST_METHOD": "GET", "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/1.0",
              "GATEWAY_INTERFACE": "CGI/1.1", "REMOTE_ADDR": "127.0.0.1"}
    body = b"".join(nv(k, v) for k, v in params.items())
    data = exchange(port, rec(1, struct.pack("!HB5x", 1, 0)) + rec(4, body) + rec(4, b"")
                    + rec(5, b""), timeout)
    out, ended, i = b"", False, 0
    while i + 8 <= len(data):
        _, kind, _, clen, plen = struct.unpack("!BBHHB", data[i:i + 7])
        content = data[i + 8:i + 8 + clen]
        if kind == 6:
            out += content
        elif kind == 3:
            ended = True
        i += 8 + clen + plen
    if not ended:
        raise OSError("no FCGI_END_REQUEST (%d bytes)" % len(data))
    head, _, text = out.partition(b"\r\n\r\n")
    status = "200"
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"status:"):
            status = line.split(b":", 1)[1].strip().decode()
    return status, text.decode(errors="replace")


# ---- Redis ----
def start_redis():
    subprocess.run(["redis-server", "--port", "6379", "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--daemonize", "yes", "--logfile", "/tmp/redis.log"],
                   check=True)
    wait_until(30, "redis to answer PING", lambda: subprocess.run(
        ["redis-cli", "ping"], capture_output=True, text=True).stdout.strip() == "PONG")


def redis(*args):
    return subprocess.run(["redis-cli"] + list(args), capture_output=True, text=True,
                          check=True).stdout.strip()


# ---- the daemon ----
class Daemon:
    def __init__(self, log="/tmp/oomguard.log"):
        self.log = log
        os.makedirs(POLICIES, exist_ok=True)
        self.proc = subprocess.Popen(
            [OOMGUARD, "run", "--policies", POLICIES, "--socket", SOCK, "--cgroup-root", CGROOT],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(os.environ, RUST_LOG="info"))
        wait_until(30, "oomguard status to answer", lambda: self.status() is not None)

    def client(self, *args, timeout=60):
        return subprocess.run([OOMGUARD] + list(args) + ["--socket", SOCK], capture_output=True,
                              text=True, timeout=timeout)

    def status(self):
        r = self.client("status", "--json")
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def instance(self, ident):
        st = self.status() or {}
        for p in st.get("policies", []):
            for i in p.get("instances", []):
                if i.get("id") == ident:
                    return i
        return None

    def events(self):
        r = self.client("events", "--json", "--last", "1000")
        out = []
        for line in r.stdout.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, limit=120):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise Fail("the daemon did not exit within %ss of SIGTERM" % limit)

    def tail(self, n=60):
        return "\n".join((read(self.log, "") or "").splitlines()[-n:])


def write_policy(name, text):
    os.makedirs(POLICIES, exist_ok=True)
    path = os.path.join(POLICIES, name + ".yaml")
    write(path + ".tmp", text)
    os.chmod(path + ".tmp", 0o644)
    os.rename(path + ".tmp", path)
    for line in text.strip().splitlines():
        print("    policy %s | %s" % (name, line), flush=True)


def median(xs):
    xs = sorted(xs)
    n = len(xs)
    if n == 0:
        return 0
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2



class Watcher:
    """Polls `listing()` twice a second while a load runs and keeps every name it returned."""

    def __init__(self, listing):
        self.listing = listing
        self.seen = set()
        self.running = True
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while self.running:
            try:
                self.seen.update(self.listing())
            except OSError:
                pass
            time.sleep(0.5)

    def stop(self):
        self.running = False
        self.thread.join(5)
        return sorted(self.seen)


def LeafWatcher(ident):
    """Every child leaf (`child-<pid>`) that appears under an instance's group: the workers or
    pool processes oomguard placed, replacements included, whoever recycled them."""
    group = os.path.join(CGROOT, ident)
    return Watcher(lambda: [d for d in os.listdir(group) if d.startswith("child-")])


def ChildWatcher(main_pid):
    """Every direct child of a main process (the pool processes of a Celery worker, with or
    without oomguard), replacements included."""
    return Watcher(lambda: children(main_pid))

# ---- RabbitMQ (issue 19) ----
# The scripts themselves, not /usr/sbin's wrapper, which switches to the rabbitmq user and
# drops the environment (HOME, hence the Erlang cookie rabbitmqctl must share).
RMQ = "/usr/lib/rabbitmq/bin/"


def start_rabbitmq(limit_s=300):
    """Starts Debian's rabbitmq-server in the background, outside the guarded groups, and waits
    until it accepts on 5672 (the AMQP listener opens at the end of its boot); returns the seconds
    that took. Not `rabbitmqctl await_startup`: rabbitmqctl is an Erlang program of its own that
    takes tens of seconds to start under TCG."""
    env = {"RABBITMQ_NODENAME": "rabbit@localhost", "RABBITMQ_HOME": "/tmp/rabbitmq",
           "HOME": "/tmp/rabbitmq", "RABBITMQ_MNESIA_BASE": "/tmp/rabbitmq/mnesia",
           "RABBITMQ_LOG_BASE": "/tmp/rabbitmq/log", "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
           # Erlang's schedulers spin while idle by default: on the VM's two emulated vCPUs
           # that would be CPU taken from the workers under test.
           "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none"}
    os.makedirs("/tmp/rabbitmq/log", exist_ok=True)
    # Our own cookie: Erlang's own, made at first start, once came out empty on a loaded host
    # ("Too short cookie string") and the node never started.
    cookie = "/tmp/rabbitmq/.erlang.cookie"
    if not os.path.exists(cookie):
        write(cookie, "OOMGUARDVMCOOKIE%08d" % os.getpid())
        os.chmod(cookie, 0o400)
    t0 = time.time()
    spawn([RMQ + "rabbitmq-server"], "/tmp/rabbitmq-server.log", env=env, cwd="/tmp/rabbitmq")
    wait_until(limit_s, "RabbitMQ to accept on 5672", lambda: _tcp_ok(5672), every=1)
    secs = time.time() - t0
    for line in (read("/tmp/rabbitmq/log/rabbit@localhost.log", "") or "").splitlines():
        if "Time to start RabbitMQ" in line or "startup complete" in line:
            evidence("rabbitmq", line.strip())
    return secs


def _tcp_ok(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
