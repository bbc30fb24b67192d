#!/usr/bin/env bash
# Boot benchmark: where every millisecond of a Swiftlet boot goes, side by
# side with QEMU's microvm machine, plus the creation rate of concurrent VMs.
#
#   benchmarks/boot/run.sh [N] [--concurrency K] [--qemu-timeout S] [--no-qemu]
#
# N (default 5) iterations, each: A = `swiftlet run --timings -- true`,
# A' = `swiftlet boot --boot-timer --stats --append SWIFTLET_INIT_RUN=true`
# (exits by reason, VMM RSS overhead, time to init's first console line),
# B = QEMU microvm on the same kernel/rootfs/cmdline (alternated A A' B ...).
# Then K (default 4) concurrent `swiftlet run -- true`.
# Binary: $SWIFTLET, else .build/release/swiftlet (make release images).
# Writes benchmarks/results/<date>-boot.{json,md,svg}; progress on stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 benchmarks/boot/bench.py "$@"
