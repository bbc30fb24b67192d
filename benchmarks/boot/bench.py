#!/usr/bin/env python3
"""Boot benchmark for Swiftlet (see run.sh and benchmarks/README.md)."""
import argparse, datetime, hashlib, json, os, platform, re, resource, shutil
import statistics, subprocess, sys, threading, time
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # what the boot benchmarks share, beside this file

ap = argparse.ArgumentParser()
ap.add_argument("n", nargs="?", type=int, default=5, help="iterations (default 5)")
ap.add_argument("--concurrency", "-k", type=int, default=4, help="concurrent VMs for the creation rate (default 4, 0 skips)")
ap.add_argument("--qemu-timeout", type=float, default=120, help="seconds before a QEMU boot counts as failed")
ap.add_argument("--no-qemu", action="store_true")
ap.add_argument("--timeout", type=float, default=300, help="seconds per Swiftlet sample")
args = ap.parse_args()

BIN = harness.SWIFTLET
if not os.access(BIN, os.X_OK):
    sys.exit(f"boot: no {BIN}: run `make release images` or set SWIFTLET=path")
CACHE = harness.CACHE
DEFAULT = os.path.join(CACHE, "default")
INIT_LINE = "swiftlet-init:"
# Swiftlet's default `boot` command line (BootDefaults.rootDrive, read-only root)
# plus the init's one-shot command; QEMU gets the same (CPU-feature masking: see qemu_cmd).
CMDLINE = ("console=ttyS0 reboot=k,panic_warm panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux "
           "i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check swiotlb=noforce "
           "root=/dev/vda rootfstype=ext4 ro SWIFTLET_INIT_RUN=true")

# ---------------------------------------------------------------- progress
total_steps = args.n * (2 + (0 if args.no_qemu else 1)) + (1 if args.concurrency else 0)
done_steps = 0
t_start = time.monotonic()

def progress(label):
    w = 30
    f = int(w * done_steps / max(1, total_steps))
    el = time.monotonic() - t_start
    sys.stderr.write(f"\r\x1b[K[{'#' * f}{'.' * (w - f)}] {done_steps}/{total_steps} {el:5.0f}s {label}")
    sys.stderr.flush()

def step(label):
    global done_steps
    done_steps += 1
    progress(label)

# ---------------------------------------------------------------- process runner
def launch(argv, timeout, watch=None, fail_patterns=()):
    """Runs argv (`harness.run_watched`); returns its result with wall_ms, and
    the host time (ms from exec) of the first output line containing `watch`.
    Stops the process at the first stderr/stdout line matching fail_patterns."""
    def on_line(res, key, line, now):
        if watch and res.get("watch_ms") is None and watch in line:
            res["watch_ms"] = now
        if res.get("failed_on") is None and any(re.search(pat, line) for pat in fail_patterns):
            res["failed_on"] = line.strip()
            return True
        return False

    res = harness.run_watched(argv, timeout, on_line)
    res.setdefault("watch_ms", None)
    res.setdefault("failed_on", None)
    res["wall_ms"] = res.pop("exit_ms")
    return res

def kv(line):
    return {k: float(v) for k, v in re.findall(r"([a-z0-9-]+)=([0-9.]+)", line)}

# ---------------------------------------------------------------- samples
def swiftlet_run(i):
    r = launch([BIN, "run", "--cold", "--timings", "--", "true"], args.timeout)
    line = next((l for l in r["err"] if l.startswith("swiftlet-timings:")), "")
    t = kv(line)
    s = {"kind": "swiftlet-run", "iter": i, "rc": r["rc"], "timed_out": r["timed_out"],
         "wall_ms": r["wall_ms"], "user_ms": r["user_ms"], "sys_ms": r["sys_ms"],
         "peak_rss_kib": r["maxrss_kib"], "timings": t}
    if not line:
        s["error"] = (r["err"][-1] if r["err"] else "no swiftlet-timings line")
        return s
    # Phase marks, ms from process start (host clock unless noted).
    boot = t.get("boot-ms"); job_host = t.get("job-host-ms", 0.0)
    s["marks_ms"] = {
        "first_kvm_run": t.get("first-kvm-run-us", 0) / 1000,
        "init_start": t.get("guest-boot-timer-ms"),              # boot-timer device write
        "agent_connected": boot,
        "job_start": (boot + job_host - t["job-ms"]) if boot is not None and "job-ms" in t else None,  # guest job-ms back from the exit
        "job_finish": boot + job_host if boot is not None else None,
        "teardown_done": boot + job_host + t.get("teardown-ms", 0) if boot is not None else None,
        "swiftlet_total": t.get("total-ms"),
        "process_exit": r["wall_ms"],                            # measured by this script, incl. exec + wait
    }
    return s

def swiftlet_boot(i):
    r = launch([BIN, "boot", "--boot-timer", "--stats", "--append", "SWIFTLET_INIT_RUN=true",
                "--timeout", str(args.timeout)], args.timeout + 10, watch=INIT_LINE)
    err = "\n".join(r["err"])
    g = lambda k: (lambda m: float(m.group(1)) if m else None)(re.search(rf"^{k}=(\d+)", err, re.M))
    ex = re.search(r"^exits: (.*)$", err, re.M)
    s = {"kind": "swiftlet-boot", "iter": i, "rc": r["rc"], "timed_out": r["timed_out"],
         "wall_ms": r["wall_ms"], "user_ms": r["user_ms"], "sys_ms": r["sys_ms"],
         "peak_rss_kib": r["maxrss_kib"],
         "first_kvm_run_ms": (g("vmm-first-kvm-run-us") or 0) / 1000 or None,
         "first_kvm_run_cpu_ms": (g("vmm-first-kvm-run-cpu-us") or 0) / 1000 or None,
         "first_exit_ms": (g("vmm-first-exit-us") or 0) / 1000 or None,
         "init_boot_timer_ms": (g("guest-boot-time-us") or 0) / 1000 or None,
         "init_console_line_ms": r["watch_ms"],
         "exits": {k: int(float(v)) for k, v in kv(ex.group(1)).items()} if ex else None,
         "vmm_overhead_rss_kib": g("vmm-overhead-rss-kib"),
         "vmm_overhead_anon_kib": g("vmm-overhead-anon-kib")}
    if r["watch_ms"] is None:
        s["error"] = r["err"][-1] if r["err"] else "no init line"
    return s

def qemu_cmd():
    q = shutil.which("qemu-system-x86_64")
    kernel = os.path.join(DEFAULT, "vmlinux")
    if not os.path.exists(kernel):
        kernel = os.path.join(DEFAULT, "bzImage")
    rootfs = os.path.join(DEFAULT, "rootfs.ext4")
    if not q:
        return None, "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"
    # Same kernel, rootfs (read-only + snapshot) and command line; the CPU
    # features Swiftlet hides on nested PVM (XSAVE, CX16; kernels/README.md) are
    # hidden from QEMU's guest too, so the comparison gets its best chance.
    return [q, "-M", "microvm", "-enable-kvm", "-cpu", "host,-xsave,-cx16", "-m", "128", "-smp", "1",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio",
            "-kernel", kernel, "-append", CMDLINE + " clearcpuid=141,154",
            "-drive", f"id=root,file={rootfs},format=raw,if=none,readonly=on,snapshot=on",
            "-device", "virtio-blk-device,drive=root"], None

QEMU_FAIL = (r"KVM internal error", r"emulation failure", r"KVM: entry failed", r"Could not access KVM",
             r"qemu-system-x86_64: .*(error|failed|cannot)", r"Kernel panic")

def qemu_boot(i):
    cmd, why = qemu_cmd()
    if cmd is None:
        return {"kind": "qemu", "iter": i, "ok": False, "reason": why}
    r = launch(cmd, args.qemu_timeout, watch=INIT_LINE, fail_patterns=QEMU_FAIL)
    s = {"kind": "qemu", "iter": i, "wall_ms": r["wall_ms"], "rc": r["rc"], "user_ms": r["user_ms"],
         "sys_ms": r["sys_ms"], "peak_rss_kib": r["maxrss_kib"], "init_console_line_ms": r["watch_ms"],
         "command": " ".join(cmd)}
    if r["watch_ms"] is not None:
        s["ok"] = True
    else:
        s["ok"] = False
        if r["failed_on"]:
            s["reason"] = r["failed_on"]
            code = next((l for l in r["err"] if l.startswith("Code=")), "")
            m = re.search(r"<([0-9a-f]{2})>((?: [0-9a-f]{2}){0,5})", code)
            if m:
                s["reason"] += f", failing instruction bytes [{m.group(1)}{m.group(2)}]"
            rip = next((re.search(r"RIP=([0-9a-f]+)", l).group(1) for l in r["err"] if "RIP=" in l), None)
            if rip:
                s["reason"] += f" at RIP {rip}"
        elif r["timed_out"]:
            s["reason"] = f"no init console line within {args.qemu_timeout:.0f} s (timeout)"
        else:
            s["reason"] = f"exited {r['rc']} before init: " + (r["err"][-1] if r["err"] else "")
        # The KVM register dump that follows an internal error, for the record.
        s["stderr_tail"] = r["err"][-12:]
        s["console_tail"] = r["out"][-5:]
    # QEMU keeps the VM paused after a KVM internal error; it was killed above.
    return s

def creation_rate(k):
    res = [None] * k
    def one(j):
        res[j] = swiftlet_run(f"c{j}")
    t0 = time.monotonic()
    ts = [threading.Thread(target=one, args=(j,)) for j in range(k)]
    for t in ts: t.start()
    for t in ts: t.join()
    wall = time.monotonic() - t0
    ok = [r for r in res if r.get("rc") == 0]
    lat = sorted(r["wall_ms"] for r in ok)
    return {"k": k, "wall_s": round(wall, 2), "ok": len(ok),
            "vms_per_s": round(len(ok) / wall, 4) if wall else None,
            "latency_ms": {"min": lat[0] if lat else None, "median": med(lat), "max": lat[-1] if lat else None},
            "samples": res}

# ---------------------------------------------------------------- stats
def pct(v, p):
    v = sorted(x for x in v if x is not None)
    if not v: return None
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None

def host_facts():
    cpu, kvm = harness.cpu_and_kvm()
    cfg = os.path.realpath(os.path.join(DEFAULT, "config"))
    cfg_hash = hashlib.sha256(open(cfg, "rb").read()).hexdigest() if os.path.exists(cfg) else None
    try:
        ver = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        ver = ""
    return {"cpu": cpu, "cpus": os.cpu_count(), "host_kernel": platform.release(), "kvm": kvm,
            "guest_kernel_dir": os.path.basename(os.path.dirname(cfg)),
            "guest_kernel_config_sha256": cfg_hash,
            "rootfs": os.path.realpath(os.path.join(DEFAULT, "rootfs.ext4")),
            "swiftlet_binary": os.path.realpath(BIN), "swiftlet_version": ver,
            "qemu": (subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True).stdout.splitlines() or [""])[0]
                    if shutil.which("qemu-system-x86_64") else None,
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}

# ---------------------------------------------------------------- main loop
facts = host_facts()
samples = []
progress("starting")
for i in range(args.n):
    progress(f"iter {i + 1}: swiftlet run")
    samples.append(swiftlet_run(i)); step("swiftlet run done")
    progress(f"iter {i + 1}: swiftlet boot --stats")
    samples.append(swiftlet_boot(i)); step("swiftlet boot done")
    if not args.no_qemu:
        progress(f"iter {i + 1}: qemu microvm")
        samples.append(qemu_boot(i)); step("qemu done")
rate = None
if args.concurrency:
    progress(f"{args.concurrency} concurrent swiftlet run")
    rate = creation_rate(args.concurrency); step("creation rate done")
sys.stderr.write("\n")
facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]

runs = [s for s in samples if s["kind"] == "swiftlet-run" and "marks_ms" in s]
boots = [s for s in samples if s["kind"] == "swiftlet-boot"]
qemus = [s for s in samples if s["kind"] == "qemu"]
qok = [s for s in qemus if s.get("ok")]

def row(name, vals, unit="ms", fmt="{:.1f}"):
    vals = [v for v in vals if v is not None]
    f = lambda x: "-" if x is None else fmt.format(x)
    return {"figure": name, "unit": unit, "n": len(vals), "median": med(vals), "p90": pct(vals, 90), "p99": pct(vals, 99),
            "cells": [name, f(med(vals)), f(pct(vals, 90)), f(pct(vals, 99)), str(len(vals))]}

M = lambda key: [s["marks_ms"].get(key) for s in runs]
T = lambda key: [s["timings"].get(key) for s in runs]
table = [
    row("run: exec -> first KVM_RUN", M("first_kvm_run")),
    row("run: exec -> init start (boot timer)", M("init_start")),
    row("run: exec -> agent connected (boot-ms)", M("agent_connected")),
    row("run: agent start-up (guest clock)", T("agent-start-ms")),
    row("run: job start (derived)", M("job_start")),
    row("run: job finish", M("job_finish")),
    row("run: job fork->exit (guest clock)", T("job-ms")),
    row("run: teardown", T("teardown-ms"), fmt="{:.2f}"),
    row("run: exec -> process exit (outside)", M("process_exit")),
    row("run: user CPU", [s["user_ms"] for s in runs]),
    row("run: sys CPU (incl. KVM emulator)", [s["sys_ms"] for s in runs]),
    row("run: peak RSS incl. guest pages touched", [s["peak_rss_kib"] / 1024 for s in runs], "MiB"),
    row("boot: exec -> first KVM_RUN", [s["first_kvm_run_ms"] for s in boots], fmt="{:.2f}"),
    row("boot: CPU by first KVM_RUN", [s["first_kvm_run_cpu_ms"] for s in boots], fmt="{:.2f}"),
    row("boot: exec -> first VM exit", [s["first_exit_ms"] for s in boots], fmt="{:.2f}"),
    row("boot: exec -> init (boot timer)", [s["init_boot_timer_ms"] for s in boots]),
    row("boot: exec -> init console line", [s["init_console_line_ms"] for s in boots]),
    row("boot: VMM RSS outside guest memory", [(s["vmm_overhead_rss_kib"] or 0) / 1024 or None for s in boots], "MiB", "{:.2f}"),
    row("qemu: exec -> init console line", [s["init_console_line_ms"] for s in qok]),
]
exit_rows = []
for key in ("io", "mmio", "kicks", "other"):
    exit_rows.append(row(f"swiftlet boot exits: {key}", [s["exits"].get(key) for s in boots if s.get("exits")], "count", "{:.0f}"))
for key in ("exits-io", "exits-mmio"):
    exit_rows.append(row(f"swiftlet run exits: {key[6:]}", T(key), "count", "{:.0f}"))

sw_init = med([s["init_console_line_ms"] for s in boots])
q_init = med([s["init_console_line_ms"] for s in qok])
ratio = (sw_init / q_init) if sw_init and q_init else None
qemu_reasons = sorted({s.get("reason", "") for s in qemus if not s.get("ok")})
qemu_status = ("not run (--no-qemu)" if args.no_qemu else
               f"{len(qok)}/{len(qemus)} booted" + ("" if not qemu_reasons else "; qemu: failed to boot (" + "; ".join(qemu_reasons) + ")"))

day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
os.makedirs("benchmarks/results", exist_ok=True)
base = f"benchmarks/results/{day}-boot"
result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "iterations": args.n, "host": facts, "cmdline_boot_and_qemu": CMDLINE,
          "summary": [{k: v for k, v in r.items() if k != "cells"} for r in table + exit_rows],
          "comparison": {"swiftlet_init_console_median_ms": sw_init, "qemu_init_console_median_ms": q_init,
                         "ratio_swiftlet_over_qemu": ratio, "qemu_status": qemu_status},
          "creation_rate": rate, "samples": samples,
          "notes": {"peak_rss_kib": "getrusage ru_maxrss of the child: VMM plus every guest page the guest touched (guest RAM is anonymous memory in the VMM); an upper bound, not the overhead. vmm_overhead_rss_kib (swiftlet boot --stats) excludes guest memory.",
                    "job_start": "derived: agent connected + job-host-ms - job-ms (guest clock); the host sees no separate job-start event",
                    "init_console_line_ms": "host time from exec to the first output line containing 'swiftlet-init:', the same signal for Swiftlet and QEMU"}}
json.dump(result, open(base + ".json", "w"), indent=1)

# ---------------------------------------------------------------- markdown
md = [f"# Boot benchmark {result['date']}", "",
      f"Host: {facts['cpu']}, {facts['cpus']} CPUs, kernel {facts['host_kernel']}, KVM: {facts['kvm']}.",
      f"Guest kernel `{facts['guest_kernel_dir']}`, config sha256 `{(facts['guest_kernel_config_sha256'] or '?')[:16]}`; "
      f"{args.n} iterations; load average {' '.join(facts['loadavg_start'])} at start.", "",
      "| figure | median | p90 | p99 | n |", "|---|---|---|---|---|"]
md += ["| " + " | ".join(r["cells"]) + " |" for r in table + exit_rows]
md += ["", "## Swiftlet vs QEMU microvm (exec -> init's first console line)", "",
       f"- Swiftlet: {sw_init if sw_init is None else round(sw_init, 1)} ms median",
       f"- QEMU: {qemu_status}",
       f"- ratio Swiftlet/QEMU: {'n/a (no QEMU samples)' if ratio is None else round(ratio, 3)}"]
if rate:
    md += ["", f"## Creation rate: {rate['k']} concurrent `swiftlet run -- true`", "",
           f"{rate['ok']}/{rate['k']} succeeded in {rate['wall_s']} s: **{rate['vms_per_s']} VMs/s**; "
           f"latency min {rate['latency_ms']['min']} / median {rate['latency_ms']['median']} / max {rate['latency_ms']['max']} ms"]
open(base + ".md", "w").write("\n".join(md) + "\n")

# ---------------------------------------------------------------- svg
PH = [("exec→first KVM_RUN", "#4e79a7", None, "first_kvm_run"),
      ("→init (boot timer)", "#f28e2b", "first_kvm_run", "init_start"),
      ("→agent connected", "#e15759", "init_start", "agent_connected"),
      ("→job finished", "#76b7b2", "agent_connected", "job_finish"),
      ("→process exit", "#59a14f", "job_finish", "process_exit")]
bars = []
for s in runs:
    m = s["marks_ms"]; segs = []
    for name, col, a, b in PH:
        va = 0 if a is None else m.get(a); vb = m.get(b)
        segs.append((name, col, max(0.0, (vb or 0) - (va or 0)) if vb is not None and va is not None else 0.0))
    bars.append((f"run {s['iter'] + 1}", segs))
for r in (rate["samples"] if rate else []):
    if r and "marks_ms" in r:
        m = r["marks_ms"]; segs = []
        for name, col, a, b in PH:
            va = 0 if a is None else m.get(a); vb = m.get(b)
            segs.append((name, col, max(0.0, (vb or 0) - (va or 0)) if vb is not None and va is not None else 0.0))
        bars.append((f"conc {r['iter']}", segs))
W, BH, L = 760, 22, 90
H1 = 50 + BH * len(bars) + 40
dist = [("swiftlet init line", [s["init_console_line_ms"] for s in boots], "#e15759"),
        ("qemu init line", [s["init_console_line_ms"] for s in qok], "#bab0ac"),
        ("swiftlet run total", M("process_exit"), "#4e79a7")]
H = H1 + 40 + 28 * len(dist) + 60
mx = max([sum(x[2] for x in segs) for _, segs in bars] + [v for _, vs, _ in dist for v in vs if v] + [1])
sx = lambda v: L + (W - L - 20) * v / mx
o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
     f'<rect width="{W}" height="{H}" fill="white"/>',
     f'<text x="10" y="18" font-size="13" font-weight="bold">Swiftlet boot phases per sample (ms from exec), {facts["kvm"].split(":")[0]}</text>']
for j, (name, col, _, _) in enumerate(PH):
    o.append(f'<rect x="{10 + j * 150}" y="28" width="10" height="10" fill="{col}"/><text x="{24 + j * 150}" y="37">{name}</text>')
for j, (lab, segs) in enumerate(bars):
    y = 50 + j * BH; x = 0.0
    o.append(f'<text x="10" y="{y + 14}">{lab}</text>')
    for name, col, v in segs:
        o.append(f'<rect x="{sx(x):.1f}" y="{y}" width="{max(0.5, sx(x + v) - sx(x)):.1f}" height="{BH - 6}" fill="{col}"><title>{name}: {v:.1f} ms</title></rect>')
        x += v
    o.append(f'<text x="{sx(x) + 4:.1f}" y="{y + 14}">{x:.0f}</text>')
ya = 50 + BH * len(bars) + 4
for t in range(0, 6):
    v = mx * t / 5
    o.append(f'<line x1="{sx(v):.1f}" y1="{ya}" x2="{sx(v):.1f}" y2="{ya + 4}" stroke="black"/><text x="{sx(v):.1f}" y="{ya + 16}" text-anchor="middle">{v:.0f}</text>')
o.append(f'<text x="10" y="{H1 + 20}" font-size="13" font-weight="bold">Distributions (ms from exec; dots = samples, bar = median)</text>')
for j, (lab, vs, col) in enumerate(dist):
    y = H1 + 40 + j * 28
    o.append(f'<text x="10" y="{y + 4}">{lab}</text><line x1="{L}" y1="{y}" x2="{W - 20}" y2="{y}" stroke="#ddd"/>')
    vs = [v for v in vs if v is not None]
    if not vs:
        why = "no samples" + (": " + qemu_status.split("; ", 1)[-1] if lab.startswith("qemu") else "")
        o.append(f'<text x="{L + 4}" y="{y + 4}" fill="#a00">{why[:110].replace("&", "&amp;").replace("<", "&lt;")}</text>')
        continue
    for v in vs:
        o.append(f'<circle cx="{sx(v):.1f}" cy="{y}" r="4" fill="{col}" fill-opacity="0.7"><title>{v:.1f} ms</title></circle>')
    mv = med(vs)
    o.append(f'<line x1="{sx(mv):.1f}" y1="{y - 8}" x2="{sx(mv):.1f}" y2="{y + 8}" stroke="black" stroke-width="2"/>')
o.append(f'<text x="10" y="{H - 10}" fill="#555">Guest kernel emulated on this host (nested PVM): wall times are ~1000x hardware KVM; exit counts transfer better.</text>' if "PVM" in facts["kvm"] else "")
o.append("</svg>")
open(base + ".svg", "w").write("\n".join(o) + "\n")

print("\n".join(md))
print(f"\nwrote {base}.json {base}.md {base}.svg")
