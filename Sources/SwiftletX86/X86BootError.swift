import SwiftletMemory
import SwiftletSys

/// Why a kernel could not be prepared for an x86_64 direct boot.
///
/// Every case reads as one line naming what was wrong, so the launcher can
/// print it as is.
public enum X86BootError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Neither an ELF nor a bzImage with the 0xAA55 / "HdrS" signatures.
    case notAKernelImage
    /// The bzImage ends before its header or payload does.
    case truncatedImage(String)
    /// The bzImage speaks a boot protocol older than the 2.12 we need.
    case protocolTooOld(major: UInt8, minor: UInt8)
    /// The bzImage has no 64-bit entry point (XLF_KERNEL_64 clear).
    case not64Bit
    /// The payload is compressed with a format we do not decompress.
    case unsupportedCompression(String)
    /// The compressed payload is damaged.
    case corruptPayload(String)
    /// The payload decompressed to a size other than its trailer announced
    /// (`actual` is `expected + 1` when it would not stop there).
    case sizeMismatch(expected: Int, actual: Int)
    /// The decompressed kernel would exceed `Decompressor.maxOutputSize`.
    case kernelTooLarge(Int)
    /// The vmlinux ELF is malformed or not an x86_64 executable.
    case invalidELF(String)
    /// An ELF segment lands outside usable guest RAM.
    case segmentOutOfRange(address: UInt64, size: UInt64, why: String)
    /// The command line (with its NUL) is longer than the kernel accepts.
    case commandLineTooLong(length: Int, limit: Int)
    /// The command line holds a NUL byte, which would silently cut it short.
    case commandLineHasNUL
    /// No room for the initrd between the kernel and the top of low RAM.
    case initrdDoesNotFit(size: Int)
    /// The CPU count is outside what the MP table can describe.
    case invalidCPUCount(Int)
    /// The MP table would not fit the reserved area below 1 MiB.
    case mptableTooLarge(Int)
    /// More E820 entries than the zero page holds.
    case tooManyE820Entries(Int)
    /// A guest memory access failed.
    case memory(GuestMemoryError)
    /// A host I/O call failed (reading the kernel image).
    case io(SystemError)

    public var description: String {
        switch self {
        case .notAKernelImage:
            return "not a Linux kernel image"
        case let .truncatedImage(why):
            return "truncated bzImage: \(why)"
        case let .protocolTooOld(major, minor):
            return "boot protocol \(major).\(minor < 10 ? "0" : "")\(minor) too old, need 2.12"
        case .not64Bit:
            return "kernel has no 64-bit entry point (XLF_KERNEL_64 not set)"
        case let .unsupportedCompression(what):
            return "unsupported kernel compression (\(what)); use gzip, lz4 or zstd, or pass vmlinux"
        case let .corruptPayload(why):
            return "corrupt kernel payload: \(why)"
        case let .sizeMismatch(expected, actual) where actual > expected:
            return "kernel payload decompresses to more than the \(expected) bytes its size trailer announces"
        case let .sizeMismatch(expected, actual):
            return "kernel payload decompressed to \(actual) bytes, its size trailer announces \(expected)"
        case let .kernelTooLarge(size):
            return "decompressed kernel of \(size) bytes exceeds the \(Decompressor.maxOutputSize >> 20) MiB limit"
        case let .invalidELF(why):
            return "invalid vmlinux ELF: \(why)"
        case let .segmentOutOfRange(address, size, why):
            return "kernel segment at 0x\(String(address, radix: 16)) (\(size) bytes) \(why)"
        case let .commandLineTooLong(length, limit):
            return "kernel command line too long (\(length) bytes, limit \(limit))"
        case .commandLineHasNUL:
            return "kernel command line contains a NUL byte"
        case let .initrdDoesNotFit(size):
            return "initrd of \(size) bytes does not fit in guest memory"
        case let .invalidCPUCount(n):
            return "cannot describe \(n) CPUs in the MP table (1...\(MPTable.maxCPUs))"
        case let .mptableTooLarge(size):
            return "MP table of \(size) bytes does not fit below 1 MiB"
        case let .tooManyE820Entries(n):
            return "\(n) E820 entries, the zero page holds \(E820.maxEntries)"
        case let .memory(e):
            return e.description
        case let .io(e):
            return e.description
        }
    }
}
