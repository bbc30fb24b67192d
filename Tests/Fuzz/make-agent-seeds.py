#!/usr/bin/env python3
"""Writes the seed corpus for Tests/Fuzz/AgentFuzz (see the input layout there).

Stream seeds (byte 0 even) are what a host sends the agent (PROTOCOL.md): JOBs
with and without stdin, clock, seed and environment, STDIN, SIGNAL,
CLOSE_OUTPUT and PARK frames, unknown types, and one seed per rule a JOB or a
frame header can break. Built seeds (byte 0 odd) describe JOBs at the limits:
16384 arguments, strings of 128 KiB and one byte more, a 4095-byte working
directory, a frame past 1 MiB. Run once; the seeds are committed.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
JOB, STDIN, SIGNAL, PARK, CLOSE_OUTPUT = 0x81, 0x82, 0x83, 0x84, 0x85


def frame(type_, payload=b"", reserved=b"\0\0\0", length=None):
    return struct.pack("<IB", len(payload) if length is None else length, type_) + reserved + payload


def job(argv, env=(), workdir=b"", flags=0, seed=b"", clock=None, argc=None, envc=None, tail=b""):
    head = struct.pack("<IIII", flags | (2 if clock is not None else 0), len(argv) if argc is None else argc,
                       len(env) if envc is None else envc, len(seed))
    if clock is not None:
        head += struct.pack("<Q", clock)
    return head + seed + b"".join(s + b"\0" for s in [workdir, *argv, *env]) + tail


def stream(*frames, schedule=0):
    return bytes([schedule << 1]) + b"".join(frames)


TRUE = job([b"/bin/true"])
seeds = {
    "job-true": stream(frame(JOB, TRUE)),
    "job-full": stream(frame(JOB, job([b"sh", b"-c", b"echo $X"], [b"X=1", b"PATH=/bin", b"HOME=/tmp"], b"/tmp",
                                      flags=1, seed=bytes(range(32)), clock=1764000000 * 10**9)),
                       frame(STDIN, b"input\n"), frame(STDIN), frame(SIGNAL, struct.pack("<I", 15)),
                       frame(CLOSE_OUTPUT, struct.pack("<I", 1)), schedule=3),
    "job-root-dir": stream(frame(JOB, job([b"ls"], workdir=b"/")), schedule=1),
    "park-then-job": stream(frame(PARK, b"/bin/true\0/usr/bin/env\0relative\0/never\0"), frame(JOB, TRUE), schedule=2),
    "park-16": stream(frame(PARK, b"".join(b"/bin/p%d\0" % i for i in range(18))), schedule=5),
    "unknown-types": stream(frame(0x00, b"a\0bc\0"), frame(0x7f, b"\0\0x"), frame(0xff), frame(JOB, TRUE), schedule=4),
    "second-job": stream(frame(JOB, TRUE), frame(JOB, job([b"/bin/false"])), schedule=6),
    "one-byte-reads": stream(frame(JOB, job([b"/bin/echo", b"hi"], [b"A=b"])), frame(SIGNAL, b"\x09\0\0\0"), schedule=0),
    "frame-too-long": stream(frame(STDIN, length=(1 << 20) + 1)),
    "frame-max": stream(frame(STDIN, length=1 << 20), schedule=7),
    "reserved-bytes": stream(frame(JOB, TRUE, reserved=b"\0\1\0")),
    # One JOB per rule of PROTOCOL.md.
    "bad-short": stream(frame(JOB, TRUE[:15])),
    "bad-flags": stream(frame(JOB, job([b"x"], flags=4))),
    "bad-argc-0": stream(frame(JOB, job([], argc=0) + b"x\0")),
    "bad-argc-big": stream(frame(JOB, job([b"x"], argc=16385))),
    "bad-envc-big": stream(frame(JOB, job([b"x"], envc=16385))),
    "bad-clock": stream(frame(JOB, struct.pack("<IIII", 2, 1, 0, 0) + b"\0\0\0")),
    "bad-seed-long": stream(frame(JOB, job([b"x"], seed=bytes(513)))),
    "bad-seed-truncated": stream(frame(JOB, struct.pack("<IIII", 0, 1, 0, 100) + b"/\0x\0")),
    "bad-no-nul": stream(frame(JOB, job([b"x"])[:-1])),
    "bad-dir-4096": stream(frame(JOB, job([b"x"], workdir=b"/" + b"d" * 4095))),
    "ok-dir-4095": stream(frame(JOB, job([b"x"], workdir=b"/" + b"d" * 4094))),
    "bad-argv0-empty": stream(frame(JOB, job([b"", b"y"]))),
    "bad-env-no-eq": stream(frame(JOB, job([b"x"], [b"NOEQ"]))),
    "bad-env-no-name": stream(frame(JOB, job([b"x"], [b"=v"]))),
    "bad-env-empty": stream(frame(JOB, job([b"x"], [b""]))),
    "bad-trailing": stream(frame(JOB, job([b"x"], tail=b"z"))),
    "two-paths": stream(frame(JOB, job([b"x"], [b"PATH=/a", b"PATH=/b", b"HOME=/h"]))),
}


def built(flags, argc, envc, seed_len, items, reserved=0, clock=b""):
    return bytes([1, reserved]) + struct.pack("<IIII", flags, argc, envc, seed_len) + clock + items


def literal(s):
    return bytes([0, len(s)]) + s


def long_string(fill, n):
    return bytes([1, fill]) + n.to_bytes(3, "little")


def repeat(count, s):
    return bytes([2]) + struct.pack("<H", count) + bytes([len(s)]) + s


def pad16(b):
    """A description whose length (after byte 0) is a multiple of 16 may grow past 1 MiB."""
    return b + b"\0" * (-(len(b) - 1) % 16)


seeds.update({
    "built-16384-args": built(0, 16384, 0, 0, literal(b"/") + repeat(16384, b"arg")),
    "built-16384-env": built(0, 1, 16384, 0, literal(b"") + literal(b"/bin/env") + repeat(16383, b"K=v") + literal(b"PATH=/bin")),
    "built-arg-128k": built(0, 2, 0, 0, literal(b"") + literal(b"echo") + long_string(0x41, 128 << 10)),
    "built-arg-128k-plus-1": built(0, 2, 0, 0, literal(b"") + literal(b"echo") + long_string(0x41, (128 << 10) + 1)),
    "built-dir-4095": built(0, 1, 0, 0, long_string(0x2f, 4095) + literal(b"x")),
    "built-seed-512": built(2, 1, 1, 512, literal(b"") + literal(b"x") + literal(b"K=v"), clock=bytes(8)),
    "built-over-1mib": pad16(built(0, 9, 0, 0, literal(b"") + repeat(8, b"b") + literal(b"B") + long_string(0x43, 1 << 20))),
})

out = os.path.join(HERE, "corpus-agent")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
