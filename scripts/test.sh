#!/usr/bin/env bash
# The one test command: runs every test of the workspace.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Keep test traffic on loopback (multicast discovery binds to this interface).
export ZS_DISCOVERY_INTERFACE="${ZS_DISCOVERY_INTERFACE:-127.0.0.1}"

cargo test --workspace "$@"
