#!/bin/bash
# /init of the real-apps VM (packed by tests/vm/apps/run.sh into a Debian bookworm rootfs): no
# systemd, for a fast boot. Mounts the basics and cgroup2 as tests/vm/init.sh does, brings up
# loopback, runs `scenario.py <name>` with the name from oomguard.scenario= and powers off.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
chmod 1777 /tmp
# 0755, as RuntimeDirectory= makes it: the daemon refuses a runtime directory others may write.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate none /sys/fs/cgroup
for c in memory pids; do
  echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
    echo "init: could not enable +$c in the root cgroup"
done
# Loopback up (minbase has no iproute2): SIOCSIFFLAGS with IFF_UP|IFF_RUNNING.
python3 -c '
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fcntl.ioctl(s, 0x8914, struct.pack("16sH14x", b"lo", 0x1 | 0x40))
'
hostname apps-vm 2>/dev/null || true
# Minbase has no /etc/hosts: Erlang (RabbitMQ's node rabbit@localhost) must resolve localhost.
printf '127.0.0.1 localhost\n127.0.1.1 apps-vm\n' >/etc/hosts

scenario=$(sed -n 's/.*oomguard\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "init: kernel $(uname -r), scenario '${scenario}', $(cut -d' ' -f1 /proc/uptime)s since kernel start"
python3 /apps/scenario.py "$scenario"
echo "init: scenario.py exited with $?"
sync
echo o >/proc/sysrq-trigger
sleep 30
