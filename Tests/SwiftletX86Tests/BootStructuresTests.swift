import Testing
import SwiftletMemory
@testable import SwiftletX86

@Suite struct LayoutTests {
    @Test func ramRangesSplitAroundTheGap() {
        let small = Layout.ramRanges(memoryBytes: 128 << 20)
        #expect(small.count == 1)
        #expect(small[0].base == 0 && small[0].size == 128 << 20)

        let big = Layout.ramRanges(memoryBytes: 6 << 30)
        #expect(big.count == 2)
        #expect(big[0].base == 0 && big[0].size == 3 << 30)
        #expect(big[1].base == 1 << 32 && big[1].size == 3 << 30)

        #expect(Layout.ramRanges(memoryBytes: 3 << 30).count == 1)
        #expect(Layout.ramRanges(memoryBytes: 0).isEmpty)
        #expect(Layout.ramRanges(memoryBytes: (1 << 20) + 5)[0].size == 1 << 20)
        #expect(Layout.lowRAMEnd(big) == 0xC000_0000)
    }

    @Test func bootStructuresDoNotOverlap() {
        let regions: [(UInt64, UInt64)] = [
            (Layout.gdtAddress, 32), (Layout.idtAddress, 8), (Layout.zeroPage, 4096),
            (Layout.bootStack - 0xff0, 0xff0), (Layout.pml4, 4096), (Layout.pdpte, 4096),
            (Layout.pde, UInt64(Layout.pdeCount) * 4096), (Layout.cmdline, UInt64(Layout.cmdlineMax)),
            (Layout.mptableStart, UInt64(MPTable.size(cpuCount: MPTable.maxCPUs))),
        ]
        for (i, a) in regions.enumerated() {
            for b in regions[(i + 1)...] {
                #expect(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "0x\(String(a.0, radix: 16)) overlaps 0x\(String(b.0, radix: 16))")
            }
        }
        #expect(Layout.cmdline + UInt64(Layout.cmdlineMax) <= Layout.ebdaStart)
    }
}

@Suite struct E820Tests {
    @Test func smallGuest() {
        let map = E820.layout(ram: Layout.ramRanges(memoryBytes: 128 << 20))
        #expect(map == [
            E820Entry(addr: 0, size: 0x9fc00, type: E820Entry.ram),
            E820Entry(addr: 0x9fc00, size: 0x100000 - 0x9fc00, type: E820Entry.reserved),
            E820Entry(addr: 0x100000, size: (128 << 20) - 0x100000, type: E820Entry.ram),
        ])
    }

    @Test func guestAbove4GiB() {
        let map = E820.layout(ram: Layout.ramRanges(memoryBytes: 5 << 30))
        #expect(map.count == 4)
        #expect(map[2] == E820Entry(addr: 0x100000, size: 0xC000_0000 - 0x100000, type: E820Entry.ram))
        #expect(map[3] == E820Entry(addr: 1 << 32, size: 2 << 30, type: E820Entry.ram))
        let ram = map.filter { $0.type == E820Entry.ram }.reduce(0) { $0 + $1.size }
        #expect(ram == (5 << 30) - 0x60400)
    }
}

@Suite struct ZeroPageTests {
    let e820 = E820.layout(ram: Layout.ramRanges(memoryBytes: 128 << 20))

    func u32(_ p: [UInt8], _ o: Int) -> UInt32 { p.getLE(UInt32.self, at: o) }

    @Test func fromBzImageHeader() throws {
        var image = Fixtures.bzImage(payload: Fixtures.data(count: 64))
        Fixtures.put(UInt64(0xdead_beef), at: 0x250, in: &image)  // a bogus setup_data
        let header = try SetupHeader.parse(image)
        let cmd = try ZeroPage.commandLineBytes("console=ttyS0 quiet", header: header)
        let page = try ZeroPage.build(header: header, commandLine: (Layout.cmdline, cmd.count),
                                      initrd: (0x1_2345_6000, 0x1_0000_0001), e820: e820)
        #expect(page.count == 4096)
        // The kernel's header is there, with our loader fields on top.
        #expect(page.getLE(UInt16.self, at: 0x1fe) == 0xAA55)
        #expect(u32(page, 0x202) == 0x5372_6448)
        #expect(page.getLE(UInt16.self, at: 0x206) == 0x020f)
        #expect(u32(page, 0x238) == 2047)
        #expect(page[0x210] == 0xff)
        #expect(page[0x211] == 0x81)
        #expect(page.getLE(UInt16.self, at: 0x224) == 0xfe00)
        #expect(u32(page, 0x228) == 0x20000 && u32(page, 0x0c8) == 0)
        #expect(u32(page, 0x218) == 0x2345_6000 && u32(page, 0x0c0) == 1)
        #expect(u32(page, 0x21c) == 1 && u32(page, 0x0c4) == 1)
        #expect(page[0x1e8] == 3)
        #expect(page.getLE(UInt64.self, at: 0x2d0 + 20) == 0x9fc00)
        #expect(u32(page, 0x2d0 + 20 + 16) == E820Entry.reserved)
        #expect(page.getLE(UInt64.self, at: 0x2d0 + 40 + 8) == (128 << 20) - 0x100000)
        #expect(page.getLE(UInt64.self, at: 0x250) == 0)
        // The sentinel byte must stay 0 or the kernel wipes our fields.
        #expect(page[0x1ef] == 0)
    }

    @Test func synthesizedHeaderForELF() throws {
        let page = try ZeroPage.build(header: nil, commandLine: (Layout.cmdline, 10), e820: e820)
        #expect(page.getLE(UInt16.self, at: 0x1fe) == 0xAA55)
        #expect(u32(page, 0x202) == 0x5372_6448)
        #expect(page.getLE(UInt16.self, at: 0x206) == 0x020c)
        #expect(u32(page, 0x230) == 0x100_0000)
        #expect(page[0x210] == 0xff)
        #expect(page[0x211] & 0x81 == 0x81)
        #expect(u32(page, 0x218) == 0 && u32(page, 0x21c) == 0)
    }

    @Test func commandLineTooLong() throws {
        let header = try SetupHeader.parse(Fixtures.bzImage(payload: [1, 2, 3, 4, 5], cmdlineSize: 255))
        #expect(ZeroPage.commandLineLimit(header: header) == 256)
        #expect((try? ZeroPage.commandLineBytes(String(repeating: "a", count: 255), header: header))?.count == 256)
        #expect(throws: X86BootError.commandLineTooLong(length: 257, limit: 256)) {
            try ZeroPage.commandLineBytes(String(repeating: "a", count: 256), header: header)
        }
        #expect(X86BootError.commandLineTooLong(length: 257, limit: 256).description
            == "kernel command line too long (257 bytes, limit 256)")
        #expect(throws: X86BootError.self) {
            try ZeroPage.build(header: header, commandLine: (Layout.cmdline, 300), e820: e820)
        }
        // A huge header value is capped by the layout.
        let huge = try SetupHeader.parse(Fixtures.bzImage(payload: [1, 2, 3, 4, 5], cmdlineSize: 0xffff_ffff))
        #expect(ZeroPage.commandLineLimit(header: huge) == Layout.cmdlineMax)
        // Without a header (ELF): the x86 default of 2048 with the NUL.
        #expect(ZeroPage.commandLineLimit(header: nil) == 2048)
        #expect(throws: X86BootError.commandLineHasNUL) { try ZeroPage.commandLineBytes("a\0b", header: nil) }
    }

    @Test func tooManyE820Entries() {
        let many = [E820Entry](repeating: E820Entry(addr: 0, size: 4096, type: 1), count: 129)
        #expect(throws: X86BootError.tooManyE820Entries(129)) {
            try ZeroPage.build(header: nil, commandLine: (Layout.cmdline, 1), e820: many)
        }
    }

    @Test func writesIntoGuestMemory() throws {
        let mem = try GuestMemory(size: 2 << 20)
        let cmd = try ZeroPage.writeCommandLine("root=/dev/vda", header: nil, into: mem)
        #expect(cmd.address == Layout.cmdline && cmd.size == 14)
        #expect(try mem.read(at: Layout.cmdline, count: 14) == Array("root=/dev/vda\0".utf8))
        try ZeroPage.write(into: mem, header: nil, commandLine: cmd, e820: e820)
        #expect(try mem.load(UInt32.self, at: Layout.zeroPage + 0x228) == 0x20000)
    }
}

@Suite struct InitrdTests {
    @Test func placedAtTheTopOfLowRAM() throws {
        let addr = try Initrd.place(size: 10_000_000, header: nil, lowRAMEnd: 128 << 20, kernelEnd: 0x200_0000)
        #expect(addr % 4096 == 0)
        #expect(addr + 10_000_000 <= 128 << 20)
        #expect(addr + 10_000_000 + 4096 > 128 << 20)
    }

    @Test func respectsInitrdAddrMax() throws {
        let header = try SetupHeader.parse(Fixtures.bzImage(payload: [1, 2, 3, 4, 5], initrdAddrMax: 0x0fff_ffff))
        let addr = try Initrd.place(size: 4096, header: header, lowRAMEnd: 2 << 30, kernelEnd: 0x200_0000)
        #expect(addr == 0x1000_0000 - 4096)
        // Without a header: the old default 0x37ffffff.
        let def = try Initrd.place(size: 4096, header: nil, lowRAMEnd: 2 << 30, kernelEnd: 0x200_0000)
        #expect(def == 0x3800_0000 - 4096)
        // Never into the MMIO gap.
        let big = try SetupHeader.parse(Fixtures.bzImage(payload: [1, 2, 3, 4, 5], initrdAddrMax: 0xffff_ffff))
        #expect(try Initrd.place(size: 4096, header: big, lowRAMEnd: 1 << 40, kernelEnd: 0) == 0xC000_0000 - 4096)
    }

    @Test func doesNotFit() {
        #expect(throws: X86BootError.initrdDoesNotFit(size: 100 << 20)) {
            try Initrd.place(size: 100 << 20, header: nil, lowRAMEnd: 128 << 20, kernelEnd: 0x300_0000)
        }
        #expect(throws: X86BootError.self) {
            try Initrd.place(size: 200 << 20, header: nil, lowRAMEnd: 128 << 20, kernelEnd: 0)
        }
        #expect(X86BootError.initrdDoesNotFit(size: 5).description == "initrd of 5 bytes does not fit in guest memory")
    }

    @Test func loadsIntoMemory() throws {
        let mem = try GuestMemory(size: 64 << 20)
        let data = Fixtures.data(count: 12345)
        let placed = try Initrd.load(data, into: mem, header: nil, kernelEnd: 0x200_0000)
        #expect(placed.size == data.count)
        #expect(try mem.read(at: placed.address, count: data.count) == data)
    }
}

@Suite struct GDTTests {
    @Test func knownDescriptors() {
        #expect(GDT.bootTable.map(\.raw) == [0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff, 0x008f_8b00_0000_ffff])
    }

    @Test func encodeDecodeRoundTrip() {
        for (flags, base, limit) in [(UInt16(0xa09b), UInt32(0), UInt32(0xfffff)), (0xc093, 0x1234_5678, 0xabcde), (0x808b, 0xff00_0001, 0x67)] {
            let d = SegmentDescriptor(flags: flags, base: base, limit: limit)
            #expect(d.flags == flags && d.base == base && d.limit == limit)
        }
    }

    @Test func bootSegments() {
        let cs = GDT.bootCodeSegment
        #expect(cs.selector == 0x08 && cs.type == 0xb && cs.l == 1 && cs.db == 0 && cs.s == 1)
        #expect(cs.present == 1 && cs.dpl == 0 && cs.g == 1 && cs.limit == 0xffff_ffff && cs.base == 0 && cs.unusable == 0)
        let ds = GDT.bootDataSegment
        #expect(ds.selector == 0x10 && ds.type == 0x3 && ds.l == 0 && ds.db == 1 && ds.s == 1)
        let tss = GDT.bootTSSSegment
        #expect(tss.selector == 0x18 && tss.type == 0xb && tss.s == 0 && tss.present == 1)
        #expect(SegmentDescriptor(raw: 0).segment(selector: 0).unusable == 1)
        #expect(GDT.limit == 31)
    }

    @Test func writtenToGuest() throws {
        let mem = try GuestMemory(size: 1 << 20)
        try GDT.write(into: mem)
        #expect(try mem.load(UInt64.self, at: Layout.gdtAddress + 8) == 0x00af_9b00_0000_ffff)
        #expect(try mem.load(UInt64.self, at: Layout.idtAddress) == 0)
    }
}

@Suite struct PageTableTests {
    @Test func identityMapFirst4GiB() throws {
        let mem = try GuestMemory(size: 1 << 20)
        let cr3 = try PageTables.write(into: mem)
        #expect(cr3 == Layout.pml4)
        #expect(try mem.load(UInt64.self, at: Layout.pml4) == Layout.pdpte | 0x3)
        #expect(try mem.load(UInt64.self, at: Layout.pml4 + 8) == 0)
        for i in 0..<4 {
            #expect(try mem.load(UInt64.self, at: Layout.pdpte + UInt64(i * 8)) == (Layout.pde + UInt64(i) * 0x1000) | 0x3)
        }
        #expect(try mem.load(UInt64.self, at: Layout.pdpte + 32) == 0)
        for i in [0, 1, 511, 512, 1000, 2047] {
            #expect(try mem.load(UInt64.self, at: Layout.pde + UInt64(i * 8)) == UInt64(i) << 21 | 0x83)
        }
    }
}

@Suite struct MPTableTests {
    func sum(_ bytes: ArraySlice<UInt8>) -> UInt8 { bytes.reduce(0, &+) }

    @Test(arguments: [1, 8, 254])
    func checksumsAndCounts(cpus: Int) throws {
        let t = try MPTable.build(cpuCount: cpus)
        #expect(Array(t[0..<4]) == Array("_MP_".utf8))
        #expect(sum(t[0..<16]) == 0)
        #expect(t.getLE(UInt32.self, at: 4) == UInt32(Layout.mptableStart) + 16)
        #expect(Array(t[16..<20]) == Array("PCMP".utf8))
        let length = Int(t.getLE(UInt16.self, at: 16 + 4))
        #expect(length == t.count - 16)
        #expect(sum(t[16..<(16 + length)]) == 0)
        #expect(Array(t[24..<32]) == Array("SWIFTLET".utf8))
        #expect(t.getLE(UInt32.self, at: 16 + 36) == 0xFEE0_0000)

        // Walk the entries.
        var o = 16 + 44
        var processors = 0, ioInts = 0, bsp = 0
        for _ in 0..<Int(t.getLE(UInt16.self, at: 16 + 34)) {
            switch t[o] {
            case 0:
                #expect(t[o + 1] == UInt8(processors))
                if t[o + 3] & 2 != 0 { bsp += 1 }
                processors += 1
                o += 20
            case 2:
                #expect(t[o + 1] == UInt8(cpus))
                #expect(t.getLE(UInt32.self, at: o + 4) == 0xFEC0_0000)
                o += 8
            case 3:
                #expect(t[o + 5] == t[o + 7])  // IRQ n -> pin n
                ioInts += 1
                o += 8
            default:
                o += 8
            }
        }
        #expect(o == t.count)
        #expect(processors == cpus && bsp == 1 && ioInts == 24)
    }

    @Test func invalidCPUCounts() {
        #expect(throws: X86BootError.invalidCPUCount(0)) { try MPTable.build(cpuCount: 0) }
        #expect(throws: X86BootError.invalidCPUCount(255)) { try MPTable.build(cpuCount: 255) }
        #expect(throws: X86BootError.mptableTooLarge(MPTable.size(cpuCount: 4))) {
            try MPTable.build(cpuCount: 4, base: 0xfff00)
        }
    }

    @Test func writtenToGuest() throws {
        let mem = try GuestMemory(size: 2 << 20)
        try MPTable.write(into: mem, cpuCount: 2)
        #expect(try mem.read(at: Layout.mptableStart, count: 4) == Array("_MP_".utf8))
    }
}
