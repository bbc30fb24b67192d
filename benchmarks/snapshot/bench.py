#!/usr/bin/env python3
"""Snapshot restore benchmark for Swiftlet (see run.sh and benchmarks/README.md).

Measures, on one snapshot of the default guest:
  - restore latency: process start to the first KVM_RUN after the restore
    (`first-kvm-run-us`), and to the job's first output byte on the host
    (`first-output-ms`), median and p99 over N restores;
  - `swiftlet run -- true` end to end, restored against a cold boot, in the same run;
  - host memory: one restored VM's RSS and PSS, and the extra PSS of each
    further VM when K run at once (PSS divides shared pages among their users).
"""
import argparse, datetime, json, os, platform, re, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("n", nargs="?", type=int, default=50, help="restores for the latency figures (default 50)")
ap.add_argument("--cold", type=int, default=3, help="cold boots to compare with (default 3)")
ap.add_argument("--concurrency", "-k", type=int, default=8, help="most VMs at once for the memory figures (default 8)")
args = ap.parse_args()

BIN = os.environ.get("SWIFTLET") or ".build/release/swiftlet"
if not os.access(BIN, os.X_OK):
    sys.exit(f"snapshot bench: no {BIN}: run `make release images` or set SWIFTLET=path")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

def timings(stderr):
    line = next((l for l in stderr.splitlines() if l.startswith("swiftlet-timings:")), "")
    return {k: v for k, v in re.findall(r"([a-z0-9-]+)=(\S+)", line)}

def run(argv, timeout=600):
    t0 = time.monotonic()
    p = subprocess.run([BIN] + argv, capture_output=True, text=True, timeout=timeout)
    return p, (time.monotonic() - t0) * 1000

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]

def summary(xs):
    return {"median": statistics.median(xs), "p99": pct(xs, 99), "min": min(xs), "max": max(xs), "n": len(xs)}

def log(msg):
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()

p, _ = run(["snapshot", "cached"], timeout=1800)
if p.returncode != 0:
    sys.exit(f"snapshot bench: snapshot cached failed: {p.stderr.strip()}")
snap = p.stdout.strip()
log(f"snapshot: {snap}")

# 1. Restore latency.
first_run_us, first_output_ms, totals = [], [], []
for i in range(args.n):
    p, wall = run(["run", "--snapshot", snap, "--timings", "--", "/bin/echo", "x"])
    t = timings(p.stderr)
    if p.returncode != 0 or p.stdout != "x\n":
        sys.exit(f"snapshot bench: restore {i} failed: {p.returncode} {p.stderr.strip()}")
    first_run_us.append(int(t["first-kvm-run-us"]))
    first_output_ms.append(float(t["first-output-ms"]))
    totals.append(float(t["total-ms"]))
    log(f"restore {i + 1}/{args.n}: first-kvm-run {t['first-kvm-run-us']} us, first output {t['first-output-ms']} ms, total {t['total-ms']} ms")

# 2. run -- true, restored and cold, alternating.
restored_true, cold_true = [], []
for i in range(args.cold):
    p, wall = run(["run", "--snapshot", snap, "--", "true"])
    assert p.returncode == 0, p.stderr
    restored_true.append(wall)
    p, wall = run(["run", "--cold", "--", "true"], timeout=900)
    assert p.returncode == 0, p.stderr
    cold_true.append(wall)
    log(f"run -- true {i + 1}/{args.cold}: restored {restored_true[-1]:.0f} ms, cold {cold_true[-1]:.0f} ms")

# 3. Memory: k VMs at once, each holding its guest up with `sleep`.
def field(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0

memory = []
for k in sorted({1, 2, 4, args.concurrency}):
    procs = [subprocess.Popen([BIN, "run", "--snapshot", snap, "--", "sh", "-c", "echo ready; sleep 4"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(k)]
    for pr in procs:
        pr.stdout.readline()
    pss = sum(field(f"/proc/{pr.pid}/smaps_rollup", "Pss:") for pr in procs)
    rss = [field(f"/proc/{pr.pid}/status", "VmRSS:") for pr in procs]
    for pr in procs:
        pr.wait(timeout=300)
    memory.append({"vms": k, "pss_kib": pss, "rss_kib_each_max": max(rss)})
    log(f"memory: {k} VMs: {pss} KiB PSS together, largest RSS {max(rss)} KiB")
per_vm = (memory[-1]["pss_kib"] - memory[0]["pss_kib"]) / max(1, memory[-1]["vms"] - memory[0]["vms"])

result = {
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "host": platform.node(), "kernel": platform.release(),
    "kvm": "nested PVM" if os.path.exists("/sys/module/kvm_pvm") else "hardware",
    "binary": BIN, "snapshot": snap,
    "restore_to_first_kvm_run_us": summary(first_run_us),
    "restore_to_first_output_ms": summary(first_output_ms),
    "restore_total_ms": summary(totals),
    "run_true_restored_ms": summary(restored_true),
    "run_true_cold_ms": summary(cold_true),
    "memory": memory, "extra_pss_per_vm_kib": per_vm,
}
os.makedirs(OUT, exist_ok=True)
stamp = datetime.date.today().isoformat()
with open(os.path.join(OUT, f"{stamp}.json"), "w") as f:
    json.dump(result, f, indent=2)
r = result
md = [f"# Snapshot restore, {r['date']} ({r['kvm']} KVM, {r['host']})", "",
      "| figure | median | p99 | min | max | n |", "|---|---:|---:|---:|---:|---:|"]
for key, label in [("restore_to_first_kvm_run_us", "process start → first KVM_RUN after restore (µs)"),
                   ("restore_to_first_output_ms", "process start → job's first output byte (ms)"),
                   ("restore_total_ms", "`run --snapshot -- /bin/echo x`, whole process (ms)"),
                   ("run_true_restored_ms", "`run -- true`, restored (ms, wall)"),
                   ("run_true_cold_ms", "`run -- true`, cold boot (ms, wall)")]:
    s = r[key]
    md.append(f"| {label} | {s['median']:.1f} | {s['p99']:.1f} | {s['min']:.1f} | {s['max']:.1f} | {s['n']} |")
md += ["", "| VMs at once | PSS together (KiB) | largest RSS (KiB) |", "|---:|---:|---:|"]
md += [f"| {m['vms']} | {m['pss_kib']} | {m['rss_kib_each_max']} |" for m in r["memory"]]
md += ["", f"Extra PSS per further restored VM: {per_vm:.0f} KiB (guest memory: 128 MiB each).", ""]
with open(os.path.join(OUT, f"{stamp}.md"), "w") as f:
    f.write("\n".join(md))
print("\n".join(md))
