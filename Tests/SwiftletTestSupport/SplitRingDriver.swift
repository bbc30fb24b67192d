import Glibc
import SwiftletMemory
import SwiftletVirtio

/// Descriptor flags, as a driver writes them.
package enum Flag {
    package static let next: UInt16 = 1
    package static let write: UInt16 = 2
    package static let indirect: UInt16 = 4
}

/// One buffer of a chain the test driver builds.
package struct Buf {
    package var address: UInt64
    package var length: UInt32
    package var writable: Bool

    package init(address: UInt64, length: UInt32, writable: Bool) {
        (self.address, self.length, self.writable) = (address, length, writable)
    }
}

/// Plays the guest driver: lays out a split virtqueue in guest memory, posts
/// chains and reads back the used ring.
///
/// Layout: descriptor table at 0x1000, available ring at 0x3000, used ring
/// at 0x4000, buffers and indirect tables bump-allocated from 0x10000.
package final class TestDriver {
    package let memory: GuestMemory
    package let size: UInt16
    package let config: VirtqueueConfig
    package private(set) var availIdx: UInt16
    private var freeDescriptor = 0
    private var cursor: UInt64 = 0x10000

    package init(size: UInt16 = 16, memorySize: Int = 4 << 20, startIndex: UInt16 = 0) throws {
        memory = try GuestMemory(size: memorySize)
        self.size = size
        config = VirtqueueConfig(size: size, descTable: 0x1000, availRing: 0x3000, usedRing: 0x4000)
        availIdx = startIndex
        try memory.store(startIndex, at: config.availRing + 2)
        try memory.store(startIndex, at: config.usedRing + 2)
    }

    /// The rings of one queue among several in `memory`, laid out by the
    /// caller, which places its own buffers (`alloc` is not for it).
    package init(memory: GuestMemory, config: VirtqueueConfig) {
        self.memory = memory
        size = config.size
        self.config = config
        availIdx = 0
    }

    package func queue(eventIndex: Bool = false, indirect: Bool = true, maxSize: UInt16 = 256) throws(VirtqueueError) -> Virtqueue {
        try Virtqueue(memory: memory, config: config, maxSize: maxSize, eventIndex: eventIndex, indirect: indirect,
                      nextAvail: availIdx, nextUsed: usedIdx)
    }

    /// Guest memory for `count` bytes, 16-aligned.
    package func alloc(_ count: Int) -> UInt64 {
        let address = cursor
        cursor += UInt64((count + 15) & ~15)
        return address
    }

    /// Places `bytes` in fresh guest memory.
    package func put(_ bytes: [UInt8]) throws -> UInt64 {
        let address = alloc(bytes.count)
        try memory.write(bytes, at: address)
        return address
    }

    /// Writes one descriptor of the table at `table`.
    package func setDescriptor(_ index: Int, table: UInt64? = nil, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) throws {
        let d = (table ?? config.descTable) + UInt64(16 * index)
        try memory.store(address, at: d)
        try memory.store(length, at: d + 8)
        try memory.store(flags, at: d + 12)
        try memory.store(next, at: d + 14)
    }

    /// Writes `buffers` as a chain of consecutive free descriptors; returns the head.
    @discardableResult
    package func chain(_ buffers: [Buf]) throws -> UInt16 {
        precondition(!buffers.isEmpty)
        let indices = buffers.indices.map { _ -> Int in
            defer { freeDescriptor = (freeDescriptor + 1) % Int(size) }
            return freeDescriptor
        }
        for (i, b) in buffers.enumerated() {
            let last = i == buffers.count - 1
            try setDescriptor(indices[i], address: b.address, length: b.length,
                              flags: (b.writable ? Flag.write : 0) | (last ? 0 : Flag.next),
                              next: last ? 0 : UInt16(indices[i + 1]))
        }
        return UInt16(indices[0])
    }

    /// Writes `buffers` as an indirect table behind `direct` plain descriptors; returns the head.
    @discardableResult
    package func indirectChain(_ buffers: [Buf], direct: [Buf] = []) throws -> UInt16 {
        let table = alloc(16 * buffers.count)
        for (i, b) in buffers.enumerated() {
            let last = i == buffers.count - 1
            try setDescriptor(i, table: table, address: b.address, length: b.length,
                              flags: (b.writable ? Flag.write : 0) | (last ? 0 : Flag.next),
                              next: last ? 0 : UInt16(i + 1))
        }
        var indices: [Int] = []
        for _ in 0...direct.count {
            indices.append(freeDescriptor)
            freeDescriptor = (freeDescriptor + 1) % Int(size)
        }
        for (i, b) in direct.enumerated() {
            try setDescriptor(indices[i], address: b.address, length: b.length,
                              flags: (b.writable ? Flag.write : 0) | Flag.next, next: UInt16(indices[i + 1]))
        }
        try setDescriptor(indices[direct.count], address: table, length: UInt32(16 * buffers.count),
                          flags: Flag.indirect, next: 0)
        return UInt16(indices[0])
    }

    /// Offers `head` on the available ring and publishes the new index.
    package func publish(_ head: UInt16) throws {
        try memory.store(head, at: config.availRing + 4 + 2 * UInt64(availIdx & (size - 1)))
        availIdx &+= 1
        try memory.store(availIdx, at: config.availRing + 2)
    }

    /// Overwrites the available index (for malformed-queue tests).
    package func setAvailIdx(_ value: UInt16) throws {
        availIdx = value
        try memory.store(value, at: config.availRing + 2)
    }

    package func setAvailFlags(_ flags: UInt16) throws { try memory.store(flags, at: config.availRing) }
    package func setUsedEvent(_ value: UInt16) throws { try memory.store(value, at: config.availRing + 4 + 2 * UInt64(size)) }
    package var availEvent: UInt16 { (try? memory.load(UInt16.self, at: config.usedRing + 4 + 8 * UInt64(size))) ?? 0xdead }
    package var usedIdx: UInt16 { (try? memory.load(UInt16.self, at: config.usedRing + 2)) ?? 0xdead }

    /// The used element at ring index `index` (taken modulo the size).
    package func used(_ index: UInt16) throws -> (id: UInt32, length: UInt32) {
        let e = config.usedRing + 4 + 8 * UInt64(index & (size - 1))
        return (try memory.load(UInt32.self, at: e), try memory.load(UInt32.self, at: e + 4))
    }
}
