#!/usr/bin/env bash
# The maintainer's guide to the seccomp allowlists
# (Sources/SwiftletSeccomp/allowlists/<role>.swift).
#
# Runs Swiftlet's main paths (boot with 2 vCPUs, vsock and --stats; run with
# stdin, stdout and a vsock socket) under --seccomp=log and prints, per thread
# role:
#   - "outside": syscalls made that the role's allowlist lacks (from
#     Swiftlet's own `swiftlet: seccomp-log:` report, read back from the
#     kernel's audit records): each one must be added, with a reason, or the
#     code changed. Under strict they would kill the VMM.
#   - "used" (when strace is installed): every distinct syscall the role's
#     threads made after installing their filter: an allowlist entry that is
#     never used here is a candidate for removal (check the error paths first).
#
# Usage: Tests/seccomp-log.sh [path/to/swiftlet]   (default: .build/debug/swiftlet)
#        Tests/seccomp-log.sh --suite [swift test filter]
#            runs the test suite's CLI tests (every boot and run they make; all of
#            SwiftletCLITests unless a filter is given) under SWIFTLET_SECCOMP=log
#            and lists, per role, the syscalls that fell outside the allowlists.
#        KEEP=1 keeps the outputs and strace logs in /tmp.
# Needs /dev/kvm and the images from `make images`. Exit status 1 when any
# syscall fell outside an allowlist.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--suite" ]; then
    LOG=$(mktemp /tmp/swiftlet-seccomp-suite.XXXXXX)
    trap 'rm -f "$LOG"' EXIT
    SWIFTLET_SECCOMP=log SWIFTLET_SECCOMP_LOG_FILE="$LOG" swift test --skip-build --filter "${2:-SwiftletCLITests}" >&2 || true
    echo "Syscalls outside the allowlists over the suite's runs (would kill the VMM under strict):"
    if [ -s "$LOG" ]; then
        sed -E 's/.*role=([^ ]+) syscall=([^ ]+).*/\1 \2/' "$LOG" | sort | uniq -c | sed 's/^/  /'
        exit 1
    fi
    echo "  none"
    exit 0
fi
BIN=${1:-.build/debug/swiftlet}
[ -x "$BIN" ] || { echo "no $BIN: run swift build first" >&2; exit 2; }
WORK=$(mktemp -d /tmp/swiftlet-seccomp-log.XXXXXX)
[ -n "${KEEP:-}" ] && echo "keeping $WORK" >&2 || trap 'rm -rf "$WORK"' EXIT
STRACE=$(command -v strace || true)


n=0
scenario() { # name, then the swiftlet arguments
    local name=$1; shift
    n=$((n + 1))
    echo "== $name: swiftlet $*" >&2
    local wrap=()
    [ -n "$STRACE" ] && wrap=("$STRACE" -f -Y -qq -o "$WORK/strace.$n")
    "${wrap[@]}" "$BIN" "$1" --seccomp=log "${@:2}" </dev/null >"$WORK/out.$n" 2>"$WORK/err.$n" || true
    grep -h '^swiftlet: seccomp-log:' "$WORK/err.$n" >>"$WORK/outside" || true
}

: >"$WORK/outside"
scenario "boot, 2 vCPUs, vsock, stats" boot --cpus 2 --stats --boot-timer --timeout 300 \
    --vsock-uds "$WORK/vsock" --append 'SWIFTLET_INIT_RUN="swiftlet-vsock connect 2 9 </dev/null; echo done"'
scenario "run, stdout" run -- uname -a
echo "hello" >"$WORK/stdin"
scenario "run, stdin and stderr" run --vsock-uds "$WORK/rv" -- sh -c 'cat; echo err >&2; exit 3' <"$WORK/stdin"

echo
echo "Syscalls outside the allowlists (would kill the VMM under strict):"
if [ -s "$WORK/outside" ]; then
    sed -E 's/.*role=([^ ]+) syscall=([^ ]+).*/\1 \2/' "$WORK/outside" | sort -u | sed 's/^/  /'
    status=1
else
    echo "  none"
    status=0
fi

if [ -n "$STRACE" ]; then
    echo
    echo "Syscalls used per role after its filter was installed (strace):"
    # strace -Y lines: `TID<comm> name(args...` ; per thread, count only what
    # follows its own seccomp(SECCOMP_SET_MODE_FILTER...) call.
    cat "$WORK"/strace.* | awk '
        match($0, /^[0-9]+<[^>]*>/) {
            head = substr($0, 1, RLENGTH); rest = substr($0, RLENGTH + 2)
            tid = head; sub(/<.*/, "", tid); comm = head; sub(/^[0-9]+</, "", comm); sub(/>$/, "", comm)
            if (rest ~ /^<\.\.\. /) { split(rest, w, " "); name = w[2] } else { name = rest; sub(/\(.*/, "", name) }
            # The real install has flags 0 and a program; libseccomp probes first with NULL.
            if (rest ~ /^seccomp\(SECCOMP_SET_MODE_FILTER, 0, \{/) { on[tid] = 1; next }
            if (!on[tid] || name !~ /^[a-z_0-9]+$/ || name == "seccomp") next
            role = comm
            if (comm ~ /^vcpu[0-9]+$/) role = "vcpu"; else if (comm == "swiftlet") role = "control"
            print role, name
        }' | sort -u >"$WORK/used"
    for role in $(cut -d' ' -f1 "$WORK/used" | sort -u); do
        list=$(awk -v r="$role" '$1 == r { print $2 }' "$WORK/used" | tr '\n' ' ')
        echo "  $role ($(echo $list | wc -w)): $list"
    done
fi
exit $status
