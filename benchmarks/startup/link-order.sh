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
map=.build/swiftlet.map
[[ -x $bin && -f $map ]] || { echo "link-order: build first: make release (it writes $map too)" >&2; exit 1; }
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
  | grep -v -e '^0x' -e '^(' | LC_ALL=C sort -u >"$tmp/hot"
# Run at every exec, but callgrind names them "(below main)" or not at all:
# the C start-up file's entry point and crtbegin's init_array hook.
printf '%s\n' _start frame_dummy >>"$tmp/hot"

# glibc picks a string function's variant by CPU (an IFUNC), and valgrind's
# CPU is not the host's: for every variant that ran, list its whole family
# (__memmove_avx512_unaligned_erms beside __memmove_avx_unaligned_erms...),
# a few KiB each, so the host's own choice is laid out with the rest.
nm --defined-only "$bin" | awk '$2 ~ /^[tTiW]$/ {print $3}' | LC_ALL=C sort -u >"$tmp/defined"
grep -oE '^__(mem|str|stp|wmem|wcs|raw)[a-z0-9]*_(sse2|ssse3|sse4_[12]|avx2?|evex|avx512)' "$tmp/hot" \
  | sed -E 's/_(sse2|ssse3|sse4_[12]|avx2?|evex|avx512)$/_/' | LC_ALL=C sort -u >"$tmp/families" || true
grep -F -f "$tmp/families" "$tmp/defined" | grep -E '_(sse2|ssse3|sse4|avx|evex)' >>"$tmp/hot" || true

# lld moves whole input sections, and a section goes where its first listed
# symbol is. Many archives bundle a hot function with much cold code in one
# section (libswiftCore.a's Swift.o keeps most of the standard library in one
# 1.6 MiB .text; _RegexParser, libdispatch and glibc objects are alike), so
# the list is ordered by the size of each function's section, smallest first:
# functions in sections of their own pack together, and the bundles follow,
# the largest last. Sizes come from the release link's map (RELEASE_FLAGS).
python3 - "$map" "$tmp/hot" >Sources/swiftlet/link-order.txt <<'PY'
import sys
# lld -Map: VMA, LMA, size, align, then the output section, an input section
# (indented 8) or a symbol (indented 16).
size_of, section, in_text = {}, 0, False
for line in open(sys.argv[1], errors="replace"):
    fields, rest = line[:49].split(), line[49:].rstrip("\n")
    if len(fields) != 4:
        continue
    if not rest.startswith(" "):
        in_text = rest == ".text"
    elif in_text and rest.startswith(" " * 16):
        # A local name (objectdestroyTm...) can be in many objects, and lld
        # moves every section that holds it: list it with the largest, or a
        # large bundle would be pulled in among the small sections.
        name = rest.strip()
        size_of[name] = max(size_of.get(name, 0), section)
    elif in_text:
        section = int(fields[2], 16)
hot = set(l for l in open(sys.argv[2]).read().splitlines() if l)
# A function the map does not know (not linked, or not in .text) costs nothing where it is.
for name in sorted(hot, key=lambda n: (size_of.get(n, 0), n)):
    print(name)
PY
echo "link-order: $(wc -l <Sources/swiftlet/link-order.txt) functions in Sources/swiftlet/link-order.txt"
