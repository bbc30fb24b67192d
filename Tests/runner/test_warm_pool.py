"""Warm pools on the shared daemon: a function with `warm: 1` gets a VM
restored ahead of its first call and held; an invoke takes it, and the pool
refills once the response is out. Every VMM runs `--vm-nice` (5) above the
daemon. And every line the daemon logs is one JSON object."""

import json
import time

from conftest import FIRST_RUN_TIMEOUT, signed_request


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_warm_pool_serves_then_refills_after_the_response(daemon, echo_fn):
    # The echo function's shape: its snapshot already exists, so the pool fills by a restore.
    name = "warm-echo"
    daemon.put_function(name, {"command": ["sh", "-c", "cat; echo handler-log-line >&2"], "warm": 1})
    try:
        wait_for("a warm VM", lambda: daemon.metric("swiftlet_warm_vms") >= 1, FIRST_RUN_TIMEOUT)
        held = set(daemon.vmms())
        assert held, "swiftlet_warm_vms is 1, but no VMM process runs under the daemon"
        for pid in held:
            assert daemon.nice(pid) == daemon.nice() + 5, f"VMM {pid}: nice {daemon.nice(pid)}, daemon {daemon.nice()}"

        r = signed_request("POST", daemon.url(f"/2015-03-31/functions/{name}/invocations"), b"hot", timeout=300)
        assert r.status_code == 200 and r.content == b"hot", (r.status_code, r.headers, r.content[:300])
        timing = dict(part.strip().split(";dur=") for part in r.headers["Server-Timing"].split(","))
        assert {"daemon-pre", "queue", "daemon-post"} <= set(timing), r.headers["Server-Timing"]

        # A new VM, not the one that ran the job (that one exited with it).
        wait_for("the pool refilled", lambda: daemon.metric("swiftlet_warm_vms") >= 1 and set(daemon.vmms()) - held,
                 FIRST_RUN_TIMEOUT)
    finally:
        assert daemon.delete(f"/v1/functions/{name}").status_code == 204
    wait_for("the pool emptied after the function was removed", lambda: daemon.metric("swiftlet_warm_vms") == 0, 30)


def test_every_log_line_is_json(daemon, echo_fn):
    # Quotes, backslashes and control characters reach the log through metadata and paths.
    r = signed_request("POST", daemon.url(f"/2015-03-31/functions/{echo_fn}/invocations"), b'"quoted" \\ \x01\n', timeout=300)
    assert r.status_code == 200, (r.status_code, r.content[:300])
    daemon.get('/v1/jobs/no"such\\job%0a')
    lines = daemon.log_path.read_bytes().decode("utf-8").splitlines()
    assert len(lines) > 10, lines
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict) and {"ts", "level", "msg"} <= set(obj), line
        assert isinstance(obj["ts"], float) and obj["level"] in ("trace", "debug", "info", "notice", "warning", "error", "critical"), line
        assert list(obj) == sorted(obj), f"keys not sorted: {line}"
