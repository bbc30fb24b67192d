import SwiftletMemory

/// Where a loaded kernel landed in guest memory.
public struct LoadedKernel: Sendable, Equatable {
    /// The entry point (`e_entry`); for vmlinux, the physical address of `startup_64`.
    public let entry: UInt64
    /// The lowest guest-physical address any segment occupies.
    public let lowestAddress: UInt64
    /// One past the highest guest-physical address any segment occupies (`p_memsz` included).
    public let highestAddress: UInt64

    public init(entry: UInt64, lowestAddress: UInt64, highestAddress: UInt64) {
        self.entry = entry
        self.lowestAddress = lowestAddress
        self.highestAddress = highestAddress
    }
}

/// Loads an ELF64 x86_64 executable (a vmlinux) into guest memory by its
/// physical addresses, the way the bootloader-less 64-bit entry expects.
public enum ELFLoader {
    static let elfMagic: [UInt8] = [0x7f, 0x45, 0x4c, 0x46]
    static let elfClass64: UInt8 = 2
    static let elfDataLittleEndian: UInt8 = 1
    static let elfTypeExec: UInt16 = 2
    static let elfMachineX86_64: UInt16 = 62
    static let headerSize = 64
    static let programHeaderSize = 56
    static let ptLoad: UInt32 = 1

    /// A PT_LOAD segment as described by its program header.
    struct Segment {
        var offset: UInt64
        var paddr: UInt64
        var filesz: UInt64
        var memsz: UInt64
    }

    /// Whether `bytes` start like an ELF file.
    public static func isELF(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 4 && zip(bytes, elfMagic).allSatisfy { $0 == $1 }
    }

    /// Parses `elf` and returns its entry and PT_LOAD segments, every one
    /// checked against the file and the guest's usable RAM, without writing.
    static func segments(_ elf: UnsafeRawBufferPointer, memory: GuestMemory) throws(X86BootError) -> (entry: UInt64, [Segment]) {
        guard isELF(elf) else { throw .invalidELF("no ELF magic") }
        guard elf.count >= headerSize else { throw .invalidELF("file of \(elf.count) bytes is shorter than the ELF header") }
        guard elf[4] == elfClass64 else { throw .invalidELF("not a 64-bit ELF") }
        guard elf[5] == elfDataLittleEndian else { throw .invalidELF("not little-endian") }
        // All reads below are within the 64-byte header checked above.
        let type = elf.le(UInt16.self, at: 16) ?? 0
        let machine = elf.le(UInt16.self, at: 18) ?? 0
        let entry = elf.le(UInt64.self, at: 24) ?? 0
        let phoff = elf.le(UInt64.self, at: 32) ?? 0
        let phentsize = elf.le(UInt16.self, at: 54) ?? 0
        let phnum = elf.le(UInt16.self, at: 56) ?? 0
        guard machine == elfMachineX86_64 else { throw .invalidELF("machine \(machine) is not x86_64 (62)") }
        guard type == elfTypeExec else { throw .invalidELF("type \(type) is not an executable (2)") }
        guard Int(phentsize) == programHeaderSize else { throw .invalidELF("program header size \(phentsize), expected 56") }
        guard phnum > 0 else { throw .invalidELF("no program headers") }
        // phnum <= 65535 and entries are 56 bytes, so the table is < 4 MiB: no overflow.
        let tableSize = UInt64(phnum) * UInt64(programHeaderSize)
        guard phoff <= UInt64(elf.count), tableSize <= UInt64(elf.count) - phoff else {
            throw .invalidELF("program headers at \(phoff) (\(phnum) entries) run past the end of the file")
        }

        var segments: [Segment] = []
        for i in 0..<Int(phnum) {
            let base = Int(phoff) + i * programHeaderSize
            guard elf.le(UInt32.self, at: base) == ptLoad else { continue }
            let s = Segment(
                offset: elf.le(UInt64.self, at: base + 8) ?? 0,
                paddr: elf.le(UInt64.self, at: base + 24) ?? 0,
                filesz: elf.le(UInt64.self, at: base + 32) ?? 0,
                memsz: elf.le(UInt64.self, at: base + 40) ?? 0
            )
            try check(s, index: i, fileSize: elf.count, memory: memory)
            segments.append(s)
        }
        guard !segments.isEmpty else { throw .invalidELF("no PT_LOAD segments") }
        return (entry, segments)
    }

    static func check(_ s: Segment, index: Int, fileSize: Int, memory: GuestMemory) throws(X86BootError) {
        guard s.filesz <= s.memsz else { throw .invalidELF("segment \(index): file size exceeds memory size") }
        guard s.offset <= UInt64(fileSize), s.filesz <= UInt64(fileSize) - s.offset else {
            throw .invalidELF("segment \(index) data runs past the end of the file")
        }
        let (end, overflow) = s.paddr.addingReportingOverflow(s.memsz)
        guard !overflow else { throw .segmentOutOfRange(address: s.paddr, size: s.memsz, why: "wraps around the address space") }
        guard s.paddr >= Layout.highMemory else {
            throw .segmentOutOfRange(address: s.paddr, size: s.memsz, why: "is below 1 MiB, where the boot structures live")
        }
        guard end <= Layout.mmioGapStart || s.paddr >= Layout.mmioGapEnd else {
            throw .segmentOutOfRange(address: s.paddr, size: s.memsz, why: "overlaps the MMIO gap")
        }
        guard s.memsz <= UInt64(Int.max), memory.contains(s.paddr, count: Int(s.memsz)) else {
            throw .segmentOutOfRange(address: s.paddr, size: s.memsz, why: "is beyond guest RAM")
        }
    }

    /// Copies the PT_LOAD segments of `elf` into guest memory at their
    /// physical addresses and zeroes each segment's tail (`.bss`).
    ///
    /// Everything is checked before the first byte is written, so a bad image
    /// leaves guest memory untouched.
    public static func load(_ elf: UnsafeRawBufferPointer, into memory: GuestMemory) throws(X86BootError) -> LoadedKernel {
        let (entry, segments) = try segments(elf, memory: memory)
        // Segment ends cannot overflow: check() rejected wrapping segments.
        let lowest = segments.map(\.paddr).min() ?? 0
        let highest = segments.map { $0.paddr + $0.memsz }.max() ?? 0
        guard entry >= lowest, entry < highest else {
            throw .invalidELF("entry point 0x\(String(entry, radix: 16)) is outside the loaded segments")
        }
        for s in segments {
            // Sizes were checked to fit the file and guest RAM, so they fit Int.
            let data = UnsafeRawBufferPointer(rebasing: elf[Int(s.offset)..<Int(s.offset + s.filesz)])
            do {
                try memory.write(data, at: s.paddr)
                try memory.fill(0, at: s.paddr + s.filesz, count: Int(s.memsz - s.filesz))
            } catch {
                throw .memory(error)
            }
        }
        return LoadedKernel(entry: entry, lowestAddress: lowest, highestAddress: highest)
    }

    /// Loads an ELF held in an array.
    public static func load(_ elf: [UInt8], into memory: GuestMemory) throws(X86BootError) -> LoadedKernel {
        try elf.withBytes { (b) throws(X86BootError) in try load(b, into: memory) }
    }
}
