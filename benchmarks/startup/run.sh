#!/usr/bin/env bash
# The VMM's own footprint: memory outside guest memory, exec to the first
# KVM_RUN (with and without the memslot wait), and start-up instructions,
# against issue 19's targets. See benchmarks/startup/README.md.
#
#   benchmarks/startup/run.sh [-n N] [--check] [--write-baseline]
#
# Writes benchmarks/results/startup-<date>.{json,md}. --check (make bench)
# exits 1 when the instruction count grew >10% over baseline.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 benchmarks/startup/bench.py "$@"
