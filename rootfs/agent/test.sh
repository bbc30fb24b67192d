#!/usr/bin/env bash
# Native tests of swiftlet-agent and swiftlet-vsock (no VM needed):
#   rootfs/agent/test.sh
# Builds the agent (freestanding, as rootfs/build.sh does) and the C harness
# (test/harness.c) into a temp dir, runs the protocol tests over a Unix socket
# (`swiftlet-agent --unix`), then swiftlet-vsock's bridging over Unix sockets.
# Prints one summary line; exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
t="$(mktemp -d "${TMPDIR:-/tmp}/swiftlet-agent-test.XXXXXX")"
if ((${#t} > 90)); then # Unix socket paths must stay under 108 bytes
  rmdir "$t"
  t="$(mktemp -d /tmp/swiftlet-agent-test.XXXXXX)"
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$t"
}
trap cleanup EXIT

mapfile -t flags <"$here/../include/freestanding.flags"
gcc -DSWL_SYSCALL_INSN "${flags[@]}" -o "$t/swiftlet-agent" "$here/agent.c"
gcc -O2 -Wall -Wextra -Werror -pthread -o "$t/harness" "$here/test/harness.c"
size="$(stat -c %s "$t/swiftlet-agent")"
if LC_ALL=C readelf -lW "$t/swiftlet-agent" | grep -q INTERP; then echo "agent test: FAIL: not static"; exit 1; fi

head -c 10485760 /dev/urandom >"$t/ten"
head -c 3145728 /dev/urandom >"$t/three"

fail=0
"$t/harness" "$t/swiftlet-agent" "$t" | tee "$t/harness.out" || fail=1

# swiftlet-vsock: the same bridging code as on vsock, over Unix sockets.
vfail=0
ln -s swiftlet-agent "$t/swiftlet-vsock"
v="$t/swiftlet-vsock"
"$v" listen-unix "$t/v.sock" <"$t/three" >"$t/got-ten" & pids+=($!)
for _ in $(seq 100); do [[ -S $t/v.sock ]] && break; sleep 0.01; done
if ! "$v" connect-unix "$t/v.sock" <"$t/ten" >"$t/got-three"; then echo "FAIL [vsock] connect side exit status"; vfail=1; fi
if ! wait "${pids[-1]}"; then echo "FAIL [vsock] listen side exit status"; vfail=1; fi
cmp -s "$t/ten" "$t/got-ten" || { echo "FAIL [vsock] 10 MiB upstream differs"; vfail=1; }
cmp -s "$t/three" "$t/got-three" || { echo "FAIL [vsock] 3 MiB downstream differs"; vfail=1; }
# half-close: the listener gets EOF from an empty stdin and still receives everything
"$v" listen-unix "$t/v2.sock" </dev/null >"$t/got2" & pids+=($!)
for _ in $(seq 100); do [[ -S $t/v2.sock ]] && break; sleep 0.01; done
"$t/swiftlet-agent" vsock connect-unix "$t/v2.sock" <"$t/three" >/dev/null || { echo "FAIL [vsock] subcommand form"; vfail=1; }
wait "${pids[-1]}" || { echo "FAIL [vsock] half-close listener status"; vfail=1; }
cmp -s "$t/three" "$t/got2" || { echo "FAIL [vsock] half-close data differs"; vfail=1; }
# refused: a socket file nobody listens on -> status 1 and one line on stderr
"$v" listen-unix "$t/v3.sock" </dev/null >/dev/null & lp=$!
for _ in $(seq 100); do [[ -S $t/v3.sock ]] && break; sleep 0.01; done
kill "$lp" 2>/dev/null || true; wait "$lp" 2>/dev/null || true
set +e; "$v" connect-unix "$t/v3.sock" </dev/null 2>"$t/err3"; st=$?; set -e
if [[ $st != 1 || $(cat "$t/err3") != "swiftlet-vsock: connect $t/v3.sock: Connection refused" ]]; then
  echo "FAIL [vsock] refused: status $st, stderr: $(cat "$t/err3")"; vfail=1
fi
set +e; "$v" bogus 2>/dev/null; st=$?; set -e
[[ $st == 2 ]] || { echo "FAIL [vsock] usage status $st"; vfail=1; }

summary="$(tail -n1 "$t/harness.out")"
if ((fail)) && [[ -s $t/agent.log ]]; then
  echo "--- the agents' stderr (last 40 lines):"
  tail -n 40 "$t/agent.log"
fi
if ((fail || vfail)); then
  echo "agent test: FAILED ($summary; vsock bridge $( ((vfail)) && echo failed || echo ok)); agent ${size} bytes"
  exit 1
fi
echo "agent test: ok ($summary; vsock bridge ok); agent ${size} bytes, static"
