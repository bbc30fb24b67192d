#!/usr/bin/env bash
# Snapshot restore benchmark: restore latency (median, p99 over N restores),
# `run -- true` restored against cold, and host memory per restored VM.
#   benchmarks/snapshot/run.sh [N] [--cold K] [--concurrency K]
# Uses .build/release/swiftlet (or $SWIFTLET) and the cached snapshot of the
# default guest (created on first use). Results: benchmarks/snapshot/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 benchmarks/snapshot/bench.py "$@"
