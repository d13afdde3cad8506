"""Containers run by Debian's runc 1.1 in the real-apps VM (issue 20, item 4): the bundle, and
a restart loop around `runc run` as the kubelet's `restartPolicy: Always` makes one.

The bundle's rootfs is the VM's own root, bound (not recursively) at /ctr-root: the initramfs
root cannot be pivot_root'ed (it is the kernel's rootfs), so runc runs with --no-pivot, which
moves the bundle's root onto / and chroots. config.json starts as `runc spec` writes it and is
changed in Python, as the kubelet's container spec would set it: memory.max 192M,
memory.oom.group=1 through linux.resources.unified (kubernetes #117793), a cgroup namespace, the
cgroup mount with or without "ro", the VM's network namespace (no network namespace entry), so
the load client outside reaches gunicorn on 127.0.0.1.

Each container's group is <pod>/ctr under a pod group of its own, as the kubelet nests a
container under its pod: runc removes the container's group when the container ends, and the
pod's memory.events (hierarchical) still counts that container's OOM kills after it is gone.
"""
import json
import os
import subprocess
import threading
import time

from common import Fail, memory_events, read, write

ROOTFS = "/ctr-root"
LIMIT = 192 << 20
# What containerd gives a container by default (oci.WithDefaultSpec; Docker's list too).
CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
        "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
       "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", "PYTHONPATH=/apps"]


def ensure_rootfs():
    """The VM's / at ROOTFS without the mounts on top of it (proc, sys, /tmp, /run): runc mounts
    the container's own."""
    if os.path.ismount(ROOTFS):
        return
    os.makedirs(ROOTFS, exist_ok=True)
    subprocess.run(["mount", "--bind", "/", ROOTFS], check=True)


def spec(args, env=(), writable_cgroups=True, hostname="ctr"):
    """config.json for one container: `runc spec`'s template, changed as said above."""
    tmp = "/tmp/runc-spec"
    os.makedirs(tmp, exist_ok=True)
    if not os.path.exists(tmp + "/config.json"):
        subprocess.run(["runc", "spec", "--bundle", tmp], check=True)
    with open(tmp + "/config.json") as f:
        c = json.load(f)
    p = c["process"]
    p["terminal"] = False
    p["args"] = list(args)
    p["env"] = ENV + list(env)
    p["cwd"] = "/apps"
    for k in ("bounding", "effective", "permitted"):
        p["capabilities"][k] = list(CAPS)
    p["capabilities"].pop("ambient", None)
    p["capabilities"].pop("inheritable", None)
    c["root"] = {"path": ROOTFS, "readonly": False}
    c["hostname"] = hostname
    mounts = []
    for m in c["mounts"]:
        if m["destination"] == "/sys/fs/cgroup":
            opts = [o for o in m.get("options", []) if o != "ro"]
            m["options"] = opts + (["ro"] if not writable_cgroups else [])
        mounts.append(m)
    # A fresh /tmp and /run per container, as an image starts clean (the daemon's socket and
    # state live there).
    for d in ("/tmp", "/run"):
        mounts.append({"destination": d, "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=755" if d == "/run" else "mode=1777"]})
    c["mounts"] = mounts
    lx = c["linux"]
    # No network namespace: the VM's loopback, reached by the load client outside.
    lx["namespaces"] = [n for n in lx["namespaces"] if n["type"] != "network"]
    if not any(n["type"] == "cgroup" for n in lx["namespaces"]):
        lx["namespaces"].append({"type": "cgroup"})
    res = lx.setdefault("resources", {})
    res["memory"] = {"limit": LIMIT, "swap": LIMIT}
    res["unified"] = {"memory.oom.group": "1"}
    return c


def write_bundle(name, config):
    bundle = "/tmp/bundles/" + name
    os.makedirs(bundle, exist_ok=True)
    with open(bundle + "/config.json", "w") as f:
        json.dump(config, f, indent=1)
    return bundle


def pod_group(name):
    """The pod's group (as the kubelet's kubepods-...-pod<uid>), created with the controllers
    its container needs; its memory.events counts the container's OOM kills after runc removed
    the container's own group."""
    pod = "/sys/fs/cgroup/pod-" + name
    os.makedirs(pod, exist_ok=True)
    write(pod + "/cgroup.subtree_control", "+memory +pids")
    return pod


class Container:
    """`runc run` of one bundle in a loop: restarted at once whenever it ends, until stop(), as
    `restartPolicy: Always` without the kubelet's back-off (10 s, doubling: slower to come back,
    so more failed requests, not fewer). Before each start it reads the pod's memory.events."""

    def __init__(self, name, config):
        self.name = name
        self.id = "ctr-" + name
        self.pod = pod_group(name)
        config["linux"]["cgroupsPath"] = "/pod-%s/ctr" % name
        self.bundle = write_bundle(name, config)
        self.log = "/tmp/runc-%s.log" % name
        self.starts = []  # (time, pod memory.events before the start)
        self.exits = []  # (time, runc run's exit status)
        self.stopping = False
        self.proc = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            with self.lock:
                if self.stopping:
                    return
                self.starts.append((time.time(), memory_events(self.pod)))
                out = open(self.log, "ab")
                self.proc = subprocess.Popen(
                    ["runc", "run", "--no-pivot", "--bundle", self.bundle, self.id],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            rc = self.proc.wait()
            self.exits.append((time.time(), rc))
            # A container that ended before its group was removed: as the kubelet does.
            subprocess.run(["runc", "delete", "--force", self.id], capture_output=True)
            if len(self.exits) > 200:
                return

    def restarts(self):
        return max(len(self.starts) - 1, 0)

    def events(self):
        return memory_events(self.pod)

    def group(self):
        return self.pod + "/ctr"

    def pids(self):
        """Every process of the container, from the VM's side (any depth of its groups)."""
        out = []
        for root, _, files in os.walk(self.group()):
            if "cgroup.procs" in files:
                out += [int(p) for p in (read(root + "/cgroup.procs", "") or "").split()]
        return out

    def exec(self, *args, timeout=60):
        """`runc exec` in the running container: what `kubectl exec POD -- ...` does."""
        return subprocess.run(["runc", "exec", self.id] + list(args), capture_output=True,
                              text=True, timeout=timeout)

    def stop(self, limit=60):
        """SIGTERM to the container's PID 1 (the runtime's stop), then SIGKILL after limit s;
        the loop does not restart it. Returns runc run's last exit status."""
        with self.lock:
            self.stopping = True
        # Once: a second SIGTERM makes oomguard exit at once. Until runc has created the
        # container (the loop may have just restarted it) `runc kill` fails: try again.
        end = time.time() + limit
        while (subprocess.run(["runc", "kill", self.id, "TERM"], capture_output=True).returncode
               and self.proc.poll() is None and time.time() < end):
            time.sleep(0.2)
        try:
            self.proc.wait(limit)
        except subprocess.TimeoutExpired:
            subprocess.run(["runc", "kill", self.id, "KILL"], capture_output=True)
            self.proc.wait(30)
        self.thread.join(30)
        subprocess.run(["runc", "delete", "--force", self.id], capture_output=True)
        try:
            os.rmdir(self.pod)
        except OSError:
            pass
        if self.proc.returncode is None:
            raise Fail("runc run of %s did not end" % self.id)
        return self.proc.returncode

    def tail(self, n=30):
        return "\n".join((read(self.log, "") or "").splitlines()[-n:])
