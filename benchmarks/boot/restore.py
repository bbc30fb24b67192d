#!/usr/bin/env python3
"""Restore side by side: time from exec to the first output of a job, from a
restored guest, Swiftlet against QEMU (benchmarks/README.md, "Restore side by
side"). kvmtool has no snapshot/restore, so it is not in this comparison.

Swiftlet: `swiftlet run --kernel K --rootfs R -- uname -a`, restored from its
cached snapshot of that kernel and root (created first, outside the timing).
QEMU: the same kernel and root booted once with init running
`echo ready; read x; uname -a` (the shell waits on the serial console), then
`stop` and `migrate` to a file over QMP; each sample starts QEMU with the same
flags plus `-incoming exec:cat FILE`, sends newlines to the serial console
until the job prints, and times the first line of `uname -a`.
"""
import argparse, datetime, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
import harness  # noqa: E402
ap = argparse.ArgumentParser(description="Restore side by side: Swiftlet run vs QEMU -incoming")
ap.add_argument("--kernel", default="peers", help="a name under the cache or a directory (default peers)")
ap.add_argument("-n", type=int, default=10, help="restores per VMM (default 10)")
ap.add_argument("--mem", type=int, default=128)
ap.add_argument("--out", help="output prefix (default benchmarks/results/<date>-boot-restore)")
ap.add_argument("--timeout", type=float, default=120)
ap.add_argument("--qemu-no-thp", action="store_true",
                help="diagnostic: run QEMU with transparent huge pages off (prctl PR_SET_THP_DISABLE, "
                     "through a python3 wrapper that adds its own start-up to QEMU's times)")
args = ap.parse_args()

BIN, CACHE, ROOTFS = harness.SWIFTLET, harness.CACHE, harness.ROOTFS
KDIR = os.path.dirname(os.path.realpath(os.path.join(
    args.kernel if os.path.isdir(args.kernel) else os.path.join(CACHE, args.kernel), "vmlinux")))
QEMU = shutil.which("qemu-system-x86_64")
for need, what in ((os.access(BIN, os.X_OK), f"no {BIN} (set SWIFTLET)"), (QEMU, "no qemu-system-x86_64"),
                   (os.path.exists(os.path.join(KDIR, "vmlinux")), f"no vmlinux in {KDIR}")):
    if not need:
        sys.exit(f"restore: {what}")

JOB = "uname -a"
BASE = ("console=ttyS0 reboot=k,panic_warm panic=-1 8250.nr_uarts=1 i8042.noaux i8042.nomux "
        "i8042.nopnp i8042.dumbkbd tsc=reliable no_timer_check swiotlb=noforce root=/dev/vda "
        "rootfstype=ext4 ro clearcpuid=154,131,141,145,151,158,288,297,298,306,308,311,312,514,517,"
        "528,534,580,197,59,425 swiftlet_pvm_syscall clocksource=kvm-clock")


def base_cmdline():
    """The command line Swiftlet's guest boots with on this host, from a
    previous suite result if there is one; else the development host's."""
    import glob
    for f in sorted(glob.glob("benchmarks/results/*-boot-peers.json"), reverse=True):
        try:
            r = json.load(open(f))
            for k, v in r.get("command_lines_seen", {}).items():
                if k.endswith("/qemu") and v:
                    return re.sub(r'\s*SWIFTLET_INIT_RUN="[^"]*"|\s*virtio_mmio\.device=\S+', "", v[0]).strip()
        except (OSError, ValueError):
            pass
    return BASE


CMDLINE = base_cmdline() + ' SWIFTLET_INIT_RUN="echo swiftlet-bench: ready;read x;' + JOB + '"'
tmp = tempfile.mkdtemp(prefix="swiftlet-restore-")
STATE = os.path.join(tmp, "qemu-state")
QMP = os.path.join(tmp, "qmp.sock")
# Swiftlet's snapshot goes to a cache of this run's own (removed at the end),
# unless SWIFTLET_SNAPSHOT_CACHE names one.
os.environ.setdefault("SWIFTLET_SNAPSHOT_CACHE", os.path.join(tmp, "snapshots"))


NO_THP = [sys.executable, "-c", "import ctypes, os, sys; ctypes.CDLL(None).prctl(41, 1, 0, 0, 0); "
          "os.execv(sys.argv[1], sys.argv[1:])"] if args.qemu_no_thp else []


def qemu_argv(extra=()):
    return [*NO_THP, QEMU, "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on,acpi=off,auto-kernel-cmdline=on",
            "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", str(args.mem), "-smp", "1",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-serial", "stdio",
            "-device", "i8042", "-kernel", os.path.join(KDIR, "vmlinux"), "-append", CMDLINE,
            "-drive", f"id=root,file={ROOTFS},format=raw,if=none,readonly=on",
            "-device", "virtio-blk-device,drive=root", *extra]


def qmp(cmds):
    s = socket.socket(socket.AF_UNIX)
    s.connect(QMP)
    f = s.makefile("rw")
    f.readline()
    out = []
    for c in ["qmp_capabilities"] + cmds:
        msg = c if isinstance(c, dict) else {"execute": c}
        f.write(json.dumps(msg) + "\n")
        f.flush()
        while True:
            line = json.loads(f.readline())
            if "return" in line or "error" in line:
                out.append(line)
                break
    s.close()
    return out


def prepare_qemu():
    p = subprocess.Popen(qemu_argv(["-qmp", f"unix:{QMP},server=on,wait=off"]), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    for raw in iter(p.stdout.readline, b""):
        if raw.startswith(b"swiftlet-bench: ready"):  # not the kernel's echo of its command line
            break
        if time.monotonic() - t0 > args.timeout * 2:
            p.kill()
            sys.exit("restore: QEMU guest never got ready")
    boot_s = time.monotonic() - t0
    time.sleep(5)  # let the shell block in read(2) on the console
    threading.Thread(target=lambda: [None for _ in iter(p.stdout.readline, b"")], daemon=True).start()
    # Migrated running (not after `stop`): the destination then resumes by itself
    # once the state is loaded, as a source that was running does.
    qmp([{"execute": "migrate", "arguments": {"uri": f"exec:cat > {STATE}"}}])
    while True:
        st = qmp(["query-migrate"])[-1]["return"].get("status")
        if st in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    qmp(["quit"])
    p.wait(30)
    if st != "completed":
        sys.exit(f"restore: QEMU migration to file {st}")
    return {"boot_to_ready_s": round(boot_s, 1), "state_bytes": os.path.getsize(STATE)}


def timed(argv, first_output, feed_newlines=False):
    t0 = time.monotonic_ns()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    r = {"first_output_ms": None, "out": [], "err": []}
    stop = threading.Event()

    def feeder():
        while not stop.is_set():
            try:
                p.stdin.write(b"\n")
                p.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                return
            stop.wait(0.02)

    def reader(stream, key):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if key == "out" and r["first_output_ms"] is None and first_output(line):
                r["first_output_ms"] = round((time.monotonic_ns() - t0) / 1e6, 1)
                stop.set()
            r[key].append(line)

    if feed_newlines:
        threading.Thread(target=feeder, daemon=True).start()
    else:
        p.stdin.close()
    ts = [threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
          threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + args.timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, ru = os.wait4(p.pid, 0)
            break
        time.sleep(0.002)
    stop.set()
    for t in ts:
        t.join(2)
    r.update(rc=os.waitstatus_to_exitcode(status), process_exit_ms=round((time.monotonic_ns() - t0) / 1e6, 1),
             user_ms=round(ru.ru_utime * 1e3, 1), sys_ms=round(ru.ru_stime * 1e3, 1))
    return r


def med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else None


sw_argv = [BIN, "run", "--kernel", os.path.join(KDIR, "vmlinux"), "--rootfs", ROOTFS, "--mem", str(args.mem),
           "--timings", "--", *JOB.split()]
result = {"suite": "boot-restore", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "kernel_dir": KDIR, "rootfs": ROOTFS, "job": JOB, "n": args.n, "qemu_cmdline": CMDLINE,
          "qemu_transparent_huge_pages": "off (diagnostic)" if args.qemu_no_thp else "as QEMU sets it (MADV_HUGEPAGE on guest RAM)",
          "loadavg_start": open("/proc/loadavg").read().split()[:3]}
try:
    sys.stderr.write("restore: preparing Swiftlet's snapshot (a boot, unless cached)\n")
    snap = subprocess.run([BIN, "snapshot", "cached", "--kernel", os.path.join(KDIR, "vmlinux"), "--rootfs", ROOTFS,
                           "--mem", str(args.mem)], capture_output=True, text=True, timeout=args.timeout * 3)
    result["swiftlet_snapshot"] = snap.stdout.strip() or snap.stderr.strip()
    sys.stderr.write("restore: booting QEMU once and migrating it to a file\n")
    result["qemu_prepare"] = prepare_qemu()
    samples = []
    for i in range(args.n):
        for vmm in (("swiftlet", "qemu") if i % 2 == 0 else ("qemu", "swiftlet")):
            sys.stderr.write(f"\r\x1b[Krestore: {i + 1}/{args.n} {vmm}")
            if vmm == "swiftlet":
                r = timed(sw_argv, lambda l: l.startswith("Linux "))
                t = dict(re.findall(r"([a-z-]+)=([0-9.]+)", next((l for l in r["err"] if "first-output-ms" in l), "")))
                s = {"vmm": vmm, "iter": i, "rc": r["rc"], "first_output_ms": r["first_output_ms"],
                     "process_exit_ms": r["process_exit_ms"], "user_ms": r["user_ms"], "sys_ms": r["sys_ms"],
                     "swiftlet_timings": t}
            else:
                r = timed(qemu_argv(["-incoming", f"exec:cat {STATE}"]), lambda l: l.startswith("Linux "),
                          feed_newlines=True)
                s = {"vmm": vmm, "iter": i, "rc": r["rc"], "first_output_ms": r["first_output_ms"],
                     "process_exit_ms": r["process_exit_ms"], "user_ms": r["user_ms"], "sys_ms": r["sys_ms"]}
            if r["first_output_ms"] is None:
                s["error"] = (r["err"] or r["out"] or ["no output"])[-1]
            samples.append(s)
    sys.stderr.write("\n")
finally:
    shutil.rmtree(tmp, ignore_errors=True)

summary = {}
for vmm in ("swiftlet", "qemu"):
    ss = [s for s in samples if s["vmm"] == vmm and s["first_output_ms"] is not None]
    summary[vmm] = {k: med([s[k] for s in ss]) for k in ("first_output_ms", "process_exit_ms", "user_ms", "sys_ms")}
    summary[vmm]["n"] = len(ss)
    summary[vmm]["p90_first_output_ms"] = (sorted(s["first_output_ms"] for s in ss)[int(0.9 * (len(ss) - 1))]
                                           if ss else None)
ratio = {k: (round(summary["swiftlet"][k] / summary["qemu"][k], 4)
             if summary["swiftlet"][k] and summary["qemu"][k] else None)
         for k in ("first_output_ms", "process_exit_ms", "user_ms", "sys_ms")}
result.update(summary=summary, ratio_swiftlet_over_qemu=ratio, samples=samples,
              loadavg_end=open("/proc/loadavg").read().split()[:3])
day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
base = args.out or f"benchmarks/results/{day}-boot-restore"
json.dump(result, open(base + ".json", "w"), indent=1)
md = [f"# Restore side by side {result['date']}", "",
      f"Job `{JOB}` from a restored guest, kernel `{os.path.basename(KDIR)}`, {args.mem} MiB, 1 vCPU; "
      f"N = {args.n} each, alternated. Medians (ms from exec); ratio Swiftlet/QEMU.", "",
      "| figure | Swiftlet `run` (snapshot) | QEMU `-incoming` (migration file) | Swiftlet/QEMU |", "|---|---|---|---|"]
for k, lab in (("first_output_ms", "exec → job's first output"), ("process_exit_ms", "exec → process exit"),
               ("user_ms", "user CPU"), ("sys_ms", "system CPU")):
    f = lambda v: "-" if v is None else f"{v:.1f}"
    md.append(f"| {lab} | {f(summary['swiftlet'][k])} | {f(summary['qemu'][k])} | "
              f"**{'-' if ratio[k] is None else f'{ratio[k]:.3f}'}** |")
md += ["", f"QEMU state file: {result['qemu_prepare']['state_bytes']} bytes; Swiftlet snapshot: "
           f"{result['swiftlet_snapshot']}.", "kvmtool: no snapshot/restore, not compared."]
open(base + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
