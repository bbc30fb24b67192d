#!/usr/bin/env bash
# Regenerates Sources/swiftlet/link-order.txt, the functions that a VMM's
# start-up and life execute, which the release build (Makefile, RELEASE_FLAGS)
# hands to lld's --symbol-ordering-file: laid out together, they fill fewer
# pages of the binary, and a VMM maps fewer (issue 19: 8.5 -> 7.0 MiB RSS).
#
#   benchmarks/startup/link-order.sh      (needs valgrind, `make images release`)
#
# The functions come from callgrind over `boot` (3 s of a cold boot) and a
# restored `run -- true`. Callgrind cannot follow the seccomp(2) call, so both
# run with --seccomp off: libseccomp's code is not in the list and stays where
# the linker puts it. A stale list costs only locality: lld skips names it
# does not find (--no-warn-symbol-ordering).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${SWIFTLET:-.build/release/swiftlet}
[[ -x $bin ]] || { echo "link-order: build first: make release" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "link-order: needs valgrind (apt-get install valgrind)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Debian 12's valgrind cannot read the DWARF that Swift writes: symbols only.
objcopy --strip-debug "$bin" "$tmp/swiftlet"
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$tmp/run.out" \
  "$tmp/swiftlet" run --seccomp off -- true >/dev/null 2>&1
valgrind --tool=callgrind --demangle=no --callgrind-out-file="$tmp/boot.out" \
  "$tmp/swiftlet" boot --seccomp off --timeout 3 </dev/null >/dev/null 2>&1 || true
# Callgrind names a function once per file (`fn=(id) name`); `'N` marks recursion depth.
grep -hE '^c?fn=\([0-9]+\) ' "$tmp/run.out" "$tmp/boot.out" | sed -E "s/^c?fn=\([0-9]+\) //; s/'[0-9]+$//" \
  | grep -v '^0x' | LC_ALL=C sort -u >Sources/swiftlet/link-order.txt
echo "link-order: $(wc -l <Sources/swiftlet/link-order.txt) functions in Sources/swiftlet/link-order.txt"
