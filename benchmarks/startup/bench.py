#!/usr/bin/env python3
"""The VMM's own footprint (issue 19): memory outside guest memory, start-up
time to the first KVM_RUN, and start-up instructions. Standard library only.

  benchmarks/startup/run.sh [-n N] [--check] [--write-baseline] [--out DIR]

Figures, each against its target (benchmarks/startup/README.md):
- rss_boot_kib: RSS outside guest memory of `swiftlet boot`, as the VMM
  reports it (--stats) 50 ms after its first KVM_RUN.
- rss_run_kib / pss_run_kib: the same for a restored `swiftlet run`, read from
  /proc/PID/smaps while it holds at --start-fd (restored, guest not started),
  leaving out the mapping of the snapshot's memory file (guest memory).
- pss_per_extra_vm_kib: 8 restored runs held at once; (their PSS summed -
  one held alone) / 7, guest memory left out: what each further VM adds.
- first_kvm_run_us (boot, run) from exec, as the VMM measures it, with and
  without memslot_wait_us (set-up blocked on KVM_SET_USER_MEMORY_REGION,
  an SRCU grace period on nested KVM).
- The RSS figures count the binary's file pages that fault-around maps, and
  how many that is depends on how the binary came into the page cache: on
  this host's 6.18 kernel a copy just written by cp(1) (large folios) costs
  about 640 KiB more RSS than one read back from disk. So the binary's
  cached pages are dropped first (posix_fadvise DONTNEED), and every build
  is measured from the same state: read in by its first exec.
- instructions_boot / instructions_run: callgrind's count from exec to the
  first entry into Vcpu.runOnce (the KVM_RUN call), all threads, with
  --seccomp off (callgrind cannot follow seccomp(2)). Machine load does not
  move these; --check fails when either exceeds the committed baseline
  (benchmarks/startup/baseline.json) by more than 10%.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASELINE = os.path.join(ROOT, "benchmarks/startup/baseline.json")
TARGETS = {
    "rss_boot_kib": 5 * 1024,
    "rss_run_kib": 5 * 1024,
    "pss_per_extra_vm_kib": 1536,
    "first_kvm_run_boot_no_memslot_us": 3000,
    "first_kvm_run_run_no_memslot_us": 3000,
}
MAX_INSTRUCTION_GROWTH = 0.10
# The function whose first entry is the first KVM_RUN (SwiftletKVM.Vcpu.runOnce).
RUN_ONCE = "$s11SwiftletKVM4VcpuC7runOnce*"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def progress(label, i, n):
    width = 30
    done = int(width * i / n)
    sys.stderr.write(f"\r{label:<22} [{'#' * done}{'.' * (width - done)}] {i}/{n}")
    if i == n:
        sys.stderr.write("\n")
    sys.stderr.flush()


def drop_cached_pages(path):
    """Evicts the file's clean pages from the page cache (see the docstring)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def key_values(text):
    return {k: v for k, v in re.findall(r"([a-z0-9-]+)=([^\s]+)", text)}


def boot_once(bin):
    p = subprocess.run([bin, "boot", "--boot-timer", "--stats", "--timeout", "0.05"],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kv = {}
    for line in p.stderr.splitlines():
        kv.update(key_values(line))
    kv.setdefault("vmm-memslot-wait-us", "0")  # a build from before issue 19 does not report it
    need = ["vmm-first-kvm-run-us", "vmm-memslot-wait-us", "vmm-first-kvm-run-cpu-us", "vmm-overhead-rss-kib", "vmm-overhead-anon-kib"]
    missing = [k for k in need if k not in kv]
    if missing:
        raise SystemExit(f"startup: boot printed no {missing}: {p.stderr[-400:]}")
    return {k: int(kv[k]) for k in need}


def run_once(bin):
    p = subprocess.run([bin, "run", "--timings", "--", "true"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = next((l for l in p.stderr.splitlines() if l.startswith("swiftlet-timings:")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"startup: run -- true failed ({p.returncode}): {p.stderr[-400:]}")
    kv = key_values(line)
    return {"first-kvm-run-us": int(kv["first-kvm-run-us"]), "memslot-wait-us": int(kv.get("memslot-wait-us", 0))}


def smaps_outside_guest(pid):
    """(rss, pss) in KiB of every mapping but the snapshot's memory file."""
    rss = pss = 0
    skip = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                path = parts[5] if len(parts) > 5 else ""
                skip = path.endswith("/memory") and "snapshot" in path
            elif line.startswith("Rss:") and not skip:
                rss += int(line.split()[1])
            elif line.startswith("Pss:") and not skip:
                pss += int(line.split()[1])
    return rss, pss


class HeldRun:
    """A restored `swiftlet run` waiting at --start-fd: restored, guest not started."""

    def __init__(self, bin):
        self.r, self.w = os.pipe()
        self.proc = subprocess.Popen([bin, "run", "--start-fd", str(self.r), "--", "true"], pass_fds=[self.r],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(self.r)

    def wait_held(self, seconds=120):
        """Until the main thread blocks in read(2) on the start descriptor."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"startup: held run exited {self.proc.returncode}: {self.proc.stderr.read()[-400:]}")
            try:
                fields = open(f"/proc/{self.proc.pid}/syscall").read().split()
            except OSError:
                fields = []
            if len(fields) > 1 and fields[0] == "0" and int(fields[1], 16) == self.r:
                return
            time.sleep(0.01)
        raise SystemExit("startup: a held run never reached its start descriptor")

    def end(self):
        os.close(self.w)  # EOF: the run ends unstarted (status 125)
        self.proc.wait(timeout=60)
        self.proc.stderr.close()


def held_footprint(bin, n):
    """[(rss, pss)] of n restored runs held at once."""
    runs = [HeldRun(bin) for _ in range(n)]
    try:
        for r in runs:
            r.wait_held()
        time.sleep(0.2)
        return [smaps_outside_guest(r.proc.pid) for r in runs]
    finally:
        for r in runs:
            r.end()


def instructions(bin, args):
    """Callgrind's instruction count from exec to the first KVM_RUN."""
    tmp = tempfile.mkdtemp(prefix="swiftlet-startup-")
    try:
        # Debian 12's valgrind cannot read the DWARF Swift writes: symbols only.
        stripped = os.path.join(tmp, "swiftlet")
        subprocess.run(["objcopy", "--strip-debug", bin, stripped], check=True)
        subprocess.run(["valgrind", "--tool=callgrind", f"--dump-before={RUN_ONCE}",
                        f"--callgrind-out-file={tmp}/cg.out", stripped] + args,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        first = os.path.join(tmp, "cg.out.1")
        if not os.path.exists(first):
            raise SystemExit(f"startup: callgrind never saw the first KVM_RUN of {args}")
        for line in open(first):
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise SystemExit("startup: no totals in callgrind's output")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def summary(values):
    v = sorted(values)
    return {"median": statistics.median(v), "p90": v[min(len(v) - 1, round(0.9 * (len(v) - 1)))],
            "min": v[0], "max": v[-1], "n": len(v)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20, help="boots and restored runs each (default 20)")
    ap.add_argument("--vms", type=int, default=8, help="restored runs held at once for PSS per extra VM")
    ap.add_argument("--check", action="store_true", help="fail when instructions grew >10%% over the baseline")
    ap.add_argument("--write-baseline", action="store_true", help="commit this run's instructions as the baseline")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks/results"))
    ap.add_argument("--swiftlet", default=os.environ.get("SWIFTLET", os.path.join(ROOT, ".build/release/swiftlet")))
    a = ap.parse_args()
    bin = os.path.abspath(a.swiftlet)
    if not os.access(bin, os.X_OK):
        raise SystemExit(f"startup: no {bin}: make release")
    if shutil.which("valgrind") is None:
        raise SystemExit("startup: needs valgrind (make deps)")

    drop_cached_pages(bin)
    # The first restored run creates the cached snapshot when there is none.
    run_once(bin)
    boots, runs = [], []
    for i in range(a.n):  # alternated, so drift in machine load hits both
        boots.append(boot_once(bin))
        runs.append(run_once(bin))
        progress("boot and restored run", i + 1, a.n)
    single = held_footprint(bin, 1)[0]
    many = held_footprint(bin, a.vms)
    log(f"held runs: 1 alone {single[1]} KiB PSS; {a.vms} at once {sum(p for _, p in many)} KiB PSS in all")
    ins_boot = instructions(bin, ["boot", "--seccomp", "off", "--timeout", "1"])
    ins_run = instructions(bin, ["run", "--seccomp", "off", "--", "true"])
    log(f"instructions to the first KVM_RUN: boot {ins_boot:,}, restored run {ins_run:,}")

    fig = {
        "rss_boot_kib": summary([b["vmm-overhead-rss-kib"] for b in boots]),
        "anon_boot_kib": summary([b["vmm-overhead-anon-kib"] for b in boots]),
        "rss_run_kib": single[0],
        "pss_run_kib": single[1],
        "pss_per_extra_vm_kib": round((sum(p for _, p in many) - single[1]) / (a.vms - 1)),
        "first_kvm_run_boot_us": summary([b["vmm-first-kvm-run-us"] for b in boots]),
        "memslot_wait_boot_us": summary([b["vmm-memslot-wait-us"] for b in boots]),
        "first_kvm_run_boot_no_memslot_us": summary([b["vmm-first-kvm-run-us"] - b["vmm-memslot-wait-us"] for b in boots]),
        "first_kvm_run_cpu_boot_us": summary([b["vmm-first-kvm-run-cpu-us"] for b in boots]),
        "first_kvm_run_run_us": summary([r["first-kvm-run-us"] for r in runs]),
        "memslot_wait_run_us": summary([r["memslot-wait-us"] for r in runs]),
        "first_kvm_run_run_no_memslot_us": summary([r["first-kvm-run-us"] - r["memslot-wait-us"] for r in runs]),
        "instructions_boot": ins_boot,
        "instructions_run": ins_run,
    }

    def value(k):
        f = fig[k]
        return f["median"] if isinstance(f, dict) else f

    verdicts = {k: {"target": t, "value": value(k), "met": value(k) <= t} for k, t in TARGETS.items()}
    baseline = json.load(open(BASELINE)) if os.path.exists(BASELINE) else None
    regressions = []
    if baseline:
        for k in ("instructions_boot", "instructions_run"):
            limit = baseline[k] * (1 + MAX_INSTRUCTION_GROWTH)
            verdicts[k] = {"baseline": baseline[k], "limit": round(limit), "value": fig[k], "met": fig[k] <= limit}
            if fig[k] > limit:
                regressions.append(f"{k} {fig[k]:,} > {round(limit):,} (baseline {baseline[k]:,} + 10%)")

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    env = {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
           "nested_pvm": os.path.exists("/sys/module/kvm_pvm"), "load": os.getloadavg(),
           "binary_bytes": os.path.getsize(bin)}
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "env": env,
              "figures": fig, "verdicts": verdicts, "samples": {"boot": boots, "run": runs, "held": many}}
    os.makedirs(a.out, exist_ok=True)
    stem = os.path.join(a.out, f"startup-{datetime.date.today().isoformat()}")
    json.dump(result, open(stem + ".json", "w"), indent=1)

    rows = ["| figure | value | target | met |", "| --- | ---: | ---: | --- |"]
    for k, v in verdicts.items():
        target = v.get("target", v.get("limit"))
        rows.append(f"| {k} | {v['value']:,} | {'≤ '}{target:,} | {'yes' if v['met'] else 'no'} |")
    rows += ["", "| other figure (median) | value |", "| --- | ---: |"]
    for k in fig:
        if k not in verdicts:
            rows.append(f"| {k} | {value(k):,} |")
    open(stem + ".md", "w").write("\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"results: {stem}.json, {stem}.md")

    if a.write_baseline:
        json.dump({"instructions_boot": ins_boot, "instructions_run": ins_run,
                   "note": "callgrind, exec to the first KVM_RUN, --seccomp off; benchmarks/startup/README.md"},
                  open(BASELINE, "w"), indent=1)
        print(f"baseline written: {BASELINE}")
    if a.check and regressions:
        print("startup: instruction count regressed: " + "; ".join(regressions), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
