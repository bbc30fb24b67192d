#!/usr/bin/env bash
# VMM start-up benchmark: how long Swiftlet takes from process start to the
# first KVM_RUN, how much CPU that costs, and the VMM's own resident memory
# (RSS minus guest memory). Boots the default guest N times, stopping each
# shortly after the first KVM_RUN (--timeout), so no guest work is counted.
#
#   benchmarks/startup.sh [N]        (default N=50; needs `make images release`)
#
# Prints median/p90/p99 of each figure and writes benchmarks/out/startup-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
bin=.build/release/swiftlet
[[ -x $bin ]] || { echo "startup: build first: make release" >&2; exit 1; }
mkdir -p benchmarks/out
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT
for ((i = 1; i <= n; i++)); do
  # Wall time from just before exec, measured outside the process too.
  t0=$(date +%s%N)
  out=$("$bin" boot --boot-timer --stats --timeout 0.05 </dev/null 2>&1 >/dev/null || true)
  t1=$(date +%s%N)
  run=$(sed -n 's/^vmm-first-kvm-run-us=//p' <<<"$out")
  cpu=$(sed -n 's/^vmm-first-kvm-run-cpu-us=//p' <<<"$out")
  rss=$(sed -n 's/^vmm-overhead-rss-kib=//p' <<<"$out")
  echo "$run $cpu $rss $(((t1 - t0) / 1000))" >>"$samples"
  printf '\rstartup: %d/%d' "$i" "$n" >&2
done
echo >&2
python3 - "$samples" "benchmarks/out/startup-$(date +%Y%m%d-%H%M%S).json" <<'PY'
import json, statistics, sys, platform
rows = [list(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
names = ["first_kvm_run_us", "first_kvm_run_cpu_us", "vmm_overhead_rss_kib", "process_wall_us"]
cols = {k: sorted(r[i] for r in rows) for i, k in enumerate(names)}
def pct(v, p): return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"{'figure':<24}{'median':>10}{'p90':>10}{'p99':>10}")
for k, v in cols.items():
    print(f"{k:<24}{statistics.median(v):>10.0f}{pct(v, 90):>10}{pct(v, 99):>10}")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
import os
env = {"cpu": cpu, "kernel": platform.release(), "nested_pvm": os.path.exists("/sys/module/kvm_pvm")}
json.dump({"env": env, "samples": [dict(zip(names, r)) for r in rows]}, open(sys.argv[2], "w"), indent=1)
print(f"samples: {sys.argv[2]}")
PY
