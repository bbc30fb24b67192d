"""The native API (/v1) with requests: functions, jobs, idempotency, cancellation,
long-polling, output and log, listing with filters and cursors, metrics, health."""

import re
import time
from datetime import datetime

import pytest

from conftest import FINAL_STATES, SPEC_PATH, alive, assert_error

FUNCTION_FIELDS = {"name", "version", "command", "image", "imageSha256", "env", "workdir", "user", "memoryMiB", "vcpus",
                   "timeoutSeconds", "concurrency", "warm", "retries", "createdAt", "updatedAt"}
JOB_FIELDS = {"id", "function", "version", "state", "invocation", "attempts", "maxAttempts", "exitStatus", "error",
              "idempotencyKey", "createdAt", "startedAt", "finishedAt", "outputBytes", "logBytes", "timings"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


@pytest.fixture(scope="module")
def sleeper(daemon):
    """Sleeps for the payload's number of seconds (60 without one). Warmed up here."""
    name = "sleeper"
    daemon.put_function(name, {"command": ["sh", "-c", 'read -r s || true; sleep "${s:-60}"']})
    job = daemon.wait_job(daemon.submit(name, b"0")["id"])
    assert job["state"] == "succeeded", job
    return name


# ------------------------------------------------------------------ health

def test_health_and_spec(daemon):
    r = daemon.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = daemon.get("/readyz")
    assert (r.status_code, r.json()) == (200, {"status": "ready"})
    r = daemon.get("/openapi.yaml")
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0] == "application/yaml", r.headers
    assert r.content == SPEC_PATH.read_bytes(), "/openapi.yaml differs from Sources/swiftletd/openapi.yaml"


def test_metrics(daemon, echo_fn):
    r = daemon.get("/metrics")
    assert r.status_code == 200
    ctype = r.headers["Content-Type"]
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, ctype
    text = r.text
    missing = [name for name in ("swiftlet_jobs_total", "swiftlet_queue_depth", "swiftlet_running_vms",
                                 "swiftlet_warm_vms", "swiftlet_queue_wait_seconds", "swiftlet_restore_seconds",
                                 "swiftlet_run_seconds", "swiftlet_end_to_end_seconds")
               if not re.search(rf"^# TYPE {name} ", text, re.M)]
    assert not missing, f"not in /metrics: {missing}\n{text}"
    for name in ("swiftlet_queue_wait_seconds", "swiftlet_restore_seconds", "swiftlet_run_seconds",
                 "swiftlet_end_to_end_seconds"):
        assert re.search(rf"^# TYPE {name} histogram$", text, re.M), f"{name} is not a histogram"
        assert re.search(rf'^{name}_count\{{[^}}]*function="{echo_fn}"', text, re.M), f"no {name}{{function=\"{echo_fn}\"}}"
    succeeded = None
    for m in re.finditer(r"^swiftlet_jobs_total\{([^}]*)\}\s+(\S+)", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("function") == echo_fn and labels.get("state") == "succeeded":
            succeeded = float(m.group(2))
    assert succeeded is not None and succeeded >= 1, \
        f'swiftlet_jobs_total{{function="{echo_fn}",state="succeeded"}} missing or 0'


# ------------------------------------------------------------------ functions

def test_function_crud(daemon):
    name = "crud-fn"
    spec = {"command": ["echo", "hi"], "env": {"GREETING": "hello"}, "timeoutSeconds": 12.5}
    r = daemon.put(f"/v1/functions/{name}", json=spec)
    assert r.status_code == 201, r.text
    f1 = r.json()
    assert set(f1) == FUNCTION_FIELDS, set(f1) ^ FUNCTION_FIELDS
    assert f1["name"] == name and f1["version"] == 1 and f1["command"] == ["echo", "hi"]
    assert (f1["image"], f1["env"], f1["workdir"], f1["user"]) == ("default", {"GREETING": "hello"}, None, None)
    assert (f1["memoryMiB"], f1["vcpus"], f1["timeoutSeconds"]) == (128, 1, 12.5)
    assert (f1["concurrency"], f1["warm"], f1["retries"]) == (4, 0, 2)
    assert re.fullmatch(r"[0-9a-f]{64}", f1["imageSha256"]), f1
    assert RFC3339_UTC.match(f1["createdAt"]) and RFC3339_UTC.match(f1["updatedAt"]), f1

    r = daemon.put(f"/v1/functions/{name}", json=spec)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1, "an unchanged spec made a new version"

    r = daemon.put(f"/v1/functions/{name}", json=dict(spec, memoryMiB=256, workdir="/tmp"))
    assert r.status_code == 200, r.text
    f2 = r.json()
    assert (f2["version"], f2["memoryMiB"], f2["workdir"]) == (2, 256, "/tmp")

    r = daemon.get(f"/v1/functions/{name}")
    assert r.status_code == 200 and r.json() == f2

    r = daemon.get("/v1/functions")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"functions"}
    names = [f["name"] for f in body["functions"]]
    assert names == sorted(names) and name in names, names

    r = daemon.delete(f"/v1/functions/{name}")
    assert r.status_code == 204 and r.content == b""
    assert_error(daemon.get(f"/v1/functions/{name}"), 404)
    assert_error(daemon.delete(f"/v1/functions/{name}"), 404)
    assert name not in [f["name"] for f in daemon.get("/v1/functions").json()["functions"]]


@pytest.mark.parametrize("bad", ["bad.name", "a" * 65, "sp%20ace", "%C3%A9t%C3%A9"])
def test_bad_function_name(daemon, bad):
    assert_error(daemon.put(f"/v1/functions/{bad}", json={"command": ["true"]}), 400)
    assert_error(daemon.get(f"/v1/functions/{bad}"), 400)


# ------------------------------------------------------------------ jobs

def test_idempotency(daemon, echo_fn):
    name = "idem"
    daemon.put_function(name, {"command": ["sh", "-c", "cat; echo ran >&2"]})
    key = f"idem-key-{time.time()}"
    r1 = daemon.post(f"/v1/functions/{name}/jobs", data=b"once", headers={"Idempotency-Key": key})
    assert r1.status_code == 202, r1.text
    assert "Idempotent-Replayed" not in r1.headers
    job = r1.json()
    assert set(job) == JOB_FIELDS, set(job) ^ JOB_FIELDS
    assert job["idempotencyKey"] == key and job["invocation"] == "async" and job["function"] == name
    r2 = daemon.post(f"/v1/functions/{name}/jobs", data=b"once", headers={"Idempotency-Key": key})
    assert r2.status_code == 200, r2.text
    assert r2.headers.get("Idempotent-Replayed") == "true", r2.headers
    assert r2.json()["id"] == job["id"]
    done = daemon.wait_job(job["id"])
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 1, done
    r3 = daemon.post(f"/v1/functions/{name}/jobs", data=b"once", headers={"Idempotency-Key": key})
    assert r3.status_code == 200 and r3.json()["id"] == job["id"], r3.text
    jobs = daemon.list_jobs(function=name)
    assert [j["id"] for j in jobs] == [job["id"]], jobs
    assert daemon.get(f"/v1/jobs/{job['id']}/log").text == "ran\n"
    # A key outside 1..255 printable ASCII is refused, and creates nothing.
    assert_error(daemon.post(f"/v1/functions/{name}/jobs", data=b"x", headers={"Idempotency-Key": "k" * 256}), 400)
    assert len(daemon.list_jobs(function=name)) == 1


def test_output_and_log(daemon, echo_fn):
    payload = b"binary\x00\x01\xff payload\nsecond line\n"
    job = daemon.submit(echo_fn, payload)
    assert job["state"] in ("queued", "running") and job["attempts"] in (0, 1), job
    done = daemon.wait_job(job["id"])
    assert done["state"] == "succeeded" and done["exitStatus"] == 0 and done["error"] is None, done
    assert done["outputBytes"] == len(payload) and done["logBytes"] == len("handler-log-line\n"), done
    for k in ("startedAt", "finishedAt", "createdAt"):
        assert RFC3339_UTC.match(done[k]), (k, done)
    t = done["timings"]
    assert set(t) == {"queueMs", "restoreMs", "runMs", "totalMs"}, t
    assert all(isinstance(v, (int, float)) and v >= 0 for v in t.values()), t
    r = daemon.get(f"/v1/jobs/{job['id']}/output")
    assert r.status_code == 200 and r.content == payload
    assert r.headers["Content-Type"].split(";")[0] == "application/octet-stream", r.headers
    r = daemon.get(f"/v1/jobs/{job['id']}/log")
    assert r.status_code == 200 and r.text == "handler-log-line\n"
    assert r.headers["Content-Type"].split(";")[0] == "text/plain", r.headers


def test_unknown_job(daemon):
    missing = "0" * 32
    assert_error(daemon.get(f"/v1/jobs/{missing}"), 404)
    assert_error(daemon.get(f"/v1/jobs/{missing}?wait=1"), 404)
    assert_error(daemon.get(f"/v1/jobs/{missing}/output"), 404)
    assert_error(daemon.get(f"/v1/jobs/{missing}/log"), 404)
    assert_error(daemon.delete(f"/v1/jobs/{missing}"), 404)
    assert_error(daemon.post("/v1/functions/no-such-fn/jobs", data=b"x"), 404)


def test_wait_long_poll(daemon, sleeper):
    job = daemon.submit(sleeper, b"3")
    t0 = time.time()
    r = daemon.get(f"/v1/jobs/{job['id']}?wait=1", timeout=30)
    elapsed = time.time() - t0
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running"), r.text
    assert 0.8 <= elapsed < 5, f"?wait=1 on a 3 s job answered after {elapsed:.2f} s"
    t0 = time.time()
    r = daemon.get(f"/v1/jobs/{job['id']}?wait=60", timeout=90)
    elapsed = time.time() - t0
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "succeeded", r.json()
    assert elapsed < 30, f"?wait=60 answered {elapsed:.1f} s after the 3 s job began"
    t0 = time.time()
    r = daemon.get(f"/v1/jobs/{job['id']}?wait=60", timeout=90)
    assert r.status_code == 200 and time.time() - t0 < 2, "?wait on a final job must answer at once"
    for bad in ("61", "-1", "abc", "60.5"):
        assert_error(daemon.get(f"/v1/jobs/{job['id']}?wait={bad}"), 400)


def test_cancel_running_job(daemon, sleeper):
    before = set(daemon.vmms())
    job = daemon.submit(sleeper, b"60")
    daemon.wait_state(job["id"], {"running"}, timeout=120)
    deadline, vmms = time.time() + 30, []
    while time.time() < deadline and not vmms:
        vmms = [p for p in daemon.vmms() if p not in before]
        time.sleep(0.05)
    assert vmms, f"job {job['id']} is running but no swiftlet process of the daemon was found"
    t0 = time.time()
    r = daemon.delete(f"/v1/jobs/{job['id']}")
    while any(alive(p) for p in vmms) and time.time() - t0 < 5:
        time.sleep(0.01)
    gone_after = time.time() - t0
    assert r.status_code == 200, r.text
    assert not any(alive(p) for p in vmms), f"VMM {vmms} still alive 5 s after DELETE"
    assert gone_after <= 1.0, f"the VMM took {gone_after:.2f} s to go after DELETE (at most 1 s)"
    assert r.json()["state"] == "cancelled", f"DELETE /v1/jobs/{{id}} answered {r.json()}"
    final = daemon.job(job["id"])
    assert final["state"] == "cancelled" and final["finishedAt"] is not None, final
    assert_error(daemon.delete(f"/v1/jobs/{job['id']}"), 409)
    assert daemon.job(job["id"])["state"] == "cancelled"


def test_list_filters_and_pagination(daemon):
    name = "pager"
    daemon.put_function(name, {"command": ["cat"]})
    ids = [daemon.submit(name, f"page-{i}".encode())["id"] for i in range(5)]
    for i in ids:
        assert daemon.wait_job(i)["state"] == "succeeded"
    newest_first = list(reversed(ids))

    pages, cursor = [], None
    for _ in range(10):
        params = {"function": name, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        r = daemon.get("/v1/jobs", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"jobs", "nextCursor"}, body.keys()
        assert len(body["jobs"]) <= 2
        pages.append([j["id"] for j in body["jobs"]])
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert [i for p in pages for i in p] == newest_first, pages
    assert [len(p) for p in pages][:3] == [2, 2, 1], pages

    r = daemon.get("/v1/jobs", params={"function": name})
    assert [j["id"] for j in r.json()["jobs"]] == newest_first and r.json()["nextCursor"] is None
    assert [j["id"] for j in daemon.list_jobs(function=name, state="succeeded")] == newest_first
    for state in ("queued", "running", "failed", "timed_out", "cancelled"):
        assert daemon.list_jobs(function=name, state=state) == [], state
    everything = daemon.list_jobs(limit=1000)
    assert set(ids) <= {j["id"] for j in everything}
    created = [datetime.fromisoformat(j["createdAt"].replace("Z", "+00:00")) for j in everything]
    assert created == sorted(created, reverse=True), "GET /v1/jobs is not newest first"
    assert all(j["function"] == name for j in daemon.list_jobs(function=name))

    for params in ({"state": "bogus"}, {"limit": "0"}, {"limit": "1001"}, {"limit": "abc"},
                   {"function": "bad.name"}):
        assert_error(daemon.get("/v1/jobs", params=params), 400)
