#!/usr/bin/env python3
"""Writes the seed corpus for Tests/Fuzz/VsockFuzz (see the input layout there).

Each seed is a short scenario of records [kind u8][arg u8][len u16 LE][bytes]:
guest connections to the host listener on port 1 with data, credit and
shutdown; a host client's CONNECT answered by the guest; malformed packets.
Run once; the seeds are committed.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
REQUEST, RESPONSE, RST, SHUTDOWN, RW, CREDIT_UPDATE, CREDIT_REQUEST = 1, 2, 3, 4, 5, 6, 7


def header(op, src_port=1000, dst_port=1, length=0, flags=0, buf_alloc=262144, fwd_cnt=0,
           src_cid=3, dst_cid=2, type_=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, type_, op, flags,
                       buf_alloc, fwd_cnt)


def record(kind, arg, data=b""):
    return bytes([kind, arg]) + struct.pack("<H", len(data)) + data


def tx(h, payload=b"", split=0):
    return record(0, split, h + payload)


def host(arg, data=b""):
    return record(1, arg, data)


seeds = {
    "guest-connect-data": tx(header(REQUEST)) + tx(header(RW, length=5), b"hello", split=44)
    + host(1, b"from host") + tx(header(CREDIT_REQUEST)) + tx(header(CREDIT_UPDATE, fwd_cnt=9)),
    "guest-shutdown": tx(header(REQUEST)) + tx(header(RW, length=3), b"abc")
    + tx(header(SHUTDOWN, flags=2)) + host(3) + tx(header(SHUTDOWN, flags=3)),
    "guest-rst": tx(header(REQUEST)) + host(1, b"x" * 5000) + tx(header(RST)),
    "host-connect": host(0, b"CONNECT 5\n")
    + tx(header(RESPONSE, src_port=5, dst_port=1 << 30)) + tx(header(RW, 5, 1 << 30, length=4), b"ping")
    + host(1, b"pong"),
    "host-refused": host(0, b"CONNECT 6\nearly") + tx(header(RST, src_port=6, dst_port=1 << 30)),
    "no-credit": tx(header(REQUEST, buf_alloc=4096)) + host(1, b"y" * 20000) + record(2, 1)
    + tx(header(CREDIT_UPDATE, buf_alloc=4096, fwd_cnt=4096)),
    "malformed": tx(header(RW, length=100)) + tx(header(9)) + tx(header(REQUEST, type_=2))
    + tx(header(REQUEST, dst_cid=5)) + tx(header(REQUEST, src_cid=9)) + tx(header(REQUEST)[:20]),
    "resets": tx(header(REQUEST)) + record(3, 1) + tx(header(REQUEST, src_port=1001)) + record(3, 0)
    + record(2, 20) + tx(header(REQUEST, src_port=1002)),
}

out = os.path.join(HERE, "corpus-vsock")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
