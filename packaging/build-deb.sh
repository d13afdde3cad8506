#!/usr/bin/env bash
# Builds the oomguard .deb with dpkg-deb from the release binary and the files in the repository
# (packaging/, systemd/, docs/install.md). No cargo-deb, no debian/ source package: the test
# command builds this on a fresh clone in seconds, and every file's path and mode is listed below.
#
#   packaging/build-deb.sh [--revision N] [--out DIR] [--binary PATH]
#
#   --revision N   Debian revision (default 1): the package version is <Cargo.toml version>-N.
#                  The systemd VM test builds a second package with a higher revision to test
#                  upgrades.
#   --out DIR      where the .deb goes (default: <cargo target dir>/debian)
#   --binary PATH  package this oomguard binary instead of running `cargo build --release`
#
# Maintainer: $DEBFULLNAME <$DEBEMAIL> when both are set (as for dch), else a placeholder.
# SOURCE_DATE_EPOCH (default: the last commit's time) dates the changelog and the files, so two
# builds of one commit give the same package.
# Needs: cargo, dpkg-deb, dpkg-shlibdeps (dpkg-dev), strip (binutils), gzip. Prints the .deb's path
# as the last line of stdout. Lint it with: lintian --fail-on error,warning <deb>
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
revision=1
out=""
binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --revision) revision=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$revision" in
  [1-9]|[1-9][0-9]|[1-9][0-9][0-9]) ;;
  *) echo "build-deb.sh: --revision must be a number 1-999, not '$revision'" >&2; exit 2 ;;
esac
for tool in cargo dpkg-deb dpkg-shlibdeps strip gzip; do
  command -v "$tool" >/dev/null || { echo "build-deb.sh: $tool not found (packages: dpkg-dev binutils gzip)" >&2; exit 1; }
done

say() { printf '[build-deb] %s\n' "$*" >&2; }
cd "$repo"
# `cargo pkgid` prints path+file:///...#oomguard@0.1.0 (or ...#0.1.0).
upstream=$(cargo pkgid)
upstream=${upstream##*[#@]}
version="$upstream-$revision"
arch=$(dpkg --print-architecture)
target=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
  sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
out=${out:-$target/debian}
if [ -z "$binary" ]; then
  say "cargo build --release --bin oomguard"
  cargo build --release --bin oomguard >&2
  binary="$target/release/oomguard"
fi
[ -x "$binary" ] || { echo "build-deb.sh: $binary is not an executable" >&2; exit 1; }
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$repo" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
maintainer=""
if [ -n "${DEBFULLNAME:-}" ] && [ -n "${DEBEMAIL:-}" ]; then
  maintainer="$DEBFULLNAME <$DEBEMAIL>"
fi
# Not a deliverable address (the project has none yet): packages built for distribution set
# DEBFULLNAME and DEBEMAIL. Lintian's complaint about it is overridden for this case only.
placeholder="oomguard maintainers <oomguard@localhost>"
maintainer=${maintainer:-$placeholder}

stage="$target/deb-stage/oomguard_${version}_$arch"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
# put <src> <dest under the package root> <mode>
put() { install -D -m "$3" "$1" "$stage/$2"; }

# Stripped like dh_strip does: lintian refuses unstripped binaries (no -dbgsym package here).
put "$binary" usr/bin/oomguard 0755
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$stage/usr/bin/oomguard"
# Units in /lib/systemd/system, where Debian 12's debhelper puts them (and bookworm's lintian
# wants them). Debian 12 systemd reads both; on merged-/usr systems it is /usr/lib/systemd/system.
# Moving them to /usr/lib in a later version (trixie's lintian wants that) must follow DEP 17:
# dpkg sees /lib/x and /usr/lib/x as two files and can delete the moved one on upgrade.
for unit in oomguard.service oomguard-workers.service oomguard-metrics.service oomguard-metrics.timer; do
  put "systemd/$unit" "lib/systemd/system/$unit" 0644
done
# The only file under /etc, so the only conffile: local edits survive upgrades. *.sample: the
# daemon loads *.yaml/*.yml only, so a fresh install starts no workers.
put packaging/example.yaml.sample etc/oomguard/policies.d/example.yaml.sample 0644
# The units' Documentation= points at this file, uncompressed.
put docs/install.md usr/share/doc/oomguard/install.md 0644
put packaging/deb/copyright usr/share/doc/oomguard/copyright 0644
put packaging/deb/lintian-overrides usr/share/lintian/overrides/oomguard 0644
if [ "$maintainer" = "$placeholder" ]; then
  {
    echo "# A local build (DEBFULLNAME/DEBEMAIL not set): the placeholder maintainer address is"
    echo "# deliberately not deliverable. Packages built for distribution set a real one."
    echo "oomguard: bogus-mail-host Maintainer oomguard@localhost"
    echo "oomguard: bogus-mail-host-in-debian-changelog oomguard@localhost *"
  } >>"$stage/usr/share/lintian/overrides/oomguard"
fi
# The man pages (oomguard.1 and one per subcommand) and the completions come from the binary
# itself (clap), so they cannot drift. Completions at the paths Debian's bash-completion, zsh
# and fish read for packages.
man="$stage/usr/share/man/man1"
mkdir -p "$man" "$stage/usr/share/bash-completion/completions" \
  "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$binary" manpage --dir "$man"
gzip -9n "$man"/*.1
"$binary" completions bash >"$stage/usr/share/bash-completion/completions/oomguard"
"$binary" completions zsh >"$stage/usr/share/zsh/vendor-completions/_oomguard"
"$binary" completions fish >"$stage/usr/share/fish/vendor_completions.d/oomguard.fish"
chmod 0644 "$man"/*.1.gz "$stage/usr/share/bash-completion/completions/oomguard" \
  "$stage/usr/share/zsh/vendor-completions/_oomguard" "$stage/usr/share/fish/vendor_completions.d/oomguard.fish"
# Debian policy 12.7: every binary package has a changelog. This one says which commit it is.
date_rfc=$(LC_ALL=C date -u -d "@$SOURCE_DATE_EPOCH" -R)
{
  printf 'oomguard (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * oomguard %s from git %s (packaging/build-deb.sh).\n\n' "$upstream" "$commit"
  printf ' -- %s  %s\n' "$maintainer" "$date_rfc"
} | gzip -9n >"$stage/usr/share/doc/oomguard/changelog.Debian.gz"
chmod 0644 "$stage/usr/share/doc/oomguard/changelog.Debian.gz"

# Library dependencies as debhelper's ${shlibs:Depends} would compute them.
shl=$(mktemp -d)
trap 'rm -rf "$shl"' EXIT
mkdir "$shl/debian"
: >"$shl/debian/control"
depends=$(cd "$shl" && dpkg-shlibdeps -O "$stage/usr/bin/oomguard" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || { echo "build-deb.sh: dpkg-shlibdeps found no dependencies for the binary" >&2; exit 1; }

for script in postinst prerm postrm; do
  install -m 0755 "packaging/deb/$script" "$stage/DEBIAN/$script"
done
(cd "$stage" && find etc -type f | sed 's|^|/|' | sort) >"$stage/DEBIAN/conffiles"
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
  -e "s|@DEPENDS@|$depends|" -e "s|@INSTALLED_SIZE@|$installed_kb|" \
  packaging/deb/control >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
# Directories 0755 whatever the umask of the build; files were given their modes above.
find "$stage" -type d -exec chmod 0755 {} +

mkdir -p "$out"
deb="$out/oomguard_${version}_$arch.deb"
# --root-owner-group: root:root in the archive without fakeroot. xz: Debian's default.
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
say "$(dpkg-deb -f "$deb" Package Version Depends | tr '\n' ' ')"
echo "$deb"
