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
    public init() {}

    public private(set) var bytes: [UInt8] = []

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u16(_ v: UInt16) { int(v) }
    public mutating func u32(_ v: UInt32) { int(v) }
    public mutating func u64(_ v: UInt64) { int(v) }

    public mutating func int<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    public mutating func bytes(_ b: some Collection<UInt8>) {
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }

    public mutating func string(_ s: String) { bytes(Array(s.utf8)) }

    /// A C struct as its raw bytes, prefixed with its size (checked on read).
    /// Only for plain KVM ABI structs: no pointers, fixed layout on x86_64.
    public mutating func raw<T>(_ v: T) {
        withUnsafeBytes(of: v) { bytes($0) }
    }
}

public struct StateReader {
    public let bytes: [UInt8]
    public private(set) var offset = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public var isAtEnd: Bool { offset == bytes.count }

    private mutating func take(_ n: Int) throws(StateError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - offset else { throw StateError("state ends early at byte \(offset)") }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    public mutating func int<T: FixedWidthInteger>(_: T.Type = T.self) throws(StateError) -> T {
        let s = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }

    public mutating func u8() throws(StateError) -> UInt8 { try int() }
    public mutating func u16() throws(StateError) -> UInt16 { try int() }
    public mutating func u32() throws(StateError) -> UInt32 { try int() }
    public mutating func u64() throws(StateError) -> UInt64 { try int() }

    public mutating func bool() throws(StateError) -> Bool {
        let b = try u8()
        guard b <= 1 else { throw StateError("bad boolean at byte \(offset - 1)") }
        return b == 1
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    public mutating func bytes(limit: Int = 1 << 20) throws(StateError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw StateError("a field of \(n) bytes at byte \(offset - 4) (at most \(limit))") }
        return Array(try take(n))
    }

    public mutating func string(limit: Int = 64 << 10) throws(StateError) -> String {
        let b = try bytes(limit: limit)
        guard let s = String(validating: b, as: UTF8.self) else { throw StateError("a string that is not UTF-8") }
        return s
    }

    /// A count of items that each take at least `itemSize` bytes: no more than could fit.
    public mutating func count(itemSize: Int, limit: Int) throws(StateError) -> Int {
        let n = Int(try u32())
        guard n <= limit, n * max(itemSize, 1) <= bytes.count - offset else {
            throw StateError("a count of \(n) at byte \(offset - 4)")
        }
        return n
    }

    /// A C struct written by `StateWriter.raw`: its size must match exactly.
    public mutating func raw<T>(_ empty: T) throws(StateError) -> T {
        let b = try bytes(limit: 1 << 16)
        guard b.count == MemoryLayout<T>.size else {
            throw StateError("\(T.self) of \(b.count) bytes (expected \(MemoryLayout<T>.size))")
        }
        var v = empty
        withUnsafeMutableBytes(of: &v) { dst in b.withUnsafeBytes { dst.copyMemory(from: $0) } }
        return v
    }
}
