import Glibc
import Testing
import SwiftletMemory
@testable import SwiftletX86

@Suite struct ELFTests {
    @Test func loadsSegmentsAndZeroesBSS() throws {
        let mem = try GuestMemory(size: 32 << 20)
        // Dirty the bss range first, to see it cleared.
        try mem.fill(0xcc, at: 0x100_0000, count: 0x8000)
        let a = Fixtures.data(count: 5000), b = Fixtures.data(count: 100, seed: 7)
        let k = try ELFLoader.load(Fixtures.smallKernel(), into: mem)
        #expect(k.entry == 0x100_0000)
        #expect(k.lowestAddress == 0x100_0000)
        #expect(k.highestAddress == 0x100_4000 + 0x3000)
        #expect(try mem.read(at: 0x100_0000, count: a.count) == a)
        #expect(try mem.read(at: 0x100_0000 + UInt64(a.count), count: 8192 - a.count).allSatisfy { $0 == 0 })
        #expect(try mem.read(at: 0x100_4000, count: b.count) == b)
        #expect(try mem.read(at: 0x100_4000 + UInt64(b.count), count: 0x3000 - b.count).allSatisfy { $0 == 0 })
    }

    @Test func rejectsSegmentsOutsideRAM() throws {
        let mem = try GuestMemory(size: 32 << 20)
        let cases: [UInt64] = [0x8000, 0x1ff_f000, 0xC000_0000 - 0x100, 0x1_0000_0000, 0xffff_ffff_ffff_f000]
        for paddr in cases {
            let elf = Fixtures.elf(entry: paddr, segments: [.init(paddr: paddr, data: [1, 2, 3], memsz: 0x2000)])
            #expect(throws: X86BootError.self) { try ELFLoader.load(elf, into: mem) }
        }
        // Nothing was written by the rejected loads.
        #expect(try mem.read(at: 0x1ff_f000, count: 3) == [0, 0, 0])
    }

    @Test func rejectsMalformedHeaders() throws {
        let mem = try GuestMemory(size: 32 << 20)
        let good = Fixtures.smallKernel()

        // Program headers cut off.
        #expect(throws: X86BootError.self) { try ELFLoader.load(Array(good[0..<100]), into: mem) }
        #expect(throws: X86BootError.self) { try ELFLoader.load(Array(good[0..<40]), into: mem) }
        // Segment data past the end of the file.
        #expect(throws: X86BootError.self) { try ELFLoader.load(Array(good[0..<(good.count - 10)]), into: mem) }

        func patched(_ offset: Int, _ value: some FixedWidthInteger) -> [UInt8] {
            var b = good
            Fixtures.put(value, at: offset, in: &b)
            return b
        }
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(4, UInt8(1)), into: mem) }       // 32-bit
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(5, UInt8(2)), into: mem) }       // big-endian
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(16, UInt16(3)), into: mem) }     // ET_DYN
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(18, UInt16(183)), into: mem) }   // aarch64
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(32, UInt64.max - 10), into: mem) } // phoff
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(56, UInt16(0xffff)), into: mem) } // phnum
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(24, UInt64(0x5000_0000)), into: mem) } // entry
        // p_filesz > p_memsz in the first PT_LOAD (program header 1).
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(64 + 56 + 40, UInt64(10)), into: mem) }
        // p_offset huge.
        #expect(throws: X86BootError.self) { try ELFLoader.load(patched(64 + 56 + 8, UInt64.max), into: mem) }
    }

    @Test func noLoadSegments() throws {
        let mem = try GuestMemory(size: 32 << 20)
        let elf = Fixtures.elf(entry: 0x100_0000, segments: [])
        #expect(throws: X86BootError.invalidELF("no PT_LOAD segments")) { try ELFLoader.load(elf, into: mem) }
    }

    @Test func loadsAboveTheGap() throws {
        let mem = try GuestMemory(ranges: [(base: 0, size: 32 << 20), (base: 0x1_0000_0000, size: 1 << 20)])
        let elf = Fixtures.elf(entry: 0x1_0000_0000, segments: [.init(paddr: 0x1_0000_0000, data: [9, 9], memsz: 16)])
        let k = try ELFLoader.load(elf, into: mem)
        #expect(k.highestAddress == 0x1_0000_0010)
        #expect(try mem.read(at: 0x1_0000_0000, count: 3) == [9, 9, 0])
    }
}

@Suite struct ELFFileTests {
    /// The loader that boots the default kernel: from a file, its .bss
    /// zeroed with `GuestMemory.zero` (pages dropped, not written).
    @Test("a vmlinux loaded from its file has its .bss zeroed, also over memory written before")
    func loadsFromFileAndZeroesBSS() throws {
        let mem = try GuestMemory(size: 32 << 20)
        try mem.fill(0xcc, at: 0x100_0000, count: 0x8000)
        let path = "/tmp/swiftlet-elftest-\(getpid())"
        let bytes = Fixtures.smallKernel()
        let f = fopen(path, "w")
        #expect(fwrite(bytes, 1, bytes.count, f) == bytes.count)
        fclose(f)
        defer { unlink(path) }
        let a = Fixtures.data(count: 5000), b = Fixtures.data(count: 100, seed: 7)
        let k = try ELFLoader.load(fileAt: path, into: mem)
        #expect(k.entry == 0x100_0000)
        #expect(try mem.read(at: 0x100_0000, count: a.count) == a)
        #expect(try mem.read(at: 0x100_0000 + UInt64(a.count), count: 8192 - a.count).allSatisfy { $0 == 0 })
        #expect(try mem.read(at: 0x100_4000, count: b.count) == b)
        #expect(try mem.read(at: 0x100_4000 + UInt64(b.count), count: 0x3000 - b.count).allSatisfy { $0 == 0 })
        // Past the last segment, untouched.
        #expect(try mem.read(at: 0x100_7000, count: 0x1000).allSatisfy { $0 == 0xcc })
    }
}
