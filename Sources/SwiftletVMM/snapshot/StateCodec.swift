/// Little-endian encoding of snapshot state.
///
/// The reader treats its input as hostile: every read is bounds-checked and
/// every count is limited before anything is allocated, so a corrupt state
/// file gives an error, never a crash or a huge allocation.
struct StateWriter {
    private(set) var bytes: [UInt8] = []

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    mutating func u16(_ v: UInt16) { int(v) }
    mutating func u32(_ v: UInt32) { int(v) }
    mutating func u64(_ v: UInt64) { int(v) }

    mutating func int<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func bytes(_ b: some Collection<UInt8>) {
        u32(UInt32(b.count))
        bytes.append(contentsOf: b)
    }

    mutating func string(_ s: String) { bytes(Array(s.utf8)) }

    /// A C struct as its raw bytes, prefixed with its size (checked on read).
    /// Only for plain KVM ABI structs: no pointers, fixed layout on x86_64.
    mutating func raw<T>(_ v: T) {
        withUnsafeBytes(of: v) { bytes($0) }
    }
}

struct StateReader {
    let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { offset == bytes.count }

    private mutating func take(_ n: Int) throws(SnapshotError) -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - offset else { throw .corrupt("state ends early at byte \(offset)") }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func int<T: FixedWidthInteger>(_: T.Type = T.self) throws(SnapshotError) -> T {
        let s = try take(MemoryLayout<T>.size)
        var v: T = 0
        for (i, b) in s.enumerated() { v |= T(b) << (8 * i) }
        return v
    }

    mutating func u8() throws(SnapshotError) -> UInt8 { try int() }
    mutating func u16() throws(SnapshotError) -> UInt16 { try int() }
    mutating func u32() throws(SnapshotError) -> UInt32 { try int() }
    mutating func u64() throws(SnapshotError) -> UInt64 { try int() }

    mutating func bool() throws(SnapshotError) -> Bool {
        let b = try u8()
        guard b <= 1 else { throw .corrupt("bad boolean at byte \(offset - 1)") }
        return b == 1
    }

    /// A length-prefixed byte string of at most `limit` bytes.
    mutating func bytes(limit: Int = 1 << 20) throws(SnapshotError) -> [UInt8] {
        let n = Int(try u32())
        guard n <= limit else { throw .corrupt("a field of \(n) bytes at byte \(offset - 4) (at most \(limit))") }
        return Array(try take(n))
    }

    mutating func string(limit: Int = 64 << 10) throws(SnapshotError) -> String {
        let b = try bytes(limit: limit)
        guard let s = String(validating: b, as: UTF8.self) else { throw .corrupt("a string that is not UTF-8") }
        return s
    }

    /// A count of items that each take at least `itemSize` bytes: no more than could fit.
    mutating func count(itemSize: Int, limit: Int) throws(SnapshotError) -> Int {
        let n = Int(try u32())
        guard n <= limit, n * max(itemSize, 1) <= bytes.count - offset else {
            throw .corrupt("a count of \(n) at byte \(offset - 4)")
        }
        return n
    }

    /// A C struct written by `StateWriter.raw`: its size must match exactly.
    mutating func raw<T>(_ empty: T) throws(SnapshotError) -> T {
        let b = try bytes(limit: 1 << 16)
        guard b.count == MemoryLayout<T>.size else {
            throw .corrupt("\(T.self) of \(b.count) bytes (expected \(MemoryLayout<T>.size))")
        }
        var v = empty
        withUnsafeMutableBytes(of: &v) { dst in b.withUnsafeBytes { dst.copyMemory(from: $0) } }
        return v
    }
}
