"""Fixtures for the swiftletd end-to-end tests: real daemons on loopback ports.

Every daemon gets a fresh state directory, its stderr in a log file, and on
teardown a SIGTERM; the teardown then checks that nothing of it is left: no
`swiftlet` process it started (found by parent, by the state directory in the
command line, or as an orphan: this process is a child subreaper, so an
orphaned VMM would be re-parented to it), no mount under the state directory,
and that the state directory can be removed.

Environment: SWIFTLETD (default .build/debug/swiftletd), SWIFTLET (default
.build/release/swiftlet), SWIFTLET_SNAPSHOT_CACHE (passed through).
"""

import base64
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]


def _binary(var, default):
    p = Path(os.environ.get(var) or default)
    return p if p.is_absolute() else (REPO / p)


SWIFTLETD = _binary("SWIFTLETD", ".build/debug/swiftletd")
SWIFTLET = _binary("SWIFTLET", ".build/release/swiftlet")
SPEC_PATH = REPO / "Sources/swiftletd/openapi.yaml"

# The test key pair (--access-keys-file) and a second, unknown one.
ACCESS_KEY_ID = "AKIASWIFTLETTEST0001"
SECRET_KEY = "swiftlet/test/Secret+Key0123456789abcdefghij"
UNKNOWN_KEY_ID = "AKIASWIFTLETUNKNOWN9"
REGION = "us-east-1"
ACCOUNT = "123456789012"

# Timeouts. The first invocation of a function version builds its snapshot
# by cold-booting a guest (30-60 s here, nested emulated KVM); allow a lot more.
READY_TIMEOUT = 120
FIRST_RUN_TIMEOUT = 400
STOP_TIMEOUT = 60

FINAL_STATES = {"succeeded", "failed", "timed_out", "cancelled"}
ERROR_CODES = {
    400: "bad_request", 401: "unauthorized", 404: "not_found", 409: "conflict",
    413: "payload_too_large", 429: "too_many_requests", 431: "request_header_fields_too_large",
    500: "internal", 503: "unavailable",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "load: the 200-job load test (several minutes)")
    # Orphans of a daemon (a VMM whose parent died) come back to this process,
    # where the leftover checks find them.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


MODULE_ORDER = ["test_bad_input", "test_native_api", "test_lambda_boto3", "test_lambda_cli", "test_image", "test_openapi",
                "test_crash", "test_fleet", "test_load"]


def pytest_collection_modifyitems(config, items):
    """Quick modules first; the crash test and the load test (minutes) last."""
    def key(item):
        mod = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return MODULE_ORDER.index(mod) if mod in MODULE_ORDER else len(MODULE_ORDER)
    items.sort(key=key)  # stable: the order within a module is kept


# ---------------------------------------------------------------- /proc

def _proc_table():
    """pid -> (ppid, state, argv) for every process that can be read."""
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        table[pid] = (int(rest[1]), rest[0], argv)
    return table


def _comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def is_swiftlet_argv(pid, argv):
    """A swiftlet VMM (or its jail supervisor): the `swiftlet` binary, not the daemon."""
    names = [os.path.basename(argv[0])] if argv else []
    names.append(_comm(pid))
    return any(n == "swiftlet" or (n.startswith("swiftlet") and not n.startswith("swiftletd")) for n in names)


def descendants(root, table=None):
    table = table if table is not None else _proc_table()
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def alive(pid):
    """Running (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("latin-1")
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] not in ("Z", "X")


def reap_orphans(exclude=()):
    """Reap zombies re-parented to this (subreaper) process, except our own Popen children."""
    me = os.getpid()
    for pid, (ppid, state, _) in _proc_table().items():
        if ppid == me and state == "Z" and pid not in exclude:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the daemon

class Daemon:
    """One swiftletd process and what tests need to talk to it."""

    def __init__(self, factory, name, state_dir, args, token, keys, netns=None, address=None):
        self.factory, self.name, self.state_dir = factory, name, state_dir
        self.token, self.keys = token, keys
        # In a network namespace (the fleet tests) at a given address; else loopback.
        self.host, self.port = (address, 8080) if address else ("127.0.0.1", free_port())
        self.base = f"http://{self.host}:{self.port}"
        self.log_path = factory.root / f"{name}.log"
        # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup tree the jail needs.
        prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.args = prefix + [str(SWIFTLETD), "serve", "--listen", f"{self.host}:{self.port}",
                              "--state-dir", state_dir, "--swiftlet", str(SWIFTLET)] + list(args)
        if token:
            tf = factory.root / f"{name}.token"
            tf.write_text(token + "\n")
            os.chmod(tf, 0o600)
            self.args += ["--token-file", str(tf)]
        if keys:
            kf = factory.root / f"{name}.keys"
            kf.write_text(f"{ACCESS_KEY_ID} {SECRET_KEY}\n")
            os.chmod(kf, 0o600)
            self.args += ["--access-keys-file", str(kf)]
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.proc = None
        self.killed = False
        self.seen_vmms = set()

    # -- life cycle

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT, cwd=REPO, env=dict(os.environ))
        self.pid = self.proc.pid
        return self.wait_ready() if wait else self

    def wait_ready(self):
        deadline = time.time() + READY_TIMEOUT
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name}: swiftletd exited with {self.proc.returncode} before "
                                     f"it was ready\n{self.log_tail()}")
            try:
                r = requests.get(self.url("/readyz"), timeout=5)
                last = (r.status_code, r.text[:200])
                if r.status_code == 200:
                    return self
            except requests.RequestException as e:
                last = repr(e)
            time.sleep(0.2)
        raise AssertionError(f"{self.name}: GET /readyz not 200 within {READY_TIMEOUT} s (last: {last})\n"
                             f"{self.log_tail()}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL, as a crash: nothing of the daemon runs any code after it."""
        self.seen_vmms.update(self.vmms())
        self.proc.kill()
        self.proc.wait(10)
        self.killed = True

    def stop(self):
        """SIGTERM and wait; the exit status must be 0 (a drained, orderly shutdown)."""
        if not self.running():
            return self.proc.returncode
        self.seen_vmms.update(self.vmms())
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.name}: swiftletd still running {STOP_TIMEOUT} s after SIGTERM; "
                                 f"killed\n{self.log_tail()}")
        return rc

    def log_tail(self, lines=60):
        try:
            data = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log)"
        return f"--- last {lines} lines of {self.log_path}:\n" + "\n".join(data[-lines:])

    # -- processes

    def vmms(self):
        """Live swiftlet processes under the daemon (VMMs, jail supervisors, snapshot builds)."""
        if not self.running():
            return []
        table = _proc_table()
        out = [p for p in descendants(self.pid, table) if alive(p) and is_swiftlet_argv(p, table[p][2])]
        self.seen_vmms.update(out)
        return out

    def metric(self, name):
        """The sum of a metric's samples over all its label sets (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if re.match(rf"^{re.escape(name)}(\{{.*\}})? ", line):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def nice(self, pid=None):
        """A process's nice value (/proc/PID/stat field 19); the daemon's by default."""
        with open(f"/proc/{pid or self.pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[16])

    def children(self):
        table = _proc_table()
        return [p for p, (pp, st, _) in table.items() if pp == self.pid and st not in ("Z", "X")]

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    # -- HTTP

    def url(self, path):
        return self.base + path

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 60)
        return self.session.request(method, self.url(path), **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def put_function(self, name, spec):
        r = self.put(f"/v1/functions/{name}", json=spec)
        assert r.status_code in (200, 201), f"PUT /v1/functions/{name} {spec}: {r.status_code} {r.text}"
        return r.json()

    def submit(self, name, payload=b"", headers=None, expect=202):
        r = self.post(f"/v1/functions/{name}/jobs", data=payload, headers=headers or {})
        assert r.status_code == expect, f"POST /v1/functions/{name}/jobs: {r.status_code} {r.text}"
        return r.json()

    def job(self, job_id):
        r = self.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, f"GET /v1/jobs/{job_id}: {r.status_code} {r.text}"
        return r.json()

    def wait_job(self, job_id, timeout=FIRST_RUN_TIMEOUT):
        """Long-polls (?wait) until the job is final; returns it."""
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            w = max(0, min(60, int(left)))
            r = self.get(f"/v1/jobs/{job_id}?wait={w}", timeout=w + 30)
            assert r.status_code == 200, f"GET /v1/jobs/{job_id}?wait={w}: {r.status_code} {r.text}"
            job = r.json()
            if job["state"] in FINAL_STATES:
                return job
            if time.time() >= deadline:
                raise AssertionError(f"job {job_id} not final within {timeout} s: {job}\n{self.log_tail()}")

    def wait_state(self, job_id, states, timeout=FIRST_RUN_TIMEOUT, poll=0.1):
        deadline = time.time() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] in states:
                return job
            if time.time() >= deadline:
                raise AssertionError(f"job {job_id} not in {states} within {timeout} s: {job}")
            time.sleep(poll)

    def list_jobs(self, **params):
        """Every job matching the filters, following nextCursor."""
        jobs, cursor = [], None
        for _ in range(10000):
            q = dict(params)
            if cursor:
                q["cursor"] = cursor
            r = self.get("/v1/jobs", params=q)
            assert r.status_code == 200, f"GET /v1/jobs {q}: {r.status_code} {r.text}"
            body = r.json()
            jobs += body["jobs"]
            cursor = body["nextCursor"]
            if not cursor:
                return jobs
        raise AssertionError("GET /v1/jobs: pagination does not end")

    def lambda_client(self, key_id=ACCESS_KEY_ID, secret=SECRET_KEY):
        return lambda_client(self.base, key_id, secret)


def lambda_client(endpoint, key_id=ACCESS_KEY_ID, secret=SECRET_KEY):
    import boto3
    from botocore.config import Config
    cfg = Config(read_timeout=FIRST_RUN_TIMEOUT + 60, connect_timeout=10,
                 retries={"total_max_attempts": 1, "mode": "standard"})
    return boto3.client("lambda", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=key_id,
                        aws_secret_access_key=secret, config=cfg)


class Factory:
    """Starts daemons; on close stops them and checks that nothing of them is left."""

    def __init__(self, root):
        self.root = Path(root)
        self.daemons = []
        self.state_dirs = []

    def start(self, *args, token=None, keys=True, state_dir=None, name=None, netns=None, address=None, wait=True):
        if state_dir is None:
            # Short and outside pytest's deep temp tree (Unix socket paths live under it).
            state_dir = tempfile.mkdtemp(prefix="swd-", dir="/tmp")
            self.state_dirs.append(state_dir)
        if not SWIFTLETD.exists():
            pytest.fail(f"{SWIFTLETD} is not built (set SWIFTLETD)")
        if not SWIFTLET.exists():
            pytest.fail(f"{SWIFTLET} is not built (set SWIFTLET)")
        name = name or f"swiftletd{len(self.daemons)}"
        d = Daemon(self, name, state_dir, args, token, keys, netns=netns, address=address)
        self.daemons.append(d)
        return d.start(wait=wait)

    def close(self):
        problems = []
        for d in reversed(self.daemons):
            if d.proc is None:
                continue
            try:
                rc = d.stop()
                if not d.killed and rc != 0:
                    problems.append(f"{d.name}: exit status {rc} after SIGTERM (expected 0)\n{d.log_tail(30)}")
            except AssertionError as e:
                problems.append(str(e))
            d.log.close()
        problems += self.leftovers(wait=5)
        for sd in self.state_dirs:
            mounts = _mounts_under(sd)
            if mounts:
                problems.append(f"mounts left under {sd}: {mounts}")
                continue
            shutil.rmtree(sd, ignore_errors=True)
            if os.path.exists(sd):
                problems.append(f"state dir {sd} could not be removed")
        self.daemons.clear()
        if problems:
            raise AssertionError("swiftletd teardown:\n" + "\n".join(problems))

    def leftovers(self, wait=0.0, daemons=None):
        """Live processes of stopped (or killed) daemons; polls up to `wait` seconds."""
        daemons = daemons if daemons is not None else self.daemons
        deadline = time.time() + wait
        while True:
            found = self._leftovers_now(daemons)
            if not found or time.time() >= deadline:
                return [f"left behind: pid {p} ppid {pp} {' '.join(argv)[:300]}" for p, pp, argv in found]
            time.sleep(0.05)

    def _leftovers_now(self, daemons):
        live = {d.pid for d in self.daemons if d.running()}
        ours = {d.pid for d in self.daemons}
        keep = set(live)
        table = _proc_table()
        for pid in live:
            keep.update(descendants(pid, table))
        dead = [d for d in daemons if not d.running()]
        dirs = [d.state_dir for d in dead if not any(x.running() and x.state_dir == d.state_dir for x in self.daemons)]
        dead_pids = {d.pid for d in dead}
        seen = set().union(*(d.seen_vmms for d in dead)) if dead else set()
        me = os.getpid()
        reap_orphans(exclude=ours)
        found = []
        for pid, (ppid, state, argv) in table.items():
            if pid in keep or pid == me or state in ("Z", "X") or not alive(pid):
                continue
            cmd = "\0".join(argv)
            if (ppid in dead_pids or pid in seen or any(sd in cmd for sd in dirs)
                    or (ppid == me and pid not in ours and is_swiftlet_argv(pid, argv))):
                found.append((pid, ppid, argv))
        return found


def _mounts_under(path):
    path = os.path.realpath(path)
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                mp = line.split()[4]
                if mp == path or mp.startswith(path + "/"):
                    out.append(mp)
    except OSError:
        pass
    return out


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def session_factory(tmp_path_factory):
    f = Factory(tmp_path_factory.mktemp("swiftletd-session"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def module_factory(tmp_path_factory):
    f = Factory(tmp_path_factory.mktemp("swiftletd-module"))
    yield f
    f.close()


@pytest.fixture
def daemon_factory(tmp_path_factory):
    """Starts daemons with any options: `daemon_factory.start("--max-vms", "1", token=..., keys=...)`."""
    f = Factory(tmp_path_factory.mktemp("swiftletd"))
    yield f
    f.close()


@pytest.fixture(scope="session")
def daemon(session_factory):
    """The shared daemon: loopback, no token, --access-keys-file with the test key pair."""
    return session_factory.start("--max-vms", "2", "--drain-timeout", "20", name="main")


@pytest.fixture(scope="session")
def api_token():
    return "tok-" + secrets.token_hex(24)


@pytest.fixture(scope="session")
def token_daemon(session_factory, api_token):
    """A daemon with --token-file: every native request needs the bearer token."""
    return session_factory.start("--max-vms", "1", "--drain-timeout", "20", token=api_token, keys=False,
                                 name="token")


@pytest.fixture(scope="session")
def echo_fn(daemon):
    """`echo`: stdout is the payload, stderr one known line. Its snapshot is built here, once."""
    name = "echo"
    daemon.put_function(name, {"command": ["sh", "-c", "cat; echo handler-log-line >&2"]})
    job = daemon.wait_job(daemon.submit(name, b"warm-up")["id"])
    assert job["state"] == "succeeded", f"warm-up of {name}: {job}\n{daemon.log_tail()}"
    return name


# ---------------------------------------------------------------- assertions

def assert_error(r, status, code=None):
    """A native error: the status, and the contract's JSON with the code that goes with it."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: expected {status}, got {r.status_code} {r.text[:500]}"
    try:
        body = r.json()
    except ValueError:
        raise AssertionError(f"{r.request.method} {r.request.url}: {status} body is not JSON: {r.text[:300]!r}")
    ctype = r.headers.get("Content-Type", "")
    assert ctype.split(";")[0].strip() == "application/json", f"error Content-Type: {ctype!r}"
    code = code or ERROR_CODES[status]
    assert isinstance(body, dict) and set(body) == {"error"}, f"error body: {body}"
    assert set(body["error"]) == {"code", "message"}, f"error body: {body}"
    assert body["error"]["code"] == code, f"error code: expected {code}, got {body}"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], f"error body: {body}"
    return body["error"]


def b64decode(s):
    return base64.b64decode(s).decode("utf-8", "replace")


def signed_request(method, url, body=b"", headers=None, key_id=ACCESS_KEY_ID, secret=SECRET_KEY, timeout=120):
    """A raw request signed with SigV4 (service lambda), for what boto3 will not send."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(key_id, secret), "lambda", REGION).add_auth(req)
    prepared = req.prepare()
    return requests.request(method, prepared.url, data=body, headers=dict(prepared.headers), timeout=timeout)


def assert_lambda_error(r, status, error_type):
    """A Lambda service error: status, x-amzn-ErrorType, and {"__type", "message"}."""
    assert r.status_code == status, f"{r.request.method} {r.request.url}: expected {status} {error_type}, got {r.status_code} {r.text[:500]}"
    assert r.headers.get("x-amzn-ErrorType", "").split(":")[0] == error_type, f"x-amzn-ErrorType: {r.headers}"
    body = r.json()
    assert body.get("__type") == error_type, f"body: {body}"
    assert isinstance(body.get("message"), str), f"body: {body}"
    return body
