import CDecompress

/// How a bzImage payload is stored.
public enum KernelCompression: String, Sendable, Equatable {
    /// gzip (`1f 8b`), the kernel's default.
    case gzip
    /// LZ4 legacy frames (`02 21 4c 18`), as `lz4 -l` writes them.
    case lz4Legacy = "lz4"
    /// zstd (`28 b5 2f fd`).
    case zstd
    /// A plain ELF (`7f 45 4c 46`): CONFIG_KERNEL_UNCOMPRESSED.
    case uncompressed

    /// Recognises the payload format by its magic bytes.
    ///
    /// Formats the kernel supports but we do not (xz, lzma, bzip2, lzo) are
    /// named in the error so the user knows what to rebuild with.
    public static func detect(_ payload: UnsafeRawBufferPointer) throws(X86BootError) -> KernelCompression {
        func starts(with magic: [UInt8]) -> Bool {
            payload.count >= magic.count && zip(payload, magic).allSatisfy { $0 == $1 }
        }
        if starts(with: [0x1f, 0x8b]) { return .gzip }
        if starts(with: [0x02, 0x21, 0x4c, 0x18]) { return .lz4Legacy }
        if starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { return .zstd }
        if starts(with: [0x7f, 0x45, 0x4c, 0x46]) { return .uncompressed }
        if starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { throw .unsupportedCompression("xz") }
        if starts(with: [0x42, 0x5a, 0x68]) { throw .unsupportedCompression("bzip2") }
        if starts(with: [0x5d, 0x00, 0x00]) { throw .unsupportedCompression("lzma") }
        if starts(with: [0x89, 0x4c, 0x5a, 0x4f]) { throw .unsupportedCompression("lzo") }
        throw .unsupportedCompression("unknown format")
    }
}

/// Decompresses bzImage payloads on the host, so the guest starts straight
/// in the kernel proper instead of running the in-kernel decompressor.
public enum Decompressor {
    /// The largest decompressed kernel we accept. A real vmlinux is tens of
    /// MiB; the cap keeps a forged size trailer from allocating the host dry.
    public static let maxOutputSize = 512 << 20

    /// Decompresses `payload` (a bzImage payload: compressed data followed by
    /// the decompressed size as a little-endian u32) into the vmlinux ELF.
    ///
    /// An uncompressed payload is returned as is.
    public static func decompress(_ payload: UnsafeRawBufferPointer) throws(X86BootError) -> [UInt8] {
        let kind = try KernelCompression.detect(payload)
        if kind == .uncompressed { return Array(payload) }

        // The build appends the size of the uncompressed input (for gzip this
        // is the format's own ISIZE field, which sits in the same place).
        guard let trailer = payload.le(UInt32.self, at: payload.count - 4), payload.count > 4 else {
            throw .corruptPayload("payload of \(payload.count) bytes is too short")
        }
        let expected = Int(trailer)
        guard expected <= maxOutputSize else { throw .kernelTooLarge(expected) }
        guard expected > 0 else { throw .corruptPayload("size trailer is zero") }

        // gzip stops at its own end (the trailer is its ISIZE); lz4 and zstd
        // would read the trailer as data, so it is cut off for them.
        let input = kind == .gzip ? payload : UnsafeRawBufferPointer(rebasing: payload[..<(payload.count - 4)])
        // One spare byte of room, so that data longer than announced shows up
        // as a size mismatch rather than as "does not fit".
        let capacity = expected + 1
        var status = 0
        let out = [UInt8](unsafeUninitializedCapacity: capacity) { buf, initialized in
            let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
            let dst = buf.baseAddress
            let r: Int
            switch kind {
            case .gzip: r = swl_gunzip(src, input.count, dst, capacity)
            case .lz4Legacy: r = swl_unlz4_legacy(src, input.count, dst, capacity)
            case .zstd: r = swl_unzstd(src, input.count, dst, capacity)
            case .uncompressed: r = 0
            }
            status = r
            initialized = max(0, r)
        }
        switch status {
        case Int(SWL_DC_CORRUPT): throw .corruptPayload("\(kind.rawValue) data is damaged")
        case Int(SWL_DC_TRUNCATED): throw .corruptPayload("\(kind.rawValue) data ends early")
        case Int(SWL_DC_OVERFLOW): throw .sizeMismatch(expected: expected, actual: capacity)
        case Int(SWL_DC_NOMEM): throw .corruptPayload("out of memory decompressing \(kind.rawValue)")
        case Int(SWL_DC_TOO_LARGE): throw .kernelTooLarge(expected)
        case ..<0: throw .corruptPayload("\(kind.rawValue) decompressor failed (\(status))")
        default: break
        }
        guard out.count == expected else { throw .sizeMismatch(expected: expected, actual: out.count) }
        return out
    }

    /// Decompresses a payload held in an array.
    public static func decompress(_ payload: [UInt8]) throws(X86BootError) -> [UInt8] {
        try payload.withBytes { (b) throws(X86BootError) in try decompress(b) }
    }

    /// Compresses `data` the way the kernel build does (format, then the
    /// 4-byte size trailer where the format has none of its own).
    /// For tests: they build payloads in memory instead of shipping fixtures.
    @_spi(Testing)
    public static func compressForTesting(_ data: [UInt8], as kind: KernelCompression) -> [UInt8] {
        if kind == .uncompressed { return data }
        let bound = swl_testing_compress_bound(data.count)
        var out = [UInt8](repeating: 0, count: bound + 4)
        let n = data.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst -> Int in
                switch kind {
                case .gzip: return swl_testing_gzip(src.baseAddress, src.count, dst.baseAddress, bound)
                case .lz4Legacy: return swl_testing_lz4_legacy(src.baseAddress, src.count, dst.baseAddress, bound)
                case .zstd: return swl_testing_zstd(src.baseAddress, src.count, dst.baseAddress, bound)
                case .uncompressed: return 0
                }
            }
        }
        precondition(n >= 0, "test compressor failed: \(n)")
        out.removeLast(out.count - n)
        if kind != .gzip {
            out += [0, 0, 0, 0]
            out.putLE(UInt32(truncatingIfNeeded: data.count), at: out.count - 4)
        }
        return out
    }
}
