import Glibc
import SwiftletSys

/// Why a guest memory access or mapping failed.
public enum GuestMemoryError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `[address, address+length)` is not inside one guest RAM region.
    case outOfBounds(address: UInt64, length: Int)
    /// The host mapping failed.
    case mapFailed(SystemError)
    /// The requested layout is empty, overlapping or misaligned.
    case invalidLayout(String)

    public var description: String {
        switch self {
        case let .outOfBounds(address, length):
            return "guest memory access out of bounds: 0x\(String(address, radix: 16)) length \(length)"
        case let .mapFailed(e): return "guest memory: \(e)"
        case let .invalidLayout(why): return "guest memory layout: \(why)"
        }
    }
}

/// Guest physical memory: one or more host mappings, each backing a
/// contiguous guest-physical range.
///
/// Every access is bounds-checked against the regions, so a guest-provided
/// address can never reach host memory outside them. The mappings are
/// anonymous and `MAP_NORESERVE`: pages cost nothing until touched.
///
/// `@unchecked Sendable`: the regions' base pointers never change after
/// `init`; vCPUs and devices share the memory by design, every access checked.
///
/// `@safe`: the mappings are reached only through the bounds-checked
/// accessors below; `Region.host` and `slice` hand out raw memory, and their
/// types make every use of them an `unsafe` one.
@safe public final class GuestMemory: @unchecked Sendable {
    /// One contiguous guest-physical range and its host mapping.
    @safe public struct Region: Sendable {
        /// Guest-physical base address.
        public let guestBase: UInt64
        /// Size in bytes.
        public let size: Int
        /// Host address of the mapping.
        public nonisolated(unsafe) let host: UnsafeMutableRawPointer

        /// One past the last guest-physical address.
        public var guestEnd: UInt64 { guestBase + UInt64(size) }
    }

    /// The regions, sorted by guest address, not overlapping.
    public let regions: [Region]
    private let owned: Bool
    /// Anonymous memory (a cold boot), not a snapshot file's pages.
    private let anonymous: Bool

    /// Maps anonymous memory for each `(base, size)` range.
    /// Bases and sizes must be page-aligned and the ranges must not overlap.
    public init(ranges: [(base: UInt64, size: Int)]) throws(GuestMemoryError) {
        let sorted = ranges.sorted { $0.base < $1.base }
        guard !sorted.isEmpty else { throw .invalidLayout("no memory") }
        var regions: [Region] = []
        var lastEnd: UInt64 = 0
        for r in sorted {
            guard r.size > 0, r.base % 4096 == 0, r.size % 4096 == 0 else {
                throw .invalidLayout("range 0x\(String(r.base, radix: 16)) size \(r.size) is not page-aligned")
            }
            guard r.base >= lastEnd else { throw .invalidLayout("ranges overlap") }
            // SAFETY: a fresh anonymous mapping; the result is checked against MAP_FAILED before use.
            let p = unsafe mmap(nil, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
            guard let p = unsafe p, unsafe p != MAP_FAILED else {
                let e = SystemError.last("mmap(guest memory, \(r.size) bytes)")
                // SAFETY: unmaps only what this init mapped, each region once, before throwing.
                for done in regions { unsafe munmap(done.host, done.size) }
                throw .mapFailed(e)
            }
            // SAFETY: `p` maps exactly `r.size` bytes, and the region owns it until deinit.
            unsafe regions.append(Region(guestBase: r.base, size: r.size, host: p))
            lastEnd = r.base + UInt64(r.size)
        }
        self.regions = regions
        self.owned = true
        self.anonymous = true
    }

    /// Maps `ranges` from `fd`, back to back from offset 0, copy-on-write
    /// (`MAP_PRIVATE`): pages load lazily from the file, and every mapping of
    /// the same file shares the pages nobody wrote. For snapshot restore.
    public init(privateMappingOf fd: Int32, ranges: [(base: UInt64, size: Int)]) throws(GuestMemoryError) {
        var regions: [Region] = []
        var offset = 0
        var lastEnd: UInt64 = 0
        for r in ranges {
            guard r.size > 0, r.base % 4096 == 0, r.size % 4096 == 0, r.base >= lastEnd else {
                for done in regions { unsafe munmap(done.host, done.size) }
                throw .invalidLayout("range 0x\(String(r.base, radix: 16)) size \(r.size)")
            }
            // SAFETY: a private mapping of the file's next `r.size` bytes; checked against MAP_FAILED.
            let p = unsafe mmap(nil, r.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, off_t(offset))
            guard let p = unsafe p, unsafe p != MAP_FAILED else {
                let e = SystemError.last("mmap(snapshot memory, \(r.size) bytes)")
                for done in regions { unsafe munmap(done.host, done.size) }
                throw .mapFailed(e)
            }
            unsafe regions.append(Region(guestBase: r.base, size: r.size, host: p))
            offset += r.size
            lastEnd = r.base + UInt64(r.size)
        }
        guard !regions.isEmpty else { throw .invalidLayout("no memory") }
        self.regions = regions
        self.owned = true
        self.anonymous = false
    }

    /// One region at guest address 0 of `size` bytes. Convenient for tests.
    public convenience init(size: Int) throws(GuestMemoryError) {
        try self.init(ranges: [(base: 0, size: size)])
    }

    deinit {
        // SAFETY: each region is unmapped once, here, when nothing can reach it any more.
        if owned { for r in regions { unsafe munmap(r.host, r.size) } }
    }

    /// Total bytes of guest RAM.
    public var totalSize: Int { regions.reduce(0) { $0 + $1.size } }

    /// Host pointer to `[address, address+count)`, which must lie inside one region.
    ///
    /// Overflow-safe: a huge `address` or `count` from the guest fails the check.
    @inlinable
    public func slice(at address: UInt64, count: Int) throws(GuestMemoryError) -> UnsafeMutableRawBufferPointer {
        guard count >= 0 else { throw .outOfBounds(address: address, length: count) }
        for r in regions where address >= r.guestBase {
            let offset = address - r.guestBase
            // offset <= size and count <= size - offset, so no sum can overflow.
            if offset <= UInt64(r.size) && UInt64(count) <= UInt64(r.size) - offset {
                // SAFETY: offset + count <= r.size (checked just above without overflow), so the slice lies inside
                // the mapping.
                return unsafe UnsafeMutableRawBufferPointer(start: r.host + Int(offset), count: count)
            }
        }
        throw .outOfBounds(address: address, length: count)
    }

    /// True when `[address, address+count)` lies inside one region.
    public func contains(_ address: UInt64, count: Int) -> Bool {
        // SAFETY: only whether the slice exists is used, never the pointer.
        unsafe (try? slice(at: address, count: count)) != nil
    }

    /// Copies `bytes` into guest memory at `address`.
    public func write(_ bytes: UnsafeRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        // SAFETY: `slice` checked the range; the copy writes exactly `bytes.count` bytes into it.
        let dst = unsafe try slice(at: address, count: bytes.count)
        if bytes.count > 0 { unsafe dst.baseAddress!.copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
    }

    /// Copies an array of bytes into guest memory at `address`.
    public func write(_ bytes: [UInt8], at address: UInt64) throws(GuestMemoryError) {
        // SAFETY: the buffer is only read, inside the closure, by the checked write above.
        unsafe try bytes.withUnsafeBytes { b in
            Result { () throws(GuestMemoryError) in unsafe try write(b, at: address) }
        }.get()
    }

    /// Copies guest memory at `address` into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer, at address: UInt64) throws(GuestMemoryError) {
        // SAFETY: `slice` checked the range; the copy reads exactly `buffer.count` bytes of it.
        let src = unsafe try slice(at: address, count: buffer.count)
        if buffer.count > 0 { unsafe buffer.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: buffer.count) }
    }

    /// Reads `count` bytes at `address`.
    public func read(at address: UInt64, count: Int) throws(GuestMemoryError) -> [UInt8] {
        // SAFETY: `slice` checked the range, and the bytes are copied out before returning.
        let src = unsafe try slice(at: address, count: count)
        return unsafe Array(src)
    }

    /// Loads a little-endian integer at `address` (any alignment).
    @inlinable
    public func load<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: UInt64) throws(GuestMemoryError) -> T {
        // SAFETY: a checked range of exactly T's size, read unaligned.
        let s = unsafe try slice(at: address, count: MemoryLayout<T>.size)
        return unsafe T(littleEndian: s.loadUnaligned(as: T.self))
    }

    /// Stores a little-endian integer at `address` (any alignment).
    @inlinable
    public func store<T: FixedWidthInteger>(_ value: T, at address: UInt64) throws(GuestMemoryError) {
        // SAFETY: a checked range of exactly T's size, written unaligned.
        let s = unsafe try slice(at: address, count: MemoryLayout<T>.size)
        unsafe s.storeBytes(of: value.littleEndian, as: T.self)
    }

    /// Zeroes `count` bytes at `address`, never a mapping laid over this
    /// memory (`mmap` MAP_FIXED of a file): on anonymous memory the whole
    /// pages inside the range are dropped (MADV_DONTNEED) rather than
    /// written, so they read back as zero and are not faulted in now. A cold
    /// boot zeroing the kernel's .bss page by page took ~300 page faults,
    /// milliseconds of start-up on nested KVM (issue 19).
    public func zero(at address: UInt64, count: Int) throws(GuestMemoryError) {
        // SAFETY: a checked range: madvise covers only the whole pages inside it, memset the rest of it.
        let s = unsafe try slice(at: address, count: count)
        guard count > 0, let base = s.baseAddress else { return }
        let page = 4096
        let start = (Int(bitPattern: base) + page - 1) & ~(page - 1)
        let end = (Int(bitPattern: base) + count) & ~(page - 1)
        guard anonymous, end > start,
              unsafe madvise(UnsafeMutableRawPointer(bitPattern: start), end - start, MADV_DONTNEED) == 0 else {
            unsafe memset(base, 0, count)
            return
        }
        unsafe memset(base, 0, start - Int(bitPattern: base))
        unsafe memset(UnsafeMutableRawPointer(bitPattern: end)!, 0, Int(bitPattern: base) + count - end)
    }

    /// Sets `count` bytes at `address` to `byte`.
    public func fill(_ byte: UInt8, at address: UInt64, count: Int) throws(GuestMemoryError) {
        // SAFETY: a checked range of `count` bytes, filled exactly.
        let s = unsafe try slice(at: address, count: count)
        if count > 0 { unsafe memset(s.baseAddress!, Int32(byte), count) }
    }
}
