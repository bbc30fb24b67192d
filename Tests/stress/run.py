#!/usr/bin/env python3
"""Stress and soak harness for `swiftlet run` and `swiftlet boot`.

Usage: Tests/stress/run.py --profile short|long|audit [--swiftlet PATH]
                           [--only NAME,...] [--json FILE] [--seed N]

Each case prints `PASS name: figures` or `FAIL name: why`; the last line is
`N passed, N failed`, and the exit status is 1 when anything failed. Standard
library only. See Tests/stress/README.md.
"""

import argparse
import ctypes
import hashlib
import json
import os
import pty
import random
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1 << 20

# Sizes and counts per profile. `audit` is `short` under --seccomp log.
PROFILES = {
    "short": dict(seccomp="strict", flood=4 * MiB, both=2 * MiB, stdin=4 * MiB,
                  signals=10, rapid=30, console_s=20, console_sigterm=False, oom_kill=False),
    "long": dict(seccomp="strict", flood=64 * MiB, both=64 * MiB, stdin=64 * MiB,
                 signals=50, rapid=200, console_s=30, console_sigterm=True, oom_kill=True),
}
PROFILES["audit"] = dict(PROFILES["short"], seccomp="log")

# Guest throughput here is 0.25-0.6 MB/s (nested KVM emulates the guest
# kernel's copies); timeouts allow for 0.1 MB/s plus the restore.
MIN_RATE = 100_000


class CaseFail(Exception):
    pass


class Ctx:
    """What every case needs: the binary, the profile, and the children it started."""

    def __init__(self, swiftlet, profile, seed, env):
        self.swiftlet = swiftlet
        self.profile = profile
        self.P = PROFILES[profile]
        self.seed, self.rng = seed, random.Random(seed)
        self.env = env
        self.children = []      # live Popen objects, killed after each case
        self.spawned = set()    # every swiftlet pid this harness started

    def argv(self, sub, opts, cmd=()):
        a = [self.swiftlet, sub, "--seccomp", self.P["seccomp"], *opts]
        return a + ["--", *cmd] if sub == "run" else a

    def spawn(self, argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=self.env, close_fds=True)
        self.children.append(p)
        self.spawned.add(p.pid)
        return p

    def kill_all(self):
        for p in self.children:
            if p.returncode is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
                wait_exit(p, 10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f:
                    try:
                        f.close()
                    except OSError:
                        pass
        self.children.clear()


# ---------------------------------------------------------------- processes

def wait_exit(p, timeout):
    """Waits up to `timeout` s for child p; returns (exit code, rusage), exit
    code -N when it died of signal N, or None on timeout. A pidfd makes the
    wait exact (the signals case times the stop) without polling."""
    if p.returncode is not None:
        return p.returncode, None
    try:
        fd = os.pidfd_open(p.pid)
    except ProcessLookupError:
        return None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(max(0, timeout) * 1000):
            return None
    finally:
        os.close(fd)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru


class FdPoller(threading.Thread):
    """Peak number of open fds of a process, and its peak RSS (VmHWM), sampled
    every 10 ms while it lives. wait4's ru_maxrss is no peak RSS of the VMM:
    exec carries the forking process's high-water mark over, so after a flood
    case has grown this harness, every child reported the harness's size."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.hwm_kib, self.stop = pid, 0, None, threading.Event()
        self.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, len(os.listdir(f"/proc/{self.pid}/fd")))
                with open(f"/proc/{self.pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            self.hwm_kib = max(self.hwm_kib or 0, int(line.split()[1]))
            except (OSError, ValueError):
                pass
            self.stop.wait(0.01)

    def finish(self):
        self.stop.set()
        self.join()
        return self.peak


class Drain(threading.Thread):
    """Reads a pipe to EOF in the background, keeping the bytes (or only counting them)."""

    def __init__(self, f, keep=True):
        super().__init__(daemon=True)
        self.f, self.keep, self.data, self.count, self.first = f, keep, bytearray(), 0, None
        self.tail = b""
        self.start()

    def run(self):
        fd = self.f.fileno()
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                return
            if not b:
                return
            if self.first is None:
                self.first = time.monotonic()
            self.count += len(b)
            if self.keep:
                self.data += b
            else:
                self.tail = (self.tail + b)[-256:]


class Result:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def run_job(ctx, cmd, opts=(), stdin_data=None, timeout=60, poll_fds=False):
    """Runs `swiftlet run [opts] -- cmd`, feeding stdin_data (bytes, or None
    for /dev/null) and collecting both streams; kills it after `timeout` s."""
    p = ctx.spawn(ctx.argv("run", opts, cmd), stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL)
    t0 = time.monotonic()
    fds = FdPoller(p.pid) if poll_fds else None
    bufs = {p.stdout.fileno(): bytearray(), p.stderr.fileno(): bytearray()}
    first, eof = {}, {}
    names = {p.stdout.fileno(): "stdout", p.stderr.fileno(): "stderr"}
    poller = select.poll()
    for fd in bufs:
        poller.register(fd, select.POLLIN)
    sent, stdin_broken, stdin_closed_at, win = 0, False, None, None
    if stdin_data is not None:
        win = p.stdin.fileno()
        os.set_blocking(win, False)
        poller.register(win, select.POLLOUT)
        view = memoryview(stdin_data)
    open_reads = len(bufs)
    deadline = t0 + timeout
    try:
        while open_reads or win is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CaseFail(f"timed out after {timeout} s ({argv_str(cmd)}); "
                               f"got stdout {len(bufs[p.stdout.fileno()])} B, stdin sent {sent} B")
            for fd, ev in poller.poll(min(left, 1) * 1000):
                if fd == win:
                    try:
                        sent += os.write(win, view[sent:sent + 65536])
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        stdin_broken = True  # swiftlet closed stdin before taking it all
                    if stdin_broken or sent == len(stdin_data):
                        poller.unregister(win)
                        p.stdin.close()
                        win, stdin_closed_at = None, time.monotonic()
                    continue
                b = os.read(fd, 65536)
                now = time.monotonic()
                if b:
                    first.setdefault(names[fd], now)
                    bufs[fd] += b
                else:
                    eof[names[fd]] = now
                    poller.unregister(fd)
                    open_reads -= 1
        w = wait_exit(p, deadline - time.monotonic())
        if w is None:
            raise CaseFail(f"timed out after {timeout} s waiting for exit after EOF ({argv_str(cmd)})")
    finally:
        peak_fds = fds.finish() if fds else None
        hwm_kib = fds.hwm_kib if fds else None
    t1 = time.monotonic()
    rc, ru = w
    err = bytes(bufs[p.stderr.fileno()])
    if ctx.P["seccomp"] == "log":
        # Log mode adds its own report (and a kmsg warning) to stderr; the
        # audit reads the report from SWIFTLET_SECCOMP_LOG_FILE instead.
        err = re.sub(rb"(?m)^swiftlet: (seccomp-log: |warning: --seccomp=log ).*\n", b"", err)
    return Result(rc=rc, out=bytes(bufs[p.stdout.fileno()]), err=err, wall=t1 - t0, t0=t0,
                  maxrss_kib=ru.ru_maxrss if ru else None, hwm_kib=hwm_kib, peak_fds=peak_fds, first=first, eof=eof,
                  sent=sent, stdin_closed_at=stdin_closed_at)


def argv_str(cmd):
    return " ".join(cmd)


def expect_status(r, want, what):
    """A clean exit with status `want` (an int or a set)."""
    wants = want if isinstance(want, (set, tuple)) else {want}
    if r.rc in wants:
        return
    if r.rc < 0:
        why = f"swiftlet itself died of signal {-r.rc} ({signal.Signals(-r.rc).name})"
    elif r.rc == 125:
        why = "status 125 (swiftlet failed)"
    else:
        why = f"status {r.rc}, expected {'/'.join(map(str, sorted(wants)))}"
    raise CaseFail(f"{what}: {why}; stderr: {tail(r.err)}")


def tail(b, n=300):
    s = b[-n:].decode("utf-8", "replace").strip()
    return repr(s) if s else "(empty)"


def compare(got, want, stream):
    if got == want:
        return
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise CaseFail(f"{stream} differs at byte {n}: got {len(got)} B, expected {len(want)} B; "
                   f"got {got[max(0, n - 20):n + 20]!r}, expected {want[max(0, n - 20):n + 20]!r}")


def rate(nbytes, t_from, t_to):
    return int(nbytes / max(t_to - t_from, 1e-6))


def stream_rate(r, stream, nbytes):
    """Bytes/s of one output stream, from its first byte to its EOF (not the restore)."""
    if stream not in r.first:
        return 0
    return rate(nbytes, r.first[stream], r.eof.get(stream, r.t0 + r.wall))


# ---------------------------------------------------------------- seq output

def seq_bytes(n):
    return ("\n".join(map(str, range(1, n + 1))) + "\n").encode()


def seq_len(n):
    total, d, lo = 0, 1, 1
    while lo <= n:
        hi = min(n, lo * 10 - 1)
        total += (hi - lo + 1) * (d + 1)
        d, lo = d + 1, lo * 10
    return total


def seq_n_for(nbytes):
    """The N whose `seq 1 N` output is closest to (not over) nbytes."""
    lo, hi = 1, nbytes
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if seq_len(mid) <= nbytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def job_timeout(nbytes):
    return 60 + nbytes / MIN_RATE


# ---------------------------------------------------------------- leftovers

def proc_status(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    except OSError:
        return None


def descends_from_us(pid):
    me = os.getpid()
    for _ in range(64):
        st = proc_status(pid)
        if not st:
            return False
        pid = int(st["PPid"])
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


class Leftovers:
    """What a case must not leave behind: /tmp entries named swiftlet*, the
    abstract `@swiftlet-PID-...` sockets of runs we started, and swiftlet
    processes. Other engineers may run swiftlet on this machine meanwhile:
    a socket counts only when its name carries one of our pids, a process
    only when it descends from the harness (a child subreaper, so an
    orphaned swiftlet would be re-parented to us rather than to init), and
    /tmp/swiftlet-test-* are the Swift test suite's (Tests/SwiftletCLITests),
    a name swiftlet itself never uses."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.tmp, self.socks, self.procs = self.snap()

    def snap(self):
        tmp = {n for n in os.listdir("/tmp") if n.startswith("swiftlet") and not n.startswith("swiftlet-test-")}
        with open("/proc/net/unix") as f:
            socks = {line.split()[-1] for line in f if "@swiftlet-" in line}
        procs = set()
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/comm") as f:
                        if f.read().strip() == "swiftlet":
                            procs.add(int(d))
                except OSError:
                    pass
        return tmp, socks, procs

    def problems(self):
        tmp, socks, procs = self.snap()
        out = []
        new_tmp = sorted(tmp - self.tmp)
        if new_tmp:
            out.append("new in /tmp: " + ", ".join(new_tmp))
        ours = []
        for s in sorted(socks - self.socks):
            m = re.match(r"@swiftlet-(\d+)-", s)
            if not m or int(m.group(1)) in self.ctx.spawned:
                ours.append(s)
        if ours:
            out.append("abstract sockets left: " + ", ".join(ours))
        alive = []
        for pid in sorted(procs - self.procs):
            st = proc_status(pid)
            if st and not st.get("State", "").startswith("Z") and descends_from_us(pid):
                alive.append(pid)
        if alive:
            out.append("swiftlet processes left alive: " + ", ".join(map(str, alive)))
        return out

    def check(self, grace=3.0):
        """Problems still there after `grace` s (teardown may lag the exit a little)."""
        deadline = time.monotonic() + grace
        while True:
            probs = self.problems()
            if not probs or time.monotonic() >= deadline:
                return probs
            time.sleep(0.1)


def reap_orphans(ctx):
    """Kills and reaps processes re-parented to us (we are a subreaper)."""
    me, tracked = os.getpid(), {p.pid for p in ctx.children}
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in tracked:
            continue
        st = proc_status(d)
        if st and int(st.get("PPid", 0)) == me:
            pid = int(d)
            try:
                if not st["State"].startswith("Z"):
                    os.kill(pid, signal.SIGKILL)
                for _ in range(100):  # bounded: never hang on a stuck process
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        break
                    time.sleep(0.05)
            except (ProcessLookupError, ChildProcessError):
                pass


# ---------------------------------------------------------------- cases

def flood_one(ctx, stream):
    """`seq 1 N` (~4/64 MiB) on `stream`, byte-exact against Python's; the other stream stays empty."""
    n = seq_n_for(ctx.P["flood"])
    want = seq_bytes(n)
    command = f"seq 1 {n}" if stream == "stdout" else f"seq 1 {n} >&2"
    r = run_job(ctx, ["sh", "-c", command], timeout=job_timeout(len(want)))
    expect_status(r, 0, command)
    got, other = (r.out, r.err) if stream == "stdout" else (r.err, r.out)
    compare(got, want, stream)
    compare(other, b"", "stderr" if stream == "stdout" else "stdout")
    return {"bytes": len(want), f"{stream}_Bps": stream_rate(r, stream, len(want)), "wall_s": r.wall}


def case_flood_stdout(ctx):
    """The flood on stdout."""
    return flood_one(ctx, "stdout")


def case_flood_stderr(ctx):
    """The same flood on stderr."""
    return flood_one(ctx, "stderr")


def case_flood_both(ctx):
    """Two cats at once, one per stream, of one seq's output; each byte-exact.

    The data is written first, by one process: two seqs running at once
    corrupt each other's output now and then on nested PVM (a guest user
    process reads another's thread-local state after a context switch:
    busybox rodata such as `0.000000uzn:+vxs:` turns up in a stream), a
    fault of the guest's CPU state, not of the output path it measures.
    """
    n = seq_n_for(ctx.P["both"])
    want = seq_bytes(n)
    # On a tmpfs: the 32 MiB root drive cannot hold the long profile's 64 MiB
    # (seq stopped at 28 MB with ENOSPC), so that one gets a 256 MiB guest.
    # `&&`: a failed write fails the job, not a short stream.
    size_kib = len(want) // 1024 + 1024
    opts = ("--mem", "256") if len(want) > 16 << 20 else ()
    script = (f"mount -t tmpfs -o size={size_kib}k tmpfs /tmp && seq 1 {n} > /tmp/both && "
              "{ cat /tmp/both & cat /tmp/both >&2; wait; }")
    r = run_job(ctx, ["sh", "-c", script], opts=opts, timeout=job_timeout(3 * len(want)) + 120)
    expect_status(r, 0, "seq, then two cats")
    compare(r.out, want, "stdout")
    compare(r.err, want, "stderr")
    return dict(bytes_each=len(want), stdout_Bps=stream_rate(r, "stdout", len(want)),
                stderr_Bps=stream_rate(r, "stderr", len(want)), total_Bps=rate(2 * len(want), r.t0, r.t0 + r.wall),
                wall_s=r.wall)


def case_stdin_sha256(ctx):
    """Random bytes through stdin into sha256sum; the digest must be hashlib's."""
    data = ctx.rng.randbytes(ctx.P["stdin"])
    r = run_job(ctx, ["sha256sum"], stdin_data=data, timeout=job_timeout(len(data)))
    expect_status(r, 0, "sha256sum")
    if r.sent != len(data):
        raise CaseFail(f"swiftlet stopped reading stdin after {r.sent} of {len(data)} B")
    want = hashlib.sha256(data).hexdigest()
    got = r.out.split()[0].decode() if r.out.split() else ""
    if got != want:
        raise CaseFail(f"digest {got!r} (stdout {tail(r.out)}), expected {want}")
    # Includes the restore (~1 s): the pipe takes the first 64 KiB at once.
    return dict(bytes=len(data), stdin_Bps=rate(len(data), r.t0, r.stdin_closed_at), wall_s=r.wall)


def case_slow_reader(ctx):
    """~1 MiB of seq read in 16 KiB reads with 20 ms sleeps; byte-exact."""
    n = seq_n_for(1 * MiB)
    want = seq_bytes(n)
    timeout = job_timeout(len(want)) + len(want) / 16384 * 0.02
    p = ctx.spawn(ctx.argv("run", (), ["seq", "1", str(n)]))
    err = Drain(p.stderr)
    t0 = time.monotonic()
    got, fd, first = bytearray(), p.stdout.fileno(), None
    while True:
        left = t0 + timeout - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise CaseFail(f"timed out after {timeout:.0f} s with {len(got)} B read")
        b = os.read(fd, 16384)
        if not b:
            break
        first = first or time.monotonic()
        got += b
        time.sleep(0.02)  # a slow consumer: swiftlet must hold back, not drop or buffer without bound
    t_eof = time.monotonic()
    w = wait_exit(p, t0 + timeout - time.monotonic())
    if w is None:
        raise CaseFail("no exit after stdout EOF")
    err.join(5)
    r = Result(rc=w[0], err=bytes(err.data))
    expect_status(r, 0, f"seq 1 {n}")
    compare(bytes(got), want, "stdout")
    return dict(bytes=len(want), stdout_Bps=rate(len(want), first or t0, t_eof), wall_s=time.monotonic() - t0)


def case_early_close(ctx):
    """A reader that closes stdout after 10 bytes: the job dies of SIGPIPE (141) within 30 s."""
    p = ctx.spawn(ctx.argv("run", (), ["seq", "1", "100000000"]))
    err = Drain(p.stderr)
    fd = p.stdout.fileno()
    got = b""
    deadline = time.monotonic() + 60
    while len(got) < 10:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise CaseFail(f"no output within 60 s (got {got!r})")
        b = os.read(fd, 10 - len(got))
        if not b:
            break
        got += b
    p.stdout.close()
    closed = time.monotonic()
    w = wait_exit(p, 30)
    if w is None:
        raise CaseFail("still running 30 s after its stdout was closed")
    stop = time.monotonic() - closed
    err.join(5)
    if got != b"1\n2\n3\n4\n5\n"[:10]:
        raise CaseFail(f"first bytes {got!r}")
    expect_status(Result(rc=w[0], err=bytes(err.data)), 141, "seq into a closed stdout")
    return dict(stop_s=stop)


def case_concurrent(ctx):
    """16 runs at once, each with its own exact output and status 0."""
    n, count = 20000, 16
    base = seq_bytes(n)
    procs = [ctx.spawn(ctx.argv("run", (), ["sh", "-c", f"seq 1 {n}; echo id-{k}"])) for k in range(count)]
    t0 = time.monotonic()
    drains = [(Drain(p.stdout), Drain(p.stderr)) for p in procs]
    timeout = 60 + count * 15
    bad = []
    for k, (p, (out, err)) in enumerate(zip(procs, drains)):
        w = wait_exit(p, t0 + timeout - time.monotonic())
        if w is None:
            raise CaseFail(f"run {k} still running after {timeout} s")
        out.join(10)
        err.join(10)
        try:
            expect_status(Result(rc=w[0], err=bytes(err.data)), 0, f"run {k}")
            compare(bytes(out.data), base + f"id-{k}\n".encode(), f"run {k} stdout")
        except CaseFail as e:
            bad.append(str(e))
    if bad:
        raise CaseFail(f"{len(bad)} of {count} wrong; first: {bad[0]}")
    return dict(runs=count, wall_s=time.monotonic() - t0)


def case_signals(ctx):
    """SIGINT/TERM/HUP to `run` at a random moment: status 0 or 128+N, stopped within 5 s."""
    n = 100000
    want = seq_bytes(n)
    sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
    stops = {s.name: [] for s in sigs}
    outcomes = {}
    with tempfile.TemporaryDirectory(prefix="stress-signals-") as d:
        for i in range(ctx.P["signals"]):
            path = os.path.join(d, f"out{i}")
            with open(path, "wb") as out:
                p = ctx.spawn(ctx.argv("run", (), ["sh", "-c", f"seq 1 {n}; sleep 5"]), stdout=out)
            err = Drain(p.stderr)
            delay, sig = ctx.rng.uniform(0, 3), ctx.rng.choice(sigs)
            w = wait_exit(p, delay)
            if w is None:
                p.send_signal(sig)
                sent = time.monotonic()
                w = wait_exit(p, 30)
                if w is None:
                    raise CaseFail(f"#{i}: {sig.name} after {delay:.2f} s: still running 30 s later")
                stop = time.monotonic() - sent
                stops[sig.name].append(stop)
                if stop > 5:
                    raise CaseFail(f"#{i}: {sig.name} after {delay:.2f} s: took {stop:.2f} s to stop")
            err.join(5)
            rc = w[0]
            if rc == -sig:
                # Killed by the signal's default action before installing its
                # handlers: a shell sees 128+N all the same.
                rc = 128 + sig
                outcomes["default-action"] = outcomes.get("default-action", 0) + 1
            expect_status(Result(rc=rc, err=bytes(err.data)), {0, 128 + sig}, f"#{i}: {sig.name} after {delay:.2f} s")
            outcomes[rc] = outcomes.get(rc, 0) + 1
            with open(path, "rb") as f:
                got = f.read()
            # Output must be exactly seq's, or a prefix of it when stopped.
            compare(got, want if rc == 0 else want[:len(got)], f"#{i} stdout")
    figs = dict(seed=ctx.seed, outcomes=",".join(f"{k}x{v}" for k, v in outcomes.items()))
    for name, ts in stops.items():
        if ts:
            figs[f"{name}_n"] = len(ts)
            figs[f"{name}_stop_max_s"] = max(ts)
            figs[f"{name}_stop_median_s"] = statistics.median(ts)
    return figs


def case_oom(ctx):
    """The guest runs out of memory; the run ends cleanly and the next run works."""
    # The guest has 128 MiB and overcommit_memory=0: a single 256 MiB
    # allocation is refused outright (dd prints "dd: out of memory" and exits
    # 1); the OOM killer never runs. Observed on this machine.
    r = run_job(ctx, ["sh", "-c", "dd if=/dev/zero of=/dev/null bs=256M count=1"], timeout=120)
    expect_status(r, 1, "dd bs=256M")
    if b"out of memory" not in r.err:
        raise CaseFail(f"dd: expected 'out of memory' on stderr, got {tail(r.err)}")
    figs = dict(dd_status=r.rc, dd_s=r.wall)
    if ctx.P["oom_kill"]:
        # A real OOM kill: `tail` keeps growing its buffer (no newline in
        # /dev/zero) until the guest's OOM killer sends SIGKILL. Slow here:
        # each page the guest faults in costs ~4 ms under emulation.
        r = run_job(ctx, ["tail", "/dev/zero"], opts=("--timeout", "900"), timeout=960)
        expect_status(r, 137, "tail /dev/zero (OOM kill)")
        figs.update(oom_kill_status=r.rc, oom_kill_s=r.wall)
    r = run_job(ctx, ["echo", "ok"], timeout=60)
    expect_status(r, 0, "echo ok after the OOM")
    compare(r.out, b"ok\n", "echo ok stdout")
    return figs


def case_rapid_fire(ctx):
    """Back-to-back `run -- true`: peak RSS and peak fd count stay flat."""
    rss, fds, walls = [], [], []
    for i in range(ctx.P["rapid"]):
        r = run_job(ctx, ["true"], timeout=60, poll_fds=True)
        expect_status(r, 0, f"#{i} true")
        rss.append(r.hwm_kib)
        fds.append(r.peak_fds)
        walls.append(r.wall)
    k = min(10, len(rss))
    first, last = statistics.mean(rss[:k]), statistics.mean(rss[-k:])
    figs = dict(runs=len(rss), rss_kib_min=min(rss), rss_kib_median=statistics.median(rss), rss_kib_max=max(rss),
                rss_first10_kib=first, rss_last10_kib=last, fds_min=min(fds), fds_median=statistics.median(fds),
                fds_max=max(fds), wall_s_median=statistics.median(walls))
    if abs(last - first) > max(0.05 * first, 512):
        raise CaseFail(f"peak RSS not flat: first {k} mean {first:.0f} KiB, last {k} mean {last:.0f} KiB; {fmt(figs)}")
    if max(fds) - min(fds) > 1:
        raise CaseFail(f"peak fd count not flat: {fds}")
    return figs


def vm_rss_kib(pid):
    st = proc_status(pid)
    return int(st["VmRSS"].split()[0]) if st and "VmRSS" in st else None


def console_boot(ctx, stop_with):
    """Boots a guest whose init floods the serial console; samples the VMM's
    RSS while a drain thread counts the bytes, then stops it."""
    # Ctrl-A x is honoured only when stdin is a terminal (a pipe is forwarded
    # to the guest verbatim, ConsoleInput.swift), so stdin is a pty.
    master, slave = pty.openpty()
    try:
        p = ctx.spawn(ctx.argv("boot", ["--timeout", "300", "--append", 'SWIFTLET_INIT_RUN="yes > /dev/ttyS0"']),
                      stdin=slave)
    finally:
        os.close(slave)
    try:
        out, err = Drain(p.stdout, keep=False), Drain(p.stderr)
        t0 = time.monotonic()
        # The guest's tty turns "\n" into "\r\n".
        while not re.search(rb"(y\r?\n){4}", out.tail):
            if p.poll() is not None or time.monotonic() - t0 > 180:
                raise CaseFail(f"no flood on the console after {time.monotonic() - t0:.0f} s "
                               f"(status {p.returncode}); stderr {tail(bytes(err.data))}, console {out.tail[-100:]!r}")
            time.sleep(0.2)
        boot_s = time.monotonic() - t0
        samples, c0, s0 = [], out.count, time.monotonic()
        for _ in range(ctx.P["console_s"] + 1):
            samples.append(vm_rss_kib(p.pid))
            time.sleep(1)
        c1, s1 = out.count, time.monotonic()
        if None in samples:
            raise CaseFail(f"the VMM went away while flooding (status {p.poll()}); stderr {tail(bytes(err.data))}")
        if stop_with == "ctrl-a-x":
            os.write(master, b"\x01x")
        else:
            p.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        w = wait_exit(p, 30)
        if w is None:
            raise CaseFail(f"{stop_with}: still running 30 s later")
        stop = time.monotonic() - sent
        out.join(5)
        err.join(5)
        figs = dict(boot_s=boot_s, console_Bps=rate(c1 - c0, s0, s1), rss_first_kib=samples[0],
                    rss_max_kib=max(samples), stop_s=stop, status=w[0])
        if stop > 5:
            raise CaseFail(f"{stop_with}: took {stop:.2f} s to stop; {fmt(figs)}")
        if max(samples) - samples[0] > 2048:
            raise CaseFail(f"RSS grew {max(samples) - samples[0]} KiB while flooding: {samples}")
        want = 128 + signal.SIGTERM if stop_with == "SIGTERM" else 0
        if w[0] != want:
            raise CaseFail(f"{stop_with}: status {w[0]}, expected {want}; stderr {tail(bytes(err.data))}")
        return figs
    finally:
        os.close(master)


def case_console_flood(ctx):
    """A guest flooding its serial console: the VMM's RSS stays bounded and it stops at once."""
    figs = console_boot(ctx, "ctrl-a-x")
    if ctx.P["console_sigterm"]:
        figs.update({f"sigterm_{k}": v for k, v in console_boot(ctx, "SIGTERM").items()})
    return figs


def case_long_output(ctx):
    """A 10-minute job printing a line a second: every line arrives, in order.

    The job runs for 600 s of the guest's clock (`/proc/uptime`, read by a
    shell builtin), not for 600 iterations: each tick's syscalls go through
    the emulated guest kernel, so on a loaded host 600 ticks took over 700 s
    (status 124). It waits with a builtin too (`read -t 1` on a FIFO nobody
    writes): `sleep 1` would fork and exec each second. Steady means at
    least one line per 2 s on average, each one whole and in sequence.
    """
    script = ('mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; read t0 x </proc/uptime; t0=${t0%.*}; '
              'while :; do read t x </proc/uptime; [ $(( ${t%.*} - t0 )) -ge 600 ] && break; '
              'echo tick $i; i=$((i+1)); read -t 1 x <&3 || :; done')
    r = run_job(ctx, ["sh", "-c", script], opts=("--timeout", "700"), timeout=760)
    expect_status(r, 0, "600 s of ticks")
    lines = r.out.decode(errors="replace").splitlines()
    compare(r.out, "".join(f"tick {i}\n" for i in range(len(lines))).encode(), "stdout")
    if len(lines) < 300:
        raise CaseFail(f"only {len(lines)} ticks in 600 s: not steady")
    return dict(ticks=len(lines), wall_s=r.wall)


def case_long_idle(ctx):
    """A 10-minute silent job (`sleep 600`) exits 0."""
    r = run_job(ctx, ["sleep", "600"], opts=("--timeout", "700"), timeout=760)
    expect_status(r, 0, "sleep 600")
    return dict(wall_s=r.wall)


# (name, function, profiles it runs in)
CASES = [
    ("flood-stdout", case_flood_stdout, None),
    ("flood-stderr", case_flood_stderr, None),
    ("flood-both", case_flood_both, None),
    ("stdin-sha256", case_stdin_sha256, None),
    ("slow-reader", case_slow_reader, None),
    ("early-close", case_early_close, None),
    ("concurrent", case_concurrent, None),
    ("signals", case_signals, None),
    ("oom", case_oom, None),
    ("rapid-fire", case_rapid_fire, None),
    ("console-flood", case_console_flood, None),
    ("long-output", case_long_output, {"long"}),
    ("long-idle", case_long_idle, {"long"}),
]


# ---------------------------------------------------------------- driver

def fmt(figs):
    def v(x):
        if isinstance(x, float):
            return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"
        return str(x)
    return " ".join(f"{k}={v(x)}" for k, x in figs.items())


def run_case(ctx, name, fn):
    before = Leftovers(ctx)
    t0 = time.monotonic()
    figs, why = None, None
    try:
        figs = fn(ctx)
    except CaseFail as e:
        why = str(e)
    except Exception as e:  # a harness bug must still end as one FAIL line
        why = f"harness error: {type(e).__name__}: {e}"
    finally:
        ctx.kill_all()
        reap_orphans(ctx)
    left = before.check()
    if left and why is None:
        why = "left behind: " + "; ".join(left)
    elif left:
        why += "; also left behind: " + "; ".join(left)
    secs = time.monotonic() - t0
    if why is None:
        figs["case_s"] = secs
        print(f"PASS {name}: {fmt(figs)}", flush=True)
    else:
        print(f"FAIL {name}: {why}", flush=True)
    return dict(ok=why is None, figures=figs, why=why, seconds=secs)


def warm_up(ctx):
    """One `run -- true` first: it creates the snapshot when the cache has
    none (a cold boot, ~40 s here), which no case's timing should include."""
    t0 = time.monotonic()
    try:
        r = run_job(ctx, ["true"], timeout=600)
        ok = r.rc == 0
        msg = f"status {r.rc}, stderr {tail(r.err)}"
    except CaseFail as e:
        ok, msg = False, str(e)
    finally:
        ctx.kill_all()
    print(f"warm-up: {time.monotonic() - t0:.1f} s" + ("" if ok else f" ({msg})"), flush=True)
    return ok


def seccomp_audit(log_path):
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        print("PASS seccomp-audit: outside_allowlist=0", flush=True)
        return dict(ok=True, figures=dict(outside_allowlist=0), why=None)
    seen = {}
    for line in lines:
        m = re.search(r"role=(\S+) syscall=(\S+)(?: count=(\d+))?", line)
        key = f"role={m.group(1)} syscall={m.group(2)}" if m else line
        seen[key] = seen.get(key, 0) + (int(m.group(3)) if m and m.group(3) else 1)
    why = "syscalls outside the allowlists: " + "; ".join(f"{k} (count {n})" for k, n in seen.items())
    print(f"FAIL seccomp-audit: {why}", flush=True)
    return dict(ok=False, figures=dict(outside_allowlist=len(seen)), why=why)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), required=True)
    ap.add_argument("--swiftlet", default=".build/release/swiftlet")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--seed", type=int, help="seed of the random data and signal delays")
    a = ap.parse_args()

    names = [n for n, _, profs in CASES if profs is None or a.profile in profs]
    if a.only:
        only = a.only.split(",")
        unknown = [n for n in only if n not in {c[0] for c in CASES}]
        if unknown:
            ap.error(f"unknown case(s): {', '.join(unknown)}")
        names = [n for n in names if n in only]
    swiftlet = os.path.abspath(a.swiftlet)
    if not os.access(swiftlet, os.X_OK):
        ap.error(f"{a.swiftlet}: not an executable (build it first)")

    seed = a.seed if a.seed is not None else random.randrange(1 << 32)
    env = dict(os.environ)
    log_path = None
    if a.profile == "audit":
        fd, log_path = tempfile.mkstemp(prefix="stress-seccomp-", suffix=".log")
        os.close(fd)
        env["SWIFTLET_SECCOMP_LOG_FILE"] = log_path
    ctx = Ctx(swiftlet, a.profile, seed, env)

    # Orphans of our children come back to us (see Leftovers), and SIGTERM
    # / SIGHUP end the harness through the same cleanup as Ctrl-C.
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER

    def interrupted(sig, _):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    print(f"profile={a.profile} swiftlet={swiftlet} seed={seed} "
          f"cache={env.get('SWIFTLET_SNAPSHOT_CACHE', '(default)')}", flush=True)
    results = {}
    t0 = time.monotonic()
    try:
        warm_up(ctx)
        for name in names:
            fn = next(f for n, f, _ in CASES if n == name)
            results[name] = run_case(ctx, name, fn)
        if log_path:
            results["seccomp-audit"] = seccomp_audit(log_path)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        results["interrupted"] = dict(ok=False, figures=None, why="interrupted")
    finally:
        ctx.kill_all()
        reap_orphans(ctx)
        if log_path:
            os.unlink(log_path)
    passed = sum(r["ok"] for r in results.values())
    failed = len(results) - passed
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(profile=a.profile, swiftlet=swiftlet, seed=seed, wall_s=time.monotonic() - t0,
                           passed=passed, failed=failed, cases=results), f, indent=2)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
