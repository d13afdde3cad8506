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

# The kernel series the VM suite knows, and the Debian suite whose cloud kernel is that series.
# 6.1 is the default (tests/vm/run.sh without --kernel, and the systemd scenario).
kernel_versions=(5.10 6.1 6.12)
default_kernel_version=6.1
kernel_suite() { # <version>: prints the Debian suite, or fails for an unknown version
  case $1 in
    5.10) echo bullseye ;;
    6.1) echo bookworm ;;
    6.12) echo trixie ;;
    *) return 1 ;;
  esac
}

# The host's own Debian apt sources (/etc/apt/sources.list and sources.list.d, one-line and deb822
# formats), rewritten for <suite>: every `deb` entry whose suite is the host's codename or
# codename-updates or codename-security becomes the same URI with <suite>[-SUFFIX], component main.
# No mirror name is written anywhere: the URIs are whatever this host already uses.
suite_sources() { # <suite> <keyring or empty>
  local suite=$1 keyring=$2 host_codename
  host_codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [ -n "$host_codename" ] || { echo "no VERSION_CODENAME in /etc/os-release" >&2; return 1; }
  local files=()
  [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
  local f
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  # deb822 stanzas are separated by blank lines; keys are case-insensitive; `Enabled: no` skips.
  awk -v host="$host_codename" -v want="$suite" -v key="$keyring" '
    function emit(uri, s,   sfx) {
      if (s == host) sfx = ""
      else if (s == host "-updates" || s == host "-security") sfx = substr(s, length(host) + 1)
      else return  # not backports: its kernel is another series
      line = "deb " (key != "" ? "[signed-by=" key "] " : "") uri " " want sfx " main"
      if (!(line in seen)) { seen[line] = 1; print line }
    }
    function flush(   i, j, nu, ns, u, s) {
      if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) != "no") {
        nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
        for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++) if (u[i] != "" && s[j] != "") emit(u[i], s[j])
      }
      types = uris = suites = enabled = ""
    }
    FNR == 1 { flush(); deb822 = (FILENAME ~ /\.sources$/) }
    deb822 {
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      if ($0 ~ /^#/) next
      k = tolower($1); v = $0; sub(/^[^:]*:[ \t]*/, "", v)
      if (k == "types:") types = v
      else if (k == "uris:") uris = v
      else if (k == "suites:") suites = v
      else if (k == "enabled:") enabled = v
      next
    }
    /^[ \t]*deb[ \t]/ {
      l = $0; sub(/#.*/, "", l); sub(/\[[^]]*\]/, "", l)
      n = split(l, w, /[ \t]+/); i = (w[1] == "" ? 2 : 1)
      if (n >= i + 2) emit(w[i + 1], w[i + 2])
    }
    END { flush() }
  ' "${files[@]}"
}

# A private apt state for <suite> in $cache/apt-<suite> (lists, cache, sources derived from the
# host's own entries), updated once: sets `apt` (the directory) and `apt_opts` (apt's options).
# The host's own apt state is never touched.
suite_apt() { # <suite>
  local suite=$1 keyring=""
  apt="$cache/apt-$suite"
  rm -rf "$apt"
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/deb"
  # Debian's archive keyring holds every release's key; without it apt uses its trusted parts.
  [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  suite_sources "$suite" "$keyring" >"$apt/sources.list"
  if [ ! -s "$apt/sources.list" ]; then
    echo "no Debian 'deb' entry for this host's codename in /etc/apt/sources.list{,.d}:" \
      "cannot derive a $suite source (the VM kernels and tools come from Debian's archive)" >&2
    exit 1
  fi
  apt_opts=(-o Dir::State::Lists="$apt/lists" -o Dir::Etc::SourceList="$apt/sources.list"
    -o Dir::Etc::SourceParts=/dev/null -o Dir::Cache="$apt/cache" -o APT::Sandbox::User=root)
  say "apt-get update for $suite (private lists in $apt): $(awk '{print $(NF-2), $(NF-1)}' "$apt/sources.list" | tr '\n' ' ')"
  # A suite that no longer exists (an -updates suite after its release moved to the archive)
  # fails its part of the update; what matters is whether the package resolves afterwards.
  apt-get "${apt_opts[@]}" update -qq || say "apt-get update for $suite reported errors (see above)"
}

# A Debian package of <suite> unpacked (dpkg -x) into $cache/deb-<package>, fetched once (not into
# $cache/debs: systemd/run.sh empties that for its own .debs). Sets `deb_root`. For tools the busybox VM runs as a user would install
# them (earlyoom for bench_goodput); their libraries come from the host by copy_with_libs.
ensure_deb() { # <suite> <package>
  local suite=$1 pkg=$2
  deb_root="$cache/deb-$pkg"
  [ -d "$deb_root" ] && return
  suite_apt "$suite"
  say "fetching $pkg ($suite)"
  (cd "$apt/deb" && apt-get "${apt_opts[@]}" download -qq "$pkg")
  dpkg -x "$apt"/deb/"$pkg"_*.deb "$deb_root.tmp"
  mv "$deb_root.tmp" "$deb_root"
  rm -rf "$apt"
}

# Debian's cloud kernel of <suite> (default bookworm: cgroup v2, PSI, cgroup.kill built in; see
# shared/FIELD-NOTES.md), fetched once into $cache/kernel-<suite>. Sets `kernel` to the bzImage.
# The suite's package lists go to a private apt directory (lists, cache, sources), so the host's
# own apt state is never touched and any host suite can fetch any other suite's kernel.
ensure_kernel() { # [suite]
  local suite=${1:-bookworm}
  local dir="$cache/kernel-$suite"
  # Before the kernel matrix, bookworm's kernel lived in $cache/kernel.
  if [ "$suite" = bookworm ] && [ -d "$cache/kernel/boot" ] && [ ! -e "$dir" ]; then
    mv "$cache/kernel" "$dir"
  fi
  kernel=$(ls "$dir"/boot/vmlinuz-* 2>/dev/null | head -n 1 || true)
  [ -n "$kernel" ] && return
  suite_apt "$suite"
  local pkg
  pkg=$(apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}' || true)
  [ -n "$pkg" ] || {
    echo "cannot resolve linux-image-cloud-amd64 to a kernel package in $suite (sources: $apt/sources.list)" >&2
    exit 1
  }
  say "fetching kernel package $pkg ($suite)"
  (cd "$apt/deb" && apt-get "${apt_opts[@]}" download -qq "$pkg")
  rm -rf "$dir"
  dpkg -x "$apt"/deb/"$pkg"_*.deb "$dir"
  rm -rf "$apt"
  kernel=$(ls "$dir"/boot/vmlinuz-* | head -n 1)
}

# console_verdict <scenario> <qemu exit> <hard limit s> <console log>: prints the scenario's
# verdict line ("SCENARIO <name> PASS" or "SCENARIO <name> FAIL: why"), also when the VM timed
# out or printed none; on a failure the console's tail (without kernel lines) goes to stderr.
# Shared by the VMs that boot one scenario per run (tests/vm/apps/run.sh, tests/vm/systemd/run.sh).
console_verdict() {
  local name=$1 rc=$2 limit=$3 log=$4 line
  line=$(tr -d '\r' <"$log" | grep -E "^SCENARIO $name (PASS|FAIL)" | tail -n 1 || true)
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    line="SCENARIO $name FAIL: VM timed out after ${limit}s"
  elif [ -z "$line" ]; then
    line="SCENARIO $name FAIL: no verdict on the console (qemu exit $rc)"
  fi
  if [ "$line" != "SCENARIO $name PASS" ]; then
    tr -d '\r' <"$log" | grep -vE '^\[ *[0-9]+\.[0-9]+\]' | tail -n 80 | sed 's/^/    | /' >&2
  fi
  echo "$line"
}
