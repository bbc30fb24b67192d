#!/usr/bin/env python3
"""Writes the seeds of the tar harness (TarFuzz) into Tests/Fuzz/corpus-tar.

Each seed is [mode][step][chunk] and a payload (see TarFuzz/main.swift): small
archives from Python's tarfile in each format, a few hand-made headers that
take the rarer paths, and compressed ones.
"""
import gzip, io, os, sys, tarfile

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "corpus-tar")
os.makedirs(out, exist_ok=True)


def archive(fmt, entries, globals_=None):
    buf = io.BytesIO()
    kw = {"pax_headers": globals_} if globals_ else {}
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as t:
        for name, typ, data, extra in entries:
            ti = tarfile.TarInfo(name)
            ti.type = typ
            ti.size = len(data)
            ti.mtime = extra.get("mtime", 1700000000)
            ti.uid, ti.gid = extra.get("uid", 0), extra.get("gid", 0)
            ti.mode = extra.get("mode", 0o644)
            ti.linkname = extra.get("link", "")
            ti.devmajor, ti.devminor = extra.get("dev", (0, 0))
            if "pax" in extra:
                ti.pax_headers = extra["pax"]
            t.addfile(ti, io.BytesIO(data) if data else None)
    b = buf.getvalue()
    # tarfile pads to 10 KiB: keep two zero blocks.
    end = len(b.rstrip(b"\0"))
    end = (end + 511) // 512 * 512
    return b[:end] + b"\0" * 1024


R, D, S, L, C, B, F = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE
basic = [
    ("etc/", D, b"", {"mode": 0o755}),
    ("etc/passwd", R, b"root:x:0:0:root:/root:/bin/sh\n", {}),
    ("etc/big", R, bytes(range(256)) * 3, {"mode": 0o4755}),
    ("bin/sh", S, b"", {"link": "busybox"}),
    ("bin/hard", L, b"", {"link": "etc/passwd"}),
    ("dev/null", C, b"", {"dev": (1, 3)}),
    ("dev/sda", B, b"", {"dev": (8, 0)}),
    ("run/fifo", F, b"", {}),
]
longs = [
    ("long/" + "n" * 200, R, b"long", {"uid": 3000000, "gid": 4000000}),
    ("long/link", S, b"", {"link": "t" * 150}),
    ("neg", R, b"", {"mtime": -100}),
]
paxes = [
    ("x", R, b"data", {"pax": {"SCHILY.xattr.user.a": "1", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                                "LIBARCHIVE.xattr.user.%62": "aGk="}}),
    ("frac", R, b"", {"mtime": -1.5}),
    ("utf8-\u540d", R, b"", {}),
]

seeds = {
    "ustar": (0, 255, 7, archive(tarfile.USTAR_FORMAT, basic)),
    "gnu": (0, 3, 100, archive(tarfile.GNU_FORMAT, basic + longs)),
    "pax": (0, 255, 1, archive(tarfile.PAX_FORMAT, basic + longs + paxes)),
    "pax-global": (0, 200, 50, archive(tarfile.PAX_FORMAT, basic[:3], {"uid": "42", "comment": "git"})),
    "gzip": (1, 255, 30, gzip.compress(archive(tarfile.PAX_FORMAT, basic + paxes))),
    "gzip-two-members": (1, 17, 30, gzip.compress(archive(tarfile.USTAR_FORMAT, basic)[:700]) +
                          gzip.compress(archive(tarfile.USTAR_FORMAT, basic)[700:])),
    "roundtrip-gzip": (2 + 4 * 5, 100, 9, archive(tarfile.GNU_FORMAT, basic + longs)),
    "roundtrip-zstd": (3 + 4 * 3, 255, 9, archive(tarfile.PAX_FORMAT, paxes)),
}
# Hand-made variants of the ustar archive.
plain = seeds["ustar"][3]
bad_sum = bytearray(plain)
bad_sum[0] ^= 1
seeds["bad-checksum"] = (0, 255, 1, bytes(bad_sum))
seeds["truncated-data"] = (0, 255, 1, plain[:512 + 10])
seeds["no-end-blocks"] = (0, 255, 1, plain.rstrip(b"\0")[: (len(plain.rstrip(b"\0")) + 511) // 512 * 512])
sparse = bytearray(plain[:512])
sparse[156] = ord("S")
s = sum(sparse[:148]) + 8 * 32 + sum(sparse[156:])
sparse[148:156] = b"%06o\0 " % s
seeds["gnu-sparse"] = (0, 255, 1, bytes(sparse))
b256 = bytearray(plain[:512])
b256[124:136] = b"\x80" + b"\0" * 9 + b"\x01\x00"  # size 256 in base 256
s = sum(b256[:148]) + 8 * 32 + sum(b256[156:])
b256[148:156] = b"%06o\0 " % s
seeds["base256-size"] = (0, 255, 3, bytes(b256) + b"z" * 256 + b"\0" * 1280)

for name, (mode, step, chunk, payload) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([mode, step, chunk]) + payload)
print("wrote %d seeds to %s" % (len(seeds), out))
