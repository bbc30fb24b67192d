#!/usr/bin/env bash
# Builds a libFuzzer (+ AddressSanitizer) harness of Tests/Fuzz and runs it for
# FUZZ_SECONDS (default 60) over its committed seed corpus. Exits non-zero when
# the fuzzer finds a crash; the input is left in the build directory
# (FUZZ_BUILD, default .build-fuzz) as crash-*.
# FUZZ_TARGET picks the harness: virtqueue (default), vsock, net, snapshot,
# agent, tar, json, or all (each in turn, FUZZ_SECONDS each).
#   FUZZ_SECONDS=600 Tests/Fuzz/run.sh
#   FUZZ_TARGET=net Tests/Fuzz/run.sh
#   FUZZ_TARGET=all FUZZ_SECONDS=30 Tests/Fuzz/run.sh
#   FUZZ_TARGET=snapshot Tests/Fuzz/run.sh .build-fuzz/crash-1234...   # replay one input
# The Swift modules are compiled once per build directory and shared by the
# harnesses; a module is compiled again only when its sources (or a module it
# imports, or this script) changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${FUZZ_BUILD:-$root/.build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
target="${FUZZ_TARGET:-virtqueue}"
script="$root/Tests/Fuzz/run.sh"
all=(virtqueue vsock net snapshot agent tar json)

# harness binary seeds max_len, for target $1.
describe() {
    case "$1" in
        virtqueue) harness=VirtqueueFuzz binary=virtqueue-fuzz seeds=corpus max_len=16384 ;;
        vsock) harness=VsockFuzz binary=vsock-fuzz seeds=corpus-vsock max_len=16384 ;;
        net) harness=NetFuzz binary=net-fuzz seeds=corpus-net max_len=16384 ;;
        snapshot) harness=SnapshotFuzz binary=snapshot-fuzz seeds=corpus-snapshot max_len=65536 ;;
        agent) harness=AgentFuzz binary=agent-fuzz seeds=corpus-agent max_len=65536 ;;
        tar) harness=TarFuzz binary=tar-fuzz seeds=corpus-tar max_len=65536 ;;
        json) harness=JSONFuzz binary=json-fuzz seeds=corpus-json max_len=65536 ;;
        *) echo "FUZZ_TARGET must be one of: ${all[*]} all" >&2; exit 2 ;;
    esac
}
if [ "$target" = all ]; then
    [ $# -eq 0 ] || { echo "replay one input with a single FUZZ_TARGET" >&2; exit 2; }
else
    describe "$target"
fi
mkdir -p "$out/include"
# SwiftPM synthesizes the C shims' module maps; do the same for swiftc.
for name in CSwiftlet CDecompress; do
    printf 'module %s {\n    header "%s"\n    export *\n}\n' "$name" "$root/Sources/$name/include/$name.h"
done > "$out/include/module.modulemap.new"
cmp -s "$out/include/module.modulemap.new" "$out/include/module.modulemap" || mv "$out/include/module.modulemap.new" "$out/include/module.modulemap"
rm -f "$out/include/module.modulemap.new"

# True when $1 is missing or anything after it (files or directories) is newer.
stale() {
    local stamp=$1; shift
    [ ! -e "$stamp" ] || [ -n "$(find "$@" -newer "$stamp" -print -quit)" ]
}

# A C shim's object.
c_module() { # NAME [extra clang flags]
    local name=$1; shift
    local src="$root/Sources/$name"
    stale "$out/$name.o" "$src" "$script" || return 0
    clang -c -O1 -fPIC -I "$src/include" "$@" "$src"/*.c -o "$out/$name.o"
}

# One whole-module compile per module, in dependency order (2 cores: no parallelism to gain).
flags=(-O -g -swift-version 6 -sanitize=fuzzer,address -parse-as-library -I "$out/include" -I "$out")
swift_module() { # NAME "DEPENDENCIES" [extra swiftc flags]
    local name=$1 deps=$2; shift 2
    local inputs=("$root/Sources/$name" "$script" "$root/Sources/CSwiftlet/include")
    for d in $deps; do inputs+=("$out/$d.stamp"); done
    stale "$out/$name.stamp" "${inputs[@]}" || return 0
    echo "fuzz build: $name" >&2
    # Subdirectories too (SwiftletVirtio/Vsock, SwiftletVMM/*).
    swiftc "${flags[@]}" "$@" -module-name "$name" -wmo -c \
        $(find "$root/Sources/$name" -name '*.swift' | sort) \
        -emit-module -emit-module-path "$out/$name.swiftmodule" -o "$out/$name.o"
    touch "$out/$name.stamp"
}

# The harness's executable from its main.swift and the module objects, when any is newer.
swift_harness() { # the objects to link [and linker flags]
    local objects=() lib=()
    for o in "$@"; do case "$o" in -l*) lib+=("$o") ;; *) objects+=("$out/$o") ;; esac; done
    stale "$out/$binary" "$root/Tests/Fuzz/$harness" "${objects[@]}" || return 0
    echo "fuzz build: $harness" >&2
    swiftc "${flags[@]}" -module-name "$harness" "$root/Tests/Fuzz/$harness/main.swift" \
        "${objects[@]}" "${lib[@]}" -o "$out/$binary"
}

build() { # target
    describe "$1"
    case "$1" in
        agent)
            # The agent is freestanding C: its parser is compiled natively into the harness.
            if stale "$out/$binary" "$root/Tests/Fuzz/$harness" "$root/rootfs/agent/agent.c" "$root/rootfs/include" "$script"; then
                echo "fuzz build: $harness" >&2
                clang -g -O1 -fsanitize=fuzzer,address -DSWL_SYSCALL_INSN -DAGENT_FUZZ -Wall -Wno-unused-function \
                    -I "$root/rootfs/agent" "$root/Tests/Fuzz/$harness/main.c" "$root/Tests/Fuzz/$harness/parser.c" \
                    -o "$out/$binary"
            fi
            return ;;
    esac
    c_module CSwiftlet
    swift_module SwiftletSys ""
    case "$1" in
        tar|json)
            # The image readers: SwiftletImage and what it imports (SHA-256 from SwiftletX86).
            c_module CDecompress
            swift_module SwiftletMemory "SwiftletSys"
            swift_module SwiftletX86 "SwiftletSys SwiftletMemory"
            swift_module SwiftletImage "SwiftletSys SwiftletX86"
            swift_harness SwiftletSys.o SwiftletMemory.o SwiftletX86.o SwiftletImage.o CSwiftlet.o CDecompress.o -lz -llz4 -lzstd
            return ;;
    esac
    swift_module SwiftletPersist ""
    swift_module SwiftletMemory "SwiftletSys"
    swift_module SwiftletDevices "SwiftletSys SwiftletPersist"
    swift_module SwiftletVirtio "SwiftletSys SwiftletMemory SwiftletDevices SwiftletPersist"
    local base=(SwiftletSys.o SwiftletPersist.o SwiftletMemory.o SwiftletDevices.o SwiftletVirtio.o CSwiftlet.o)
    case "$1" in
        snapshot)
            c_module CDecompress
            swift_module SwiftletX86 "SwiftletSys SwiftletMemory"
            swift_module SwiftletKVM "SwiftletSys SwiftletMemory SwiftletPersist"
            # -enable-testing: the harness reaches the internal decoder with @testable import.
            swift_module SwiftletVMM "SwiftletSys SwiftletMemory SwiftletVirtio SwiftletX86 SwiftletKVM SwiftletDevices SwiftletPersist" -enable-testing
            swift_harness "${base[@]}" SwiftletX86.o SwiftletKVM.o SwiftletVMM.o CDecompress.o -lz -llz4 -lzstd ;;
        *) swift_harness "${base[@]}" ;;
    esac
}

# Let libFuzzer, not the Swift runtime's backtracer, report crashes.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"

fuzz() { # target
    describe "$1"
    mkdir -p "$out/$seeds"
    echo "fuzz: $1 for $seconds s" >&2
    # New inputs go to the scratch corpus (first directory); the committed seeds stay as they are.
    "$out/$binary" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
        -artifact_prefix="$out/" -print_final_stats=1 "$out/$seeds" "$root/Tests/Fuzz/$seeds"
}

if [ "$target" != all ]; then
    build "$target"
    if [ $# -gt 0 ]; then exec "$out/$binary" "$@"; fi
    fuzz "$target"
    exit
fi
for t in "${all[@]}"; do build "$t"; done
failed=()
for t in "${all[@]}"; do fuzz "$t" || failed+=("$t"); done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes found by: ${failed[*]} (inputs in $out/crash-*)" >&2
    exit 1
fi
echo "fuzz: all ${#all[@]} targets ran ${seconds} s each without a crash" >&2
