#!/usr/bin/env bash
# Builds the virtqueue / virtio-blk fuzzer (libFuzzer + AddressSanitizer) with
# swiftc and runs it for FUZZ_SECONDS (default 60) over the committed seed
# corpus. Exits non-zero when the fuzzer finds a crash; the input is left in
# the build directory (FUZZ_BUILD, default .build-fuzz) as crash-*.
# FUZZ_TARGET=vsock builds and runs the virtio-vsock fuzzer instead.
#   FUZZ_SECONDS=600 Tests/Fuzz/run.sh
#   FUZZ_TARGET=vsock Tests/Fuzz/run.sh
#   Tests/Fuzz/run.sh .build-fuzz/crash-1234...   # replay one input
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${FUZZ_BUILD:-$root/.build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
case "${FUZZ_TARGET:-virtqueue}" in
    virtqueue) harness=VirtqueueFuzz binary=virtqueue-fuzz seeds=corpus scratch=corpus ;;
    vsock) harness=VsockFuzz binary=vsock-fuzz seeds=corpus-vsock scratch=corpus-vsock ;;
    *) echo "FUZZ_TARGET must be virtqueue or vsock" >&2; exit 2 ;;
esac
mkdir -p "$out/include" "$out/$scratch"

# SwiftPM synthesizes CSwiftlet's module map; do the same for swiftc.
cat > "$out/include/module.modulemap" <<MAP
module CSwiftlet {
    header "$root/Sources/CSwiftlet/include/CSwiftlet.h"
    export *
}
MAP
clang -c -O1 -fPIC -I "$root/Sources/CSwiftlet/include" "$root/Sources/CSwiftlet/shim.c" -o "$out/shim.o"

# One whole-module compile per module, in dependency order (2 cores: no parallelism to gain).
flags=(-O -g -swift-version 6 -sanitize=fuzzer,address -parse-as-library -I "$out/include" -I "$out")
for module in SwiftletSys SwiftletMemory SwiftletVirtio; do
    # Subdirectories too (SwiftletVirtio/Vsock).
    swiftc "${flags[@]}" -module-name "$module" -wmo -c $(find "$root/Sources/$module" -name '*.swift' | sort) \
        -emit-module -emit-module-path "$out/$module.swiftmodule" -o "$out/$module.o"
done
swiftc "${flags[@]}" -module-name "$harness" "$root/Tests/Fuzz/$harness/main.swift" \
    "$out/SwiftletSys.o" "$out/SwiftletMemory.o" "$out/SwiftletVirtio.o" "$out/shim.o" \
    -o "$out/$binary"

# Let libFuzzer, not the Swift runtime's backtracer, report crashes.
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0}"
if [ $# -gt 0 ]; then
    exec "$out/$binary" "$@"
fi
# New inputs go to the scratch corpus (first directory); the committed seeds stay as they are.
exec "$out/$binary" -max_total_time="$seconds" -max_len=16384 -timeout=10 \
    -artifact_prefix="$out/" -print_final_stats=1 "$out/$scratch" "$root/Tests/Fuzz/$seeds"
