#!/bin/busybox sh
# /init of the test VM (packed by tests/vm/run.sh): mount the basics and cgroup2, enable the
# memory and pids controllers, run the scenario named on the kernel command line, power off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
# 0755, as RuntimeDirectory= makes it: the daemon refuses a runtime directory others may write.
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t cgroup2 -o nsdelegate none /sys/fs/cgroup

# One write per controller: no_memory_controller boots with cgroup_disable=memory, and a
# combined write would fail for pids too.
for c in memory pids; do
  echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null ||
    echo "init: could not enable +$c in the root cgroup"
done

scenario=$(sed -n 's/.*oomguard\.scenario=\([^ ]*\).*/\1/p' /proc/cmdline)
echo "init: kernel $(uname -r), scenario '${scenario}'"
if [ -n "$scenario" ]; then
  /bin/vm-scenarios "$scenario"
  echo "init: vm-scenarios exited with $?"
else
  echo "SCENARIO unknown FAIL: no oomguard.scenario= on the kernel command line"
fi
poweroff -f
