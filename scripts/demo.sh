#!/usr/bin/env bash
# End to end: set up the host, build podcr, start a private containerd with podcr registered, run a
# two-container pod through the CRI, checkpoint it while it runs into one archive, delete it, restore
# it from the archive, show its counters going on from where they were, and clean up.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# shellcheck disable=SC1091
command -v cargo >/dev/null || . "${CARGO_HOME:-$HOME/.cargo}/env"

# Debug profile: the same artifacts scripts/test.sh builds, so running both does not compile twice.
cargo build -q -p podcr-shim -p podcr-cli -p podcr-tests --bins
exec target/debug/podcr-demo "$@"
