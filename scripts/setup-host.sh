#!/usr/bin/env bash
# TEST-MACHINE SET-UP, not a node installer: installs everything podcr is built, run and tested
# with, as root on Debian bookworm (or newer), adding Debian sid sources for CRIU and checkpointctl.
# Nodes install podcr from a release tarball: scripts/release.sh, then install.sh (README "Install
# on a node").
# Idempotent and quiet: when every tool is present at the right version it returns at once.
#
#   scripts/setup-host.sh           build + test tools (what scripts/test.sh and scripts/demo.sh need)
#   scripts/setup-host.sh --bench   also podman (sid), only needed by the benchmarks
set -euo pipefail

log() { echo "setup-host: $*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (containerd, runc and CRIU need it)"
    exit 1
  fi
}

libc_a_present() {
  [ -f /usr/lib/"$(uname -m)"-linux-gnu/libc.a ] || [ -f /usr/lib/x86_64-linux-gnu/libc.a ]
}

# busybox-static, not the dynamic busybox: the test images contain nothing but busybox and our helpers.
busybox_static_present() {
  [ -x /bin/busybox ] || return 1
  ! ldd /bin/busybox >/dev/null 2>&1
}

version_ok() {
  local out
  command -v "$1" >/dev/null || return 1
  out=$("$1" --version 2>&1) || return 1
  grep -Eq "$2" <<<"$out"
}

# True when every system tool is present and new enough; keeps reruns fast.
all_present() {
  # Versions are captured before grepping: `tool --version | grep -q` under pipefail fails at random
  # when grep exits early and the tool dies of SIGPIPE.
  missing="containerd >= 2.1"; version_ok containerd ' v?2\.(1|[2-9])' || return 1
  # runc 1.3.3 fixes CVE-2025-31133, -52565 and -52881 (container escapes); the shim refuses older.
  missing="runc >= 1.3.3"; version_ok runc 'version 1\.(3\.([3-9]|[1-9][0-9])|[4-9]\.|[1-9][0-9]\.)' || return 1
  missing="criu >= 4.2"; version_ok criu 'Version: 4\.([2-9])' || return 1
  # protoc: k8s-cri's build script; gcc + libc.a: zstd-sys and the static test helpers.
  for t in ctr checkpointctl umoci protoc gcc cc ip iptables jq tar curl; do
    missing="$t"; command -v "$t" >/dev/null || return 1
  done
  missing="CNI plugins bridge, host-local, loopback in /usr/lib/cni"
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || return 1
  missing="libc.a (libc6-dev)"; libc_a_present || return 1
  missing="static /bin/busybox (busybox-static)"; busybox_static_present || return 1
  missing=""
  return 0
}

add_sources() {
  # trixie and sid, pinned below the release so that nothing else is upgraded behind our back.
  local list=/etc/apt/sources.list.d/podcr-testing.list
  if [ ! -f "$list" ]; then
    cat >"$list" <<'L'
deb http://deb.debian.org/debian trixie main
deb http://deb.debian.org/debian sid main
L
    cat >/etc/apt/preferences.d/podcr-pin <<'P'
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=sid
Pin-Priority: 50
P
  fi
}

missing=""
apt_updated=""
apt_update() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
}

install_system_tools() {
  log "installing containerd, runc, criu and build/test tools (missing: $missing)"
  add_sources
  export DEBIAN_FRONTEND=noninteractive
  apt_update
  # containerd 2.1 and runc 1.3 are only in sid. criu 4.2 (sid) is needed too: trixie's 4.1 cannot dump
  # TCP sockets on 6.x kernels (criu issue 2718).
  apt-get install -y -qq -o Dpkg::Use-Pty=0 -t sid containerd runc criu checkpointctl >/dev/null
  apt-get install -y -qq -o Dpkg::Use-Pty=0 containernetworking-plugins busybox-static umoci protobuf-compiler \
    gcc libc6-dev iproute2 iptables jq tar curl ca-certificates >/dev/null
  if ! all_present; then
    log "install finished but still missing or too old: $missing"
    exit 1
  fi
}

# cargo comes from rustup (the machines this runs on have it in ~/.cargo/bin); install it if missing.
ensure_rust() {
  if command -v cargo >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
    return 0
  fi
  log "installing the Rust toolchain with rustup (stable, minimal profile)"
  curl -sSf --proto '=https' --tlsv1.2 https://sh.rustup.rs | sh -s -- -y -q --profile minimal >/dev/null
}

# The lint tools scripts/test.sh runs before the tests, from crates.io (CI starts from nothing).
# clippy and rustfmt come with the toolchain (rust-toolchain.toml lists them).
install_lint_tools() {
  local cargo tool
  cargo=$(command -v cargo || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo")
  for tool in cargo-deny cargo-machete; do
    command -v "$tool" >/dev/null || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/$tool" ] && continue
    log "installing $tool from crates.io"
    "$cargo" install --locked --quiet "$tool"
  done
}

install_bench_tools() {
  command -v podman >/dev/null && return 0
  log "installing podman (sid) for the benchmarks"
  add_sources
  export DEBIAN_FRONTEND=noninteractive
  apt_update
  apt-get install -y -qq -o Dpkg::Use-Pty=0 -t sid podman >/dev/null
}

main() {
  need_root
  local bench=""
  for a in "$@"; do
    case "$a" in
      --bench) bench=1 ;;
      *) log "unknown argument $a (use --bench)"; exit 2 ;;
    esac
  done
  all_present || install_system_tools
  ensure_rust
  install_lint_tools
  [ -z "$bench" ] || install_bench_tools
}

main "$@"
