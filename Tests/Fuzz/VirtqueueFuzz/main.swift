// libFuzzer harness for the split virtqueue and virtio-blk request handling.
//
// Input layout (all little-endian):
//   byte 0      flags: bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 read-only disk,
//               bit 3 take ring addresses from bytes 4..27 (else the fixed layout)
//   byte 1      queue size = 1 << (byte % 9)
//   bytes 2-3   starting nextAvail / nextUsed
//   bytes 4-27  descriptor table, available ring, used ring addresses (u64 each)
//   bytes 28... guest memory contents from guest address 0
// Guest memory is two regions with a hole: [0, 0x8000) and [0x10000, 0x18000).
// Fixed layout: descriptor table 0x0, available ring 0x1000, used ring 0x1400.
// Build and run with Tests/Fuzz/run.sh.
import CSwiftlet
import Glibc
import SwiftletMemory
import SwiftletVirtio

let headerSize = 28
let fixedLayout = (desc: UInt64(0), avail: UInt64(0x1000), used: UInt64(0x1400))

/// Guest memory, reused across inputs and cleared before each.
let memory = try! GuestMemory(ranges: [(base: 0, size: 0x8000), (base: 0x10000, size: 0x8000)])

/// A 64-sector image in a memfd, opened through /proc like any path.
func memfdBackend(readOnly: Bool) -> BlockDevice {
    let fd = swl_memfd_create("virtqueue-fuzz", 0)
    precondition(fd >= 0 && ftruncate(fd, 64 * 512) == 0, "memfd")
    return try! BlockDevice(path: "/proc/self/fd/\(fd)", readOnly: readOnly, id: "fuzz")
}
let writableDisk = memfdBackend(readOnly: false)
let readOnlyDisk = memfdBackend(readOnly: true)

func le<T: FixedWidthInteger>(_ data: UnsafeRawBufferPointer, _ offset: Int, _: T.Type) -> T {
    T(littleEndian: data.loadUnaligned(fromByteOffset: offset, as: T.self))
}

/// The invariants `pop` promises for a chain it returns.
func check(_ chain: DescriptorChain, size: UInt16) {
    precondition(chain.head < size, "head past the queue size")
    precondition(chain.readableLength + chain.writableLength <= Int(UInt32.max), "chain over 4 GiB")
    precondition(chain.readable.count + chain.writable.count <= Int(size) + 256, "chain too long")
    for b in chain.readable + chain.writable where b.length > 0 {
        precondition(memory.contains(b.address, count: Int(b.length)), "buffer outside guest memory")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> Int32 {
    guard count >= headerSize else { return 0 }
    let input = UnsafeRawBufferPointer(start: bytes, count: count)
    let flags = input[0]
    let size = UInt16(1) << (input[1] % 9)
    let start = le(input, 2, UInt16.self)
    let layout = flags & 8 != 0
        ? (desc: le(input, 4, UInt64.self), avail: le(input, 12, UInt64.self), used: le(input, 20, UInt64.self))
        : fixedLayout

    // Fill guest memory: zeros, then the input from address 0 across both regions.
    var rest = UnsafeRawBufferPointer(rebasing: input[headerSize...])
    for region in memory.regions {
        let host = UnsafeMutableRawBufferPointer(start: region.host, count: region.size)
        host.initializeMemory(as: UInt8.self, repeating: 0)
        let n = min(rest.count, region.size)
        if n > 0 { host.copyMemory(from: UnsafeRawBufferPointer(rebasing: rest[0..<n])) }
        rest = UnsafeRawBufferPointer(rebasing: rest[n...])
    }

    let config = VirtqueueConfig(size: size, descTable: layout.desc, availRing: layout.avail, usedRing: layout.used)
    guard let queue = try? Virtqueue(memory: memory, config: config, maxSize: VirtioBlock.queueSize,
                                     eventIndex: flags & 1 != 0, indirect: flags & 2 != 0,
                                     nextAvail: start, nextUsed: start)
    else { return 0 }
    let disk = flags & 4 != 0 ? readOnlyDisk : writableDisk

    var scratch = [UInt8](repeating: 0, count: 64)
    for round in 0..<64 {
        do {
            guard let chain = try queue.pop() else {
                if !queue.enableNotification() { break }
                continue
            }
            check(chain, size: size)
            // Reads across buffers at awkward offsets must either work or throw.
            scratch.withUnsafeMutableBytes { buf in
                let n = min(buf.count, chain.readableLength / 2 + 1)
                _ = try? chain.read(from: memory, offset: chain.readableLength / 3, into: UnsafeMutableRawBufferPointer(rebasing: buf[0..<n]))
            }
            let length = disk.handle(chain, memory: memory)
            precondition(Int(length) <= chain.writableLength, "used length past the writable part")
            try queue.pushUsed(head: chain.head, length: length)
        } catch {
            if let head = error.head {
                try? queue.pushUsed(head: head, length: 0)
            } else if case .availIndexJump = error {
                break
            }
        }
        if round % 8 == 7 { _ = queue.needsInterrupt() }
    }
    _ = queue.needsInterrupt()
    return 0
}
