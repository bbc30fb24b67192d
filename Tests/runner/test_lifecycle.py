"""The daemon's life cycle: functions declared in a file at start, one
snapshot for many simultaneous first invocations, and SIGTERM's drain (a
running job finishes within --drain-timeout; one that outlasts it is queued
again, durably, and finished by the next daemon)."""

import json
import signal
import threading
import time

from conftest import FINAL_STATES


def test_declared_functions_and_one_snapshot_for_simultaneous_first_calls(daemon_factory, tmp_path):
    decl = tmp_path / "functions.json"
    decl.write_text(json.dumps({
        "first": {"command": ["sh", "-c", "cat; echo from-first"]},
        # Same image, memory and vCPUs: the same snapshot.
        "second": {"command": ["cat"], "timeoutSeconds": 30},
    }))
    d = daemon_factory.start("--max-vms", "4", "--functions", str(decl), keys=False, name="declared")
    assert {f["name"] for f in d.get("/v1/functions").json()["functions"]} == {"first", "second"}
    assert d.metric("swiftlet_snapshots_created_total") == 0

    results = {}

    def call(i, name):
        r = d.post(f"/2015-03-31/functions/{name}/invocations", data=f"p{i}".encode(), timeout=600)
        results[i] = (name, r.status_code, r.content, r.headers.get("X-Amz-Function-Error"))

    threads = [threading.Thread(target=call, args=(i, "first" if i % 2 else "second")) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(700)
    for i, (name, status, body, err) in sorted(results.items()):
        assert status == 200 and err is None, (i, name, status, body)
        want = f"p{i}from-first\n".encode() if name == "first" else f"p{i}".encode()
        assert body == want, (i, name, body)
    assert len(results) == 4
    assert d.metric("swiftlet_snapshots_created_total") == 1, d.get("/metrics").text


def test_sigterm_drains_then_requeues_what_outlasts_it(daemon_factory):
    # The drain timeout is generous: under an emulated guest kernel on a
    # loaded host, `sleep 3` in the guest has taken over 9 s.
    a = daemon_factory.start("--max-vms", "2", "--drain-timeout", "25", keys=False, name="drain-a")
    a.put_function("short", {"command": ["sh", "-c", "sleep 3; echo done"], "retries": 0})
    a.put_function("long", {"command": ["sh", "-c", "sleep 50; echo late"], "retries": 1})
    # Snapshots first (one shape: one cold boot), so that the drain meets running handlers.
    assert a.wait_job(a.submit("short")["id"])["state"] == "succeeded"
    short = a.submit("short", b"s")["id"]
    long = a.submit("long", b"l")["id"]
    a.wait_state(short, {"running"}, timeout=120)
    a.wait_state(long, {"running"}, timeout=120)
    time.sleep(1.0)

    a.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    r = a.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "draining", r.text
    r = a.post("/v1/functions/short/jobs", data=b"x")
    assert r.status_code == 503, f"a submit while draining: {r.status_code} {r.text}"
    t0 = time.time()
    rc = a.proc.wait(90)
    assert rc == 0, f"exit status {rc} after SIGTERM\n{a.log_tail()}"
    assert time.time() - t0 < 25 + 10, "the drain did not end near --drain-timeout"
    assert not a.vmms(), "a VMM outlived the drained daemon"

    b = daemon_factory.start("--max-vms", "2", state_dir=a.state_dir, keys=False, name="drain-b")
    s = b.job(short)
    assert s["state"] == "succeeded" and s["attempts"] == 1, f"the short job should have finished in the drain: {s}"
    assert b.get(f"/v1/jobs/{short}/output").content == b"done\n"
    job = b.wait_job(long, timeout=300)
    assert job["state"] == "succeeded" and job["attempts"] == 2, f"the long job should rerun after the restart: {job}"
    assert b.get(f"/v1/jobs/{long}/output").content == b"late\n"
    assert job["state"] in FINAL_STATES
