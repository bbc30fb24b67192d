#!/usr/bin/env bash
# The swiftletd end-to-end tests (Tests/runner/README.md): a venv with the
# pinned clients, then pytest against real daemons.
#
#   Tests/runner/run.sh [PYTEST ARGS...]      e.g. -k idempotency, -m "not load"
#
# Environment: SWIFTLETD (default .build/debug/swiftletd), SWIFTLET (default
# .build/release/swiftlet), SWIFTLET_SNAPSHOT_CACHE (passed on to the daemons),
# RUNNER_VENV (default .build/runner-venv).
set -euo pipefail
cd "$(dirname "$0")/../.."

VENV=${RUNNER_VENV:-.build/runner-venv}
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
REQS=Tests/runner/requirements.txt
export SWIFTLETD=${SWIFTLETD:-.build/debug/swiftletd}
export SWIFTLET=${SWIFTLET:-.build/release/swiftlet}
if [ -n "${SWIFTLET_SNAPSHOT_CACHE:-}" ]; then export SWIFTLET_SNAPSHOT_CACHE; fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "runner tests: creating $VENV"
    python3 -m venv "$VENV"
fi
# Install only when the requirements changed since the last install.
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQS" | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    echo "runner tests: installing $REQS into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQS"
    echo "$want" > "$STAMP"
fi

for bin in "$SWIFTLETD" "$SWIFTLET"; do
    [ -x "$bin" ] || { echo "runner tests: $bin is not built" >&2; exit 1; }
done

# The spec must be valid OpenAPI before anything is fuzzed against it.
"$VENV/bin/python" -c 'import sys, yaml; from openapi_spec_validator import validate; validate(yaml.safe_load(open(sys.argv[1])))' \
    Sources/swiftletd/openapi.yaml

# The venv's bin first: the tests run its `aws` and `st`.
export PATH="$VENV/bin:$PATH"
# Tests/runner unless the arguments name test files themselves (then only those run).
TARGET=(Tests/runner)
for a in "$@"; do case "$a" in *.py|*.py::*) TARGET=() ;; esac; done
exec "$VENV/bin/python" -m pytest -x -q "${TARGET[@]}" "$@"
