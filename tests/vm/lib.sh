# Shared by tests/vm/run.sh and tests/vm/systemd/run.sh (sourced; they define `say` and `cache`).

# One `apt-get update` per run, only when something must be installed or looked up.
apt_updated=no
apt_update_once() {
  if [ "$apt_updated" = no ]; then
    say "apt-get update"
    apt-get update -qq
    apt_updated=yes
  fi
}

# Debian's cloud kernel (cgroup v2, PSI, cgroup.kill built in; see shared/FIELD-NOTES.md), fetched
# once into $cache/kernel. Sets `kernel` to the bzImage.
ensure_kernel() {
  kernel=$(ls "$cache"/kernel/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
  [ -n "$kernel" ] && return
  local pkg
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
  if [ -z "$pkg" ]; then
    apt_update_once
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || { echo "cannot resolve linux-image-cloud-amd64 to a kernel package" >&2; exit 1; }
  say "fetching kernel package $pkg"
  rm -rf "$cache/deb" "$cache/kernel"
  mkdir -p "$cache/deb"
  (cd "$cache/deb" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  dpkg -x "$cache"/deb/"$pkg"_*.deb "$cache/kernel"
  rm -rf "$cache/deb"
  kernel=$(ls "$cache"/kernel/boot/vmlinuz-* | head -n 1)
}
