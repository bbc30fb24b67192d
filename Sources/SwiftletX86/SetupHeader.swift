/// The Linux x86 boot protocol setup header of a bzImage (at file offset 0x1f1).
///
/// Only what a 64-bit direct boot needs is decoded; the raw header bytes are
/// kept so the zero page can carry the kernel's own copy. We need protocol
/// 2.12 or later: that is where XLF_KERNEL_64 and the 64-bit entry live.
public struct SetupHeader: Sendable, Equatable {
    // File offsets of the fields we read (Documentation/arch/x86/boot.rst).
    static let setupSectsOffset = 0x1f1
    static let syssizeOffset = 0x1f4
    static let bootFlagOffset = 0x1fe
    static let jumpOffset = 0x200
    static let headerMagicOffset = 0x202
    static let versionOffset = 0x206
    static let loadflagsOffset = 0x211
    static let code32StartOffset = 0x214
    static let ramdiskImageOffset = 0x218
    static let ramdiskSizeOffset = 0x21c
    static let cmdLinePtrOffset = 0x228
    static let initrdAddrMaxOffset = 0x22c
    static let kernelAlignmentOffset = 0x230
    static let relocatableOffset = 0x234
    static let minAlignmentOffset = 0x235
    static let xloadflagsOffset = 0x236
    static let cmdlineSizeOffset = 0x238
    static let payloadOffsetOffset = 0x248
    static let payloadLengthOffset = 0x24c
    static let prefAddressOffset = 0x258
    static let initSizeOffset = 0x260
    /// One past the last field protocol 2.12 defines that we read (init_size).
    static let minimumHeaderEnd = 0x264
    /// Where the header area of `boot_params` ends: copying further would
    /// clobber the EDD and E820 tables, so longer headers are cut here.
    static let zeroPageHeaderLimit = 0x290

    /// 0xAA55 at 0x1fe.
    public static let bootFlag: UInt16 = 0xAA55
    /// "HdrS" at 0x202, little-endian.
    public static let headerMagic: UInt32 = 0x5372_6448
    /// The oldest protocol we accept: 2.12.
    public static let minimumVersion: UInt16 = 0x020c
    /// xloadflags bit 0: the kernel has a 64-bit entry point at +0x200.
    public static let xlfKernel64: UInt16 = 1 << 0
    /// xloadflags bit 1: the kernel, initrd and cmdline may live above 4 GiB.
    public static let xlfCanBeLoadedAbove4G: UInt16 = 1 << 1
    /// loadflags bit 0: the protected-mode code is loaded at 0x100000.
    public static let loadedHigh: UInt8 = 0x01
    /// loadflags bit 7: heap_end_ptr is valid.
    public static let canUseHeap: UInt8 = 0x80
    /// initrd_addr_max when a header does not say (older protocols).
    public static let defaultInitrdAddrMax: UInt32 = 0x37ff_ffff

    /// Setup sectors (512 bytes each) after the boot sector; 0 in the file means 4.
    public let setupSects: UInt8
    /// Size of the protected-mode code in 16-byte paragraphs.
    public let syssize: UInt32
    /// Boot protocol version, such as 0x020f for 2.15.
    public let version: UInt16
    /// Boot protocol flags (LOADED_HIGH, CAN_USE_HEAP, ...).
    public let loadflags: UInt8
    /// The 32-bit entry point the kernel was built for.
    public let code32Start: UInt32
    /// As found in the file (normally 0).
    public let ramdiskImage: UInt32
    /// As found in the file (normally 0).
    public let ramdiskSize: UInt32
    /// As found in the file (normally 0).
    public let cmdLinePtr: UInt32
    /// Highest address the initrd may occupy (inclusive).
    public let initrdAddrMax: UInt32
    /// Physical alignment the kernel needs when relocated.
    public let kernelAlignment: UInt32
    /// Whether the kernel may be loaded at another address than `prefAddress`.
    public let relocatableKernel: Bool
    /// log2 of the minimum alignment for relocation.
    public let minAlignment: UInt8
    /// Extended load flags (XLF_*).
    public let xloadflags: UInt16
    /// Maximum command line length, not counting the NUL.
    public let cmdlineSize: UInt32
    /// Payload offset from the start of the protected-mode code.
    public let payloadOffset: UInt32
    /// Payload length in bytes, including the 4-byte size trailer.
    public let payloadLength: UInt32
    /// Preferred load address of the kernel.
    public let prefAddress: UInt64
    /// Memory the kernel needs from its load address while it decompresses.
    public let initSize: UInt32
    /// One past the header in the file: 0x202 + the byte at 0x201.
    public let headerEnd: Int
    /// The header bytes `[0x1f1, min(headerEnd, 0x290))`, to copy into the zero page at 0x1f1.
    public let rawHeader: [UInt8]

    /// File offset of the protected-mode code: (setup_sects + 1) * 512.
    public var protectedModeOffset: Int { (Int(setupSects) + 1) * 512 }
    /// File offsets of the compressed payload (checked against the file length).
    public var payloadRange: Range<Int> {
        let start = protectedModeOffset + Int(payloadOffset)
        return start..<(start + Int(payloadLength))
    }

    /// Parses the header from the start of a bzImage.
    ///
    /// `bytes` may be only a prefix of the file (the first few KiB hold the
    /// header); pass the whole file's length as `fileLength` so the payload is
    /// still checked to lie inside the file. Without it, `bytes` is the file.
    public static func parse(_ bytes: UnsafeRawBufferPointer, fileLength: Int? = nil) throws(X86BootError) -> SetupHeader {
        let fileLength = max(fileLength ?? bytes.count, bytes.count)

        // Signatures first, so that something else entirely reads as "not a kernel".
        // Too short to even hold the boot flag: nothing says it is a kernel.
        guard let flag = bytes.le(UInt16.self, at: bootFlagOffset) else { throw .notAKernelImage }
        guard flag == bootFlag else { throw .notAKernelImage }
        guard let magic = bytes.le(UInt32.self, at: headerMagicOffset) else {
            throw .truncatedImage("\(bytes.count) bytes, shorter than the setup header")
        }
        guard magic == headerMagic else { throw .notAKernelImage }
        guard let version = bytes.le(UInt16.self, at: versionOffset) else {
            throw .truncatedImage("\(bytes.count) bytes, shorter than the setup header")
        }
        guard version >= minimumVersion else {
            throw .protocolTooOld(major: UInt8(version >> 8), minor: UInt8(version & 0xff))
        }

        // The jump at 0x200 is `jmp short start_of_setup`: its offset byte gives the header's end.
        guard let jumpTarget = bytes.le(UInt8.self, at: jumpOffset + 1) else {
            throw .truncatedImage("\(bytes.count) bytes, shorter than the setup header")
        }
        let headerEnd = headerMagicOffset + Int(jumpTarget)
        guard headerEnd >= minimumHeaderEnd else { throw .notAKernelImage }
        guard headerEnd <= bytes.count else {
            throw .truncatedImage("\(bytes.count) bytes, the setup header ends at \(headerEnd)")
        }

        // Every read below is inside [0, headerEnd), checked above; `?? 0` never fires.
        func u8(_ o: Int) -> UInt8 { bytes.le(UInt8.self, at: o) ?? 0 }
        func u16(_ o: Int) -> UInt16 { bytes.le(UInt16.self, at: o) ?? 0 }
        func u32(_ o: Int) -> UInt32 { bytes.le(UInt32.self, at: o) ?? 0 }
        func u64(_ o: Int) -> UInt64 { bytes.le(UInt64.self, at: o) ?? 0 }

        let xloadflags = u16(xloadflagsOffset)
        guard xloadflags & xlfKernel64 != 0 else { throw .not64Bit }

        let rawSects = u8(setupSectsOffset)
        let header = SetupHeader(
            setupSects: rawSects == 0 ? 4 : rawSects,
            syssize: u32(syssizeOffset),
            version: version,
            loadflags: u8(loadflagsOffset),
            code32Start: u32(code32StartOffset),
            ramdiskImage: u32(ramdiskImageOffset),
            ramdiskSize: u32(ramdiskSizeOffset),
            cmdLinePtr: u32(cmdLinePtrOffset),
            initrdAddrMax: u32(initrdAddrMaxOffset),
            kernelAlignment: u32(kernelAlignmentOffset),
            relocatableKernel: u8(relocatableOffset) != 0,
            minAlignment: u8(minAlignmentOffset),
            xloadflags: xloadflags,
            cmdlineSize: u32(cmdlineSizeOffset),
            payloadOffset: u32(payloadOffsetOffset),
            payloadLength: u32(payloadLengthOffset),
            prefAddress: u64(prefAddressOffset),
            initSize: u32(initSizeOffset),
            headerEnd: headerEnd,
            rawHeader: Array(bytes[setupSectsOffset..<min(headerEnd, zeroPageHeaderLimit)])
        )

        // The payload must lie inside the file. Int is 64-bit and both parts
        // are at most 32 bits, so these sums cannot overflow.
        guard header.protectedModeOffset <= fileLength else {
            throw .truncatedImage("\(fileLength) bytes, the setup code alone needs \(header.protectedModeOffset)")
        }
        guard header.payloadLength > 0 else { throw .truncatedImage("empty payload") }
        guard header.payloadRange.upperBound <= fileLength else {
            throw .truncatedImage("payload ends at \(header.payloadRange.upperBound), file has \(fileLength) bytes")
        }
        return header
    }

    /// Parses the header of a bzImage held in memory.
    public static func parse(_ bytes: [UInt8], fileLength: Int? = nil) throws(X86BootError) -> SetupHeader {
        try bytes.withBytes { (b) throws(X86BootError) in try parse(b, fileLength: fileLength) }
    }
}
