/// Little-endian encoding of snapshot state, which each saved type writes
/// and reads itself (`PersistentState`, in a `+Persist.swift` file beside
/// the type: the transport, the UART, the vCPU and VM state).
///
/// The reader treats its input as hostile: every read is bounds-checked and
/// every count is limited before anything is allocated, so a corrupt state
/// file gives an error, never a crash or a huge allocation.

/// A type whose state a snapshot keeps. The bytes are the snapshot format:
/// changing what `save` writes needs a new `Snapshot.formatVersion`.
public protocol PersistentState {
    /// Appends this state's bytes.
    func save(to w: inout StateWriter)
    /// Reads what `save` wrote, checking every count and value a hostile
    /// file could bend.
    init(from r: inout StateReader) throws(StateError)
}

/// Why saved state could not be read: the bytes end early, or hold a count,
/// length or value that no `save` writes.
public struct StateError: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

public struct StateWriter {
    @inlinable public init() {}

    // Settable only so that the @inlinable writers can append (cross-module specialization).
    public var bytes: [UInt8] = []

    @inlinable public mutating func u8(_ v: UInt8) { bytes.append(v) }
    @inlinable public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    @inlinable public mutating func u16(_ v: UInt16) { int(v) }
    @inlinable public mutating func u32(_ v: UInt32) { int(v) }
    @inlinable public mutating func u64(_ v: UInt64) { int(v) }

    @inlinable public mutating func int<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    @inlinable public mutating func bytes(_ b: some Collection<UInt8>) {
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }

    @inlinable public mutating func string(_ s: String) { bytes(Array(s.utf8)) }

    /// A C struct as its raw bytes, prefixed with its size (checked on read).
    /// Only for plain KVM ABI structs: no pointers, fixed layout on x86_64.
    @inlinable public mutating func raw<T>(_ v: T) {
        withUnsafeBytes(of: v) { bytes($0) }
    }
}

public struct StateReader {
    public let bytes: [UInt8]
    // Settable only so that the @inlinable readers can advance it.
    public var offset = 0

    @inlinable public init(_ bytes: [UInt8]) { self.bytes = bytes }

    @inlinable public var isAtEnd: Bool { offset == bytes.count }

    /// Claims the next `n` bytes; returns where they start.
    @inlinable mutating func claim(_ n: Int) throws(StateError) -> Int {
        guard n >= 0, n <= bytes.count - offset else { throw StateError("state ends early at byte \(offset)") }
        defer { offset += n }
        return offset
    }

    @inlinable public mutating func int<T: FixedWidthInteger>(_: T.Type = T.self) throws(StateError) -> T {
        let start = try claim(MemoryLayout<T>.size)
        var v: T = 0
        for i in 0..<MemoryLayout<T>.size { v |= T(bytes[start + i]) << (8 * i) }
        return v
    }

    @inlinable public mutating func u8() throws(StateError) -> UInt8 { try int() }
    @inlinable public mutating func u16() throws(StateError) -> UInt16 { try int() }
    @inlinable public mutating func u32() throws(StateError) -> UInt32 { try int() }
    @inlinable public mutating func u64() throws(StateError) -> UInt64 { try int() }

    @inlinable public mutating func bool() throws(StateError) -> Bool {
        let b = try u8()
        guard b <= 1 else { throw StateError("bad boolean at byte \(offset - 1)") }
        return b == 1
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    @inlinable public mutating func bytes(limit: Int = 1 << 20) throws(StateError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw StateError("a field of \(n) bytes at byte \(offset - 4) (at most \(limit))") }
        let start = try claim(n)
        return Array(bytes[start..<start + n])
    }

    @inlinable public mutating func string(limit: Int = 64 << 10) throws(StateError) -> String {
        let b = try bytes(limit: limit)
        guard let s = String(validating: b, as: UTF8.self) else { throw StateError("a string that is not UTF-8") }
        return s
    }

    /// A count of items that each take at least `itemSize` bytes: no more than could fit.
    @inlinable public mutating func count(itemSize: Int, limit: Int) throws(StateError) -> Int {
        let n = Int(try u32())
        guard n <= limit, n * max(itemSize, 1) <= bytes.count - offset else {
            throw StateError("a count of \(n) at byte \(offset - 4)")
        }
        return n
    }

    /// A C struct written by `StateWriter.raw`: its size must match exactly.
    @inlinable public mutating func raw<T>(_ empty: T) throws(StateError) -> T {
        var v = empty
        try raw(into: &v)
        return v
    }

    /// The same, read straight into `value` (no copy of a large struct, such as
    /// the 4 KiB XSAVE area, on the way: a restored VMM's stack stays small).
    @inlinable public mutating func raw<T>(into value: inout T) throws(StateError) {
        let n = Int(try u32())
        guard n <= 1 << 16 else { throw StateError("a field of \(n) bytes at byte \(offset - 4) (at most \(1 << 16))") }
        let start = try claim(n)
        guard n == MemoryLayout<T>.size else {
            throw StateError("\(T.self) of \(n) bytes (expected \(MemoryLayout<T>.size))")
        }
        // SAFETY: `[start, start + n)` lies inside `bytes` (claimed above), and
        // `n` is T's size; T is a plain KVM ABI struct with no references.
        withUnsafeMutableBytes(of: &value) { dst in
            bytes.withUnsafeBytes { src in dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[start..<start + n])) }
        }
    }
}
