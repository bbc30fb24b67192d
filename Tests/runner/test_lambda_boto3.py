"""The Lambda-compatible route through boto3 (SigV4-signed with the test key pair)."""

import json
import time

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import (ACCOUNT, FINAL_STATES, REGION, SECRET_KEY, UNKNOWN_KEY_ID, ACCESS_KEY_ID,
                      assert_lambda_error, b64decode, lambda_client, signed_request)

INVOKE = "/2015-03-31/functions/{}/invocations"


@pytest.fixture(scope="module")
def lam(daemon):
    return daemon.lambda_client()


@pytest.fixture(scope="module")
def fail_fn(daemon):
    name = "exit3"
    daemon.put_function(name, {"command": ["sh", "-c", "echo partial-out; echo fail-log-line >&2; exit 3"]})
    return name


def client_error(excinfo):
    e = excinfo.value
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"], e.response


def test_sync_invoke_returns_stdout(daemon, lam, echo_fn):
    payload = b'{"hello": "world", "n": 1}'
    r = lam.invoke(FunctionName=echo_fn, Payload=payload)
    assert r["StatusCode"] == 200
    assert "FunctionError" not in r, r
    assert r["ExecutedVersion"] == "1"
    assert r["Payload"].read() == payload


def test_sync_invoke_by_arn_and_qualifier(lam, echo_fn):
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{echo_fn}"
    for qualifier in ("$LATEST", "1"):
        r = lam.invoke(FunctionName=arn, Qualifier=qualifier, Payload=b"by-arn")
        assert r["StatusCode"] == 200, (qualifier, r)
        assert r["Payload"].read() == b"by-arn", qualifier
        assert r["ExecutedVersion"] == "1"
    with pytest.raises(ClientError) as ei:
        lam.invoke(FunctionName=echo_fn, Qualifier="99", Payload=b"x")
    code, status, _ = client_error(ei)
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_event_is_queued_and_succeeds(daemon, lam, echo_fn):
    before = {j["id"] for j in daemon.list_jobs(function=echo_fn)}
    payload = b"event-payload-" + str(time.time()).encode()
    r = lam.invoke(FunctionName=echo_fn, InvocationType="Event", Payload=payload)
    assert r["StatusCode"] == 202
    assert r["Payload"].read() == b""
    new = [j for j in daemon.list_jobs(function=echo_fn) if j["id"] not in before]
    assert len(new) == 1, f"expected one new job of {echo_fn}, got {new}"
    assert new[0]["invocation"] == "async"
    job = daemon.wait_job(new[0]["id"])
    assert job["state"] == "succeeded", job
    out = daemon.get(f"/v1/jobs/{job['id']}/output")
    assert out.status_code == 200 and out.content == payload


def test_dry_run(lam, echo_fn, daemon):
    before = len(daemon.list_jobs(function=echo_fn))
    r = lam.invoke(FunctionName=echo_fn, InvocationType="DryRun", Payload=b"dry")
    assert r["StatusCode"] == 204
    assert len(daemon.list_jobs(function=echo_fn)) == before, "DryRun created a job"


def test_log_tail(lam, echo_fn):
    r = lam.invoke(FunctionName=echo_fn, LogType="Tail", Payload=b"tail-me")
    assert r["StatusCode"] == 200
    assert r["Payload"].read() == b"tail-me"
    assert "LogResult" in r, r
    assert "handler-log-line" in b64decode(r["LogResult"])


def test_function_error_is_unhandled(lam, fail_fn, daemon):
    r = lam.invoke(FunctionName=fail_fn, LogType="Tail", Payload=b"")
    assert r["StatusCode"] == 200
    assert r.get("FunctionError") == "Unhandled", r
    body = json.loads(r["Payload"].read())
    assert body.get("errorType") == "ExitStatus", body
    assert isinstance(body.get("errorMessage"), str), body
    assert "fail-log-line" in b64decode(r["LogResult"])
    jobs = daemon.list_jobs(function=fail_fn)
    assert jobs and jobs[0]["state"] == "failed" and jobs[0]["exitStatus"] == 3, jobs[:1]
    assert jobs[0]["invocation"] == "sync"


def test_unknown_function(lam, daemon):
    with pytest.raises(ClientError) as ei:
        lam.invoke(FunctionName="no-such-function", Payload=b"x")
    code, status, _ = client_error(ei)
    assert (code, status) == ("ResourceNotFoundException", 404)
    r = signed_request("POST", daemon.url(INVOKE.format("no-such-function")), b"x")
    assert_lambda_error(r, 404, "ResourceNotFoundException")


def test_bad_invocation_type(daemon, echo_fn):
    r = signed_request("POST", daemon.url(INVOKE.format(echo_fn)), b"x",
                       headers={"X-Amz-Invocation-Type": "Sometimes"})
    assert_lambda_error(r, 400, "InvalidRequestContentException")


def test_payload_too_large(lam, daemon, echo_fn):
    before = len(daemon.list_jobs(function=echo_fn))
    with pytest.raises(ClientError) as ei:
        lam.invoke(FunctionName=echo_fn, Payload=b"x" * 7_000_000)
    assert client_error(ei)[:2] == ("RequestTooLargeException", 413)
    with pytest.raises(ClientError) as ei:
        lam.invoke(FunctionName=echo_fn, InvocationType="Event", Payload=b"y" * 1_500_000)
    assert client_error(ei)[:2] == ("RequestTooLargeException", 413)
    assert len(daemon.list_jobs(function=echo_fn)) == before, "a rejected payload created a job"


def test_bad_secret(daemon, echo_fn):
    before = len(daemon.list_jobs(function=echo_fn))
    bad = lambda_client(daemon.base, ACCESS_KEY_ID, SECRET_KEY + "x")
    with pytest.raises(ClientError) as ei:
        bad.invoke(FunctionName=echo_fn, Payload=b"x")
    assert client_error(ei)[:2] == ("InvalidSignatureException", 403)
    unknown = lambda_client(daemon.base, UNKNOWN_KEY_ID, SECRET_KEY)
    with pytest.raises(ClientError) as ei:
        unknown.invoke(FunctionName=echo_fn, Payload=b"x")
    assert client_error(ei)[:2] == ("UnrecognizedClientException", 403)
    r = signed_request("POST", daemon.url(INVOKE.format(echo_fn)), b"x", secret="wrong")
    assert_lambda_error(r, 403, "InvalidSignatureException")
    # With --access-keys-file, an unsigned request is refused too.
    r = requests.post(daemon.url(INVOKE.format(echo_fn)), data=b"x", timeout=60)
    assert r.status_code in (401, 403), f"unsigned invoke: {r.status_code} {r.text[:300]}"
    assert len(daemon.list_jobs(function=echo_fn)) == before, "a refused request created a job"


def test_queue_full_gives_429(daemon_factory):
    d = daemon_factory.start("--max-queued", "1", "--max-vms", "1", "--drain-timeout", "5", name="queue-full")
    d.put_function("slow", {"command": ["sleep", "20"]})
    lam = d.lambda_client()
    accepted, refused = 0, None
    try:
        for _ in range(6):
            try:
                r = lam.invoke(FunctionName="slow", InvocationType="Event", Payload=b"")
                assert r["StatusCode"] == 202
                accepted += 1
            except ClientError as e:
                refused = e.response
                break
        assert refused is not None, f"{accepted} Events accepted with --max-queued 1 --max-vms 1, no 429"
        assert refused["Error"]["Code"] == "TooManyRequestsException", refused
        assert refused["ResponseMetadata"]["HTTPStatusCode"] == 429
        headers = refused["ResponseMetadata"]["HTTPHeaders"]
        assert "retry-after" in headers, headers
        assert int(headers["retry-after"]) >= 0
        assert refused.get("Reason") in ("ConcurrentInvocationLimitExceeded",
                                          "ReservedFunctionConcurrentInvocationLimitExceeded"), refused
        assert 1 <= accepted <= 2, f"{accepted} Events accepted before the 429 (--max-queued 1 --max-vms 1)"
    finally:
        for j in d.list_jobs(function="slow"):
            if j["state"] not in FINAL_STATES:
                r = d.delete(f"/v1/jobs/{j['id']}")
                assert r.status_code in (200, 409), f"DELETE /v1/jobs/{j['id']}: {r.status_code} {r.text}"
    for j in d.list_jobs(function="slow"):
        assert d.wait_job(j["id"], timeout=30)["state"] == "cancelled"
