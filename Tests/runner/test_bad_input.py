"""Bad input: each request is a 4xx with the contract's error JSON, and changes nothing."""

import json
import socket
import time

import pytest
import requests

from conftest import assert_error

STABLE_SPEC = {"command": ["echo", "stable"], "memoryMiB": 128, "env": {"A": "1"}}
MISSING_IMAGE = "/nonexistent/swiftlet-runner-test/missing.ext4"


@pytest.fixture(scope="module")
def stable(daemon):
    name = "stable"
    daemon.put_function(name, STABLE_SPEC)
    return name


def spec(**changes):
    s = dict(STABLE_SPEC)
    for k, v in changes.items():
        if v is DROP:
            s.pop(k, None)
        else:
            s[k] = v
    return json.dumps(s).encode()


DROP = object()

BAD_BODIES = {
    "malformed-json": b'{"command": ["echo"',
    "not-json": b"command=echo",
    "empty": b"",
    "array": b'[["echo"]]',
    "string": b'"echo"',
    "null": b"null",
    "unknown-field": spec(bogus=1),
    "unknown-field-case": spec(MemoryMiB=256),
    "missing-image": spec(image=MISSING_IMAGE),
    "relative-image": spec(image="rootfs.ext4"),
    "image-unknown-prefix": spec(image="docker://busybox:latest"),
    "image-relative-reference": spec(image="tar:rootfs.tar"),
    "image-empty-reference": spec(image="oci:"),
    "image-nul": spec(image="/tmp/a\u0000b"),
    "image-missing-reference": spec(image="tar:" + MISSING_IMAGE),
    "image-number": spec(image=5),
    "user-with-default-image": spec(user="root"),
    "image-missing-ext4-reference": spec(image="ext4:" + MISSING_IMAGE),
    "user-empty": spec(image="tar:" + MISSING_IMAGE, user=""),
    "user-two-colons": spec(image="tar:" + MISSING_IMAGE, user="a:b:c"),
    "user-empty-group": spec(image="tar:" + MISSING_IMAGE, user="a:"),
    "user-number": spec(image="tar:" + MISSING_IMAGE, user=1000),
    "user-null": spec(image="tar:" + MISSING_IMAGE, user=None),
    "memory-0": spec(memoryMiB=0),
    "memory-negative": spec(memoryMiB=-5),
    "memory-31": spec(memoryMiB=31),
    "memory-16385": spec(memoryMiB=16385),
    "memory-string": spec(memoryMiB="256"),
    "memory-fraction": spec(memoryMiB=1.5),
    "memory-bool": spec(memoryMiB=True),
    "memory-null": spec(memoryMiB=None),
    "vcpus-0": spec(vcpus=0),
    "vcpus-33": spec(vcpus=33),
    "timeout-0": spec(timeoutSeconds=0),
    "timeout-negative": spec(timeoutSeconds=-1),
    "timeout-3601": spec(timeoutSeconds=3601),
    "timeout-string": spec(timeoutSeconds="60"),
    "concurrency-0": spec(concurrency=0),
    "concurrency-1025": spec(concurrency=1025),
    "warm-negative": spec(warm=-1),
    "warm-65": spec(warm=65),
    "retries-negative": spec(retries=-1),
    "retries-11": spec(retries=11),
    "command-missing": spec(command=DROP),
    "command-empty": spec(command=[]),
    "command-empty-arg": spec(command=["echo", ""]),
    "command-string": spec(command="echo stable"),
    "command-number": spec(command=[1]),
    "command-257": spec(command=["true"] * 257),
    "command-over-64k": spec(command=["echo", "x" * 65536]),
    "env-bad-key": spec(env={"1BAD": "x"}),
    "env-dash-key": spec(env={"A-B": "x"}),
    "env-number-value": spec(env={"A": 1}),
    "env-129": spec(env={f"V{i}": "x" for i in range(129)}),
    "workdir-relative": spec(workdir="relative/dir"),
    "workdir-number": spec(workdir=5),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_function_spec(daemon, stable, case):
    before = daemon.get(f"/v1/functions/{stable}").json()
    r = daemon.put(f"/v1/functions/{stable}", data=BAD_BODIES[case], headers={"Content-Type": "application/json"})
    err = assert_error(r, 400)
    if case in ("missing-image", "image-missing-reference", "image-missing-ext4-reference"):
        assert MISSING_IMAGE in err["message"], f"the message should name the path: {err}"
    if case == "image-missing-reference":
        # swiftlet's one line (`image prepare` failed), without its prefix.
        assert "swiftlet: error" not in err["message"] and "\n" not in err["message"], err
    if case.startswith("user-"):
        assert "'user'" in err["message"], f"the message should name the field: {err}"
    assert daemon.get(f"/v1/functions/{stable}").json() == before, "a refused PUT changed the function"
    # The same body for a new name creates nothing.
    r = daemon.put("/v1/functions/never-created", data=BAD_BODIES[case], headers={"Content-Type": "application/json"})
    assert_error(r, 400)
    assert_error(daemon.get("/v1/functions/never-created"), 404)


def test_native_payload_too_large(daemon, stable):
    r = daemon.post(f"/v1/functions/{stable}/jobs", data=b"z" * (1024 * 1024 + 1))
    assert_error(r, 413)
    assert daemon.list_jobs(function=stable) == []


def _raw_request(port, request, timeout=15):
    """Sends bytes, reads until the server closes (or `timeout`); returns (response bytes, closed, seconds)."""
    t0 = time.time()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = b"", False
        while time.time() - t0 < timeout:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
    return data, closed, time.time() - t0


def test_huge_header(daemon):
    big = b"x" * (100 * 1024)
    req = (b"GET /v1/functions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: " + big + b"\r\n\r\n")
    data, closed, seconds = _raw_request(daemon.port, req)
    assert data, f"no response to a 100 KB header ({'closed' if closed else 'hung'} after {seconds:.1f} s)"
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0].decode("latin-1")
    status = int(status_line.split()[1])
    assert status in (400, 431), f"100 KB header: {status_line}"
    assert closed and seconds < 15, f"the connection was not closed after the {status} ({seconds:.1f} s)"
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:])}
    # SwiftNIO's HTTP parser refuses the header before any route sees it and
    # answers a bare 400 (no body) and closes; a body, if any, is the API's JSON.
    if headers.get("content-length", "0") != "0":
        assert headers.get("content-type", "").split(";")[0] == "application/json", headers
        err = json.loads(body)
        assert err["error"]["code"] == ("request_header_fields_too_large" if status == 431 else "bad_request"), err
    assert requests.get(daemon.url("/healthz"), timeout=10).status_code == 200


def test_many_headers(daemon):
    lines = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(2000))
    data, closed, seconds = _raw_request(daemon.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert data, f"no response to 2000 headers ({'closed' if closed else 'hung'} after {seconds:.1f} s)"
    status = int(data.split(b"\r\n")[0].split()[1])
    assert status in (400, 431), data[:200]
    assert requests.get(daemon.url("/healthz"), timeout=10).status_code == 200


def test_bad_idempotency_key(daemon, stable):
    # A control character is refused by the HTTP parser (a bare 400, no body);
    # a key that parses but breaks the API's limits gets the API's JSON error.
    r = daemon.post(f"/v1/functions/{stable}/jobs", data=b"x", headers={"Idempotency-Key": "k\x01ey"})
    assert r.status_code == 400, r.text
    r = daemon.post(f"/v1/functions/{stable}/jobs", data=b"x", headers={"Idempotency-Key": "k" * 256})
    assert_error(r, 400)
    assert daemon.list_jobs(function=stable) == []


# ---------------------------------------------------------------- bearer tokens

def test_no_token(token_daemon):
    d = token_daemon
    for method, path in (("GET", "/v1/functions"), ("GET", "/v1/jobs"), ("GET", "/v1/functions/x"),
                         ("PUT", "/v1/functions/x"), ("DELETE", "/v1/functions/x"), ("POST", "/v1/functions/x/jobs"),
                         ("GET", "/v1/jobs/" + "0" * 32), ("DELETE", "/v1/jobs/" + "0" * 32)):
        r = requests.request(method, d.url(path), json={"command": ["true"]} if method == "PUT" else None, timeout=30)
        assert_error(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), (path, r.headers)
    assert_error(d.get("/v1/functions/x"), 404)  # the unauthenticated PUT created nothing


def test_bad_token(token_daemon, api_token):
    d = token_daemon
    for auth in (f"Bearer {api_token}x", f"Bearer {api_token[:-1]}", "Bearer ", f"Basic {api_token}",
                 api_token, f"bearer-{api_token}"):
        r = requests.get(d.url("/v1/functions"), headers={"Authorization": auth}, timeout=30)
        assert_error(r, 401)
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    r = requests.put(d.url("/v1/functions/tok"), json={"command": ["true"]},
                     headers={"Authorization": f"Bearer {api_token}x"}, timeout=30)
    assert_error(r, 401)
    assert_error(d.get("/v1/functions/tok"), 404)
    assert d.get("/v1/functions").status_code == 200
    # Probes and the spec need no token (the spec declares no security for them).
    for path in ("/healthz", "/readyz", "/openapi.yaml"):
        assert requests.get(d.url(path), timeout=30).status_code == 200, path


def test_token_on_lambda_route(token_daemon, api_token):
    d = token_daemon
    d.put_function("tok-fn", {"command": ["cat"]})
    url = d.url("/2015-03-31/functions/tok-fn/invocations")
    r = requests.post(url, headers={"X-Amz-Invocation-Type": "DryRun"}, timeout=30)
    assert r.status_code in (401, 403), f"unauthenticated DryRun: {r.status_code} {r.text}"
    r = requests.post(url, headers={"X-Amz-Invocation-Type": "DryRun", "Authorization": f"Bearer {api_token}"},
                      timeout=30)
    assert r.status_code == 204, f"DryRun with the bearer token: {r.status_code} {r.text}"
