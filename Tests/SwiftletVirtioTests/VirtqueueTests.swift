import SwiftletMemory
import SwiftletVirtio
import Testing
import SwiftletTestSupport

/// Pops, expecting a malformed chain; returns its head.
func expectMalformed(_ q: Virtqueue, sourceLocation: SourceLocation = #_sourceLocation) -> UInt16?? {
    do {
        let chain = try q.pop()
        Issue.record("expected a malformed chain, got \(String(describing: chain?.head))", sourceLocation: sourceLocation)
    } catch {
        if case let .malformedChain(head, why) = error {
            #expect(!why.isEmpty, sourceLocation: sourceLocation)
            return .some(head)
        }
        Issue.record("expected malformedChain, got \(error)", sourceLocation: sourceLocation)
    }
    return .none
}

struct VirtqueueConfigTests {
    @Test(arguments: [UInt16(0), 3, 12, 512])
    func rejectsBadSizes(size: UInt16) throws {
        let mem = try GuestMemory(size: 1 << 20)
        let config = VirtqueueConfig(size: size, descTable: 0x1000, availRing: 0x3000, usedRing: 0x4000)
        #expect(throws: VirtqueueError.invalidSize(size, max: 256)) {
            try Virtqueue(memory: mem, config: config, maxSize: 256, eventIndex: false, indirect: false)
        }
    }

    @Test func rejectsMisalignedRings() throws {
        let mem = try GuestMemory(size: 1 << 20)
        let cases: [(VirtqueueConfig, VirtqueuePart, UInt64)] = [
            (VirtqueueConfig(size: 8, descTable: 0x1008, availRing: 0x3000, usedRing: 0x4000), .descriptorTable, 0x1008),
            (VirtqueueConfig(size: 8, descTable: 0x1000, availRing: 0x3001, usedRing: 0x4000), .availRing, 0x3001),
            (VirtqueueConfig(size: 8, descTable: 0x1000, availRing: 0x3000, usedRing: 0x4002), .usedRing, 0x4002),
        ]
        for (config, part, address) in cases {
            #expect(throws: VirtqueueError.misaligned(part, address: address)) {
                try Virtqueue(memory: mem, config: config, maxSize: 256, eventIndex: false, indirect: false)
            }
        }
    }

    @Test func rejectsRingsOutsideMemory() throws {
        let mem = try GuestMemory(size: 1 << 20)
        // The used ring ends one byte past memory; the table wraps the address space.
        let end = VirtqueueConfig(size: 8, descTable: 0x1000, availRing: 0x3000, usedRing: (1 << 20) - 68)
        #expect(throws: VirtqueueError.ringOutOfBounds(.usedRing, address: (1 << 20) - 68, length: 70)) {
            try Virtqueue(memory: mem, config: end, maxSize: 256, eventIndex: false, indirect: false)
        }
        let wrap = VirtqueueConfig(size: 8, descTable: UInt64.max - 15, availRing: 0x3000, usedRing: 0x4000)
        #expect(throws: VirtqueueError.ringOutOfBounds(.descriptorTable, address: UInt64.max - 15, length: 128)) {
            try Virtqueue(memory: mem, config: wrap, maxSize: 256, eventIndex: false, indirect: false)
        }
        // Exactly at the end is fine.
        let exact = VirtqueueConfig(size: 8, descTable: 0x1000, availRing: 0x3000, usedRing: (1 << 20) - 72)
        _ = try Virtqueue(memory: mem, config: exact, maxSize: 256, eventIndex: false, indirect: false)
    }

    @Test func errorDescriptionsAreOneLine() {
        let errors: [VirtqueueError] = [
            .invalidSize(3, max: 256), .misaligned(.usedRing, address: 2), .ringOutOfBounds(.availRing, address: 1, length: 2),
            .availIndexJump(availIndex: 40, nextAvail: 0, size: 16), .malformedChain(head: 3, "loop"),
            .malformedChain(head: nil, "bad head"), .invalidUsedHead(99, size: 16), .outOfRange(offset: 1, count: 2, length: 2),
            .memory(.outOfBounds(address: 5, length: 6)),
        ]
        for e in errors {
            #expect(!e.description.isEmpty && !e.description.contains("\n"))
        }
    }
}

struct VirtqueueChainTests {
    @Test func emptyRingPopsNil() throws {
        let d = try TestDriver()
        let q = try d.queue()
        #expect(try q.pop() == nil)
        #expect(q.nextAvail == 0)
    }

    @Test func popsReadableThenWritableBuffers() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let a = d.alloc(16), b = d.alloc(100), c = d.alloc(1)
        let head = try d.chain([Buf(address: a, length: 16, writable: false),
                                Buf(address: b, length: 100, writable: true),
                                Buf(address: c, length: 1, writable: true)])
        try d.publish(head)
        let chain = try #require(try q.pop())
        #expect(chain.head == head)
        #expect(chain.readable == [GuestBuffer(address: a, length: 16)])
        #expect(chain.writable == [GuestBuffer(address: b, length: 100), GuestBuffer(address: c, length: 1)])
        #expect(chain.readableLength == 16 && chain.writableLength == 101)
        #expect(try q.pop() == nil)
        try q.pushUsed(head: head, length: 101)
        #expect(d.usedIdx == 1)
        #expect(try d.used(0) == (UInt32(head), 101))
    }

    @Test func readsAndWritesAcrossBuffers() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let r1 = try d.put([1, 2, 3]), r2 = try d.put([4, 5, 6, 7])
        let w1 = d.alloc(2), w2 = d.alloc(5)
        try d.publish(try d.chain([Buf(address: r1, length: 3, writable: false), Buf(address: 0xdead_beef_0000, length: 0, writable: false),
                                   Buf(address: r2, length: 4, writable: false),
                                   Buf(address: w1, length: 2, writable: true), Buf(address: w2, length: 5, writable: true)]))
        let chain = try #require(try q.pop())
        var out = [UInt8](repeating: 0, count: 5)
        try out.withUnsafeMutableBytes { try chain.read(from: d.memory, offset: 1, into: $0) }
        #expect(out == [2, 3, 4, 5, 6])
        try [UInt8]([9, 8, 7, 6]).withUnsafeBytes { try chain.write(to: d.memory, offset: 1, from: $0) }
        #expect(try d.memory.read(at: w1, count: 2) == [0, 9])
        #expect(try d.memory.read(at: w2, count: 5) == [8, 7, 6, 0, 0])
        // Past the end, negative offsets, and an empty read at the very end.
        var big = [UInt8](repeating: 0, count: 7)
        #expect(throws: VirtqueueError.outOfRange(offset: 1, count: 7, length: 7)) {
            try big.withUnsafeMutableBytes { try chain.read(from: d.memory, offset: 1, into: $0) }
        }
        #expect(throws: VirtqueueError.outOfRange(offset: -1, count: 1, length: 7)) {
            try [UInt8]([1]).withUnsafeBytes { try chain.write(to: d.memory, offset: -1, from: $0) }
        }
        #expect(throws: VirtqueueError.outOfRange(offset: Int.max, count: 1, length: 7)) {
            try [UInt8]([1]).withUnsafeBytes { try chain.write(to: d.memory, offset: Int.max, from: $0) }
        }
        try [UInt8]().withUnsafeBytes { try chain.write(to: d.memory, offset: 7, from: $0) }
        let views = try chain.hostBuffers(in: d.memory, writable: false, offset: 2, count: 3)
        #expect(views.map(\.count) == [1, 2])
    }

    @Test func zeroLengthBuffersAreKeptButNeverDereferenced() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let w = d.alloc(4)
        try d.publish(try d.chain([Buf(address: UInt64.max, length: 0, writable: false),
                                   Buf(address: w, length: 0, writable: true),
                                   Buf(address: 0xffff_ffff_0000, length: 0, writable: true),
                                   Buf(address: w, length: 4, writable: true)]))
        let chain = try #require(try q.pop())
        #expect(chain.readable.count == 1 && chain.writable.count == 3)
        #expect(chain.readableLength == 0 && chain.writableLength == 4)
        try [UInt8]([1, 2, 3, 4]).withUnsafeBytes { try chain.write(to: d.memory, offset: 0, from: $0) }
        #expect(try d.memory.read(at: w, count: 4) == [1, 2, 3, 4])
        #expect(try chain.hostBuffers(in: d.memory, writable: true, offset: 0, count: 4).count == 1)
    }

    /// Chains past the inline buffer capacity (4) spill into an array: the
    /// parts, lengths and byte ranges must read the same either side of the seam.
    @Test(arguments: [(readable: 1, writable: 1), (3, 1), (4, 0), (0, 5), (3, 3), (5, 4), (9, 7)])
    func longChainsKeepOrderAcrossTheInlineSeam(readable: Int, writable: Int) throws {
        let d = try TestDriver()
        let q = try d.queue()
        // Buffer i holds 3 bytes (i, i, i); lengths 3 make reads straddle buffers.
        var bufs: [Buf] = []
        for i in 0..<readable { bufs.append(Buf(address: try d.put([UInt8](repeating: UInt8(i), count: 3)), length: 3, writable: false)) }
        for _ in 0..<writable { bufs.append(Buf(address: d.alloc(3), length: 3, writable: true)) }
        let head = try d.chain(bufs)
        try d.publish(head)
        let chain = try #require(try q.pop())
        let expectedReadable = bufs.prefix(readable).map { GuestBuffer(address: $0.address, length: $0.length) }
        let expectedWritable = bufs.suffix(writable).map { GuestBuffer(address: $0.address, length: $0.length) }
        #expect(chain.readable == expectedReadable && chain.writable == expectedWritable)
        #expect(chain.readableCount == readable && chain.writableCount == writable)
        #expect(chain.readableLength == 3 * readable && chain.writableLength == 3 * writable)
        // The same buffers through the public initializer.
        let built = DescriptorChain(head: head, readable: expectedReadable, writable: expectedWritable)
        #expect(built.readable == expectedReadable && built.writable == expectedWritable)
        #expect(built.readableLength == chain.readableLength && built.writableLength == chain.writableLength)
        for c in [chain, built] {
            var all = [UInt8](repeating: 0xff, count: 3 * readable)
            try all.withUnsafeMutableBytes { try c.read(from: d.memory, offset: 0, into: $0) }
            #expect(all == (0..<readable).flatMap { [UInt8](repeating: UInt8($0), count: 3) })
            if readable > 1 {
                var middle = [UInt8](repeating: 0, count: 3 * readable - 2)
                try middle.withUnsafeMutableBytes { try c.read(from: d.memory, offset: 1, into: $0) }
                #expect(middle == Array(all[1..<(all.count - 1)]))
            }
            let pattern = (0..<(3 * writable)).map { UInt8(truncatingIfNeeded: $0 &+ 100) }
            try pattern.withUnsafeBytes { try c.write(to: d.memory, offset: 0, from: $0) }
            for (i, b) in bufs.suffix(writable).enumerated() {
                #expect(try d.memory.read(at: b.address, count: 3) == Array(pattern[(3 * i)..<(3 * i + 3)]))
            }
            #expect(try c.hostBuffers(in: d.memory, writable: true, offset: 0, count: 3 * writable).count == writable)
            #expect(throws: VirtqueueError.outOfRange(offset: 1, count: 3 * writable, length: 3 * writable)) {
                try c.hostBuffers(in: d.memory, writable: true, offset: 1, count: 3 * writable)
            }
        }
    }

    /// A readable buffer after a writable one is malformed wherever it falls,
    /// inline or past the inline capacity.
    @Test(arguments: [1, 3, 4, 6])
    func readableAfterWritableIsMalformedAtAnyPosition(writableFirst: Int) throws {
        let d = try TestDriver()
        let q = try d.queue()
        let b = d.alloc(8)
        var bufs = [Buf(address: b, length: 8, writable: false)]
        bufs += Array(repeating: Buf(address: b, length: 8, writable: true), count: writableFirst)
        bufs.append(Buf(address: b, length: 8, writable: false))
        let head = try d.chain(bufs)
        try d.publish(head)
        #expect(expectMalformed(q) == .some(head))
    }

    @Test func chainOfExactlyTheQueueSizeIsAccepted() throws {
        let d = try TestDriver(size: 4)
        let q = try d.queue()
        let buf = d.alloc(8)
        try d.publish(try d.chain(Array(repeating: Buf(address: buf, length: 8, writable: true), count: 4)))
        #expect(try q.pop()?.writableLength == 32)
    }

    @Test func indirectTable() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let h = d.alloc(16), data = d.alloc(512), s = d.alloc(1)
        let head = try d.indirectChain([Buf(address: h, length: 16, writable: false),
                                        Buf(address: data, length: 512, writable: true),
                                        Buf(address: s, length: 1, writable: true)])
        try d.publish(head)
        let chain = try #require(try q.pop())
        #expect(chain.head == head)
        #expect(chain.readable == [GuestBuffer(address: h, length: 16)])
        #expect(chain.writable == [GuestBuffer(address: data, length: 512), GuestBuffer(address: s, length: 1)])
    }

    @Test func directDescriptorsThenIndirectTable() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let h = d.alloc(16), data = d.alloc(512), s = d.alloc(1)
        try d.publish(try d.indirectChain([Buf(address: data, length: 512, writable: true), Buf(address: s, length: 1, writable: true)],
                                          direct: [Buf(address: h, length: 16, writable: false)]))
        let chain = try #require(try q.pop())
        #expect(chain.readableLength == 16 && chain.writableLength == 513)
    }

    @Test func indirectTableMayBeLongerThanANegotiatedSmallerRing() throws {
        let d = try TestDriver(size: 4)
        let q = try d.queue(maxSize: 256)
        let buf = d.alloc(8)
        try d.publish(try d.indirectChain(Array(repeating: Buf(address: buf, length: 8, writable: false), count: 256)))
        #expect(try q.pop()?.readable.count == 256)
        try d.publish(try d.indirectChain(Array(repeating: Buf(address: buf, length: 8, writable: false), count: 257)))
        #expect(expectMalformed(q) != nil)
    }
}

struct VirtqueueHostileTests {
    @Test func outOfBoundsDescriptorIsMalformedAndConsumed() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let bad = try d.chain([Buf(address: 4 << 20, length: 1, writable: false)])
        try d.publish(bad)
        let good = try d.chain([Buf(address: d.alloc(4), length: 4, writable: false)])
        try d.publish(good)
        #expect(expectMalformed(q) == .some(bad))
        #expect(q.nextAvail == 1)
        #expect(try q.pop()?.head == good) // the queue did not wedge
    }

    @Test(arguments: [
        (UInt64.max - 10, UInt32(100)), // address + length wraps
        (UInt64((4 << 20) - 4), UInt32(5)), // one byte past the end
        (UInt64(1) << 63, UInt32(1)),
    ])
    func addressLengthOverflowIsMalformed(address: UInt64, length: UInt32) throws {
        let d = try TestDriver()
        let q = try d.queue()
        try d.publish(try d.chain([Buf(address: address, length: length, writable: true)]))
        #expect(expectMalformed(q) != nil)
    }

    @Test func selfLoopAndCycleAreMalformed() throws {
        let d = try TestDriver(size: 8)
        let q = try d.queue()
        let buf = d.alloc(16)
        try d.setDescriptor(0, address: buf, length: 16, flags: Flag.next, next: 0)
        try d.publish(0)
        #expect(expectMalformed(q) == .some(0))
        try d.setDescriptor(1, address: buf, length: 16, flags: Flag.next, next: 2)
        try d.setDescriptor(2, address: buf, length: 16, flags: Flag.next, next: 3)
        try d.setDescriptor(3, address: buf, length: 16, flags: Flag.next, next: 1)
        try d.publish(1)
        #expect(expectMalformed(q) == .some(1))
        #expect(try q.pop() == nil)
    }

    @Test func nextAndHeadPastTheQueueSize() throws {
        let d = try TestDriver(size: 8)
        let q = try d.queue()
        try d.setDescriptor(0, address: d.alloc(4), length: 4, flags: Flag.next, next: 8)
        try d.publish(0)
        #expect(expectMalformed(q) == .some(0))
        try d.publish(8) // a head that is not a descriptor
        #expect(expectMalformed(q) == .some(nil))
        try d.publish(0xffff)
        #expect(expectMalformed(q) == .some(nil))
    }

    @Test func readableAfterWritableIsMalformed() throws {
        let d = try TestDriver()
        let q = try d.queue()
        let buf = d.alloc(16)
        try d.publish(try d.chain([Buf(address: buf, length: 1, writable: true), Buf(address: buf, length: 16, writable: false)]))
        #expect(expectMalformed(q) != nil)
        // Also across the switch to an indirect table.
        try d.publish(try d.indirectChain([Buf(address: buf, length: 16, writable: false)],
                                          direct: [Buf(address: buf, length: 1, writable: true)]))
        #expect(expectMalformed(q) != nil)
    }

    @Test func chainsOver4GiBAreMalformed() throws {
        // Anonymous NORESERVE memory: nothing but the rings is touched.
        let d = try TestDriver(memorySize: 5 << 30)
        let q = try d.queue()
        try d.publish(try d.chain([Buf(address: 1 << 30, length: 3 << 30, writable: false),
                                   Buf(address: 1 << 30, length: 3 << 30, writable: true)]))
        #expect(expectMalformed(q) != nil)
    }

    @Test func indirectRules() throws {
        let d = try TestDriver()
        let buf = d.alloc(16)
        let table = d.alloc(64)
        try d.setDescriptor(0, table: table, address: buf, length: 16, flags: 0, next: 0)

        // Not negotiated.
        let plain = try d.queue(indirect: false)
        try d.setDescriptor(0, address: table, length: 16, flags: Flag.indirect, next: 0)
        try d.publish(0)
        #expect(expectMalformed(plain) == .some(0))

        let q = try d.queue()
        // INDIRECT together with NEXT.
        try d.setDescriptor(1, address: table, length: 16, flags: Flag.indirect | Flag.next, next: 2)
        try d.setDescriptor(2, address: buf, length: 16, flags: 0, next: 0)
        try d.publish(1)
        #expect(expectMalformed(q) == .some(1))
        // Lengths: zero, not a multiple of 16, outside memory, wrapping.
        for (address, length) in [(table, UInt32(0)), (table, 24), (UInt64((4 << 20) - 16), 32), (UInt64.max - 15, 32)] {
            try d.setDescriptor(3, address: address, length: length, flags: Flag.indirect, next: 0)
            try d.publish(3)
            #expect(expectMalformed(q) == .some(3))
        }
        // Nested indirect.
        try d.setDescriptor(0, table: table, address: table, length: 16, flags: Flag.indirect, next: 0)
        try d.setDescriptor(4, address: table, length: 16, flags: Flag.indirect, next: 0)
        try d.publish(4)
        #expect(expectMalformed(q) == .some(4))
        // A loop inside the table, and a next past its end.
        try d.setDescriptor(0, table: table, address: buf, length: 16, flags: Flag.next, next: 1)
        try d.setDescriptor(1, table: table, address: buf, length: 16, flags: Flag.next, next: 0)
        try d.setDescriptor(5, address: table, length: 32, flags: Flag.indirect, next: 0)
        try d.publish(5)
        #expect(expectMalformed(q) == .some(5))
        try d.setDescriptor(1, table: table, address: buf, length: 16, flags: Flag.next, next: 2)
        try d.publish(5)
        #expect(expectMalformed(q) == .some(5))
        // An out-of-bounds buffer inside the table.
        try d.setDescriptor(1, table: table, address: 1 << 40, length: 16, flags: 0, next: 0)
        try d.publish(5)
        #expect(expectMalformed(q) == .some(5))
        // And a good one still works afterwards; the WRITE flag on the table descriptor is ignored.
        try d.setDescriptor(1, table: table, address: buf, length: 16, flags: Flag.write, next: 0)
        try d.setDescriptor(5, address: table, length: 32, flags: Flag.indirect | Flag.write, next: 0)
        try d.publish(5)
        let chain = try #require(try q.pop())
        #expect(chain.readableLength == 16 && chain.writableLength == 16)
    }

    @Test func availIndexJumpBreaksTheQueue() throws {
        let d = try TestDriver(size: 8)
        let q = try d.queue()
        try d.setDescriptor(0, address: d.alloc(4), length: 4, flags: 0, next: 0)
        try d.setAvailIdx(9)
        let jump = VirtqueueError.availIndexJump(availIndex: 9, nextAvail: 0, size: 8)
        #expect(throws: jump) { try q.pop() }
        // It stays broken even if the index comes back, until the driver resets.
        try d.setAvailIdx(1)
        #expect(throws: jump) { try q.pop() }
        #expect(q.enableNotification() == false)
    }

    @Test func exactlyAFullRingIsFine() throws {
        let d = try TestDriver(size: 8)
        let q = try d.queue()
        try d.setDescriptor(0, address: d.alloc(4), length: 4, flags: 0, next: 0)
        for _ in 0..<8 { try d.publish(0) }
        for _ in 0..<8 { #expect(try q.pop()?.head == 0) }
        #expect(try q.pop() == nil)
    }

    @Test func pushUsedRejectsHeadsPastTheSize() throws {
        let d = try TestDriver(size: 8)
        let q = try d.queue()
        #expect(throws: VirtqueueError.invalidUsedHead(8, size: 8)) { try q.pushUsed(head: 8, length: 0) }
        #expect(q.nextUsed == 0 && d.usedIdx == 0)
    }
}

struct VirtqueueIndexTests {
    @Test func indicesWrapAt16Bits() throws {
        let d = try TestDriver(size: 4, startIndex: 0xfffe)
        let q = try d.queue()
        #expect(q.nextAvail == 0xfffe && q.nextUsed == 0xfffe)
        let buf = d.alloc(8)
        var heads: [UInt16] = []
        for _ in 0..<4 {
            let h = try d.chain([Buf(address: buf, length: 8, writable: true)])
            heads.append(h)
            try d.publish(h)
        }
        #expect(d.availIdx == 2)
        for (i, h) in heads.enumerated() {
            let chain = try #require(try q.pop())
            #expect(chain.head == h)
            try q.pushUsed(head: chain.head, length: UInt32(i))
        }
        #expect(try q.pop() == nil)
        #expect(q.nextAvail == 2 && q.nextUsed == 2 && d.usedIdx == 2)
        // Ring slots 2, 3, 0, 1 hold the four completions in order.
        for (i, index) in [UInt16(0xfffe), 0xffff, 0, 1].enumerated() {
            #expect(try d.used(index) == (UInt32(heads[i]), UInt32(i)))
        }
    }

    @Test func interruptsWithoutEventIndex() throws {
        let d = try TestDriver()
        let q = try d.queue()
        #expect(q.needsInterrupt() == false) // nothing pushed
        try q.pushUsed(head: 0, length: 0)
        #expect(q.needsInterrupt() == true)
        #expect(q.needsInterrupt() == false) // already reported
        try d.setAvailFlags(1) // VIRTQ_AVAIL_F_NO_INTERRUPT
        try q.pushUsed(head: 0, length: 0)
        #expect(q.needsInterrupt() == false)
        try d.setAvailFlags(0)
        try q.pushUsed(head: 0, length: 0)
        #expect(q.needsInterrupt() == true)
    }

    @Test func interruptsWithEventIndex() throws {
        let d = try TestDriver()
        let q = try d.queue(eventIndex: true)
        try d.setAvailFlags(1) // ignored with EVENT_IDX
        try d.setUsedEvent(0)
        try q.pushUsed(head: 0, length: 0) // used idx 0 -> 1 crosses used_event 0
        #expect(q.needsInterrupt() == true)
        try d.setUsedEvent(3)
        try q.pushUsed(head: 0, length: 0) // 1 -> 2
        #expect(q.needsInterrupt() == false)
        try q.pushUsed(head: 0, length: 0) // 2 -> 3
        #expect(q.needsInterrupt() == false)
        try q.pushUsed(head: 0, length: 0) // 3 -> 4: wrote entry 3
        try q.pushUsed(head: 0, length: 0) // 4 -> 5, same batch
        #expect(q.needsInterrupt() == true)
        try d.setUsedEvent(4) // already passed
        try q.pushUsed(head: 0, length: 0)
        #expect(q.needsInterrupt() == false)
    }

    @Test func eventIndexAcrossTheWrap() throws {
        let d = try TestDriver(startIndex: 0xfffe)
        let q = try d.queue(eventIndex: true)
        try d.setUsedEvent(0xffff)
        try q.pushUsed(head: 0, length: 0) // fffe -> ffff
        #expect(q.needsInterrupt() == false)
        try q.pushUsed(head: 0, length: 0) // ffff -> 0: wrote entry ffff
        #expect(q.needsInterrupt() == true)
        try d.setUsedEvent(1)
        try q.pushUsed(head: 0, length: 0)
        try q.pushUsed(head: 0, length: 0) // 0 -> 2 passes 1
        #expect(q.needsInterrupt() == true)
    }

    @Test func enableNotificationPublishesAvailEvent() throws {
        let d = try TestDriver()
        let q = try d.queue(eventIndex: true)
        #expect(q.enableNotification() == false)
        #expect(d.availEvent == 0)
        let buf = d.alloc(4)
        try d.publish(try d.chain([Buf(address: buf, length: 4, writable: false)]))
        try d.publish(try d.chain([Buf(address: buf, length: 4, writable: false)]))
        #expect(q.enableNotification() == true) // work arrived: pop again
        _ = try q.pop()
        #expect(q.enableNotification() == true)
        #expect(d.availEvent == 1)
        _ = try q.pop()
        #expect(q.enableNotification() == false)
        #expect(d.availEvent == 2)
        // Without EVENT_IDX the field is left alone but pending work is still reported.
        let plain = try d.queue(eventIndex: false)
        try d.publish(try d.chain([Buf(address: buf, length: 4, writable: false)]))
        #expect(plain.enableNotification() == true)
        #expect(d.availEvent == 2)
    }
}
