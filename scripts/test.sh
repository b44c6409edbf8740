#!/usr/bin/env bash
# The whole test suite: host set-up, lints, build, unit tests, then the integration tests against a
# private containerd (runc.v2 and podcr side by side). Needs root.
#
# The lints run first and end the run on a finding: rustfmt --check, clippy with -D warnings, cargo-machete (unused
# dependencies) and cargo-deny (licences, bans, sources; advisories only where the RustSec database
# can be fetched, else one SKIP line). PODCR_SKIP_LINTS=1 skips them for a quick local re-run.
#
#   scripts/test.sh              everything
#   scripts/test.sh checkpoint   only integration tests whose name contains "checkpoint"
#
# With containerd builds from upstream in ../shared/upstream (or $PODCR_UPSTREAM_DIR), also runs the
# upstream tiers: the pod checkpoint/restore wire against PR 13822 and PR 13971, and containerd main
# (its own checks plus a smoke subset of the existing tests). `scripts/test.sh upstream` runs only the
# tiers (plus the system tests matching "upstream", of which there are none). A summary line per tier
# ends the run; a tier without its builds prints one SKIP line and is reported as skipped.
#
# PODCR_TEST_THREADS (default 4) sets how many integration tests run at once. They mostly wait on
# containerd, runc and CRIU, so a few more threads than the 2 CI cores keeps them busy without making
# checkpoint timings flaky.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null || . "${CARGO_HOME:-$HOME/.cargo}/env"

lints() {
  echo "==> cargo fmt --all -- --check" >&2
  cargo fmt --all -- --check
  echo "==> cargo clippy --workspace --all-targets -- -D warnings" >&2
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  echo "==> cargo machete (unused dependencies)" >&2
  cargo machete
  echo "==> cargo deny check licenses bans sources" >&2
  cargo deny --log-level error check licenses bans sources
  # The advisory database is a git clone from GitHub; a machine without that access cannot check
  # advisories, and says so rather than passing them.
  if cargo deny --log-level error fetch db >/dev/null 2>&1; then
    echo "==> cargo deny check advisories" >&2
    cargo deny --log-level error check advisories
  else
    echo "SKIP: cargo deny check advisories: cannot fetch the RustSec advisory database (no access to github.com)"
  fi
}
if [ "${PODCR_SKIP_LINTS:-}" = 1 ]; then
  echo "SKIP: lints (PODCR_SKIP_LINTS=1)"
else
  lints
fi

# Debug builds: the integration tests spend their time in containerd/runc/CRIU, not in our code, and
# one profile means the shim binary and the test binaries come out of a single compilation.
echo "==> cargo build --workspace" >&2
cargo build --workspace --all-targets

echo "==> unit tests" >&2
cargo test --workspace --exclude podcr-tests --no-fail-fast

# The upstream tiers (containerd built from PR 13822, PR 13971 and main, shipped in ../shared/upstream
# or $PODCR_UPSTREAM_DIR) are run separately below; keep them out of the system containerd's run.
upstream_dir=${PODCR_UPSTREAM_DIR:-../shared/upstream}
# The tests find the builds the same way; pass the resolved path so both agree.
if [ -d "$upstream_dir" ]; then export PODCR_UPSTREAM_DIR="$(cd "$upstream_dir" && pwd)"; fi
threads=${PODCR_TEST_THREADS:-4}
status=0
summary=()

echo "==> integration tests (system containerd: $(containerd --version 2>/dev/null | awk '{print $3}'))" >&2
if cargo test -p podcr-tests --no-fail-fast -- --test-threads="$threads" --skip pr13822_ --skip pr13971_ --skip main_cri_ "$@"; then
  summary+=("system containerd: passed")
else
  status=1; summary+=("system containerd: FAILED")
fi

# The main job (scripts/demo.sh's checkpoint and restore of a running pod) as a user runs it, so a
# change that breaks the documented flow fails the suite, not only the first user.
if [ -z "${1:-}" ] || [[ "demo" == *"$1"* ]]; then
  echo "==> demo (scripts/demo.sh's main job)" >&2
  if target/debug/podcr-demo; then summary+=("demo: passed"); else status=1; summary+=("demo: FAILED"); fi
fi

# Each tier runs only when the filter (if any) selects it, and only when the builds are here: without
# them it prints one skip line and counts as skipped, not passed.
tier() {
  local name=$1; shift
  if [ -n "$filter" ] && [[ "$name" != *"$filter"* ]] && [[ "$filter" != upstream* ]]; then return; fi
  if [ ! -f "$upstream_dir/unpack.sh" ]; then
    echo "SKIP: upstream tier $name: no containerd builds at $upstream_dir (set PODCR_UPSTREAM_DIR)"
    summary+=("$name: skipped (no $upstream_dir)")
    return
  fi
  echo "==> upstream tier: $name" >&2
  if "$@"; then summary+=("$name: passed"); else status=1; summary+=("$name: FAILED"); fi
}
filter=${1:-}
# The two pod checkpoint/restore designs, each through its own wire (CRI CheckpointPod/RestorePod),
# and RestorePod's trust rules on each (kubelet_restore's pr13* tests).
tier "pr13822+pr13971 wire" cargo test -p podcr-tests --no-fail-fast --test upstream_wire --test kubelet_restore \
  -- --test-threads=2 pr13
# containerd main: what differs from 2.1.9, then a smoke subset of the existing tests against it.
tier "main" cargo test -p podcr-tests --test upstream_main -- --test-threads=2
tier "main smoke" env PODCR_TEST_CONTAINERD=main cargo test -p podcr-tests --no-fail-fast \
  --test task_api --test sandbox_api --test pod_checkpoint -- --test-threads="$threads" \
  ::podcr cri_pod_two_containers_podcr checkpoint_leave_running_then_restore_continues_counters

echo "==> summary" >&2
printf '  %s\n' "${summary[@]}" >&2
exit "$status"
