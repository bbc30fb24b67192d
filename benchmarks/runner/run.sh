#!/usr/bin/env bash
# The job runner's benchmark (benchmarks/runner/README.md):
#   benchmarks/runner/run.sh [-n N] [--jobs J]
# Release builds of swiftlet and swiftletd, a venv with matplotlib for the chart,
# then bench.py; results land in benchmarks/results/runner-DATE.{json,md,svg}.
set -euo pipefail
cd "$(dirname "$0")/../.."
make release images >/dev/null
swift build -c release --product swiftletd
VENV=${BENCH_VENV:-.build/bench-venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -c 'import matplotlib' 2>/dev/null || "$VENV/bin/python" -m pip install -q --disable-pip-version-check matplotlib==3.10.8
SWIFTLETD=${SWIFTLETD:-.build/release/swiftletd} SWIFTLET=${SWIFTLET:-.build/release/swiftlet} \
    exec "$VENV/bin/python" benchmarks/runner/bench.py "$@"
