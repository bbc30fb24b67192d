#!/usr/bin/env bash
# Builds the in-process virtio-blk benchmark (release, swiftc over the module
# sources; no Package.swift target) and runs it.
#   benchmarks/virtio-blk/run.sh [image-directory (default /tmp)] [repetitions (default 3)] [workload filter, e.g. "4K seq read"] [ephemeral]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${BENCH_BUILD:-$root/.build-bench}"
mkdir -p "$out/include"

# SwiftPM synthesizes CSwiftlet's module map; do the same for swiftc.
cat > "$out/include/module.modulemap" <<MAP
module CSwiftlet {
    header "$root/Sources/CSwiftlet/include/CSwiftlet.h"
    export *
}
MAP
clang -c -O2 -fPIC -I "$root/Sources/CSwiftlet/include" "$root/Sources/CSwiftlet/shim.c" -o "$out/shim.o"
flags=(-O -swift-version 6 -parse-as-library -I "$out/include" -I "$out")
# In dependency order; a module's sources include its subdirectories (SwiftletVirtio/Block, ...).
for module in SwiftletSys SwiftletPersist SwiftletMemory SwiftletDevices SwiftletVirtio; do
    swiftc "${flags[@]}" -module-name "$module" -wmo -c $(find "$root/Sources/$module" -name '*.swift' | sort) \
        -emit-module -emit-module-path "$out/$module.swiftmodule" -o "$out/$module.o"
done
swiftc -O -swift-version 6 -I "$out/include" -I "$out" -module-name VirtioBlockBench \
    "$root/benchmarks/virtio-blk/main.swift" \
    "$out/SwiftletSys.o" "$out/SwiftletPersist.o" "$out/SwiftletMemory.o" "$out/SwiftletDevices.o" "$out/SwiftletVirtio.o" "$out/shim.o" \
    -o "$out/virtio-blk-bench"
exec "$out/virtio-blk-bench" "$@"
