// Little-endian field access on byte buffers. Reads are bounds-checked and
// return nil past the end, so parsers of untrusted images cannot trap;
// writes are on buffers we sized ourselves.

extension UnsafeRawBufferPointer {
    /// The little-endian integer at `offset`, or nil when it does not fit.
    @inlinable
    func le<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T? {
        guard offset >= 0, offset <= count, MemoryLayout<T>.size <= count - offset else { return nil }
        return T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension Array where Element == UInt8 {
    /// `withUnsafeBytes` that keeps a typed error: the standard library's is
    /// `rethrows`, which widens a `throws(E)` closure to `any Error`.
    @inlinable
    func withBytes<R, Failure: Error>(_ body: (UnsafeRawBufferPointer) throws(Failure) -> R) throws(Failure) -> R {
        let result: Result<R, Failure> = withUnsafeBytes { b in Result { () throws(Failure) -> R in try body(b) } }
        return try result.get()
    }

    /// `withUnsafeMutableBytes` that keeps a typed error.
    @inlinable
    mutating func withMutableBytes<R, Failure: Error>(_ body: (UnsafeMutableRawBufferPointer) throws(Failure) -> R) throws(Failure) -> R {
        let result: Result<R, Failure> = withUnsafeMutableBytes { b in Result { () throws(Failure) -> R in try body(b) } }
        return try result.get()
    }

    /// Stores `value` little-endian at `offset`. The caller guarantees room.
    @inlinable
    mutating func putLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count)
        var v = value.littleEndian
        Swift.withUnsafeBytes(of: &v) { src in
            for i in 0..<src.count { self[offset + i] = src[i] }
        }
    }

    /// The little-endian integer at `offset`. The caller guarantees room.
    @inlinable
    func getLE<T: FixedWidthInteger>(_ type: T.Type, at offset: Int) -> T {
        precondition(offset >= 0 && offset + MemoryLayout<T>.size <= count)
        return withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }
}

/// `value` rounded up to a multiple of `alignment` (a power of two), or nil on overflow.
@inlinable
func alignUp(_ value: UInt64, _ alignment: UInt64) -> UInt64? {
    let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
    return overflow ? nil : sum & ~(alignment - 1)
}
