"""A daemon killed with SIGKILL, jobs running and queued: its VMMs die with it,
and a new daemon on the same state directory finishes every job."""

import time

from conftest import FINAL_STATES, alive


def test_sigkill_and_restart(daemon_factory):
    a = daemon_factory.start("--max-vms", "1", "--drain-timeout", "10", name="crash-a")
    a.put_function("nap", {"command": ["sleep", "5"]})
    # The snapshot first, so that the kill finds a handler running, not a cold boot.
    assert a.wait_job(a.submit("nap")["id"])["state"] == "succeeded"

    ids = [a.submit("nap", f"job-{i}".encode())["id"] for i in range(4)]
    a.wait_state(ids[0], {"running"}, timeout=120)
    deadline, vmms = time.time() + 30, []
    while time.time() < deadline and not vmms:
        vmms = a.vmms()
        time.sleep(0.05)
    assert vmms, "a job is running but the daemon has no swiftlet child"
    time.sleep(1.5)  # into the handler's run, past the restore
    states = {i: a.job(i)["state"] for i in ids}
    assert "queued" in states.values(), f"expected jobs still queued behind --max-vms 1: {states}"

    a.kill()
    t0 = time.time()
    left = daemon_factory.leftovers(wait=2.0, daemons=[a])
    assert not left, f"{time.time() - t0:.1f} s after SIGKILL of the daemon:\n" + "\n".join(left)
    assert not any(alive(p) for p in vmms), f"VMMs {vmms} outlived the daemon"

    b = daemon_factory.start("--max-vms", "1", "--drain-timeout", "10", state_dir=a.state_dir, name="crash-b")
    listed = {j["id"] for j in b.list_jobs(function="nap")}
    assert set(ids) <= listed, f"jobs lost across the restart: {set(ids) - listed}"
    for i in ids:
        r = b.get(f"/v1/jobs/{i}")
        assert r.status_code == 200, f"job {i} lost across the restart: {r.status_code} {r.text}"
        job = b.wait_job(i, timeout=180)
        assert job["state"] in FINAL_STATES
        if job["state"] == "succeeded":
            continue
        assert job["state"] == "failed" and job["error"] == "runner restarted", job
        assert job["attempts"] >= job["maxAttempts"], f"failed with attempts left: {job}"
    assert b.job(ids[-1])["state"] == "succeeded", "a job still queued at the kill must run after the restart"
