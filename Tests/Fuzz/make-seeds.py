#!/usr/bin/env python3
"""Writes the seed corpus for Tests/Fuzz/VirtqueueFuzz (see the input layout there).

Each seed is a small, valid (or deliberately broken) virtio-blk queue state in
the fixed layout: descriptor table 0x0, available ring 0x1000, used ring 0x1400,
buffers from 0x1c10. Run once; the seeds are committed.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
NEXT, WRITE, INDIRECT = 1, 2, 4
IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES = 0, 1, 4, 8, 11, 13


class Guest:
    def __init__(self, size_log2=3, flags=2, start=0):
        self.size = 1 << size_log2
        self.header = bytes([flags, size_log2]) + struct.pack("<H", start) + bytes(24)
        self.mem = bytearray(0x1c10)
        self.cursor = 0x1c10
        self.free = 0
        self.avail = start
        struct.pack_into("<H", self.mem, 0x1002, start)
        struct.pack_into("<H", self.mem, 0x1402, start)

    def put(self, data):
        addr = self.cursor
        end = addr + len(data)
        if len(self.mem) < end:
            self.mem.extend(bytes(end - len(self.mem)))
        self.mem[addr:end] = data
        self.cursor = (end + 15) & ~15
        return addr

    def desc(self, table, i, addr, length, flags, nxt):
        struct.pack_into("<QIHH", self.mem, table + 16 * i, addr, length, flags, nxt)

    def chain(self, bufs, indirect=False):
        """bufs: (addr, len, writable). Returns the head."""
        if indirect:
            table = self.put(bytes(16 * len(bufs)))
            for i, (a, n, w) in enumerate(bufs):
                last = i == len(bufs) - 1
                self.desc(table, i, a, n, (WRITE if w else 0) | (0 if last else NEXT), 0 if last else i + 1)
            bufs, flags_extra = [(table, 16 * len(bufs), False)], INDIRECT
        else:
            flags_extra = 0
        idx = [(self.free + i) % self.size for i in range(len(bufs))]
        self.free = (self.free + len(bufs)) % self.size
        for i, (a, n, w) in enumerate(bufs):
            last = i == len(bufs) - 1
            self.desc(0, idx[i], a, n, (WRITE if w else 0) | (0 if last else NEXT) | flags_extra,
                      0 if last else idx[i + 1])
        return idx[0]

    def publish(self, head):
        struct.pack_into("<H", self.mem, 0x1004 + 2 * (self.avail % self.size), head)
        self.avail = (self.avail + 1) & 0xffff
        struct.pack_into("<H", self.mem, 0x1002, self.avail)

    def request(self, type_, sector, out=(), ins=(), indirect=False, status=True):
        bufs = [(self.put(struct.pack("<IIQ", type_, 0, sector)), 16, False)]
        bufs += [(self.put(o), len(o), False) for o in out]
        bufs += [(self.put(bytes(n)), n, True) for n in ins]
        if status:
            bufs.append((self.put(b"\xff"), 1, True))
        self.publish(self.chain(bufs, indirect))

    def bytes(self):
        return self.header + bytes(self.mem)


def seg(sector, count, flags):
    return struct.pack("<QII", sector, count, flags)


def seeds():
    g = Guest(); g.request(IN, 0, ins=[512]); yield "in", g
    g = Guest(); g.request(OUT, 2, out=[b"\x5a" * 512, b"\xa5" * 1024]); yield "out-multi", g
    g = Guest(); g.request(FLUSH, 0); g.request(GET_ID, 0, ins=[20]); yield "flush-getid", g
    g = Guest(); g.request(DISCARD, 0, out=[seg(4, 8, 0)]); yield "discard", g
    g = Guest(); g.request(WRITE_ZEROES, 0, out=[seg(8, 8, 1)]); yield "write-zeroes-unmap", g
    g = Guest(); g.request(IN, 1, ins=[256, 256, 512], indirect=True); yield "indirect-in", g
    g = Guest(start=0xfffe)
    for s in range(3):
        g.request(OUT if s % 2 else IN, s, out=[b"\x11" * 512] if s % 2 else (), ins=() if s % 2 else [512])
    yield "wrap", g
    g = Guest(flags=3)
    g.request(IN, 0, ins=[512]); g.request(IN, 1, ins=[512])
    struct.pack_into("<H", g.mem, 0x1004 + 2 * g.size, 1)  # used_event
    yield "event-idx", g
    g = Guest(); g.desc(0, 0, 0x1c10, 16, NEXT, 0); g.publish(0); yield "loop", g
    g = Guest(flags=6); g.request(OUT, 0, out=[b"\x22" * 512]); g.request(DISCARD, 0, out=[seg(0, 1, 0)]); yield "read-only", g
    g = Guest(size_log2=8); g.request(IN, 63, ins=[512]); g.request(IN, 64, ins=[512]); yield "size256-edge", g
    g = Guest(); g.request(99, 0, ins=[16]); g.request(OUT, 0, out=[b"\x33" * 100]); yield "unsupp-partial", g


if __name__ == "__main__":
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for name, g in seeds():
        with open(os.path.join(out, name), "wb") as f:
            f.write(g.bytes())
        print(name, len(g.bytes()))
