#!/usr/bin/env bash
# podcr's pod checkpoint/restore benchmark against runc.v2 (CRI), raw parallel runc and Podman.
# Not part of scripts/test.sh or CI: a full run takes long and wants a quiet machine. Needs root.
#
#   scripts/bench.sh --quick                 ~5 minutes: 64 MiB, pods of 1 and 2 containers, 1 repetition
#   scripts/bench.sh                         default matrix: 1/2/4 containers x 64/256/1024 MiB, 3 repetitions
#   scripts/bench.sh --sizes 256 --containers 2,4 --reps 5 --no-podman ...   (see --help)
#
# Results: bench-results/results.{csv,md} and bench-results/plot.png (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."

# Build and test tools, plus podman (Debian sid) and the font the plot's text is drawn with.
scripts/setup-host.sh --bench
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 fonts-dejavu-core >/dev/null || true
fi
# shellcheck disable=SC1091
command -v cargo >/dev/null || . "${CARGO_HOME:-$HOME/.cargo}/env"

# Release build: the shim's own time is part of what is measured. The bench (bench/, on the tests
# crate's harness) finds the shim and the podcr CLI next to its own binary (target/release).
echo "==> cargo build --release -p podcr-shim -p podcr-cli -p podcr-bench" >&2
cargo build --release -p podcr-shim -p podcr-cli -p podcr-bench

target_dir=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
exec "$target_dir/release/podcr-bench" "$@"
