"""Schemathesis against the spec the daemon serves (/openapi.yaml), all checks.

Generated requests must never get a 5xx, and every response must conform to
the spec (status, content type, headers, body schema); invalid inputs must be
refused and valid ones accepted. The operations that start VMs (POST
/v1/functions/{name}/jobs and the Lambda invoke) are left out of the
generated traffic, and the daemon runs with `--max-warm 0`, so that a
generated `warm` > 0 boots nothing. The copy fed to schemathesis has `image` limited to
"default" (a generated absolute path would name no image, a 400 that the
positive-data check would count against the daemon; and one that names a
directory, `/` say, would be converted to ext4), no `user` (it needs a
converted image), `env` to a few valid
names (OpenAPI 3.0 cannot constrain property names), and GET /v1/jobs loses
its opaque `cursor` (only a cursor the daemon gave is valid). Everything else
is the committed spec unchanged. SCHEMATHESIS_MAX_EXAMPLES and SCHEMATHESIS_SEED
override the defaults below.
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import SPEC_PATH, SWIFTLET

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "100"))
SEED = os.environ.get("SCHEMATHESIS_SEED", "20251203")
EXCLUDED = [("/v1/functions/{name}/jobs", "post"), ("/2015-03-31/functions/{name}/invocations", "post")]


def fuzz_copy(text):
    spec = yaml.safe_load(text)
    for path, method in EXCLUDED:
        del spec["paths"][path][method]
        if not any(k in spec["paths"][path] for k in ("get", "put", "post", "delete", "patch", "head", "options")):
            del spec["paths"][path]
    props = spec["components"]["schemas"]["FunctionSpec"]["properties"]
    props["image"] = {"type": "string", "enum": ["default"]}
    # `user` needs a converted image, which "default" is not: any generated value is a 400.
    del props["user"]
    # OpenAPI 3.0 cannot constrain property names (schemathesis ignores propertyNames):
    # generate env with known, valid names only.
    props["env"] = {"type": "object", "additionalProperties": False, "maxProperties": 3,
                    "properties": {k: {"type": "string", "pattern": "^[^\\x00]*$"} for k in ("A", "_b", "PATH_2")}}
    # A cursor is opaque: only one the daemon gave is valid, which no generator can make up.
    params = spec["paths"]["/v1/jobs"]["get"]["parameters"]
    spec["paths"]["/v1/jobs"]["get"]["parameters"] = [p for p in params if p["name"] != "cursor"]
    return spec


def test_served_spec_is_the_committed_one(daemon):
    r = daemon.get("/openapi.yaml")
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0] == "application/yaml", r.headers
    assert r.content == SPEC_PATH.read_bytes()
    assert yaml.safe_load(r.text)["openapi"] == "3.0.3"


def test_schemathesis(daemon_factory, tmp_path):
    # The fuzzed daemon converts no image: a generated path that names a directory
    # (`/`, `/tmp`) or a file would otherwise be converted to ext4. Its swiftlet
    # refuses `image prepare` (a 400, as for any image that cannot be converted).
    swiftlet = tmp_path / "swiftlet-no-images"
    swiftlet.write_text('#!/bin/sh\nif [ "$1" = image ]; then echo "swiftlet: error: image conversion is off in this test" >&2; exit 125; fi\n'
                        f'exec {SWIFTLET} "$@"\n')
    swiftlet.chmod(0o755)
    d = daemon_factory.start("--max-vms", "1", "--max-warm", "0", "--drain-timeout", "5", "--swiftlet", str(swiftlet),
                             keys=False, name="fuzz")
    r = d.get("/openapi.yaml")
    assert r.status_code == 200
    spec_file = tmp_path / "fuzz-openapi.yaml"
    spec_file.write_text(yaml.safe_dump(fuzz_copy(r.text), sort_keys=False))
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", str(spec_file), "--url", d.base, "--checks", "all",
           "--phases", "examples,coverage,fuzzing", "--max-examples", str(MAX_EXAMPLES), "--seed", SEED,
           "--workers", "1", "--request-timeout", "90", "--no-color", "--generation-database", "none",
           "--report", "junit", "--report-dir", str(tmp_path / "report")]
    env = dict(os.environ, SCHEMATHESIS_HOOKS="", NO_COLOR="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"schemathesis found problems ({' '.join(cmd)}):\n{out[-20000:]}\n{d.log_tail(40)}"
    # The fuzzing started no VM and the daemon is still well.
    assert d.get("/readyz").status_code == 200
    assert d.vmms() == []
