#!/usr/bin/env bash
# Builds a versioned release tarball of podcr and its checksum:
#
#   dist/podcr-<version>-<arch>.tar.gz         bin/podcr, bin/containerd-shim-podcr-v1,
#                                               install.sh, examples/, README.md, LIBRARIES, VERSION
#   dist/podcr-<version>-<arch>.tar.gz.sha256  `sha256sum -c` checks it
#
#   scripts/release.sh [--out DIR] [--bin-dir DIR]
#
#   --out DIR       where the tarball goes (default dist/)
#   --bin-dir DIR   package these already built binaries instead of running
#                   `cargo build --release -p podcr-shim -p podcr-cli` (the tests package target/debug this way)
#
# The binaries are linked dynamically against glibc only (zstd is built in); LIBRARIES lists what
# `ldd` reports, so a node's glibc can be checked before installing. The commit goes into the
# binaries (`containerd-shim-podcr-v1 -v`) through PODCR_REVISION.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "release.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

out=dist
bin_dir=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

version=$(sed -n '/^\[workspace.package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then revision="$revision-dirty"; fi
arch=$(uname -m)

if [ -z "$bin_dir" ]; then
  log "cargo build --release -p podcr-shim -p podcr-cli (revision $revision)"
  PODCR_REVISION=$revision cargo build --release -p podcr-shim -p podcr-cli
  bin_dir=target/release
fi
for b in podcr containerd-shim-podcr-v1; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found"
done

name=podcr-$version-$arch
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin"
for b in podcr containerd-shim-podcr-v1; do
  install -m 0755 "$bin_dir/$b" "$stage/$name/bin/$b"
done
install -m 0755 scripts/install.sh "$stage/$name/install.sh"
cp -r examples "$stage/$name/examples"
cp README.md "$stage/$name/README.md"
printf 'podcr %s\nrevision %s\n' "$version" "$revision" >"$stage/$name/VERSION"
{
  echo "# Shared libraries the binaries need (ldd on the build machine, $(ldd --version 2>&1 | head -n1))."
  echo "# Anything not listed is linked in; glibc must be at least as new as the build machine's."
  for b in podcr containerd-shim-podcr-v1; do
    echo "$b:"
    ldd "$stage/$name/bin/$b" | awk '{print "  " $1}'
  done
} >"$stage/$name/LIBRARIES"

mkdir -p "$out"
tarball=$out/$name.tar.gz
# Reproducible-ish: fixed owner and order, so the same build gives the same tarball.
tar --sort=name --owner=0 --group=0 --numeric-owner -C "$stage" -czf "$tarball" "$name"
(cd "$out" && sha256sum "$name.tar.gz" >"$name.tar.gz.sha256")
log "wrote $tarball and $tarball.sha256"
cat "$stage/$name/LIBRARIES" >&2
