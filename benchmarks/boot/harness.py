"""What the boot benchmarks (suite.py, restore.py, bench.py) share: where
Swiftlet and the images are, the host facts they record, and running a VMM
while watching its output line by line."""
import os, subprocess, threading, time

SWIFTLET = os.environ.get("SWIFTLET") or ".build/release/swiftlet"
CACHE = os.environ.get("SWIFTLET_CACHE") or os.path.expanduser("~/.cache/swiftlet")
ROOTFS = os.path.realpath(os.path.join(CACHE, "default", "rootfs.ext4"))


def cpu_and_kvm():
    """The CPU model, and which KVM this is: nested PVM (the guest kernel
    emulated), hardware, or unknown."""
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    if os.path.exists("/sys/module/kvm_pvm"):
        kvm = "nested PVM (kvm_pvm): guest kernel runs through KVM's instruction emulator"
    elif "vmx" in flags or "svm" in flags:
        kvm = "hardware (vmx/svm)" + (" under a hypervisor" if "hypervisor" in flags else "")
    else:
        kvm = "unknown (no vmx/svm, no kvm_pvm)"
    return cpu, kvm


def run_watched(argv, timeout, on_line, on_poll=None):
    """Runs argv and reads its stdout and stderr line by line. For each line,
    `on_line(res, key, line, ms)` runs under one lock (`key` is "out" or
    "err", `ms` the time since exec, `res` the result being built); when it
    returns True (a failure seen), the process is killed 0.5 s later, so that
    what follows the failure (a register dump) still arrives. `on_poll(pid)`
    runs every 5 ms while the process lives. Past `timeout` seconds it is
    killed. Returns `res` with out, err, rc, exit_ms, timed_out, user_ms,
    sys_ms and maxrss_kib (the rusage of the process)."""
    t0 = time.monotonic_ns()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    res = {"out": [], "err": []}
    lock = threading.Lock()

    def reader(stream, key):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            now = (time.monotonic_ns() - t0) / 1e6
            with lock:
                res[key].append(line)
                if on_line(res, key, line, now):
                    # Not once it has exited: its pid may be someone else's by then.
                    threading.Timer(0.5, lambda: res.get("rc") is None and kill(p.pid)).start()

    ts = [threading.Thread(target=reader, args=(p.stdout, "out"), daemon=True),
          threading.Thread(target=reader, args=(p.stderr, "err"), daemon=True)]
    for t in ts:
        t.start()
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            kill(p.pid)
            pid, status, ru = os.wait4(p.pid, 0)
            break
        if on_poll:
            on_poll(p.pid)
        time.sleep(0.005)
    exit_ms = (time.monotonic_ns() - t0) / 1e6
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in ts:
        t.join(2)
    res.update(rc=p.returncode, exit_ms=round(exit_ms, 1), timed_out=timed_out,
               user_ms=round(ru.ru_utime * 1e3, 1), sys_ms=round(ru.ru_stime * 1e3, 1), maxrss_kib=ru.ru_maxrss)
    return res


def kill(pid):
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
