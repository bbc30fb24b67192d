#!/usr/bin/env python3
"""Writes the seed corpus for Tests/Fuzz/NetFuzz (see the input layout there).

Each seed is a short scenario of records [kind u8][arg u8][len u16 LE][bytes]:
frames from the TAP into one buffer or merged over several, frames waiting for
buffers, tx chains of several shapes, indirect tables, EVENT_IDX, wrapping
indices, resets with a frame pending, and hostile chains and re-posts.
Run once; the seeds are committed.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MRG, EVENT_IDX, INDIRECT = 1, 2, 4
READABLE, EMPTY, OUTSIDE, BYTES = 1, 2, 4, 8


def record(kind, arg=0, data=b""):
    return bytes([kind, arg]) + struct.pack("<H", len(data)) + data


def restart(features=MRG, rx_log2=4, tx_log2=4, start=0):
    return record(0, 0, bytes([features, rx_log2, tx_log2]) + struct.pack("<H", start))


def rx(descriptors, copies=1, indirect=False):
    """descriptors: (length, flags); length a multiple of 16 up to 4096 (1024 indirect), or below 256."""
    data = b"".join(bytes([n, f | BYTES]) if n % 16 or n < 16 else bytes([n // 16 - 1, f]) for n, f in descriptors)
    return record(1, (copies - 1) | (0x80 if indirect else 0), data)


def repost(which=0):
    return record(2, which)


def header(num_buffers=0, flags=0, gso=0):
    return struct.pack("<BBHHHHH", flags, gso, 0, 0, 0, 0, num_buffers)


def tap(frame, pages=0):
    """A frame from the TAP: header and `frame`, then pages * 256 bytes of pattern."""
    return record(3, pages, header() + frame)


def tx(frame, pieces=1, indirect=False, writable=False, outside=False, empty=False, pages=0):
    shape = (pieces - 1) | (4 if indirect else 0) | (8 if writable else 0) | (16 if outside else 0) | (32 if empty else 0)
    return record(4, pages, bytes([shape]) + header() + frame)


def notify(rx_flags=0, rx_event=0, tx_flags=0, tx_event=0, config_offset=0):
    return record(5, config_offset + 128, struct.pack("<HHHH", rx_flags, rx_event, tx_flags, tx_event))


def special(what):
    return record(7, what)


ETH = bytes.fromhex("02000000004e") + bytes.fromhex("020000000001") + b"\x08\x00"

seeds = {
    "one-buffer": restart() + rx([(2048, 0)], copies=4) + tap(ETH + b"ping" * 16) + tap(ETH, pages=5),
    "merged-64k": restart(rx_log2=5) + rx([(4096, 0)], copies=16) + rx([(4096, 0)]) + tap(ETH, pages=255),
    "waits-for-buffers": restart() + tap(ETH, pages=12) + rx([(1024, 0)]) + rx([(1024, 0)], copies=2)
    + rx([(512, 0), (512, 0)]) + tap(ETH + b"second") + rx([(2048, 0)]),
    "no-mrg-short-then-long": restart(features=0) + rx([(256, 0)]) + tap(ETH, pages=4) + rx([(4096, 0)] * 2)
    + tap(ETH + b"x") + rx([(64, 0)]) + rx([(1536, 0)]),
    "no-mrg-max-frame": restart(features=0, rx_log2=5) + rx([(4096, 0)] * 16 + [(256, 0)]) + tap(ETH, pages=255),
    "indirect": restart(features=MRG | INDIRECT) + rx([(1024, 0)] * 4, copies=3, indirect=True)
    + tap(ETH, pages=20) + tx(ETH + b"indirect", pieces=3, indirect=True),
    "tx-shapes": restart() + tx(ETH + b"a" * 50) + tx(ETH + b"b" * 100, pieces=4) + tx(ETH, pages=255)
    + tx(ETH + b"c", writable=True) + tx(ETH + b"d", empty=True, pieces=2) + tx(b"short"[:3])
    + tx(ETH + b"e", outside=True, pieces=2) + tx(ETH, pages=1, indirect=True),
    "hostile-rx": restart() + tap(ETH + b"hostile") + tap(ETH, pages=2) + rx([(2048, 0), (64, READABLE)])
    + rx([(2048, OUTSIDE)]) + rx([(1024, 0)], indirect=True) + rx([(8, 0)]) + rx([(0, EMPTY), (2048, 0)]) + rx([(5, 0), (2048, 0)])
    + rx([(64, READABLE), (2048, 0)]),
    "repost-drop": restart(rx_log2=2) + tap(ETH, pages=100) + rx([(64, 0)]) + repost() + repost() + repost()
    + rx([(2048, 0)]) + tap(ETH + b"after"),
    # Re-posts leave the guest with more chains out than its ring: one service
    # gives back more used entries than the ring holds (found by the fuzzer).
    "repost-overflow": restart(rx_log2=3) + tap(ETH, pages=100) + rx([(64, 0)]) + repost() + repost() + repost()
    + rx([(2048, 0)]) + tap(ETH + b"x" * 3) + rx([(4016, 0)], copies=14) + tap(ETH, pages=115),
    "reset-pending": restart() + rx([(1024, 0)], copies=2) + tap(ETH, pages=40) + special(3) + tap(ETH + b"y")
    + restart(features=MRG, rx_log2=3) + rx([(4096, 0)], copies=8),
    "avail-jump": restart() + rx([(2048, 0)]) + special(1) + tap(ETH) + restart() + tx(ETH) + special(2)
    + tx(ETH) + restart() + rx([(2048, 0)]) + tap(ETH),
    "event-idx-wrap": restart(features=MRG | EVENT_IDX, start=0xfffe) + notify(0, 1, 1, 0) + rx([(2048, 0)], copies=4)
    + tap(ETH) + tap(ETH + b"z") + tx(ETH) + notify(1, 0xffff, 0, 3, config_offset=-2) + tap(ETH, pages=9),
    "tap-eof": restart() + tap(ETH) + tap(b"tiny") + special(0) + rx([(2048, 0)], copies=2) + tap(ETH),
    "size-1": restart(rx_log2=0, tx_log2=0) + tap(ETH, pages=3) + rx([(512, 0)]) + rx([(512, 0)]) + rx([(512, 0)])
    + tx(ETH) + tx(ETH, pieces=2),
    "chaos": restart() + rx([(2048, 0)], copies=2) + record(6, 0, struct.pack("<H", 0x400) + b"\x05\x00\x07\x00")
    + tap(ETH) + restart() + rx([(2048, 0)]) + tap(ETH),
}

out = os.path.join(HERE, "corpus-net")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
