import SwiftletMemory

/// `boot_params`, the "zero page": the one structure the kernel reads at its
/// 64-bit entry (RSI points to it). Built here as 4096 plain bytes.
public enum ZeroPage {
    /// Size of `boot_params`.
    public static let size = 4096

    // boot_params offsets (arch/x86/include/uapi/asm/bootparam.h).
    static let extRamdiskImageOffset = 0x0c0
    static let extRamdiskSizeOffset = 0x0c4
    static let extCmdLinePtrOffset = 0x0c8
    static let e820EntriesOffset = 0x1e8
    static let setupHeaderOffset = 0x1f1
    static let typeOfLoaderOffset = 0x210
    static let setupDataOffset = 0x250
    static let heapEndPtrOffset = 0x224
    static let e820TableOffset = 0x2d0
    static let e820EntrySize = 20

    /// "Undefined" boot loader ID: we have none assigned.
    static let typeOfLoaderUndefined: UInt8 = 0xff
    /// heap_end_ptr: the end of the setup heap, relative to the real-mode code,
    /// as loaders conventionally set it.
    static let heapEnd: UInt16 = 0xfe00
    /// The x86 kernel's COMMAND_LINE_SIZE minus the NUL, assumed for a bare ELF
    /// (which carries no setup header to ask).
    static let defaultCmdlineSize: UInt32 = 2047

    /// The longest command line the kernel takes, in bytes including the NUL:
    /// the header's cmdline_size (which excludes the NUL) plus one, capped at
    /// `Layout.cmdlineMax`.
    public static func commandLineLimit(header: SetupHeader?) -> Int {
        let kernel = Int(header?.cmdlineSize ?? defaultCmdlineSize) + 1
        return min(kernel, Layout.cmdlineMax)
    }

    /// The command line as NUL-terminated bytes, checked against the kernel's limit.
    public static func commandLineBytes(_ cmdline: String, header: SetupHeader?) throws(X86BootError) -> [UInt8] {
        var bytes = Array(cmdline.utf8)
        guard !bytes.contains(0) else { throw .commandLineHasNUL }
        bytes.append(0)
        let limit = commandLineLimit(header: header)
        guard bytes.count <= limit else { throw .commandLineTooLong(length: bytes.count, limit: limit) }
        return bytes
    }

    /// The header to use for a bare ELF kernel: just what the kernel checks
    /// (boot flag, "HdrS", a 2.12 version) and the defaults a bzImage would give.
    static func synthesizedHeader() -> [UInt8] {
        var page = [UInt8](repeating: 0, count: size)
        page.putLE(SetupHeader.bootFlag, at: SetupHeader.bootFlagOffset)
        page.putLE(SetupHeader.headerMagic, at: SetupHeader.headerMagicOffset)
        page.putLE(SetupHeader.minimumVersion, at: SetupHeader.versionOffset)
        page.putLE(SetupHeader.defaultInitrdAddrMax, at: SetupHeader.initrdAddrMaxOffset)
        page.putLE(UInt32(Layout.kernelLoadDefault), at: SetupHeader.kernelAlignmentOffset)
        page.putLE(defaultCmdlineSize, at: SetupHeader.cmdlineSizeOffset)
        page.putLE(SetupHeader.xlfKernel64, at: SetupHeader.xloadflagsOffset)
        return Array(page[setupHeaderOffset..<SetupHeader.minimumHeaderEnd])
    }

    /// Builds the zero page.
    ///
    /// - Parameters:
    ///   - header: the bzImage's setup header, copied in as is; nil for an ELF
    ///     kernel, which gets a minimal synthesized one.
    ///   - commandLine: where the command line is in guest memory and its
    ///     length including the NUL (see `commandLineBytes`).
    ///   - initrd: where the initrd is and its size, if any.
    ///   - e820: the memory map, at most `E820.maxEntries` entries.
    public static func build(
        header: SetupHeader?,
        commandLine: (address: UInt64, size: Int),
        initrd: (address: UInt64, size: Int)? = nil,
        e820: [E820Entry]
    ) throws(X86BootError) -> [UInt8] {
        let limit = commandLineLimit(header: header)
        guard commandLine.size >= 0, commandLine.size <= limit else {
            throw .commandLineTooLong(length: commandLine.size, limit: limit)
        }
        guard e820.count <= E820.maxEntries else { throw .tooManyE820Entries(e820.count) }
        if let initrd, initrd.size < 0 { throw .initrdDoesNotFit(size: initrd.size) }

        var page = [UInt8](repeating: 0, count: size)
        // The setup header, at its file offset. rawHeader was cut at 0x290 so
        // it cannot reach the E820 table.
        let raw = header?.rawHeader ?? synthesizedHeader()
        page.replaceSubrange(setupHeaderOffset..<(setupHeaderOffset + raw.count), with: raw)

        // setup_data is the loader's to fill (a linked list the kernel walks);
        // an image shipping a non-zero value there must not point the guest at garbage.
        if raw.count >= setupDataOffset + 8 - setupHeaderOffset { page.putLE(UInt64(0), at: setupDataOffset) }
        page[typeOfLoaderOffset] = typeOfLoaderUndefined
        page[SetupHeader.loadflagsOffset] |= SetupHeader.loadedHigh | SetupHeader.canUseHeap
        page.putLE(heapEnd, at: heapEndPtrOffset)

        // 64-bit addresses are split: low half in the header, high half in ext_*.
        page.putLE(UInt32(truncatingIfNeeded: commandLine.address), at: SetupHeader.cmdLinePtrOffset)
        page.putLE(UInt32(truncatingIfNeeded: commandLine.address >> 32), at: extCmdLinePtrOffset)
        if let initrd {
            let size = UInt64(initrd.size)
            page.putLE(UInt32(truncatingIfNeeded: initrd.address), at: SetupHeader.ramdiskImageOffset)
            page.putLE(UInt32(truncatingIfNeeded: initrd.address >> 32), at: extRamdiskImageOffset)
            page.putLE(UInt32(truncatingIfNeeded: size), at: SetupHeader.ramdiskSizeOffset)
            page.putLE(UInt32(truncatingIfNeeded: size >> 32), at: extRamdiskSizeOffset)
        } else {
            // A bzImage header carries zeros here, but never trust the file.
            page.putLE(UInt32(0), at: SetupHeader.ramdiskImageOffset)
            page.putLE(UInt32(0), at: SetupHeader.ramdiskSizeOffset)
        }

        page[e820EntriesOffset] = UInt8(e820.count)
        for (i, entry) in e820.enumerated() {
            let o = e820TableOffset + i * e820EntrySize
            page.putLE(entry.addr, at: o)
            page.putLE(entry.size, at: o + 8)
            page.putLE(entry.type, at: o + 16)
        }
        return page
    }

    /// Checks `cmdline` and writes it, NUL-terminated, at `address`.
    /// Returns what `build(commandLine:)` takes.
    public static func writeCommandLine(
        _ cmdline: String, header: SetupHeader?, into memory: GuestMemory, at address: UInt64 = Layout.cmdline
    ) throws(X86BootError) -> (address: UInt64, size: Int) {
        let bytes = try commandLineBytes(cmdline, header: header)
        do { try memory.write(bytes, at: address) } catch { throw .memory(error) }
        return (address, bytes.count)
    }

    /// Builds the zero page and writes it at `Layout.zeroPage`.
    public static func write(
        into memory: GuestMemory,
        header: SetupHeader?,
        commandLine: (address: UInt64, size: Int),
        initrd: (address: UInt64, size: Int)? = nil,
        e820: [E820Entry]
    ) throws(X86BootError) {
        let page = try build(header: header, commandLine: commandLine, initrd: initrd, e820: e820)
        do { try memory.write(page, at: Layout.zeroPage) } catch { throw .memory(error) }
    }
}
