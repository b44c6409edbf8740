#!/usr/bin/env bash
# The whole test suite: host set-up, build, unit tests, then the integration tests against a private
# containerd (runc.v2 and podcr side by side). Needs root.
#
#   scripts/test.sh              everything
#   scripts/test.sh checkpoint   only integration tests whose name contains "checkpoint"
#
# PODCR_TEST_THREADS (default 4) sets how many integration tests run at once. They mostly wait on
# containerd, runc and CRIU, so a few more threads than the 2 CI cores keeps them busy without making
# checkpoint timings flaky.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null || . "${CARGO_HOME:-$HOME/.cargo}/env"

# Debug builds: the integration tests spend their time in containerd/runc/CRIU, not in our code, and
# one profile means the shim binary and the test binaries come out of a single compilation.
echo "==> cargo build --workspace" >&2
cargo build --workspace --all-targets

echo "==> unit tests" >&2
cargo test --workspace --exclude podcr-tests --no-fail-fast

echo "==> integration tests" >&2
cargo test -p podcr-tests --no-fail-fast -- --test-threads="${PODCR_TEST_THREADS:-4}" "$@"
