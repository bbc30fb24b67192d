"""200 queued `echo` jobs through 4 VM slots: all succeed, and the daemon's
memory stays bounded and flat. Several minutes here; `-m "not load"` skips it."""

import threading
import time

import pytest

JOBS = 200
RSS_BOUND_KIB = 200 * 1024


@pytest.mark.load
def test_200_jobs(daemon_factory):
    d = daemon_factory.start("--max-vms", "4", "--max-queued", "1000", "--drain-timeout", "10", name="load")
    name = "echo"
    d.put_function(name, {"command": ["cat"], "concurrency": 4})
    assert d.wait_job(d.submit(name, b"warm-up")["id"])["state"] == "succeeded"

    samples, done_count, stop = [], [0], threading.Event()

    def sample():
        while not stop.is_set():
            try:
                samples.append((time.time(), done_count[0], d.rss_kib()))
            except OSError:
                return
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        ids = {}
        for i in range(JOBS):
            payload = f"load-{i}".encode()
            ids[d.submit(name, payload)["id"]] = payload
        deadline = time.time() + 1800
        while True:
            jobs = [j for j in d.list_jobs(function=name, limit=1000) if j["id"] in ids]
            final = [j for j in jobs if j["state"] not in ("queued", "running")]
            done_count[0] = len(final)
            if len(final) == JOBS or time.time() > deadline:
                break
            time.sleep(2)
    finally:
        stop.set()
        sampler.join(5)

    assert len(jobs) == JOBS, f"{JOBS - len(jobs)} jobs missing from GET /v1/jobs"
    bad = [j for j in jobs if j["state"] != "succeeded"]
    assert not bad, f"{len(bad)} of {JOBS} jobs did not succeed (first: {bad[:3]})\n{d.log_tail()}"
    for job_id, payload in list(ids.items())[::20]:
        assert d.get(f"/v1/jobs/{job_id}/output").content == payload

    assert samples, "no RSS samples"
    peak = max(s[2] for s in samples)
    at50 = next((s[2] for s in samples if s[1] >= 50), None)
    last = samples[-1][2]
    summary = (f"RSS KiB: first {samples[0][2]}, at 50 done {at50}, peak {peak}, last {last}; "
               f"{len(samples)} samples over {samples[-1][0] - samples[0][0]:.0f} s")
    print(summary)
    assert peak < RSS_BOUND_KIB, f"daemon RSS over {RSS_BOUND_KIB} KiB: {summary}"
    assert at50 is not None, summary
    assert last < 1.5 * at50, f"daemon RSS keeps growing: {summary}"
