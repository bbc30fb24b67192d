import Glibc
import SwiftletMemory
import Testing

@Suite struct GuestMemoryZeroTests {
    @Test("zero clears exactly its range, partial pages at both ends included, and leaves the rest",
          arguments: [(0x1000 as UInt64, 0x3000), (0x1234, 0x5000), (0x1ff0, 0x20), (0x3001, 0x0fff), (0x5000, 0)])
    func zeroesExactly(start: UInt64, count: Int) throws {
        let mem = try GuestMemory(size: 1 << 20)
        try mem.fill(0xab, at: 0, count: 0x10000)
        try mem.zero(at: start, count: count)
        let all = try mem.read(at: 0, count: 0x10000)
        for (i, byte) in all.enumerated() {
            let inside = UInt64(i) >= start && UInt64(i) < start + UInt64(count)
            if byte != (inside ? 0 : 0xab) {
                Issue.record("byte 0x\(String(i, radix: 16)) is 0x\(String(byte, radix: 16))")
                return
            }
        }
    }

    @Test("zero is bounds-checked like every other access")
    func zeroIsBoundsChecked() throws {
        let mem = try GuestMemory(size: 1 << 20)
        #expect(throws: GuestMemoryError.self) { try mem.zero(at: (1 << 20) - 0x800, count: 0x1000) }
        #expect(throws: GuestMemoryError.self) { try mem.zero(at: UInt64.max - 10, count: 100) }
    }
}

/// Guest addresses are hostile: every access is checked against the regions,
/// including across the hole between two of them and at the edges of the
/// address space.
@Suite struct GuestMemoryBoundsTests {
    /// Two regions with a hole between them, as the x86 layout has below 4 GiB.
    func twoRegions() throws -> GuestMemory {
        try GuestMemory(ranges: [(base: 0x10_0000, size: 0x4000), (base: 0, size: 0x2000)])
    }

    @Test("regions are sorted by guest address, and accesses land in the right one")
    func regionsAndRoundTrip() throws {
        let mem = try twoRegions()
        #expect(mem.regions.map(\.guestBase) == [0, 0x10_0000])
        #expect(mem.totalSize == 0x6000)
        try mem.store(UInt64(0x1122_3344_5566_7788), at: 0x1ff8)
        try mem.write([1, 2, 3], at: 0x10_3ffd)
        #expect(try mem.load(UInt64.self, at: 0x1ff8) == 0x1122_3344_5566_7788)
        #expect(try mem.read(at: 0x10_3ffd, count: 3) == [1, 2, 3])
        #expect(try mem.read(at: 0x10_0000, count: 1) == [0])
    }

    @Test("an access that leaves a region, falls in the hole, or wraps the address space is refused",
          arguments: [(0x1ff9, 8), (0x2000, 1), (0x8_0000, 4), (0x10_3fff, 2), (0x10_4000, 0x10),
                      (UInt64.max, 1), (UInt64.max - 3, 8), (0x1000, Int.max), (0x1000, -1)] as [(UInt64, Int)])
    func refused(address: UInt64, count: Int) throws {
        let mem = try twoRegions()
        #expect(throws: GuestMemoryError.outOfBounds(address: address, length: count)) { try mem.slice(at: address, count: count) }
        #expect(!mem.contains(address, count: count))
    }

    @Test("an empty access at a region's end is allowed (a zero-length buffer), one byte past it is not")
    func edges() throws {
        let mem = try twoRegions()
        #expect(mem.contains(0x2000, count: 0))
        #expect(mem.contains(0x1fff, count: 1))
        #expect(!mem.contains(0x2000, count: 1))
        #expect(throws: GuestMemoryError.self) { try mem.load(UInt32.self, at: 0x1ffe) }
    }

    @Test("a layout that is empty, overlapping or not page-aligned is refused before anything is mapped")
    func badLayouts() {
        for ranges in [[], [(base: UInt64(0), size: 0x1000), (base: 0x800, size: 0x1000)], [(base: 0x10, size: 0x1000)],
                       [(base: 0, size: 0x1001)], [(base: 0, size: 0)]] as [[(base: UInt64, size: Int)]] {
            #expect(throws: GuestMemoryError.self) { _ = try GuestMemory(ranges: ranges) }
        }
    }

    @Test("a snapshot's memory maps private: the guest's writes never reach the file")
    func privateMappingLeavesTheFile() throws {
        var template = Array("/tmp/swiftlet-memory-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        defer { close(fd); unlink(String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
        var page = [UInt8](repeating: 0x5a, count: 0x2000)
        #expect(page.withUnsafeMutableBytes { pwrite(fd, $0.baseAddress!, $0.count, 0) } == 0x2000)
        let mem = try GuestMemory(privateMappingOf: fd, ranges: [(base: 0, size: 0x1000), (base: 0x10_0000, size: 0x1000)])
        #expect(try mem.read(at: 0x10_0000, count: 4) == [0x5a, 0x5a, 0x5a, 0x5a])
        try mem.fill(0, at: 0, count: 0x1000)
        #expect(page.withUnsafeMutableBytes { pread(fd, $0.baseAddress!, 0x1000, 0) } == 0x1000)
        #expect(page[0..<0x1000].allSatisfy { $0 == 0x5a })
        #expect(throws: GuestMemoryError.self) { _ = try GuestMemory(privateMappingOf: fd, ranges: [(base: 0, size: 0x1800)]) }
    }
}
