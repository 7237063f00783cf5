#!/usr/bin/env bash
# The original FOSDEM demo in one command: power + api + worker + randomizer, four processes.
# Open http://127.0.0.1:5001/ to watch the powers change live. Ctrl-C stops everything.
#
# Usage: scripts/demo.sh          (ZS_HTTP_PORT, ZS_STORE, ... are passed on to the nodes)
set -euo pipefail
cd "$(dirname "$0")/.."

export ZS_DISCOVERY_INTERFACE="${ZS_DISCOVERY_INTERFACE:-127.0.0.1}"
export ZS_WORKER_POLL_MS="${ZS_WORKER_POLL_MS:-2000}"
export ZS_STORE="${ZS_STORE:-embedded:data/demo}"
PORT="${ZS_HTTP_PORT:-5001}"

cargo build --release --examples -p zeroservices-examples
BIN="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/examples"

PIDS=()
stop() {
    trap - INT TERM EXIT
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop INT TERM EXIT

env -u ZS_HTTP_PORT "$BIN/power" --no-http & PIDS+=($!)
ZS_HTTP_PORT="$PORT" ZS_STORE=memory "$BIN/api" & PIDS+=($!)
ZS_STORE=memory "$BIN/worker" & PIDS+=($!)

# Wait until the API lists `power` (the owner was discovered), at most 30 s.
for _ in $(seq 1 300); do
    if curl -fsS -H 'Accept: application/json' "http://127.0.0.1:$PORT/" 2>/dev/null | grep -q '"power"'; then
        break
    fi
    sleep 0.1
done
echo "demo running: open http://127.0.0.1:$PORT/ (Ctrl-C to stop)"
"$BIN/randomizer" --url "http://127.0.0.1:$PORT" & PIDS+=($!)
wait
