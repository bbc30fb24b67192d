"""The runner's command-line client, `swiftlet fn|invoke|job` (swiftlet execs
swiftletd's client), against the token daemon: SWIFTLET_ENDPOINT and
SWIFTLET_TOKEN, stdin as the payload, the handler's exit status as the
client's, queued jobs, and one line for every failure. A client waiting on
a long call must sleep, not spin."""

import os
import resource
import subprocess
import time

from conftest import FIRST_RUN_TIMEOUT, SWIFTLET, SWIFTLETD


def cli(d, token, *args, stdin=b"", endpoint=None, timeout=FIRST_RUN_TIMEOUT + 60):
    """Runs `swiftlet ARGS`; returns (CompletedProcess, CPU seconds it used, wall seconds)."""
    env = dict(os.environ, SWIFTLET_ENDPOINT=endpoint or d.base, SWIFTLETD=str(SWIFTLETD))
    env.pop("SWIFTLET_TOKEN", None)
    if token:
        env["SWIFTLET_TOKEN"] = token
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run([str(SWIFTLET), *args], input=stdin, capture_output=True, env=env, timeout=timeout)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return r, cpu, wall


def one_line(r):
    lines = r.stderr.decode("utf-8", "replace").strip().splitlines()
    assert len(lines) == 1, f"stderr is not one line: {r.stderr!r}"
    return lines[0]


def test_deploy_invoke_jobs_and_remove(token_daemon, api_token):
    d, t = token_daemon, api_token
    r, _, _ = cli(d, t, "fn", "deploy", "cli-upper", "--", "sh", "-c", "tr a-z A-Z")
    assert r.returncode == 0 and r.stdout == b"cli-upper: version 1\n", r
    # The first call makes the daemon's snapshot (one cold boot).
    r, _, _ = cli(d, t, "invoke", "cli-upper", stdin=b"hello\n")
    assert (r.returncode, r.stdout) == (0, b"HELLO\n"), r

    # Same image, memory and vCPUs: the same snapshot. The handler's status is the client's.
    r, _, _ = cli(d, t, "fn", "deploy", "cli-fail", "--", "sh", "-c", "cat >/dev/null; echo oops >&2; exit 3")
    assert r.returncode == 0, r
    r, _, _ = cli(d, t, "invoke", "cli-fail", "--log", stdin=b"x")
    assert r.returncode == 3 and r.stdout == b"", r
    err = r.stderr.decode()
    assert "oops" in err and "swiftlet: cli-fail: the handler exited with status 3" in err, err

    r, _, _ = cli(d, t, "invoke", "cli-upper", "--async", stdin=b"later")
    job = r.stdout.decode().strip()
    assert r.returncode == 0 and len(job) > 8, r
    r, _, _ = cli(d, t, "job", job, "--wait")
    assert r.returncode == 0 and b"succeeded" in r.stdout, r
    r, _, _ = cli(d, t, "job", "output", job)
    assert (r.returncode, r.stdout) == (0, b"LATER"), r

    r, _, _ = cli(d, t, "fn", "list")
    assert r.returncode == 0 and b"cli-upper" in r.stdout and b"cli-fail" in r.stdout, r
    for name in ("cli-upper", "cli-fail"):
        r, _, _ = cli(d, t, "fn", "rm", name)
        assert r.returncode == 0, r
    r, _, _ = cli(d, t, "fn", "show", "cli-upper")
    assert r.returncode != 0 and "404" in one_line(r), r


def test_a_waiting_client_sleeps(token_daemon, api_token):
    d, t = token_daemon, api_token
    assert cli(d, t, "fn", "deploy", "cli-sleep", "--", "sh", "-c", "sleep 4; cat")[0].returncode == 0
    try:
        r, cpu, wall = cli(d, t, "invoke", "cli-sleep", stdin=b"awake")
        assert (r.returncode, r.stdout) == (0, b"awake"), r
        assert wall > 4
        # Process start and one request: well under a second of CPU, whatever the wait.
        assert cpu < 1.0, f"the client used {cpu:.2f} s of CPU over a {wall:.1f} s call"
    finally:
        cli(d, t, "fn", "rm", "cli-sleep")


def test_failures_are_one_line(token_daemon, api_token):
    d = token_daemon
    r, _, _ = cli(d, api_token, "fn", "list", endpoint="http://127.0.0.1:1")
    assert r.returncode == 1 and "cannot reach the runner at http://127.0.0.1:1" in one_line(r), r
    r, _, _ = cli(d, "not-the-token", "fn", "list")
    assert r.returncode == 1 and "401" in one_line(r) or "403" in one_line(r), r
    r, _, _ = cli(d, api_token, "invoke", "no-such-function", stdin=b"")
    assert r.returncode == 1 and "404" in one_line(r), r
