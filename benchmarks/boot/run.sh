#!/usr/bin/env bash
# Boot suite: Swiftlet against QEMU microvm and kvmtool on the same kernel,
# root file system, command line, memory and vCPUs (benchmarks/README.md).
#
#   benchmarks/boot/run.sh [--kernel K]... [--vmm swiftlet,qemu,kvmtool] [-n N]
#                          [--kvmtool PATH] [--baseline FILE --max-regression PCT]
#                          [--mem MiB] [--cpus N] [--timeout S] [--out PREFIX]
#
# K: a kernel under the cache (`peers`, the default: kernels/build.sh --variant
# peers; `default`) or a directory with vmlinux, bzImage and config. N = 10 boots
# per VMM and kernel, alternated run by run. Without --kvmtool it runs Swiftlet
# and QEMU only, and says so. Writes benchmarks/results/<date>-boot-peers.{json,md,svg};
# progress on stderr. With --baseline, exits 1 when a figure's median regressed
# by more than PCT% with non-overlapping 95% confidence intervals (gate.py).
# Binary: $SWIFTLET, else .build/release/swiftlet (make release images).
#
#   benchmarks/boot/run.sh --restore [-n N] [--kernel K]
# restore side by side: time to a job's first output from restored state,
# `swiftlet run` (snapshot) against QEMU -incoming (migration file); restore.py.
#
#   benchmarks/boot/run.sh --phases [N] [--concurrency K] [--no-qemu]
# runs the older Swiftlet-only phase breakdown (bench.py: `swiftlet run`
# phases, exits, creation rate of K concurrent VMs).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [[ ${1-} == --restore ]]; then
    shift
    exec python3 benchmarks/boot/restore.py "$@"
fi
if [[ ${1-} == --phases ]]; then
    shift
    exec python3 benchmarks/boot/bench.py "$@"
fi
exec python3 benchmarks/boot/suite.py "$@"
