import CDecompress
import Glibc
import Testing
@testable import SwiftletImage

/// Compresses with the test compressors of CDecompress.
enum Packer {
    static func gzip(_ data: [UInt8]) -> [UInt8] { pack(data, swl_testing_gzip) }
    static func zstd(_ data: [UInt8]) -> [UInt8] { pack(data, swl_testing_zstd) }

    static func pack(_ data: [UInt8], _ fn: (UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<UInt8>?, Int) -> Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: swl_testing_compress_bound(data.count))
        let n = data.withUnsafeBufferPointer { i in
            out.withUnsafeMutableBufferPointer { o in fn(i.baseAddress, i.count, o.baseAddress, o.count) }
        }
        precondition(n >= 0, "test compressor failed")
        return Array(out[0..<n])
    }
}

@Suite struct DecompressorTests {
    /// Decompresses `bytes` through a DecompressingSource over a source handing out `step` bytes at a time.
    func unpack(_ bytes: [UInt8], step: Int = Int.max, chunks: [Int] = [65536]) throws(StreamError) -> (Compression, [UInt8]) {
        var s = try DecompressingSource(DribbleSource(bytes, step: step))
        let c = s.compression
        return (c, try IO.drain(&s, chunks: chunks))
    }

    @Test func uncompressedBytesPassThrough() throws {
        for n in [0, 1, 2, 3, 4, 5, 1000, 300_000] {
            let data = IO.data(count: n)
            for step in [1, 3, Int.max] {
                let (c, out) = try unpack(data, step: step, chunks: [1, 100, 65536])
                #expect(c == .none)
                #expect(out == data, "\(n) bytes, step \(step)")
            }
        }
        // Almost a magic: still plain bytes.
        #expect(try unpack([0x1f]) == (.none, [0x1f]))
        #expect(try unpack([0x1f, 0x8c, 1]) == (.none, [0x1f, 0x8c, 1]))
        #expect(try unpack([0x28, 0xb5, 0x2f]) == (.none, [0x28, 0xb5, 0x2f]))
        #expect(try unpack([0x28, 0xb5, 0x2f, 0xfe, 9]) == (.none, [0x28, 0xb5, 0x2f, 0xfe, 9]))
    }

    @Test func gzipRoundTrip() throws {
        let data = IO.data(count: 1_000_000, seed: 7)
        let packed = Packer.gzip(data)
        #expect(packed.count < data.count)
        // Larger than the 128 KiB input buffer, read in odd pieces, from a source that dribbles.
        for (step, chunks) in [(Int.max, [65536]), (1, [1, 5000]), (4093, [777, 1 << 20])] {
            let (c, out) = try unpack(packed, step: step, chunks: chunks)
            #expect(c == .gzip)
            #expect(out == data)
        }
        #expect(try unpack(Packer.gzip([])) == (.gzip, []))
    }

    @Test func gzipConcatenatedMembersAreAllRead() throws {
        let a = IO.data(count: 200_000, seed: 1), b = IO.data(count: 3, seed: 2), c = IO.data(count: 150_000, seed: 3)
        let joined = Packer.gzip(a) + Packer.gzip([]) + Packer.gzip(b) + Packer.gzip(c)
        for step in [1, 2, 1000, Int.max] {
            #expect(try unpack(joined, step: step, chunks: [4096, 1]) == (.gzip, a + b + c))
        }
    }

    @Test func gzipTrailingGarbageIsCorrupt() {
        let packed = Packer.gzip(IO.data(count: 5000))
        for tail: [UInt8] in [[0], [0, 0], [0x1f], [0x1f, 0x8c], Array("garbage".utf8), [UInt8](repeating: 0, count: 512)] {
            for step in [1, Int.max] {
                #expect(throws: StreamError.corrupt("gzip: trailing bytes after the last member")) {
                    _ = try unpack(packed + tail, step: step)
                }
            }
        }
        // The start of another member that then ends: truncated.
        #expect(throws: StreamError.truncated) { _ = try unpack(packed + [0x1f, 0x8b]) }
        #expect(throws: StreamError.truncated) { _ = try unpack(packed + Array(packed.prefix(20))) }
    }

    @Test func gzipCorruptAndTruncated() {
        let data = IO.data(count: 100_000, seed: 9)
        let packed = Packer.gzip(data)
        // Every cut before the end is truncated.
        for cut in [2, 3, 10, 11, 100, packed.count / 2, packed.count - 8, packed.count - 1] {
            #expect(throws: StreamError.truncated, "cut at \(cut)") { _ = try unpack(Array(packed[0..<cut])) }
        }
        // A bad method byte, a flipped CRC-32, and garbage in the deflate stream.
        var method = packed
        method[2] = 7
        #expect(throws: StreamError.corrupt("gzip: invalid compressed data")) { _ = try unpack(method) }
        var crc = packed
        crc[crc.count - 6] ^= 0x55
        #expect(throws: StreamError.corrupt("gzip: invalid compressed data")) { _ = try unpack(crc) }
        var size = packed
        size[size.count - 2] ^= 1
        #expect(throws: StreamError.corrupt("gzip: invalid compressed data")) { _ = try unpack(size) }
        var garbage = packed
        for i in 10..<400 { garbage[i] = UInt8(truncatingIfNeeded: i &* 37 &+ 11) }
        #expect(throws: StreamError.self) { _ = try unpack(garbage) }
    }

    @Test func errorsAreFinal() throws {
        var s = try DecompressingSource(BufferSource(Array(Packer.gzip(IO.data(count: 100_000)).prefix(500))))
        #expect(throws: StreamError.truncated) { _ = try IO.drain(&s) }
        #expect(throws: StreamError.truncated) { _ = try IO.drain(&s) }
        var f = try DecompressingSource(FailingSource(inner: BufferSource(Packer.zstd(IO.data(count: 400_000))), left: 1000))
        #expect(throws: StreamError.io(call: "read", errno: EIO)) { _ = try IO.drain(&f) }
        #expect(throws: StreamError.io(call: "read", errno: EIO)) { _ = try IO.drain(&f) }
        // Failing while peeking at the magic.
        #expect(throws: StreamError.io(call: "read", errno: EIO)) {
            _ = try DecompressingSource(FailingSource(inner: BufferSource([1, 2, 3, 4]), left: 2))
        }
    }

    @Test func zstdRoundTripAndConcatenatedFrames() throws {
        let a = IO.data(count: 1_500_000, seed: 4), b = IO.data(count: 10, seed: 5)
        let packed = Packer.zstd(a)
        #expect(packed.count < a.count)
        for (step, chunks) in [(Int.max, [65536]), (1, [3, 70000]), (5000, [1 << 20])] {
            #expect(try unpack(packed, step: step, chunks: chunks) == (.zstd, a))
        }
        // Frames back to back, with an empty one and a skippable frame between.
        let skippable: [UInt8] = [0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 9, 9, 9]
        let joined = packed + Packer.zstd([]) + skippable + Packer.zstd(b)
        for step in [1, 777, Int.max] {
            #expect(try unpack(joined, step: step) == (.zstd, a + b))
        }
    }

    @Test func zstdCorruptTruncatedAndTrailing() {
        let data = IO.data(count: 200_000, seed: 6)
        let packed = Packer.zstd(data)
        for cut in [4, 5, 8, packed.count / 3, packed.count - 1] {
            #expect(throws: StreamError.truncated, "cut at \(cut)") { _ = try unpack(Array(packed[0..<cut])) }
        }
        #expect(throws: StreamError.self) { _ = try unpack(packed + [1, 2, 3, 4, 5, 6, 7, 8]) }
        var garbage = packed
        for i in 6..<min(garbage.count, 300) { garbage[i] = UInt8(truncatingIfNeeded: i &* 91 &+ 3) }
        #expect(throws: StreamError.self) { _ = try unpack(garbage) }
        // A frame header that asks for a 2 GiB window: refused before allocating it.
        // Magic, frame header descriptor 0 (no single segment, no checksum, no dictionary),
        // window descriptor 0x88: exponent 17 -> windowLog 27 + ... (log 10 + 17 = 27, mantissa 0) is allowed,
        // 0xA8: log 10 + 21 = 31, refused.
        let huge: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x00, 0xa8, 0x01, 0x00, 0x00]
        #expect(throws: StreamError.tooLarge("zstd: a frame's window over 128 MiB")) { _ = try unpack(huge) }
    }

    @Test func hashingSourceMatchesKnownVectors() throws {
        func hashed(_ bytes: [UInt8], step: Int) throws -> (String, UInt64) {
            var h = HashingSource(DribbleSource(bytes, step: step))
            _ = try IO.drain(&h, chunks: [1, 63, 64, 65, 4096])
            return (h.finalizeHex(), h.count)
        }
        for step in [1, 55, Int.max] {
            #expect(try hashed([], step: step) == ("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", 0))
            #expect(try hashed(Array("abc".utf8), step: step) == ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3))
            #expect(try hashed(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8), step: step)
                == ("248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", 56))
        }
        #expect(try hashed([UInt8](repeating: 0x61, count: 1_000_000), step: 9999)
            == ("cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0", 1_000_000))
    }

    @Test func hashingSourceDigestSoFarAndUnderADecompressor() throws {
        var h = HashingSource(BufferSource(Array("abcabc".utf8)))
        var three = [UInt8](repeating: 0, count: 3)
        #expect(try three.withUnsafeMutableBytes { try h.read(into: $0) } == 3)
        #expect(h.finalizeHex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(try IO.drain(&h) == Array("abc".utf8))
        #expect(h.count == 6)

        // The digest of a compressed blob is of its compressed bytes, as an OCI descriptor's.
        let data = IO.data(count: 300_000)
        let packed = Packer.gzip(data)
        var d = try DecompressingSource(HashingSource(BufferSource(packed)))
        #expect(try IO.drain(&d, chunks: [1000]) == data)
        var direct = HashingSource(BufferSource(packed))
        try discardAll(&direct)
        var inner = d.inner
        #expect(inner.count == UInt64(packed.count))
        #expect(inner.finalizeHex() == direct.finalizeHex())
    }
}
