#!/usr/bin/env bash
# The benchmark command of issue 7: prints one table (markdown), each figure beside a baseline
# measured in the same run, the ratio, and the issue's target. See BENCHMARKS.md.
#
# Usage: scripts/bench.sh            # the suite only (~2-4 min at the default 5 s per measure)
#        scripts/bench.sh --all      # also the older rpc and store benches
#        ZS_BENCH_SECONDS=2 scripts/bench.sh   # shorter measures, noisier figures
#
# Everything runs on 127.0.0.1: the nodes bind to loopback and multicast discovery uses a private
# group port on the loopback interface. Not part of scripts/test.sh (no timed assertions in tests).
set -euo pipefail
cd "$(dirname "$0")/.."

export ZS_DISCOVERY_INTERFACE=127.0.0.1

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench.sh: installing wrk (HTTP load generator) with apt-get" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq wrk
fi

echo "# zeroservices benchmark suite"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
cargo bench -p zeroservices --bench suite

if [ "${1:-}" = "--all" ]; then
    cargo bench -p zeroservices --bench rpc
    cargo bench -p zeroservices --bench store
fi
