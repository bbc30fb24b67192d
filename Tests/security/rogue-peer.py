#!/usr/bin/env python3
"""A local process that tries to get into a `swiftlet run` it does not own.

    rogue-peer.py PID SECONDS

Until PID ends (at most SECONDS) it watches the world-readable /proc/net/unix for the abstract
sockets of swiftlet process PID (`@swiftlet-PID-<hex>` and its agent
listener `..._52`) and connects to them as fast as it can: to the agent
listener it sends a forged HELLO, STDOUT "forged" and EXIT 42 (posing as the
guest agent); to the vsock listener, a hybrid-vsock `CONNECT 52` line. It
prints one JSON line: connections made, and the bytes the run sent it (the
job's argv, environment and stdin travel in the JOB frame, so any byte at all
from the agent listener is a leak; from the vsock listener, an `OK` line).
"""
import json
import os
import socket
import struct
import sys
import time


def frame(kind, payload):
    return struct.pack("<IB3x", len(payload), kind) + payload


FORGED = (frame(0x01, struct.pack("<IIQQ", 1, 0, 1, 2))
          + frame(0x04, struct.pack("<IIQ", 1, 0, 3))
          + frame(0x02, b"forged\n")
          + frame(0x05, struct.pack("<IIQ", 0, 42, 4)))


def names(prefix):
    found = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[7].startswith(prefix):
                found.add(parts[7])
    return found


def main():
    pid, seconds = sys.argv[1], float(sys.argv[2])
    prefix = "@swiftlet-%s-" % pid
    deadline = time.time() + seconds
    result = {"agent_connections": 0, "vsock_connections": 0, "agent_bytes": 0, "vsock_bytes": 0}
    while time.time() < deadline and os.path.exists("/proc/" + pid):
        for name in names(prefix):
            kind = "agent" if name.endswith("_52") else "vsock"
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(0.2)
            try:
                s.connect("\0" + name[1:])
                result[kind + "_connections"] += 1
                s.sendall(FORGED if kind == "agent" else b"CONNECT 52\n")
                while True:
                    data = s.recv(65536)
                    if not data:
                        break
                    result[kind + "_bytes"] += len(data)
            except OSError:
                pass  # refused, reset, or still queued when the timeout came
            finally:
                s.close()
        time.sleep(0.002)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
