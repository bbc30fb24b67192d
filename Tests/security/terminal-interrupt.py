#!/usr/bin/env python3
"""Runs a command on a new pseudo-terminal, types Ctrl-C 1.5 s after the
terminal shows MARKER, and prints what it showed and the command's exit status.

    terminal-interrupt.py MARKER COMMAND [ARGS...]

The terminal sends SIGINT to its whole foreground process group, as when a
user presses Ctrl-C: with `--jail`, that is both the supervisor and the
jailed VMM. Output: one line, `status=N output=REPR`.
"""
import os
import pty
import select
import sys
import time


def main():
    marker, argv = sys.argv[1].encode(), sys.argv[2:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    out, seen, sent, status = b"", None, False, None
    deadline = time.time() + 120
    while time.time() < deadline:
        if seen is None and marker in out:
            seen = time.time()
        if not sent and seen is not None and time.time() - seen >= 1.5:
            os.write(fd, b"\x03")
            sent = True
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's last user closed it
                data = b""
            out += data
            if data:
                continue
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
            break
    if status is None:
        os.kill(pid, 9)
        _, st = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(st)
    print("status=%d output=%r" % (status, out), flush=True)


if __name__ == "__main__":
    main()
