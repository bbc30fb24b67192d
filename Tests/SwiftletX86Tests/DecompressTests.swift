import Testing
@_spi(Testing) @testable import SwiftletX86

@Suite struct DecompressTests {
    static let kinds: [KernelCompression] = [.gzip, .lz4Legacy, .zstd]

    @Test(arguments: kinds)
    func roundTrip(kind: KernelCompression) throws {
        let data = Fixtures.data(count: 200_000)
        let packed = Decompressor.compressForTesting(data, as: kind)
        #expect(packed.count < data.count)
        #expect(try packed.withUnsafeBytes { try KernelCompression.detect($0) } == kind)
        #expect(try Decompressor.decompress(packed) == data)
    }

    @Test func lz4SpansSeveralBlocksAndFrames() throws {
        // More than one 8 MiB legacy block.
        let data = Fixtures.data(count: (8 << 20) + 12345, seed: 3)
        let packed = Decompressor.compressForTesting(data, as: .lz4Legacy)
        #expect(try Decompressor.decompress(packed) == data)

        // Two legacy frames back to back: the second magic is skipped.
        let a = Fixtures.data(count: 1000, seed: 4), b = Fixtures.data(count: 2000, seed: 5)
        let pa = Decompressor.compressForTesting(a, as: .lz4Legacy)
        let pb = Decompressor.compressForTesting(b, as: .lz4Legacy)
        var joined = Array(pa.dropLast(4)) + Array(pb.dropLast(4))
        joined += [0, 0, 0, 0]
        Fixtures.put(UInt32(3000), at: joined.count - 4, in: &joined)
        #expect(try Decompressor.decompress(joined) == a + b)
    }

    @Test func uncompressedELFPassesThrough() throws {
        let elf = Fixtures.smallKernel()
        #expect(try Decompressor.decompress(elf) == elf)
    }

    @Test(arguments: kinds)
    func corruptDataThrows(kind: KernelCompression) {
        let data = Fixtures.data(count: 50_000)
        let packed = Decompressor.compressForTesting(data, as: kind)
        // Cut out the middle of the stream, keep the trailer.
        let cut = Array(packed[0..<(packed.count / 2)]) + Array(packed.suffix(4))
        #expect(throws: X86BootError.self) { try Decompressor.decompress(cut) }
        // Garbage after the magic.
        var garbage = packed
        for i in 8..<min(garbage.count - 4, 400) { garbage[i] = UInt8(truncatingIfNeeded: i &* 37 &+ 11) }
        #expect(throws: X86BootError.self) { try Decompressor.decompress(garbage) }
        // Just the magic and a trailer.
        let stub = Array(packed.prefix(4)) + [0, 1, 0, 0]
        #expect(throws: X86BootError.self) { try Decompressor.decompress(stub) }
    }

    @Test(arguments: [KernelCompression.lz4Legacy, .zstd])
    func sizeTrailerMismatch(kind: KernelCompression) {
        let data = Fixtures.data(count: 10_000)
        var packed = Decompressor.compressForTesting(data, as: kind)
        Fixtures.put(UInt32(data.count + 10), at: packed.count - 4, in: &packed)
        #expect(throws: X86BootError.sizeMismatch(expected: data.count + 10, actual: data.count)) {
            try Decompressor.decompress(packed)
        }
        // Announcing less than the data holds is caught as well.
        Fixtures.put(UInt32(data.count - 10), at: packed.count - 4, in: &packed)
        #expect(throws: X86BootError.self) { try Decompressor.decompress(packed) }
    }

    @Test func gzipLengthCheckMismatch() {
        let data = Fixtures.data(count: 10_000)
        var packed = Decompressor.compressForTesting(data, as: .gzip)
        // The gzip ISIZE doubles as the kernel's size trailer; zlib checks it too.
        Fixtures.put(UInt32(data.count + 10), at: packed.count - 4, in: &packed)
        #expect(throws: X86BootError.self) { try Decompressor.decompress(packed) }
    }

    @Test func oversizedTrailerIsRejectedBeforeAllocating() {
        var packed = Decompressor.compressForTesting(Fixtures.data(count: 100), as: .zstd)
        Fixtures.put(UInt32(0xffff_fff0), at: packed.count - 4, in: &packed)
        #expect(throws: X86BootError.kernelTooLarge(0xffff_fff0)) { try Decompressor.decompress(packed) }
    }

    @Test func unknownAndUnsupportedFormats() {
        #expect(throws: X86BootError.unsupportedCompression("unknown format")) {
            try Decompressor.decompress([1, 2, 3, 4, 5, 6, 7, 8])
        }
        #expect(throws: X86BootError.unsupportedCompression("bzip2")) {
            try Decompressor.decompress(Array("BZh91AY".utf8))
        }
        #expect(throws: X86BootError.self) { try Decompressor.decompress([0x1f, 0x8b]) }
        #expect(throws: X86BootError.self) { try Decompressor.decompress([UInt8]()) }
    }
}
