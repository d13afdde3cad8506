# shellcheck shell=bash disable=SC2154  # cache, logs and say come from the sourcing run.sh
# Sourced by tests/vm/apps/run.sh: the real-apps rootfs, a debootstrap minbase of Debian bookworm
# with the frameworks under test, cached in tests/vm/.cache/apps-rootfs and rebuilt when the
# package lists below change. Needs root (debootstrap, chroot).

# debootstrap resolves `a | b` dependencies to the first alternative, so php8.2-fpm (systemd |
# systemd-tmpfiles) would pull a whole systemd: those packages go in with apt inside the chroot,
# which takes the explicitly named alternative.
APPS_DEBOOTSTRAP=python3,gunicorn,python3-celery,python3-redis,redis-server,procps
# rabbitmq-server (3.10, Erlang 25) for Celery on amqp:// (issue 19); python3-amqp comes with kombu.
# runc (1.1, the OCI runtime under containerd) for the in-container proof (issue 20).
APPS_APT="uwsgi-core uwsgi-plugin-python3 php8.2-fpm systemd-standalone-tmpfiles puma unicorn rabbitmq-server runc"
# The trimming below is part of the stamp too: bump the last word when it changes.
APPS_STAMP="bookworm minbase $APPS_DEBOOTSTRAP + $APPS_APT trim2"

# debootstrap uses the Debian mirror this host's apt is already set up with (or DEBIAN_MIRROR).
host_mirror() {
  {
    sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | tr ' ' '\n'
    awk '$1 == "deb" {print $2}' /etc/apt/sources.list 2>/dev/null
  } | grep -m 1 -E '/debian/?$' || true
}

ensure_apps_rootfs() { # sets rootfs
  rootfs="$cache/apps-rootfs"
  if [ "$(cat "$rootfs/.oomguard-rootfs" 2>/dev/null || true)" = "$APPS_STAMP" ]; then
    return
  fi
  local mirror=${DEBIAN_MIRROR:-$(host_mirror)} t0 tmp="$rootfs.tmp"
  [ -n "$mirror" ] || { echo "no Debian mirror found in /etc/apt/sources.list*; set DEBIAN_MIRROR" >&2; exit 1; }
  t0=$(date +%s)
  say "debootstrap bookworm ($APPS_DEBOOTSTRAP) from $mirror into $rootfs, then apt-get install $APPS_APT"
  rm -rf "$rootfs" "$tmp"
  debootstrap --variant=minbase --include="$APPS_DEBOOTSTRAP" bookworm "$tmp" "$mirror" \
    >"$logs/apps-debootstrap.log" 2>&1 || { tail -n 20 "$logs/apps-debootstrap.log" >&2; exit 1; }
  # No service may start inside the chroot (postinst of redis, php-fpm).
  printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
  chmod 0755 "$tmp/usr/sbin/policy-rc.d"
  mount -t proc proc "$tmp/proc"
  # shellcheck disable=SC2086  # a word list
  chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $APPS_APT >>"$logs/apps-debootstrap.log" 2>&1 || { umount "$tmp/proc"; tail -n 20 "$logs/apps-debootstrap.log" >&2; exit 1; }
  umount "$tmp/proc"
  rm -f "$tmp/usr/sbin/policy-rc.d"
  # Nothing in the VM reads these; a smaller initramfs boots faster under TCG. (Not
  # /usr/share/zoneinfo: pytz, which Celery imports, reads tzdata.zi at import.)
  rm -rf "$tmp"/usr/share/{doc,man,info,locale} "$tmp"/var/cache/apt/*.bin \
    "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/* \
    "$tmp"/usr/lib/python3/dist-packages/*/tests
  echo "$APPS_STAMP" >"$tmp/.oomguard-rootfs"
  mv "$tmp" "$rootfs"
  say "apps rootfs built in $(($(date +%s) - t0))s: $(du -sh "$rootfs" | cut -f1)"
}
