#!/usr/bin/env bash
# vsock throughput with a real guest, one direction at a time.
#
#   benchmarks/vsock/run.sh [MiB [host|guest]]     (default 20 MiB, both directions)
#
# host -> guest: the host CONNECTs to a guest `swiftlet-vsock listen 5000 > /dev/null`
#                and sends MiB of data; timed from OK to the guest's EOF.
# guest -> host: the guest runs `head -c MiB /dev/zero | swiftlet-vsock connect 2 6000`;
#                timed on the host from the first byte to EOF.
# The guest kernel is emulated on nested-PVM hosts, so these figures measure the
# emulated guest's vsock stack; the VMM's own CPU time is printed beside them.
set -euo pipefail
cd "$(dirname "$0")/../.."
mib=${1:-20}
bin=${SWIFTLET:-.build/release/swiftlet}
[[ -x $bin ]] || { echo "build first: make release" >&2; exit 1; }
dir=$(mktemp -d /tmp/swiftlet-vsock-bench.XXXXXX)
trap 'rm -rf "$dir"' EXIT

python3 - "$bin" "$dir" "$mib" "${2:-both}" <<'PY'
import os, socket, subprocess, sys, time, resource
bin, d, mib = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = mib << 20
chunk = os.urandom(1 << 16)

def cpu_of(proc_rusage_before):
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime - proc_rusage_before[0], r.ru_stime - proc_rusage_before[1]

def host_to_guest():
    uds = f"{d}/h2g.sock"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen([bin, "run", "--vsock-uds", uds, "--", "sh", "-c", "swiftlet-vsock listen 5000 > /dev/null"])
    while True:
        try:
            s = socket.socket(socket.AF_UNIX); s.connect(uds); s.sendall(b"CONNECT 5000\n")
            line = s.makefile("rb").readline()
            if line.startswith(b"OK"): break
            s.close()
        except OSError:
            pass
        time.sleep(0.1)
    t0 = time.monotonic(); sent = 0
    while sent < size:
        n = s.send(chunk[: min(len(chunk), size - sent)]); sent += n
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the guest closes after EOF
    dt = time.monotonic() - t0
    p.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return dt, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime

def guest_to_host():
    uds = f"{d}/g2h.sock"
    l = socket.socket(socket.AF_UNIX); l.bind(uds + "_6000"); l.listen(1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    p = subprocess.Popen([bin, "run", "--vsock-uds", uds, "--", "sh", "-c",
                          f"head -c {size} /dev/zero | swiftlet-vsock connect 2 6000"])
    c, _ = l.accept()
    got = len(c.recv(1 << 16)); t0 = time.monotonic()
    while True:
        b = c.recv(1 << 20)
        if not b: break
        got += len(b)
    dt = time.monotonic() - t0
    c.close()  # the guest's bridge waits for our EOF too
    p.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert got == size, (got, size)
    return dt, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime

which = sys.argv[4] if len(sys.argv) > 4 else "both"
for name, f in (("host->guest", host_to_guest), ("guest->host", guest_to_host)):
    if which != "both" and not name.startswith(which): continue
    dt, u, s = f()
    print(f"{name}: {mib} MiB in {dt:.2f} s = {mib/dt:.2f} MiB/s; swiftlet process CPU (whole run incl. boot): user {u:.2f} s, sys {s:.2f} s")
PY
