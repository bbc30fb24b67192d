#!/usr/bin/env python3
"""Boot suite: Swiftlet against QEMU microvm and kvmtool on the same kernel,
root file system, command line, memory and vCPUs (see run.sh and
benchmarks/README.md, "Swiftlet against its peers").

Every sample is one cold boot through the rootfs init, which runs the one-shot
commands `/bin/true` then `uname -a` (SWIFTLET_INIT_RUN on the kernel command
line, the same for every VMM) and powers off. The host timestamps the console
lines of each phase; the VMMs are alternated run by run.
"""
import argparse, datetime, hashlib, json, math, os, platform, re, shutil
import statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import gate  # noqa: E402
import harness  # noqa: E402

ap = argparse.ArgumentParser(description="Swiftlet against QEMU microvm and kvmtool, same kernel and root.")
ap.add_argument("--kernel", action="append", metavar="K",
                help="kernel to boot: a name under the cache (peers, default) or a directory holding "
                     "vmlinux, bzImage and config; repeatable (default: peers)")
ap.add_argument("--vmm", default=None, help="comma-separated: swiftlet,qemu,kvmtool (default: swiftlet,qemu, "
                                            "plus kvmtool when --kvmtool is given)")
ap.add_argument("-n", type=int, default=10, help="boots per VMM and kernel (default 10)")
ap.add_argument("--kvmtool", metavar="PATH", help="an lkvm binary (built by hand, see benchmarks/README.md)")
ap.add_argument("--baseline", metavar="FILE", help="a previous result JSON to gate against")
ap.add_argument("--max-regression", type=float, default=10.0, metavar="PCT",
                help="with --baseline: fail when a median is more than PCT%% worse with disjoint 95%% CIs (default 10)")
ap.add_argument("--mem", type=int, default=128, help="guest MiB (default 128)")
ap.add_argument("--cpus", type=int, default=1, help="vCPUs (default 1)")
ap.add_argument("--timeout", type=float, default=240, help="seconds per boot before it counts as failed")
ap.add_argument("--out", help="output prefix (default benchmarks/results/<date>-boot-peers)")
ap.add_argument("--resummarise", metavar="JSON",
                help="boot nothing: rebuild the JSON, table and chart from the samples of a result (or of the "
                     ".partial.json a run keeps while it goes)")
ap.add_argument("--restore", action="store_true",
                help="also time restored state to a job's first output: `swiftlet run` from its snapshot vs "
                     "QEMU -incoming from a migration file")
args = ap.parse_args()

BIN, CACHE, ROOTFS = harness.SWIFTLET, harness.CACHE, harness.ROOTFS
QEMU = shutil.which("qemu-system-x86_64")
vmms = (args.vmm or ("swiftlet,qemu,kvmtool" if args.kvmtool else "swiftlet,qemu")).split(",")
for v in vmms:
    if v not in ("swiftlet", "qemu", "kvmtool"):
        sys.exit(f"boot suite: unknown VMM {v!r} (swiftlet, qemu, kvmtool)")
if "swiftlet" in vmms:  # first, so that its guest's command line is known before a peer boots
    vmms = ["swiftlet"] + [v for v in vmms if v != "swiftlet"]
notes = []
if "kvmtool" in vmms and not args.kvmtool:
    sys.exit("boot suite: --vmm kvmtool needs --kvmtool PATH (an lkvm built by hand)")
if not args.kvmtool:
    notes.append("kvmtool not run: no --kvmtool PATH given")
    print("boot suite: running without kvmtool (no --kvmtool PATH)", file=sys.stderr)
if "swiftlet" in vmms and not os.access(BIN, os.X_OK):
    sys.exit(f"boot suite: no {BIN}: run `make release images` or set SWIFTLET=path")
if "qemu" in vmms and not QEMU:
    sys.exit("boot suite: qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")
if not os.path.exists(ROOTFS):
    sys.exit(f"boot suite: no rootfs at {ROOTFS}: run `make images`")


def kernel_dir(k):
    d = k if os.path.isdir(k) else os.path.join(CACHE, k)
    d = os.path.realpath(os.path.join(d, "vmlinux"))
    d = os.path.dirname(d)
    for f in ("vmlinux", "bzImage", "config"):
        if not os.path.exists(os.path.join(d, f)):
            sys.exit(f"boot suite: kernel {k!r}: no {f} in {d} (kernels/build.sh --variant peers builds 'peers')")
    return d


KERNELS = [(k, kernel_dir(k)) for k in (args.kernel or ["peers"])]

# ---------------------------------------------------------------- the command line
# The one-shot commands: /bin/true, a marker, then uname -a. Init prints
# "swiftlet-init: command exited with status N" after the last one.
JOB = "/bin/true;echo swiftlet-bench: true done;uname -a"
INIT_RUN = f'SWIFTLET_INIT_RUN="{JOB}"'
# Swiftlet's default `boot` command line on this host, as its guest prints it,
# without its device declaration. Read from the first Swiftlet boot of the run
# (so the CPU-feature masking Swiftlet generates for this host reaches every
# VMM); this constant, taken on a development machine, is only the fallback
# when Swiftlet is not among the VMMs.
FALLBACK_BASE = ("console=ttyS0 reboot=k,panic_warm panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux "
                 "i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check swiotlb=noforce root=/dev/vda "
                 "rootfstype=ext4 ro clearcpuid=154,131,141,145,151,158,288,297,298,306,308,311,312,514,517,"
                 "528,534,580,197,59,425 swiftlet_pvm_syscall clocksource=kvm-clock")
base_cmdline = None if "swiftlet" in vmms else FALLBACK_BASE
DEVICE_RE = re.compile(r"\s*virtio_mmio\.device=\S+")


def strip_devices(cl):
    return " ".join(DEVICE_RE.sub("", cl).split())


def peer_cmdline():
    return (base_cmdline or FALLBACK_BASE) + " " + INIT_RUN


# ---------------------------------------------------------------- VMM command lines
def swiftlet_cmd(kdir):
    # vmlinux (ELF): Swiftlet loads it directly. --boot-timer and --stats print
    # the first KVM_RUN, exits and the instructions completed in the VMM at the end.
    return [BIN, "boot", "--kernel", os.path.join(kdir, "vmlinux"), "--rootfs", ROOTFS + ",ro",
            "--mem", str(args.mem), "--cpus", str(args.cpus), "--append", INIT_RUN,
            "--boot-timer", "--stats", "--timeout", str(int(args.timeout))]


def qemu_cmd(kdir, extra=()):
    # Every flag is explained in benchmarks/README.md ("QEMU's flags").
    return [QEMU,
            "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off,auto-kernel-cmdline=on",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(args.mem), "-smp", str(args.cpus),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-serial", "stdio",
            "-device", "i8042",
            "-kernel", os.path.join(kdir, "vmlinux"), "-append", peer_cmdline(),
            "-drive", f"id=root,file={ROOTFS},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root", *extra]


def kvmtool_cmd(kdir):
    # lkvm on x86 loads only a bzImage (16-bit boot protocol). --nodefaults keeps
    # its own command line out; virtio-mmio (a local fix-up on x86) is declared
    # on the command line like Swiftlet's. Flags: benchmarks/README.md.
    return [args.kvmtool, "run", "--nodefaults", "--virtio-transport", "mmio", "--network", "mode=none",
            "-c", str(args.cpus), "-m", str(args.mem), "-k", os.path.join(kdir, "bzImage"),
            "-d", ROOTFS + ",ro", "-p", peer_cmdline() + " virtio_mmio.device=0x200@0xd3000000:5"]


# ---------------------------------------------------------------- one boot
MARKS = [  # (figure, console pattern: a kernel line's text after its timestamp, or an init line's start)
    ("first_console_ms", None),
    ("run_init_ms", re.compile(r"^(\[[ 0-9.]+\] )?Run /sbin/init as init process")),
    ("init_first_output_ms", re.compile(r"^swiftlet-init: reached userspace")),
    ("true_done_ms", re.compile(r"^swiftlet-bench: true done")),
    ("uname_done_ms", re.compile(r"^swiftlet-init: command exited with status")),
    ("power_off_ms", re.compile(r"^(\[[ 0-9.]+\] )?reboot: Power down")),
]
# Console lines kept with their host time in every sample, for re-analysis.
KEEP = re.compile(r"^(swiftlet-|Linux |(\[[ 0-9.]+\] )?(Run /|reboot:|Linux version|Freeing unused))")
FAIL = (r"KVM internal error", r"KVM_EXIT_INTERNAL_ERROR", r"emulation failure", r"Kernel panic",
        r"KVM could not emulate", r"qemu-system-x86_64: .*(error|failed|cannot)")


def guest_ram_kib_min():
    return int(args.mem * 1024 * 0.95)


def rss_outside_guest_kib(pid):
    """Rss of every mapping except guest RAM, from /proc/PID/smaps. Guest RAM
    is a run of address-contiguous mappings as large as the guest memory (up
    to 64 MiB more, for guard pages): Swiftlet maps the vmlinux segments into
    its guest RAM, so that run holds file mappings too. A mapping at least as
    large as guest memory on its own also counts as guest RAM."""
    try:
        txt = open(f"/proc/{pid}/smaps").read()
    except OSError:
        return None
    vmas = []  # [start, end, size_kib, rss_kib]
    for line in txt.splitlines():
        m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
        if m:
            vmas.append([int(m.group(1), 16), int(m.group(2), 16), 0, 0])
        elif line.startswith("Size:") and vmas:
            vmas[-1][2] = int(line.split()[1])
        elif line.startswith("Rss:") and vmas:
            vmas[-1][3] = int(line.split()[1])
    lo, hi = guest_ram_kib_min(), args.mem * 1024 + 64 * 1024
    total, run = 0, []

    def flush(run):
        size = sum(v[2] for v in run)
        if lo <= size <= hi:
            return 0
        return sum(v[3] for v in run if v[2] < lo)

    for v in vmas:
        if run and v[0] != run[-1][1]:
            total += flush(run)
            run = []
        run.append(v)
    if run:
        total += flush(run)
    return total


def launch(argv, timeout):
    """One boot, its console watched for the phase marks (`harness.run_watched`),
    and its RSS outside guest memory sampled every 0.5 s."""
    rss = []
    next_rss = [0.0]

    def on_line(res, key, line, now):
        marks = res.setdefault("marks", {})
        if key == "out" and "first_console_ms" not in marks and line.strip():
            marks["first_console_ms"] = now
        text = line.strip()
        for fig, pat in MARKS:
            if pat and fig not in marks and pat.match(text):
                marks[fig] = now
        if key == "out" and KEEP.match(text):
            res.setdefault("kept", []).append([round(now, 1), text[:100]])
        if res.get("failed_on") is None and any(re.search(x, line) for x in FAIL):
            res["failed_on"] = line.strip()
            return True
        return False

    def on_poll(pid):
        now = time.monotonic()
        if now >= next_rss[0]:
            r = rss_outside_guest_kib(pid)
            if r:
                rss.append(r)
            next_rss[0] = now + 0.5

    res = harness.run_watched(argv, timeout, on_line, on_poll)
    res.setdefault("marks", {})
    res.setdefault("kept", [])
    res.setdefault("failed_on", None)
    res["rss"] = rss
    res["process_exit_ms"] = res.pop("exit_ms")
    return res


def sample(vmm, kname, kdir, i):
    global base_cmdline
    cmd = {"swiftlet": swiftlet_cmd, "qemu": qemu_cmd, "kvmtool": kvmtool_cmd}[vmm](kdir)
    r = launch(cmd, args.timeout)
    m = r["marks"]
    cl = next((l.split("Command line: ", 1)[1] for l in r["out"] if "] Command line: " in l), None)
    s = {"vmm": vmm, "kernel": kname, "iter": i, "rc": r["rc"], "timed_out": r["timed_out"],
         "figures": {}, "command_line": cl}
    f = s["figures"]
    for fig, _ in MARKS:
        f[fig] = None if m.get(fig) is None else round(m[fig], 1)
    f["process_exit_ms"] = r["process_exit_ms"]
    f["user_cpu_ms"] = r["user_ms"]
    f["sys_cpu_ms"] = r["sys_ms"]
    f["peak_rss_outside_guest_kib"] = max(r["rss"]) if r["rss"] else None
    s["ru_maxrss_kib"] = r["maxrss_kib"]
    s["console_marks"] = r["kept"]
    err = "\n".join(r["err"])
    if vmm == "swiftlet":
        g = lambda k: (lambda mm: float(mm.group(1)) if mm else None)(re.search(rf"^{k}=(\d+)", err, re.M))
        fk = g("vmm-first-kvm-run-us")
        f["first_kvm_run_ms"] = round(fk / 1000, 2) if fk else None
        ex = re.search(r"^exits: (.*)$", err, re.M)
        s["exits"] = {k: int(v) for k, v in re.findall(r"([a-z0-9-]+)=(\d+)", ex.group(1))} if ex else None
        s["fixups"] = {k: v for k, v in (s["exits"] or {}).items() if k.startswith("fixup-")}
        s["vmm_overhead_rss_kib_stats"] = g("vmm-overhead-rss-kib")
        if cl and base_cmdline is None:
            base_cmdline = strip_devices(cl.replace(INIT_RUN, "").replace(f"SWIFTLET_INIT_RUN={JOB}", ""))
    ok = (f["uname_done_ms"] is not None and not r["timed_out"] and r["failed_on"] is None)
    s["ok"] = ok
    if not ok:
        s["error"] = r["failed_on"] or ("timeout" if r["timed_out"] else f"exit {r['rc']} before the command finished")
        s["console_tail"] = r["out"][-8:]
        s["stderr_tail"] = r["err"][-12:]
    s["argv"] = cmd
    return s


# ---------------------------------------------------------------- statistics
def median(v):
    return statistics.median(v) if v else None


def quantile(v, q):
    if not v:
        return None
    v = sorted(v)
    k = (len(v) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def median_ci95(v):
    """Distribution-free 95% confidence interval of the median: order
    statistics from the binomial(n, 1/2) distribution (n >= 6; below that the
    sample range)."""
    v = sorted(v)
    n = len(v)
    if n == 0:
        return None
    if n < 6:
        return [v[0], v[-1]]
    cdf, j = 0.0, 0
    pmf = [math.comb(n, k) / 2 ** n for k in range(n + 1)]
    # largest j with P(X < j) <= 0.025: interval [v[j], v[n-1-j]] (0-based)
    while cdf + pmf[j] <= 0.025:
        cdf += pmf[j]
        j += 1
    j = max(0, j - 1) if j > 0 else 0
    return [v[j], v[n - 1 - j]]


FIG_ORDER = ["first_kvm_run_ms", "first_console_ms", "run_init_ms", "init_first_output_ms", "true_done_ms",
             "uname_done_ms", "power_off_ms", "process_exit_ms", "user_cpu_ms", "sys_cpu_ms",
             "peak_rss_outside_guest_kib"]
FIG_LABEL = {
    "first_kvm_run_ms": "exec → first guest instruction (first KVM_RUN)",
    "first_console_ms": "exec → first console line",
    "run_init_ms": "exec → `Run /sbin/init` line",
    "init_first_output_ms": "exec → init's first output",
    "true_done_ms": "exec → one-shot `/bin/true` finished",
    "uname_done_ms": "exec → `uname -a` finished",
    "power_off_ms": "exec → `reboot: Power down` line",
    "process_exit_ms": "exec → VMM process exit",
    "user_cpu_ms": "user CPU",
    "sys_cpu_ms": "system CPU (KVM's emulator included)",
    "peak_rss_outside_guest_kib": "peak RSS outside guest memory",
}


def unit(fig):
    return "KiB" if fig.endswith("_kib") else "ms"


def summarise(samples):
    rows = []
    for kname, _ in KERNELS:
        for vmm in vmms:
            ss = [s for s in samples if s["kernel"] == kname and s["vmm"] == vmm]
            good = [s for s in ss if s["ok"]]
            for fig in FIG_ORDER:
                vals = [s["figures"].get(fig) for s in good if s["figures"].get(fig) is not None]
                if not vals:
                    continue
                rows.append({"kernel": kname, "vmm": vmm, "figure": fig, "unit": unit(fig), "n": len(vals),
                             "n_failed": len(ss) - len(good), "median": round(median(vals), 2),
                             "p90": round(quantile(vals, 0.9), 2),
                             "ci95": [round(x, 2) for x in median_ci95(vals)], "min": min(vals), "max": max(vals)})
    return rows


def ratios(rows):
    out = []
    for kname, _ in KERNELS:
        sw = {r["figure"]: r for r in rows if r["kernel"] == kname and r["vmm"] == "swiftlet"}
        for peer in [v for v in vmms if v != "swiftlet"]:
            pr = {r["figure"]: r for r in rows if r["kernel"] == kname and r["vmm"] == peer}
            for fig in FIG_ORDER:
                if fig in sw and fig in pr and pr[fig]["median"]:
                    out.append({"kernel": kname, "peer": peer, "figure": fig,
                                "swiftlet_median": sw[fig]["median"], "peer_median": pr[fig]["median"],
                                "ratio_swiftlet_over_peer": round(sw[fig]["median"] / pr[fig]["median"], 4)})
    return out


# ---------------------------------------------------------------- host facts
def host_facts():
    cpu, kvm = harness.cpu_and_kvm()

    def sha(p):
        return hashlib.sha256(open(p, "rb").read()).hexdigest()

    def ver(argv):
        try:
            return (subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()
                    or [""])[0]
        except Exception:
            return None

    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal:")), "?")
    return {"cpu": cpu, "cpus": os.cpu_count(), "mem_total_kib": int(mem), "host_kernel": platform.release(),
            "kvm": kvm,
            "kernels": {k: {"dir": d, "config_sha256": sha(os.path.join(d, "config")),
                            "vmlinux_sha256": sha(os.path.join(d, "vmlinux")),
                            "bzImage_sha256": sha(os.path.join(d, "bzImage"))} for k, d in KERNELS},
            "rootfs": ROOTFS, "rootfs_sha256": sha(ROOTFS),
            "swiftlet_binary": os.path.realpath(BIN) if "swiftlet" in vmms else None,
            "swiftlet_sha256": sha(BIN) if "swiftlet" in vmms else None,
            "swiftlet_mtime": (datetime.datetime.fromtimestamp(os.path.getmtime(BIN), datetime.timezone.utc)
                               .isoformat(timespec="seconds") if "swiftlet" in vmms else None),
            "qemu": ver([QEMU, "--version"]) if QEMU else None,
            "qemu_package": ver(["dpkg-query", "-W", "-f=${Version}", "qemu-system-x86"]),
            "kvmtool": os.path.realpath(args.kvmtool) if args.kvmtool else None,
            "kvmtool_version": ver([args.kvmtool, "version"]) if args.kvmtool else None,
            "kvmtool_build": (open(os.path.join(os.path.dirname(os.path.realpath(args.kvmtool)), "SWIFTLET-BUILD.txt")).read()
                              if args.kvmtool and os.path.exists(os.path.join(os.path.dirname(os.path.realpath(args.kvmtool)), "SWIFTLET-BUILD.txt"))
                              else None),
            "loadavg_start": open("/proc/loadavg").read().split()[:3]}


# ---------------------------------------------------------------- progress
total = args.n * len(vmms) * len(KERNELS)
done = 0
t_start = time.monotonic()


def progress(label):
    w = 30
    fnum = int(w * done / max(1, total))
    el = time.monotonic() - t_start
    eta = "" if not done else f" eta {el / done * (total - done):4.0f}s"
    sys.stderr.write(f"\r\x1b[K[{'#' * fnum}{'.' * (w - fnum)}] {done}/{total} {el:5.0f}s{eta} {label}")
    sys.stderr.flush()


# ---------------------------------------------------------------- main
day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
base = args.out or f"benchmarks/results/{day}-boot-peers"
os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
facts = host_facts()
samples = []
loads = []
if args.resummarise:
    old = json.load(open(args.resummarise))
    samples, loads = old["samples"], old.get("loads") or [0.0]
    facts.update({k: v for k, v in old["host"].items() if k.startswith("loadavg")})
    args.n = old.get("n_per_vmm_and_kernel", args.n)
    total = 0
else:
    progress("starting")
for i in range(0 if args.resummarise else args.n):
    for kname, kdir in KERNELS:
        # Alternate run by run: Swiftlet first in the first round (its guest's
        # command line is the reference), then the order rotates.
        order = vmms[i % len(vmms):] + vmms[:i % len(vmms)]
        for vmm in order:
            progress(f"round {i + 1}: {vmm} on {kname}")
            loads.append(float(open("/proc/loadavg").read().split()[0]))
            s = sample(vmm, kname, kdir, i)
            samples.append(s)
            done += 1
            json.dump({"host": facts, "n_per_vmm_and_kernel": args.n, "loads": loads, "samples": samples},
                      open(base + ".partial.json", "w"))
            if not s["ok"]:
                sys.stderr.write(f"\nboot suite: {vmm} on {kname} round {i + 1} failed: {s['error']}\n")
            progress(f"{vmm} done")
sys.stderr.write("\n")
if not args.resummarise:
    facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
facts["loadavg_1min_before_each_boot"] = {"min": min(loads), "median": median(loads), "max": max(loads)}

rows = summarise(samples)
rat = ratios(rows)
fix, exits = {}, {}
for s in samples:
    if s["vmm"] == "swiftlet" and s.get("exits") is not None:
        fix.setdefault(s["kernel"], {})
        for k, v in (s.get("fixups") or {}).items():
            fix[s["kernel"]].setdefault(k, []).append(v)
        for k, v in s["exits"].items():
            if not k.startswith("fixup-"):
                exits.setdefault(s["kernel"], {}).setdefault(k, []).append(v)
swiftlet_boots = {k: sum(1 for s in samples if s["vmm"] == "swiftlet" and s["kernel"] == k and s.get("exits") is not None)
                  for k, _ in KERNELS}
cls = {}
for s in samples:
    if s["command_line"]:
        cls.setdefault(f"{s['kernel']}/{s['vmm']}", set()).add(s["command_line"])
same = {}
for kname, _ in KERNELS:
    seen = {tuple(sorted(strip_devices(c).split())) for key, v in cls.items() if key.startswith(kname + "/")
            for c in v}
    same[kname] = len(seen) == 1

result = {
    "suite": "boot-peers", "date": (old["date"] if args.resummarise and "date" in old else
                                    datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")),
    "n_per_vmm_and_kernel": args.n, "vmms": vmms, "kernels": [k for k, _ in KERNELS],
    "guest": {"mem_mib": args.mem, "cpus": args.cpus, "rootfs": ROOTFS + " (read-only)", "job": JOB},
    "host": facts,
    "command_lines_seen": {k: sorted(v) for k, v in cls.items()},
    "command_lines_equal_apart_from_device_declarations_and_word_order": same,
    "swiftlet_fixups_per_boot": {k: ({f: {"min": min(v), "max": max(v), "boots": len(v)} for f, v in d.items()}
                                     or {"total": 0, "boots": swiftlet_boots.get(k, 0),
                                         "meaning": "no fixup-* counter in any boot: Swiftlet completed no instruction for KVM's emulator"})
                                 for k, d in fix.items()},
    "swiftlet_exits_per_boot_median": {k: {e: median(v) for e, v in d.items()} for k, d in exits.items()},
    "figures": rows, "ratios": rat, "notes": notes + [
        "Every sample is one cold boot through the rootfs init running SWIFTLET_INIT_RUN=\"" + JOB + "\"; "
        "times are host monotonic ms from exec to the console line (pipe), read by this script.",
        "ratio_swiftlet_over_peer < 1 means Swiftlet is faster or smaller.",
        "ci95 is the distribution-free 95% confidence interval of the median (binomial order statistics).",
        "peak_rss_outside_guest_kib: /proc/PID/smaps sampled every 0.5 s, every mapping but guest RAM.",
        "first_kvm_run_ms is visible for Swiftlet only (--boot-timer).",
    ],
    "loads": loads,
    "samples": samples,
}
if args.restore:
    result["restore"] = {"status": "not implemented in this suite yet"}
json.dump(result, open(base + ".json", "w"), indent=1)

# ---------------------------------------------------------------- markdown
def fmt(v, u):
    if v is None:
        return "-"
    return f"{v / 1024:.2f} MiB" if u == "KiB" else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


md = [f"# Boot suite {result['date']}: Swiftlet against its peers", "",
      f"Host: {facts['cpu']}, {facts['cpus']} CPUs, kernel {facts['host_kernel']}, KVM: {facts['kvm']}. "
      f"Load average {' '.join(facts['loadavg_start'])} at start, {' '.join(facts['loadavg_end'])} at the end.",
      f"Guest: {args.mem} MiB, {args.cpus} vCPU, rootfs read-only, one-shot `{JOB}` via SWIFTLET_INIT_RUN. "
      f"N = {args.n} boots per VMM and kernel, VMMs alternated run by run.", ""]
for kname, kdir in KERNELS:
    md += [f"## Kernel `{kname}` ({os.path.basename(kdir)}, config sha256 "
           f"`{facts['kernels'][kname]['config_sha256'][:16]}`)", "",
           "Command lines equal apart from device declarations and word order: "
           f"{'yes' if same.get(kname) else 'NO (see JSON command_lines_seen)'}.", ""]
    if fix.get(kname) is not None or any(s["vmm"] == "swiftlet" and s["kernel"] == kname for s in samples):
        fk = fix.get(kname, {})
        md += ["Instructions Swiftlet completed in its VMM per boot (`--stats` fixup counters): " +
               (", ".join(f"{k} {min(v)}-{max(v)}" for k, v in fk.items()) if fk else "none (0 in every boot)") + ".", ""]
    hdr = "| figure | " + " | ".join(f"{v} median (p90) [95% CI]" for v in vmms) + " | " + \
          " | ".join(f"Swiftlet/{p}" for p in vmms if p != "swiftlet") + " |"
    md += [hdr, "|" + "---|" * (1 + len(vmms) + len([p for p in vmms if p != "swiftlet"]))]
    for fig in FIG_ORDER:
        cells = []
        anyv = False
        for v in vmms:
            r = next((x for x in rows if x["kernel"] == kname and x["vmm"] == v and x["figure"] == fig), None)
            if r:
                anyv = True
                cells.append(f"{fmt(r['median'], r['unit'])} ({fmt(r['p90'], r['unit'])}) "
                             f"[{fmt(r['ci95'][0], r['unit'])}, {fmt(r['ci95'][1], r['unit'])}]")
            else:
                cells.append("n/a")
        for p in [v for v in vmms if v != "swiftlet"]:
            ra = next((x for x in rat if x["kernel"] == kname and x["peer"] == p and x["figure"] == fig), None)
            cells.append(f"**{ra['ratio_swiftlet_over_peer']:.3f}**" if ra else "-")
        if anyv:
            md.append(f"| {FIG_LABEL[fig]} ({unit(fig)}) | " + " | ".join(cells) + " |")
    failed = [s for s in samples if s["kernel"] == kname and not s["ok"]]
    if failed:
        md += ["", "Failed boots: " + "; ".join(f"{s['vmm']} round {s['iter'] + 1}: {s['error']}" for s in failed)]
    md.append("")
md += ["Ratios are Swiftlet's median over the peer's: below 1, Swiftlet is faster or smaller. "
       "Times are ms from exec; see benchmarks/README.md for what compares on a nested-PVM host."]
md += [f"- {n}" for n in notes]
open(base + ".md", "w").write("\n".join(md) + "\n")

# ---------------------------------------------------------------- svg
PHASES = [("first_console_ms", "→ first console line", "#4e79a7"),
          ("run_init_ms", "→ Run /sbin/init", "#f28e2b"),
          ("init_first_output_ms", "→ init's first output", "#e15759"),
          ("true_done_ms", "→ /bin/true done", "#76b7b2"),
          ("uname_done_ms", "→ uname -a done", "#59a14f"),
          ("power_off_ms", "→ power-off line", "#edc948"),
          ("process_exit_ms", "→ process exit", "#b07aa1")]
bars = []
for kname, _ in KERNELS:
    for v in vmms:
        med = {}
        for fig, _, _ in PHASES:
            r = next((x for x in rows if x["kernel"] == kname and x["vmm"] == v and x["figure"] == fig), None)
            med[fig] = r["median"] if r else None
        bars.append((f"{v} / {kname}", med))
W, BH, L = 860, 30, 150
H = 80 + BH * len(bars) + 50
mx = max([m[f] or 0 for _, m in bars for f, _, _ in PHASES] + [1])
sx = lambda x: L + (W - L - 60) * x / mx
o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
     f'<rect width="{W}" height="{H}" fill="white"/>',
     f'<text x="10" y="18" font-size="13" font-weight="bold">Boot phases per VMM and kernel: medians of {args.n}, '
     f'ms from exec ({facts["kvm"].split(":")[0]})</text>']
for j, (_, name, col) in enumerate(PHASES):
    o.append(f'<rect x="{10 + j * 120}" y="30" width="10" height="10" fill="{col}"/>'
             f'<text x="{24 + j * 120}" y="39">{name}</text>')
for j, (lab, med) in enumerate(bars):
    y = 55 + j * BH
    o.append(f'<text x="10" y="{y + 15}">{lab}</text>')
    prev = 0.0
    for fig, name, col in PHASES:
        v = med.get(fig)
        if v is None:
            continue
        wdt = max(0.5, sx(v) - sx(prev))
        o.append(f'<rect x="{sx(prev):.1f}" y="{y}" width="{wdt:.1f}" height="{BH - 8}" fill="{col}">'
                 f'<title>{lab} {name}: {v:.0f} ms (+{v - prev:.0f})</title></rect>')
        prev = max(prev, v)
    o.append(f'<text x="{sx(prev) + 4:.1f}" y="{y + 15}">{prev / 1000:.1f} s</text>' if prev else
             f'<text x="{L + 4}" y="{y + 15}" fill="#a00">no successful boot</text>')
ya = 55 + BH * len(bars) + 2
for t in range(6):
    v = mx * t / 5
    o.append(f'<line x1="{sx(v):.1f}" y1="{ya}" x2="{sx(v):.1f}" y2="{ya + 4}" stroke="black"/>'
             f'<text x="{sx(v):.1f}" y="{ya + 16}" text-anchor="middle">{v / 1000:.0f} s</text>')
if "PVM" in facts["kvm"]:
    o.append(f'<text x="10" y="{H - 8}" fill="#555">Guest kernel emulated on this host (nested PVM): '
             f'guest-kernel phases are ~1000x hardware KVM; host-side CPU and RSS are real.</text>')
o.append("</svg>")
open(base + ".svg", "w").write("\n".join(o) + "\n")

if os.path.exists(base + ".partial.json") and not args.resummarise:
    os.unlink(base + ".partial.json")
print("\n".join(md))
print(f"\nwrote {base}.json {base}.md {base}.svg")
if args.baseline:
    sys.exit(gate.report(result, json.load(open(args.baseline)), args.max_regression, args.baseline))
