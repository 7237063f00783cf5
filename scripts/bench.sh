#!/usr/bin/env bash
# The benchmark command of issues 7 and 19: prints one table (markdown), each figure beside a
# baseline measured in the same run, the ratio, the issue's target and a verdict, then the time
# each group took. See BENCHMARKS.md.
#
# Usage: scripts/bench.sh            # the suite (about 10 min at the default 5 s per measure)
#        scripts/bench.sh --all      # also the older rpc and store benches
#        ZS_BENCH_SECONDS=2 scripts/bench.sh   # shorter measures, noisier figures
#        ZS_SUITE_ONLY=rpc,peer scripts/bench.sh   # some groups only
#
# It installs what the suite needs when missing: wrk (apt-get), Node (apt-get, only when `node`
# is missing) and the pinned Moleculer packages of the peer group (`npm ci` into
# bench/moleculer/node_modules). When no ZS_BENCH_NATS_URL is given and the nats-server of
# scripts/test.sh is installed (target/nats-venv), it starts one on a free loopback port for the
# nats group and stops it at the end.
#
# Everything runs on 127.0.0.1: the nodes bind to loopback, multicast discovery uses a private
# group port on the loopback interface, the Moleculer brokers find each other by static
# 127.0.0.1 addresses (no UDP discovery). Not part of scripts/test.sh (no timed assertions in
# tests).
set -euo pipefail
cd "$(dirname "$0")/.."

export ZS_DISCOVERY_INTERFACE=127.0.0.1
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
    $SUDO apt-get install -y -qq "$@"
}

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench.sh: installing wrk (HTTP load generator) with apt-get" >&2
    apt_install wrk
fi

# The peer group: Moleculer 0.14 from the pinned package-lock.json.
if ! command -v node >/dev/null 2>&1; then
    echo "bench.sh: installing Node (for the Moleculer peer) with apt-get" >&2
    apt_install nodejs npm || echo "bench.sh: could not install Node; the peer group will say 'skipped'" >&2
fi
if command -v npm >/dev/null 2>&1; then
    # npm ci again whenever the lock file changed since the last install (a stamp copy of it).
    if ! cmp -s bench/moleculer/package-lock.json bench/moleculer/node_modules/.zs-installed-lock 2>/dev/null; then
        echo "bench.sh: npm ci in bench/moleculer" >&2
        if (cd bench/moleculer && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error); then
            cp bench/moleculer/package-lock.json bench/moleculer/node_modules/.zs-installed-lock
        else
            echo "bench.sh: npm ci failed; the peer group will say 'skipped'" >&2
        fi
    fi
else
    echo "bench.sh: npm is missing; the peer group will say 'skipped'" >&2
fi

# The nats group: a nats-server of its own when none is given.
nats_pid=""
nats_dir=""
cleanup() {
    if [ -n "$nats_pid" ]; then kill "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
    if [ -n "$nats_dir" ]; then rm -rf "$nats_dir"; fi
}
trap cleanup EXIT
nats_server="${ZS_TEST_NATS_SERVER:-target/nats-venv/bin/nats-server}"
if [ -z "${ZS_BENCH_NATS_URL:-}" ] && [ -x "$nats_server" ] && command -v python3 >/dev/null 2>&1; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    nats_dir=$(mktemp -d)
    "$nats_server" -js -a 127.0.0.1 -p "$port" -sd "$nats_dir" >"$nats_dir/log" 2>&1 &
    nats_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    export ZS_BENCH_NATS_URL="nats://127.0.0.1:$port"
fi

echo "# zeroservices benchmark suite"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty tree)'), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%dT%H:%MZ)"
cargo bench -p zeroservices --bench suite

if [ "${1:-}" = "--all" ]; then
    cargo bench -p zeroservices --bench rpc
    cargo bench -p zeroservices --bench store
fi
