import Glibc
import SwiftletMemory
import SwiftletSys
import Testing
@testable import SwiftletVirtio
import SwiftletTestSupport

/// A small deterministic generator (xorshift64), so a failing sequence replays.
private struct Xorshift {
    var state: UInt64
    mutating func next() -> UInt64 {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        return state
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8(truncatingIfNeeded: next()) } }

    /// `total` bytes cut into 1 to `maxPieces` non-empty pieces of uneven sizes.
    mutating func split(_ total: Int, maxPieces: Int = 4) -> [Int] {
        var cuts = Set<Int>()
        for _ in 0..<below(maxPieces) where total > 1 { cuts.insert(1 + below(total - 1)) }
        let points = [0] + cuts.sorted() + [total]
        return zip(points, points.dropFirst()).map { $1 - $0 }
    }
}

/// The whole image, read behind the device's back.
private func wholeImage(_ image: TempImage, bytes: Int) throws -> [UInt8] { try image.contents(at: 0, count: bytes) }

/// The names in `directory`, sorted.
private func listing(_ directory: String) -> [String] { directoryNames(atPath: directory)?.sorted() ?? ["<cannot open>"] }

/// A fresh private directory, for the overlay; removed (if empty) by the caller.
private func privateDirectory() throws -> String {
    var template = Array("/tmp/swiftlet-ephemeral-XXXXXX".utf8CString)
    guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else { throw TestFailure("mkdtemp") }
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

private func readLink(_ path: String) -> String {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buf, buf.count - 1)
    return n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
}

struct EphemeralBackendTests {
    /// 37 sectors: four whole 4 KiB blocks and a partial fifth (2560 bytes).
    static let sectors = 37

    func baseImage(sectors: Int = sectors, seed: Int = 0) throws -> TempImage {
        try TempImage(sectors: sectors, pattern: { UInt8(truncatingIfNeeded: ($0 &* 31) ^ ($0 >> 9) ^ seed) })
    }

    @Test func randomWritesReadsAndZeroesMatchAModel() throws {
        let bytes = Self.sectors * 512
        let image = try baseImage()
        let original = try wholeImage(image, bytes: bytes)
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        #expect(disk.ephemeral && !disk.readOnly && disk.sectors == UInt64(Self.sectors))
        var model = original
        var rng = Xorshift(state: 0x5eed_1234_abcd_0001)
        var d = try TestDriver(memorySize: 8 << 20)
        var q = try d.queue()
        for step in 0..<600 {
            if step % 150 == 149 { // fresh guest memory now and then (the driver's allocator only grows)
                d = try TestDriver(memorySize: 8 << 20)
                q = try d.queue()
            }
            let sector = rng.below(Self.sectors)
            let count = 1 + rng.below(min(12, Self.sectors - sector))
            let range = (sector * 512)..<((sector + count) * 512)
            switch rng.below(10) {
            case 0..<4: // a write, its data in uneven pieces
                let data = rng.bytes(count * 512)
                var pieces: [[UInt8]] = [], at = 0
                for n in rng.split(data.count) { pieces.append(Array(data[at..<(at + n)])); at += n }
                let w = try d.postBlock(type: VirtioBlock.requestOut, sector: UInt64(sector), out: pieces)
                #expect(try serve(q, disk) == 1)
                try #require(try d.status(w) == VirtioBlock.statusOK, "write at sector \(sector) x\(count), step \(step)")
                model.replaceSubrange(range, with: data)
            case 4: // write zeroes or discard: both read back as zeros
                let type = rng.below(2) == 0 ? VirtioBlock.requestWriteZeroes : VirtioBlock.requestDiscard
                let r = try d.postBlock(type: type, sector: 0, out: [segment(sector: UInt64(sector), count: UInt32(count), flags: 0)])
                try serve(q, disk)
                try #require(try d.status(r) == VirtioBlock.statusOK, "zero at sector \(sector) x\(count), step \(step)")
                model.replaceSubrange(range, with: [UInt8](repeating: 0, count: range.count))
            default: // a read into uneven buffers
                let r = try d.postBlock(type: VirtioBlock.requestIn, sector: UInt64(sector), inLengths: rng.split(count * 512))
                #expect(try serve(q, disk) == UInt32(count * 512 + 1))
                try #require(try d.status(r) == VirtioBlock.statusOK)
                try #require(try d.inData(r) == Array(model[range]), "read at sector \(sector) x\(count), step \(step)")
            }
        }
        // The whole disk, in one request, then the base: untouched.
        let all = try d.postBlock(type: VirtioBlock.requestIn, sector: 0, inLengths: [bytes])
        try serve(q, disk)
        #expect(try d.inData(all) == model)
        #expect(model != original)
        #expect(try wholeImage(image, bytes: bytes) == original)
        withExtendedLifetime(disk) {}
        #expect(try wholeImage(image, bytes: bytes) == original)
    }

    @Test func partialWriteMergesWithTheBaseBlock() throws {
        let image = try baseImage()
        let original = try wholeImage(image, bytes: Self.sectors * 512)
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        // Sector 9 is the second of block 1 (sectors 8-15); sector 36 the last of the partial block 4.
        for sector in [9, 36] {
            let w = try d.postBlock(type: VirtioBlock.requestOut, sector: UInt64(sector), out: [[UInt8](repeating: 0xab, count: 512)])
            try serve(q, disk)
            #expect(try d.status(w) == VirtioBlock.statusOK)
        }
        var expected = original
        expected.replaceSubrange((9 * 512)..<(10 * 512), with: [UInt8](repeating: 0xab, count: 512))
        expected.replaceSubrange((36 * 512)..<(37 * 512), with: [UInt8](repeating: 0xab, count: 512))
        // A read spanning uncopied block 0, copied block 1, uncopied 2 and 3, copied 4.
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 1, inLengths: [700, 36 * 512 - 700])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        #expect(try d.inData(r) == Array(expected[512...]))
        #expect(try wholeImage(image, bytes: Self.sectors * 512) == original)
    }

    @Test func twoRunsOnOneBaseAreIsolated() throws {
        let image = try baseImage()
        let original = try wholeImage(image, bytes: Self.sectors * 512)
        let a = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        let b = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        // A read-only raw drive shares the base too.
        let reader = try BlockDevice(path: image.path, readOnly: true, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        for (disk, byte) in [(a, UInt8(0xaa)), (b, 0xbb)] {
            let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 3, out: [[UInt8](repeating: byte, count: 1024)])
            try serve(q, disk)
            #expect(try d.status(w) == VirtioBlock.statusOK)
        }
        for (disk, byte) in [(a, UInt8(0xaa)), (b, 0xbb)] {
            let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 2, inLengths: [2048])
            try serve(q, disk)
            #expect(try d.inData(r) == Array(original[1024..<1536]) + [UInt8](repeating: byte, count: 1024) + Array(original[2560..<3072]))
        }
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 2, inLengths: [2048])
        try serve(q, reader)
        #expect(try d.inData(r) == Array(original[1024..<3072]))
        #expect(try wholeImage(image, bytes: Self.sectors * 512) == original)
    }

    @Test func theOverlayHasNoNameAndLeavesNothingBehind() throws {
        let dir = try privateDirectory()
        defer { rmdir(dir) }
        let image = try baseImage()
        #expect(listing(dir) == [])
        do {
            let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil, overlayDirectory: dir)
            let d = try TestDriver()
            let q = try d.queue()
            let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 0, out: [pattern(7, 8192)])
            try serve(q, disk)
            #expect(try d.status(w) == VirtioBlock.statusOK)
            let fd = try #require(disk.overlayFD)
            // O_TMPFILE in `dir` ("dir/#inode (deleted)"), or the memfd fallback: never a name.
            let link = readLink("/proc/self/fd/\(fd)")
            #expect((link.hasPrefix(dir + "/") && link.hasSuffix(" (deleted)")) || link.hasPrefix("/memfd:"), "overlay: \(link)")
            var st = stat()
            #expect(fstat(fd, &st) == 0)
            #expect(st.st_nlink == 0)
            #expect(st.st_size == off_t(Self.sectors * 512))
            #expect(st.st_blocks * 512 < st.st_size, "the overlay should be sparse") // 8 KiB written of 18.5 KiB
            #expect(listing(dir) == [])
        }
        #expect(listing(dir) == [])
        #expect(rmdir(dir) == 0) // empty
    }

    @Test func readOnlyAndEphemeralTogetherAreRejected() throws {
        let image = try baseImage()
        #expect(throws: BlockError.readOnlyEphemeral(image.path)) {
            try BlockDevice(path: image.path, readOnly: true, ephemeral: true, id: nil)
        }
        let line = BlockError.readOnlyEphemeral(image.path).description
        #expect(!line.contains("\n") && line.contains("ro and ephemeral"))
    }

    @Test func baseHeldWritableIsInUse() throws {
        let image = try baseImage()
        do {
            let writer = try BlockDevice(path: image.path, readOnly: false, id: nil)
            #expect(throws: BlockError.inUse(image.path)) {
                try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
            }
            _ = writer
        }
        do {
            // Another holder's lock on its own open file (as another process's would be).
            let fd = open(image.path, O_RDWR)
            try #require(fd >= 0)
            defer { close(fd) }
            try #require(flock(fd, LOCK_EX | LOCK_NB) == 0)
            #expect(throws: BlockError.inUse(image.path)) {
                try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
            }
        }
        // And while an ephemeral run holds the base, nobody attaches it writable.
        let run = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        #expect(throws: BlockError.inUse(image.path)) { try BlockDevice(path: image.path, readOnly: false, id: nil) }
        let fd = open(image.path, O_RDWR)
        try #require(fd >= 0)
        defer { close(fd) }
        #expect(flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
        _ = run
    }

    @Test(.enabled(if: getuid() != 0, "root opens 0444 files for writing"))
    func readOnlyFileCanBeAnEphemeralBase() throws {
        let image = try baseImage()
        #expect(chmod(image.path, 0o444) == 0)
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        #expect(!disk.readOnly)
    }

    @Test func flushGetIDAndFeatures() throws {
        let image = try baseImage()
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 0, out: [pattern(1, 512)])
        try serve(q, disk)
        let f = try d.postBlock(type: VirtioBlock.requestFlush, sector: 0)
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(w) == VirtioBlock.statusOK)
        #expect(try d.status(f) == VirtioBlock.statusOK)
        // The default serial still comes from the base image's inode.
        var st = stat()
        #expect(stat(image.path, &st) == 0)
        let text = String(decoding: disk.id.prefix { $0 != 0 }, as: UTF8.self)
        #expect(text.hasSuffix("-" + String(UInt64(st.st_ino), radix: 16)))
        let g = try d.postBlock(type: VirtioBlock.requestGetID, sector: 0, inLengths: [20])
        #expect(try serve(q, disk) == 21)
        #expect(try d.inData(g) == disk.id)
        // Writable, with discard and write zeroes, as a raw writable drive.
        #expect(disk.deviceFeatures & VirtioBlock.featureRO == 0)
        #expect(disk.deviceFeatures & VirtioBlock.featureDiscard != 0)
        #expect(disk.deviceFeatures & VirtioBlock.featureWriteZeroes != 0)
        #expect(disk.deviceFeatures & VirtioBlock.featureFlush != 0)
    }

    @Test(arguments: [UInt64(37), 36, 30, UInt64.max, UInt64.max / 512, 1 << 55])
    func sectorsPastTheEndAreIOError(sector: UInt64) throws {
        let image = try baseImage()
        let original = try wholeImage(image, bytes: Self.sectors * 512)
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: sector, inLengths: [8 * 512])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusIOError)
        #expect(try d.inData(r) == [UInt8](repeating: 0xee, count: 8 * 512)) // untouched
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: sector, out: [pattern(5, 8 * 512)])
        try serve(q, disk)
        #expect(try d.status(w) == VirtioBlock.statusIOError)
        let z = try d.postBlock(type: VirtioBlock.requestWriteZeroes, sector: 0, out: [segment(sector: sector, count: 8, flags: 0)])
        try serve(q, disk)
        #expect(try d.status(z) == VirtioBlock.statusIOError)
        // Nothing reached the disk the guest sees.
        let all = try d.postBlock(type: VirtioBlock.requestIn, sector: 0, inLengths: [Self.sectors * 512])
        try serve(q, disk)
        #expect(try d.inData(all) == original)
    }

    @Test func largeImageSparseOverlayAndTheLastBlock() throws {
        // 64 MiB + 512: many bitmap words, and a one-sector last block.
        let sectors = (64 << 11) + 1
        let image = try TempImage(sectors: sectors)
        let disk = try BlockDevice(path: image.path, readOnly: false, ephemeral: true, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        for sector in [0, 4095, 70_000, sectors - 1] {
            let w = try d.postBlock(type: VirtioBlock.requestOut, sector: UInt64(sector), out: [pattern(sector, 512)])
            try serve(q, disk)
            #expect(try d.status(w) == VirtioBlock.statusOK)
            let r = try d.postBlock(type: VirtioBlock.requestIn, sector: UInt64(sector - sector % 8), inLengths: [(min(8, sectors - (sector - sector % 8))) * 512])
            try serve(q, disk)
            var expected = [UInt8](repeating: 0, count: (min(8, sectors - (sector - sector % 8))) * 512)
            expected.replaceSubrange((sector % 8 * 512)..<(sector % 8 * 512 + 512), with: pattern(sector, 512))
            #expect(try d.inData(r) == expected)
        }
        var st = stat()
        let fd = try #require(disk.overlayFD)
        #expect(fstat(fd, &st) == 0 && st.st_blocks * 512 <= 1 << 20, "overlay allocated \(st.st_blocks * 512) bytes")
        #expect(try image.contents(at: (sectors - 1) * 512, count: 512) == [UInt8](repeating: 0, count: 512))
    }
}
