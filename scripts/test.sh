#!/usr/bin/env bash
# The one test command: runs every test of the workspace, the MongoDB ones included.
# Usage: scripts/test.sh [extra cargo test args]
#
# MongoDB tests run against nx-27017 (PyPI: a MongoDB wire-protocol server over SQLite), installed
# on first use into a virtualenv under target/nx-venv and started on a free loopback port for the
# duration of the run. To run them against a real mongod instead, set ZS_TEST_MONGODB_URI
# yourself (e.g. mongodb://127.0.0.1:27017/zs_test): the script then starts no server.
# If nx-27017 cannot be installed or started, the script fails under CI (CI=true) and warns
# otherwise (the MongoDB tests then print that they were skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep test traffic on loopback (multicast discovery binds to this interface).
export ZS_DISCOVERY_INTERFACE="${ZS_DISCOVERY_INTERFACE:-127.0.0.1}"

NX_VERSION="0.8.1"
VENV="$PWD/target/nx-venv"
NX="$VENV/bin/nx-27017"

problem() {
    if [ "${CI:-}" = "true" ]; then
        echo "ERROR: $*" >&2
        exit 1
    fi
    echo "" >&2
    echo "WARNING: $*" >&2
    echo "WARNING: the MongoDB tests will be SKIPPED." >&2
    echo "" >&2
}

start_nx() {
    if [ ! -x "$NX" ]; then
        echo "Installing nx-27017 $NX_VERSION into $VENV ..." >&2
        mkdir -p "$(dirname "$VENV")"
        if ! { python3 -m venv "$VENV" && "$VENV/bin/pip" install --quiet --disable-pip-version-check "nx-27017==$NX_VERSION"; }; then
            problem "could not install nx-27017 into $VENV (python3 -m venv, pip install nx-27017)"
            return 1
        fi
    fi
    # Exported for the outage test, which runs its own private server.
    export ZS_TEST_NX27017="$NX"

    NX_DIR="$(mktemp -d "$PWD/target/nx-run.XXXXXX")"
    local port
    port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$NX" --db "$NX_DIR/test.db" --host 127.0.0.1 -p "$port" \
        --log-file "$NX_DIR/nx.log" --pid-file "$NX_DIR/nx.pid" >"$NX_DIR/out.log" 2>&1 &
    NX_PID=$!

    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$NX_PID" 2>/dev/null; then
            tail -n 20 "$NX_DIR/out.log" >&2 || true
            NX_PID=""
            problem "nx-27017 exited at start-up (log above)"
            return 1
        fi
        if [ "$waited" -ge 300 ]; then
            problem "nx-27017 did not listen on 127.0.0.1:$port within 30 s"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export ZS_TEST_MONGODB_URI="mongodb://127.0.0.1:$port/zs_test"
    echo "nx-27017 listening on 127.0.0.1:$port (pid $NX_PID); ZS_TEST_MONGODB_URI=$ZS_TEST_MONGODB_URI" >&2
}

stop_nx() {
    if [ -n "${NX_PID:-}" ]; then
        kill "$NX_PID" 2>/dev/null || true
        wait "$NX_PID" 2>/dev/null || true
    fi
    if [ -n "${NX_DIR:-}" ]; then
        rm -rf "$NX_DIR"
    fi
}

NX_PID=""
NX_DIR=""
trap stop_nx EXIT
trap 'exit 130' INT TERM

if [ -n "${ZS_TEST_MONGODB_URI:-}" ]; then
    echo "Using the MongoDB server of ZS_TEST_MONGODB_URI (no nx-27017 started)." >&2
    if [ -x "$NX" ]; then export ZS_TEST_NX27017="$NX"; fi
else
    start_nx || true
fi

cargo test --workspace "$@"
