#!/usr/bin/env bash
# Installs everything podcr runs and is tested on, as root on Debian bookworm.
# Idempotent and quiet: when every tool is present at the right version it returns at once.
set -euo pipefail

log() { echo "setup-host: $*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (containerd, runc and CRIU need it)"
    exit 1
  fi
}

# True when every tool is present and new enough; keeps reruns fast.
all_present() {
  command -v containerd >/dev/null && containerd --version | grep -Eq ' v?2\.(1|[2-9])' || return 1
  command -v runc >/dev/null && runc --version | grep -Eq 'version 1\.(3|[4-9])' || return 1
  command -v criu >/dev/null && criu --version | grep -Eq 'Version: 4\.([2-9])' || return 1
  for t in checkpointctl umoci protoc busybox gcc; do command -v "$t" >/dev/null || return 1; done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || return 1
  [ -f /usr/lib/x86_64-linux-gnu/libc.a ] || [ -f /usr/lib/"$(uname -m)"-linux-gnu/libc.a ] || return 1
  return 0
}

add_sources() {
  # trixie and sid, pinned below bookworm so that nothing else is upgraded behind our back.
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

main() {
  need_root
  if all_present; then
    exit 0
  fi
  log "installing containerd, runc, criu and test tools (first run only)"
  add_sources
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # criu 4.2 (sid) is needed: trixie's 4.1 cannot dump TCP sockets on 6.x kernels (criu issue 2718).
  apt-get install -y -qq -t sid containerd runc criu >/dev/null
  apt-get install -y -qq -t sid checkpointctl >/dev/null
  apt-get install -y -qq containernetworking-plugins busybox-static umoci protobuf-compiler \
    gcc libc6-dev iproute2 iptables jq >/dev/null
  if ! all_present; then
    log "install finished but a tool is still missing or too old:"
    containerd --version || true; runc --version || true; criu --version || true
    exit 1
  fi
  log "done"
}

main "$@"
