// virtio-blk throughput, in process: a fake driver posts requests on a split
// virtqueue in guest memory and the device side pops, handles and completes
// them against a temporary image, exactly as the VMM's event loop would (no
// guest, no notifications). Compared with plain pread/pwrite of the same
// sizes and offsets on the same file, through as many rotating buffers.
//
//   benchmarks/virtio-blk/run.sh [directory-for-the-image] [repetitions] [workload filter] [ephemeral]
//
// With a fourth argument `ephemeral`, compares instead an ephemeral drive
// (copy-on-write overlay, in $TMPDIR or /tmp) with a raw writable drive,
// both through the virtqueue: see `ephemeralComparison` below.
import Glibc
import SwiftletMemory
import SwiftletVirtio

let fileSize = 256 << 20
let queueSize: UInt16 = 256
/// Requests in flight per batch: 3 descriptors each, well inside the ring.
let depth = 32
let directory = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "/tmp"
let repetitions = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 3 : 3
/// Only workloads whose name contains this (e.g. "4K seq read").
let only = CommandLine.arguments.count > 3 ? CommandLine.arguments[3] : ""
/// Raw drive against ephemeral drive, rather than raw drive against pread/pwrite.
let ephemeralMode = CommandLine.arguments.count > 4 && CommandLine.arguments[4] == "ephemeral"

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// User-mode CPU seconds of this process: the Swift side's cost, apart from
/// the kernel's copying and from other load on the machine.
func userCPU() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6
}

/// Wall and user-CPU seconds of `body`.
func measure(_ body: () throws -> Void) rethrows -> (wall: Double, user: Double) {
    let (w, u) = (now(), userCPU())
    try body()
    return (now() - w, userCPU() - u)
}

func fail(_ what: String) -> Never {
    let line = "virtio-blk benchmark: \(what)\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
    exit(1)
}

// The image: 256 MiB of non-zero data, written through so it is allocated and cached.
var template = Array("\(directory)/swiftlet-blk-bench-XXXXXX".utf8CString)
let imageFD = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
guard imageFD >= 0 else { fail("mkstemp in \(directory)") }
let imagePath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
defer { unlink(imagePath) }
do {
    let chunk = [UInt8](repeating: 0xa5, count: 1 << 20)
    for i in 0..<(fileSize >> 20) {
        let n = chunk.withUnsafeBytes { pwrite(imageFD, $0.baseAddress!, $0.count, off_t(i << 20)) }
        guard n == chunk.count else { fail("filling the image") }
    }
    fsync(imageFD)
}
func openDisk(ephemeral: Bool) -> BlockDevice {
    do { return try BlockDevice(path: imagePath, readOnly: false, ephemeral: ephemeral, id: nil) } catch { fail("\(error)") }
}

// Guest layout: descriptor table 0x1000, available ring 0x3000, used ring 0x4000,
// per-slot headers and status bytes from 0x10000, data buffers from 1 MiB.
let memory: GuestMemory
do { memory = try GuestMemory(size: 16 << 20) } catch { fail("\(error)") }
let config = VirtqueueConfig(size: queueSize, descTable: 0x1000, availRing: 0x3000, usedRing: 0x4000)
let maxBlock = 128 << 10
func headerAddress(_ slot: Int) -> UInt64 { 0x10000 + UInt64(32 * slot) }
func statusAddress(_ slot: Int) -> UInt64 { headerAddress(slot) + 16 }
func dataAddress(_ slot: Int) -> UInt64 { (1 << 20) + UInt64(slot * maxBlock) }

/// Lays out slot `slot`'s three descriptors for `blockSize`-byte requests.
func setUpDescriptors(blockSize: Int, write: Bool) throws {
    func desc(_ i: Int, _ address: UInt64, _ length: Int, _ flags: UInt16, _ next: Int) throws {
        let at = config.descTable + UInt64(16 * i)
        try memory.store(address, at: at)
        try memory.store(UInt32(length), at: at + 8)
        try memory.store(flags, at: at + 12)
        try memory.store(UInt16(next), at: at + 14)
    }
    for slot in 0..<depth {
        let d = 3 * slot
        try desc(d, headerAddress(slot), 16, 1, d + 1)
        try desc(d + 1, dataAddress(slot), blockSize, write ? 1 : 3, d + 2) // NEXT, plus WRITE for reads
        try desc(d + 2, statusAddress(slot), 1, 2, 0)
        try memory.store(write ? VirtioBlock.requestOut : VirtioBlock.requestIn, at: headerAddress(slot))
    }
}

/// Byte offsets of one run: the whole file in order, or as many random blocks.
func offsets(blockSize: Int, random: Bool) -> [Int64] {
    let blocks = fileSize / blockSize
    guard random else { return (0..<blocks).map { Int64($0 * blockSize) } }
    var state: UInt64 = 0x9e37_79b9_7f4a_7c15
    return (0..<blocks).map { _ in
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return Int64(Int(state % UInt64(blocks)) * blockSize)
    }
}

/// Wall and user-CPU seconds to serve `offsets` through the virtqueue.
func virtioRun(_ disk: BlockDevice, blockSize: Int, write: Bool, offsets: [Int64]) throws -> (wall: Double, user: Double) {
    try setUpDescriptors(blockSize: blockSize, write: write)
    try memory.store(UInt16(0), at: config.availRing + 2)
    try memory.store(UInt16(0), at: config.usedRing + 2)
    let queue = try Virtqueue(memory: memory, config: config, maxSize: queueSize, eventIndex: true, indirect: true)
    var availIdx: UInt16 = 0
    var done = 0
    return try measure {
    while done < offsets.count {
        let batch = min(depth, offsets.count - done)
        // Driver: headers, then the ring entries, then publish the index.
        for slot in 0..<batch {
            try memory.store(UInt64(offsets[done + slot]) / 512, at: headerAddress(slot) + 8)
            try memory.store(UInt16(3 * slot), at: config.availRing + 4 + 2 * UInt64(availIdx & (queueSize - 1)))
            availIdx &+= 1
        }
        try memory.store(availIdx, at: config.availRing + 2)
        // Device: what the transport has it do on a notification.
        _ = try disk.serve(queue: queue, index: 0, memory: memory)
        // Driver: reap and check.
        for slot in 0..<batch where try memory.load(UInt8.self, at: statusAddress(slot)) != VirtioBlock.statusOK {
            fail("request failed")
        }
        done += batch
    }
    }
}

/// Wall and user-CPU seconds to do the same transfers with pread/pwrite,
/// rotating through `depth` host buffers as the queue rotates through its
/// slots' guest buffers, so both sides touch the same amount of memory.
func rawRun(blockSize: Int, write: Bool, offsets: [Int64]) -> (wall: Double, user: Double) {
    let buffers = UnsafeMutableRawPointer.allocate(byteCount: depth * blockSize, alignment: 4096)
    defer { buffers.deallocate() }
    memset(buffers, 0x5a, depth * blockSize)
    return measure {
        for (i, offset) in offsets.enumerated() {
            let buffer = buffers + (i % depth) * blockSize
            let n = write ? pwrite(imageFD, buffer, blockSize, off_t(offset)) : pread(imageFD, buffer, blockSize, off_t(offset))
            if n != blockSize { fail("raw I/O") }
        }
    }
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : String(repeating: " ", count: n - s.count) + s }
func fixed(_ x: Double, _ digits: Int) -> String {
    if digits == 0 { return String(Int(x.rounded())) }
    let scale = Double([1, 10, 100, 1000][digits])
    let r = (x * scale).rounded() / scale
    var s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        s += String(repeating: "0", count: max(0, digits - decimals))
    }
    return s
}

/// 4 KiB (and 512-byte) requests on a raw writable drive and on an ephemeral
/// drive over the same image, alternated, each run on a fresh backend:
/// - "base" reads: the ephemeral drive's blocks are all still in the base;
/// - "first" writes: every block is new to the overlay (which allocates it);
/// - "overlay" reads and "again" writes: after one unmeasured write pass, so
///   every block is in the overlay (the raw drive gets the same pass);
/// - "512 first write": sub-block writes to blocks the overlay lacks, each a
///   read-modify-write of its 4 KiB block.
///
/// Before each write or overlay run, the image is synced and dropped from the
/// page cache (both sides). Why: the image was filled with 1 MiB writes, so
/// its cache holds large folios, while the overlay's come from 4 KiB writes.
/// Folio size alone moves 4 KiB throughput by 20-40 % either way (reads are
/// faster from large folios; a 4 KiB write dirties a whole large folio), which
/// would swamp what the copy-on-write costs. After the drop, both sides'
/// pages are made by the same 4 KiB writes.
func ephemeralComparison() {
    print("raw vs ephemeral drive, in process: 256 MiB image in \(directory), overlay in \(String(cString: getenv("TMPDIR") ?? strdup("/tmp"))), queue depth \(depth), median of \(repetitions)")
    print("\(pad("workload", 26)) \(pad("raw MiB/s", 10)) \(pad("ephemeral MiB/s", 16)) \(pad("ratio", 6)) \(pad("wall µs/op +", 13)) \(pad("user µs/op raw", 15)) \(pad("ephemeral", 10))")
    let cases: [(name: String, blockSize: Int, random: Bool, write: Bool, prefill: Bool)] = [
        ("4K seq read, base", 4096, false, false, false),
        ("4K rand read, base", 4096, true, false, false),
        ("4K seq write, first", 4096, false, true, false),
        ("4K rand write, first", 4096, true, true, false),
        ("4K seq read, overlay", 4096, false, false, true),
        ("4K rand read, overlay", 4096, true, false, true),
        ("4K seq write, again", 4096, false, true, true),
        ("4K rand write, again", 4096, true, true, true),
        ("512 rand write, first", 512, true, true, false),
    ]
    for c in cases where only.isEmpty || c.name.contains(only) {
        // The 512-byte case: one request per 4 KiB block, at a random sector in it.
        var offs = offsets(blockSize: 4096, random: c.random)
        if c.blockSize == 512 { offs = offs.enumerated().map { $1 + Int64(($0 * 7) % 8 * 512) } }
        var raw: [(wall: Double, user: Double)] = []
        var eph: [(wall: Double, user: Double)] = []
        do {
            for _ in 0..<repetitions {
                for ephemeral in [false, true] {
                    if c.write || c.prefill {
                        fdatasync(imageFD)
                        _ = posix_fadvise(imageFD, 0, 0, POSIX_FADV_DONTNEED)
                    }
                    let disk = openDisk(ephemeral: ephemeral)
                    if c.prefill { _ = try virtioRun(disk, blockSize: 4096, write: true, offsets: offsets(blockSize: 4096, random: false)) }
                    let t = try virtioRun(disk, blockSize: c.blockSize, write: c.write, offsets: offs)
                    if ephemeral { eph.append(t) } else { raw.append(t) }
                }
            }
        } catch { fail("\(error)") }
        let mib = Double(offs.count * c.blockSize) / Double(1 << 20)
        let rawWall = median(raw.map(\.wall)), ephWall = median(eph.map(\.wall))
        func perOp(_ runs: [(wall: Double, user: Double)]) -> String {
            let total = runs.reduce(0) { $0 + $1.user }
            return total < 0.02 ? "-" : fixed(total / Double(runs.count * offs.count) * 1e6, 2)
        }
        print("\(pad(c.name, 26)) \(pad(fixed(mib / rawWall, 0), 10)) \(pad(fixed(mib / ephWall, 0), 16)) \(pad(fixed(rawWall / ephWall, 2), 6)) \(pad(fixed((ephWall - rawWall) / Double(offs.count) * 1e6, 2), 13)) \(pad(perOp(raw), 15)) \(pad(perOp(eph), 10))")
    }
}

if ephemeralMode {
    ephemeralComparison()
    unlink(imagePath) // exit skips the top-level defer
    exit(0)
}

let disk = openDisk(ephemeral: false)
print("virtio-blk in-process throughput: 256 MiB image in \(directory), queue depth \(depth), median of \(repetitions)")
print("\(pad("workload", 16)) \(pad("raw MiB/s", 10)) \(pad("virtio MiB/s", 13)) \(pad("ratio", 6)) \(pad("wall µs/op +", 13)) \(pad("user µs/op raw", 15)) \(pad("virtio", 7))")
for blockSize in [4 << 10, 128 << 10] {
    for random in [false, true] {
        for write in [false, true] {
            let name = "\(blockSize >> 10)K \(random ? "rand" : "seq") \(write ? "write" : "read")"
            if !only.isEmpty && !name.contains(only) { continue }
            let offs = offsets(blockSize: blockSize, random: random)
            var raw: [(wall: Double, user: Double)] = []
            var virtio: [(wall: Double, user: Double)] = []
            do {
                // Warm up once, then alternate so drift hits both alike.
                _ = try virtioRun(disk, blockSize: blockSize, write: write, offsets: Array(offs.prefix(256)))
                for _ in 0..<repetitions {
                    raw.append(rawRun(blockSize: blockSize, write: write, offsets: offs))
                    virtio.append(try virtioRun(disk, blockSize: blockSize, write: write, offsets: offs))
                }
            } catch { fail("\(error)") }
            let mib = Double(offs.count * blockSize) / Double(1 << 20)
            let rawWall = median(raw.map(\.wall)), virtioWall = median(virtio.map(\.wall))
            let rawRate = mib / rawWall, virtioRate = mib / virtioWall
            let extra = (virtioWall - rawWall) / Double(offs.count) * 1e6
            // rusage user time is tick-sampled: sum it over the repetitions, and
            // print nothing when even the sum is too short to mean anything.
            func perOp(_ runs: [(wall: Double, user: Double)]) -> String {
                let total = runs.reduce(0) { $0 + $1.user }
                return total < 0.02 ? "-" : fixed(total / Double(runs.count * offs.count) * 1e6, 2)
            }
            let rawUser = perOp(raw), virtioUser = perOp(virtio)
            print("\(pad(name, 16)) \(pad(fixed(rawRate, 0), 10)) \(pad(fixed(virtioRate, 0), 13)) \(pad(fixed(virtioRate / rawRate, 2), 6)) \(pad(fixed(extra, 2), 13)) \(pad(rawUser, 15)) \(pad(virtioUser, 7))")
        }
    }
}
