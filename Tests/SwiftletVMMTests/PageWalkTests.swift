import SwiftletMemory
import Testing
@testable import SwiftletVMM

/// Guest page-table walks used to fetch the bytes of a failed instruction.
struct PageWalkTests {
    static let longMode = PageWalk.Mode(cr0: 1 | (1 << 31), cr3: 0x1000, cr4: 1 << 5, efer: (1 << 8) | (1 << 10))

    /// PML4 at 0x1000 → PDPT at 0x2000 → PD at 0x3000 → PT at 0x4000.
    func fourLevelTables() throws -> GuestMemory {
        let m = try GuestMemory(size: 8 << 20)
        try m.store(UInt64(0x2003), at: 0x1000 + 511 * 8) // the kernel half: index 511
        try m.store(UInt64(0x3003), at: 0x2000 + 510 * 8)
        try m.store(UInt64(0x4003), at: 0x3000 + 8 * 8)   // 4 KiB pages below
        try m.store(UInt64(0x0060_0083), at: 0x3000 + 9 * 8) // a 2 MiB page at 6 MiB
        try m.store(UInt64(0x5003), at: 0x4000 + 3 * 8)
        return m
    }

    @Test func translatesFourKiBAndTwoMiBPages() throws {
        let m = try fourLevelTables()
        // 0xffffffff81003123: PML4 511, PDPT 510, PD 8, PT 3, offset 0x123.
        #expect(PageWalk.translate(0xffff_ffff_8100_3123, mode: Self.longMode, memory: m) == 0x5123)
        // PD 9 is a 2 MiB page.
        #expect(PageWalk.translate(0xffff_ffff_8121_2345, mode: Self.longMode, memory: m) == 0x61_2345)
    }

    @Test func unmappedOrHostileTablesGiveNil() throws {
        let m = try fourLevelTables()
        #expect(PageWalk.translate(0x1234, mode: Self.longMode, memory: m) == nil)
        // A PML4 entry that points outside guest memory must not be followed.
        try m.store(UInt64(0x7fff_ffff_f003), at: 0x1000)
        #expect(PageWalk.translate(0x10, mode: Self.longMode, memory: m) == nil)
        // CR3 itself outside guest memory.
        var bad = Self.longMode
        bad.cr3 = 0xffff_f000
        #expect(PageWalk.translate(0xffff_ffff_8100_3123, mode: bad, memory: m) == nil)
    }

    @Test func pagingOffIsIdentity() throws {
        let m = try GuestMemory(size: 1 << 20)
        let real = PageWalk.Mode(cr0: 0, cr3: 0, cr4: 0, efer: 0)
        #expect(PageWalk.translate(0xabcd, mode: real, memory: m) == 0xabcd)
    }

    @Test func fetchStopsAtAnUnmappedPage() throws {
        let m = try fourLevelTables()
        try m.write([0xdb, 0xe2], at: 0x5ffe)
        // 0xffffffff81003ffe is mapped; the next page (PT index 4) is not.
        let bytes = PageWalk.fetch(0xffff_ffff_8100_3ffe, count: 15, mode: Self.longMode, memory: m)
        #expect(bytes == [0xdb, 0xe2])
    }
}
