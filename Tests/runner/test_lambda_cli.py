"""The Lambda-compatible route through the AWS CLI (`aws lambda invoke`)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ACCESS_KEY_ID, FIRST_RUN_TIMEOUT, REGION, SECRET_KEY, b64decode


def aws_binary():
    here = Path(sys.executable).parent / "aws"
    return str(here) if here.exists() else shutil.which("aws")


@pytest.fixture(scope="module")
def aws(tmp_path_factory):
    exe = aws_binary()
    if not exe:
        pytest.fail("the aws CLI is not installed (Tests/runner/run.sh installs it)")
    home = tmp_path_factory.mktemp("aws")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION,
               AWS_CONFIG_FILE=str(home / "config"), AWS_SHARED_CREDENTIALS_FILE=str(home / "credentials"),
               AWS_MAX_ATTEMPTS="1", AWS_RETRY_MODE="standard", AWS_PAGER="")
    version = subprocess.run([exe, "--version"], env=env, capture_output=True, text=True, timeout=60)
    # AWS CLI v2 base64-decodes blob arguments unless told otherwise; v1 takes them raw
    # and does not know --cli-binary-format.
    v2 = (version.stdout + version.stderr).startswith("aws-cli/2")
    binary_format = ["--cli-binary-format", "raw-in-base64-out"] if v2 else []

    def invoke(endpoint, function, payload, out, *extra):
        cmd = [exe, "lambda", "invoke", "--endpoint-url", endpoint, "--function-name", function,
               "--payload", payload, *binary_format, "--cli-read-timeout", str(FIRST_RUN_TIMEOUT + 60),
               *extra, str(out)]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=FIRST_RUN_TIMEOUT + 120)
        assert p.returncode == 0, f"{' '.join(cmd)}: status {p.returncode}\n{p.stdout}\n{p.stderr}"
        return json.loads(p.stdout)

    return invoke


def test_cli_invoke(daemon, echo_fn, aws, tmp_path):
    out = tmp_path / "out.json"
    payload = '{"from": "aws-cli", "list": [1, 2, 3]}'
    result = aws(daemon.base, echo_fn, payload, out)
    assert result.get("StatusCode") == 200, result
    assert result.get("ExecutedVersion") == "1", result
    assert "FunctionError" not in result, result
    assert out.read_text() == payload


def test_cli_invoke_log_tail(daemon, echo_fn, aws, tmp_path):
    out = tmp_path / "out.json"
    result = aws(daemon.base, echo_fn, '"tail"', out, "--log-type", "Tail")
    assert result.get("StatusCode") == 200, result
    assert out.read_text() == '"tail"'
    assert "handler-log-line" in b64decode(result["LogResult"]), result
