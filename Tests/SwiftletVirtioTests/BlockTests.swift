import Glibc
import SwiftletMemory
import SwiftletVirtio
import Testing
import SwiftletTestSupport

/// A request the test driver posted: where its IN data and status byte live.
struct PostedRequest {
    var head: UInt16
    var inBuffers: [(address: UInt64, length: Int)]
    var status: UInt64?
}

extension TestDriver {
    /// Posts a virtio-blk request. `out` are OUT payload pieces (one descriptor
    /// each), `inLengths` the IN data pieces; the header is split across
    /// `headerPieces` descriptors.
    @discardableResult
    func postBlock(type: UInt32, sector: UInt64, out: [[UInt8]] = [], inLengths: [Int] = [], status: Bool = true,
                   headerPieces: Int = 1, indirect: Bool = false) throws -> PostedRequest {
        var header = [UInt8]()
        withUnsafeBytes(of: type.littleEndian) { header += $0 }
        header += [0, 0, 0, 0]
        withUnsafeBytes(of: sector.littleEndian) { header += $0 }
        var bufs: [Buf] = []
        let pieceSize = 16 / headerPieces
        for i in 0..<headerPieces {
            let piece = Array(header[(i * pieceSize)..<(i == headerPieces - 1 ? 16 : (i + 1) * pieceSize)])
            bufs.append(Buf(address: try put(piece), length: UInt32(piece.count), writable: false))
        }
        for o in out { bufs.append(Buf(address: try put(o), length: UInt32(o.count), writable: false)) }
        var ins: [(UInt64, Int)] = []
        for n in inLengths {
            let a = alloc(n)
            try memory.fill(0xee, at: a, count: n)
            ins.append((a, n))
            bufs.append(Buf(address: a, length: UInt32(n), writable: true))
        }
        var statusAddress: UInt64?
        if status {
            let s = alloc(1)
            try memory.store(UInt8(0xff), at: s)
            statusAddress = s
            bufs.append(Buf(address: s, length: 1, writable: true))
        }
        let head = indirect ? try indirectChain(bufs) : try chain(bufs)
        try publish(head)
        return PostedRequest(head: head, inBuffers: ins, status: statusAddress)
    }

    func status(_ r: PostedRequest) throws -> UInt8 { try memory.load(UInt8.self, at: r.status!) }

    func inData(_ r: PostedRequest) throws -> [UInt8] {
        try r.inBuffers.flatMap { try memory.read(at: $0.address, count: $0.length) }
    }
}

/// Device side: pops one chain, handles it, pushes it used. Returns the used length.
@discardableResult
func serve(_ q: Virtqueue, _ disk: BlockDevice) throws -> UInt32 {
    let chain = try #require(try q.pop())
    let length = disk.handle(chain, memory: q.memory)
    try q.pushUsed(head: chain.head, length: length)
    return length
}

func pattern(_ seed: Int, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 131) ^ (seed &* 7) ^ ($0 >> 8)) }
}

struct BlockIOTests {
    @Test func writeThenReadBackByteExact() throws {
        let image = try TempImage(sectors: 64)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        #expect(disk.sectors == 64)
        let d = try TestDriver()
        let q = try d.queue()
        let data = pattern(1, 4096)
        // Three data descriptors of uneven sizes (512 + 1024 + 2560).
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 5,
                                out: [Array(data[0..<512]), Array(data[512..<1536]), Array(data[1536...])])
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(w) == VirtioBlock.statusOK)
        #expect(try image.contents(at: 5 * 512, count: 4096) == data)
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 5, inLengths: [1024, 512, 2560])
        #expect(try serve(q, disk) == 4097)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        #expect(try d.inData(r) == data)
        #expect(d.usedIdx == 2)
        #expect(try d.used(1) == (UInt32(r.head), 4097))
    }

    @Test func indirectRequests() throws {
        let image = try TempImage(sectors: 64)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        let data = pattern(2, 8192)
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 48, out: [Array(data[0..<4096]), Array(data[4096...])], indirect: true)
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(w) == VirtioBlock.statusOK)
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 48, inLengths: [8192], indirect: true)
        #expect(try serve(q, disk) == 8193)
        #expect(try d.inData(r) == data)
    }

    @Test func anyLayoutHeaderSplitAndDataInOneBuffer() throws {
        let image = try TempImage(sectors: 8, pattern: { UInt8(truncatingIfNeeded: $0 / 512) })
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        // Header in two 8-byte pieces.
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 3, inLengths: [512], headerPieces: 2)
        try serve(q, disk)
        #expect(try d.inData(r) == [UInt8](repeating: 3, count: 512))
        // IN data and status in one writable buffer, header and OUT data in one readable buffer.
        var header = [UInt8](repeating: 0, count: 16)
        header[0] = UInt8(VirtioBlock.requestOut)
        header[8] = 7
        let out = try d.put(header + [UInt8](repeating: 0x5a, count: 512))
        let status = d.alloc(1)
        try d.publish(try d.chain([Buf(address: out, length: 528, writable: false), Buf(address: status, length: 1, writable: true)]))
        try serve(q, disk)
        #expect(try d.memory.load(UInt8.self, at: status) == VirtioBlock.statusOK)
        #expect(try image.contents(at: 7 * 512, count: 512) == [UInt8](repeating: 0x5a, count: 512))
        header[0] = UInt8(VirtioBlock.requestIn)
        let hdr = try d.put(header)
        let inAndStatus = d.alloc(513)
        try d.publish(try d.chain([Buf(address: hdr, length: 16, writable: false), Buf(address: inAndStatus, length: 513, writable: true)]))
        #expect(try serve(q, disk) == 513)
        #expect(try d.memory.read(at: inAndStatus, count: 513) == [UInt8](repeating: 0x5a, count: 512) + [VirtioBlock.statusOK])
    }

    @Test func zeroLengthDataBuffers() throws {
        let image = try TempImage(sectors: 8, pattern: { UInt8(truncatingIfNeeded: $0) })
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver()
        let q = try d.queue()
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 1, inLengths: [0, 256, 0, 256, 0])
        #expect(try serve(q, disk) == 513)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        #expect(try d.inData(r) == (0..<512).map { UInt8(truncatingIfNeeded: 512 + $0) })
    }

    @Test func flushAndGetID() throws {
        let image = try TempImage(sectors: 8)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: "serial-42")
        let d = try TestDriver()
        let q = try d.queue()
        let f = try d.postBlock(type: VirtioBlock.requestFlush, sector: 0)
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(f) == VirtioBlock.statusOK)
        let g = try d.postBlock(type: VirtioBlock.requestGetID, sector: 0, inLengths: [20])
        #expect(try serve(q, disk) == 21)
        #expect(try d.status(g) == VirtioBlock.statusOK)
        #expect(try d.inData(g) == Array("serial-42".utf8) + [UInt8](repeating: 0, count: 11))
        // A short buffer gets what fits.
        let short = try d.postBlock(type: VirtioBlock.requestGetID, sector: 0, inLengths: [4])
        #expect(try serve(q, disk) == 5)
        #expect(try d.inData(short) == Array("seri".utf8))
    }

    @Test func defaultIDComesFromTheInode() throws {
        let image = try TempImage(sectors: 8)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        var st = stat()
        #expect(stat(image.path, &st) == 0)
        let text = String(decoding: disk.id.prefix { $0 != 0 }, as: UTF8.self)
        #expect(disk.id.count == 20)
        #expect(text.hasSuffix("-" + String(UInt64(st.st_ino), radix: 16)))
    }
}

struct BlockMalformedTests {
    func setup(sectors: Int = 16, readOnly: Bool = false) throws -> (TempImage, BlockDevice, TestDriver, Virtqueue) {
        let image = try TempImage(sectors: sectors, pattern: { _ in 0x11 })
        let disk = try BlockDevice(path: image.path, readOnly: readOnly, id: nil)
        let d = try TestDriver()
        return (image, disk, d, try d.queue())
    }

    @Test func noStatusByteWritesNothing() throws {
        let (_, disk, d, q) = try setup()
        let r = try d.postBlock(type: VirtioBlock.requestOut, sector: 0, out: [pattern(3, 512)], status: false)
        #expect(try serve(q, disk) == 0)
        _ = r
        // Readable-only chain of an IN: nothing to write either.
        try d.postBlock(type: VirtioBlock.requestIn, sector: 0, status: false)
        #expect(try serve(q, disk) == 0)
    }

    @Test func shortHeaderIsIOError() throws {
        let (_, disk, d, q) = try setup()
        let h = try d.put([0, 0, 0, 0, 0, 0, 0, 0])
        let s = d.alloc(1)
        try d.publish(try d.chain([Buf(address: h, length: 8, writable: false), Buf(address: s, length: 1, writable: true)]))
        #expect(try serve(q, disk) == 1)
        #expect(try d.memory.load(UInt8.self, at: s) == VirtioBlock.statusIOError)
    }

    @Test func partialSectorsAreIOError() throws {
        let (image, disk, d, q) = try setup()
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: 0, out: [pattern(4, 100)])
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(w) == VirtioBlock.statusIOError)
        #expect(try image.contents(at: 0, count: 100) == [UInt8](repeating: 0x11, count: 100))
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 0, inLengths: [513])
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(r) == VirtioBlock.statusIOError)
    }

    @Test(arguments: [UInt64(16), 15, UInt64.max, UInt64.max / 512, 1 << 55])
    func sectorsPastTheEndAreIOError(sector: UInt64) throws {
        let (_, disk, d, q) = try setup(sectors: 16)
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: sector, inLengths: [1024])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusIOError)
        #expect(try d.inData(r) == [UInt8](repeating: 0xee, count: 1024)) // untouched
        let w = try d.postBlock(type: VirtioBlock.requestOut, sector: sector, out: [pattern(5, 1024)])
        try serve(q, disk)
        #expect(try d.status(w) == VirtioBlock.statusIOError)
    }

    @Test func lastSectorAndEmptyTransferAtTheEnd() throws {
        let (_, disk, d, q) = try setup(sectors: 16)
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 15, inLengths: [512])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        let e = try d.postBlock(type: VirtioBlock.requestIn, sector: 16)
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(e) == VirtioBlock.statusOK)
    }

    @Test(arguments: [UInt32(2), 3, 7, 10, 14, 99, 0xffff_ffff])
    func unknownTypesAreUnsupported(type: UInt32) throws {
        let (_, disk, d, q) = try setup()
        let r = try d.postBlock(type: type, sector: 0, inLengths: [512])
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(r) == VirtioBlock.statusUnsupported)
    }

    @Test func readOnlyDriveRefusesWrites() throws {
        let (image, disk, d, q) = try setup(readOnly: true)
        #expect(disk.readOnly)
        for type in [VirtioBlock.requestOut, VirtioBlock.requestDiscard, VirtioBlock.requestWriteZeroes] {
            let payload = type == VirtioBlock.requestOut ? pattern(6, 512) : segment(sector: 0, count: 1, flags: 0)
            let r = try d.postBlock(type: type, sector: 0, out: [payload])
            try serve(q, disk)
            #expect(try d.status(r) == VirtioBlock.statusIOError)
        }
        #expect(try image.contents(at: 0, count: 512) == [UInt8](repeating: 0x11, count: 512))
        let r = try d.postBlock(type: VirtioBlock.requestIn, sector: 0, inLengths: [512])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        #expect(try d.inData(r) == [UInt8](repeating: 0x11, count: 512))
        let f = try d.postBlock(type: VirtioBlock.requestFlush, sector: 0)
        try serve(q, disk)
        #expect(try d.status(f) == VirtioBlock.statusOK)
    }

    @Test func hostileDataBufferIsIOErrorNotACrash() throws {
        // A chain built without pop's validation still cannot reach outside memory.
        let (_, disk, d, _) = try setup()
        let header = try d.put([0, 0, 0, 0, 0, 0, 0, 0] + [0, 0, 0, 0, 0, 0, 0, 0])
        let s = d.alloc(1)
        let chain = DescriptorChain(head: 0, readable: [GuestBuffer(address: header, length: 16)],
                                    writable: [GuestBuffer(address: UInt64.max - 100, length: 512), GuestBuffer(address: s, length: 1)])
        #expect(disk.handle(chain, memory: d.memory) == 1)
        #expect(try d.memory.load(UInt8.self, at: s) == VirtioBlock.statusIOError)
        let noStatus = DescriptorChain(head: 0, readable: [GuestBuffer(address: header, length: 16)],
                                       writable: [GuestBuffer(address: 1 << 40, length: 1)])
        #expect(disk.handle(noStatus, memory: d.memory) == 0)
    }
}

func segment(sector: UInt64, count: UInt32, flags: UInt32) -> [UInt8] {
    var bytes = [UInt8]()
    withUnsafeBytes(of: sector.littleEndian) { bytes += $0 }
    withUnsafeBytes(of: count.littleEndian) { bytes += $0 }
    withUnsafeBytes(of: flags.littleEndian) { bytes += $0 }
    return bytes
}

struct BlockDiscardTests {
    func setup() throws -> (TempImage, BlockDevice, TestDriver, Virtqueue) {
        let image = try TempImage(sectors: 64, pattern: { _ in 0x77 })
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver()
        return (image, disk, d, try d.queue())
    }

    @Test(arguments: [(VirtioBlock.requestDiscard, UInt32(0)), (VirtioBlock.requestWriteZeroes, UInt32(0)),
                      (VirtioBlock.requestWriteZeroes, UInt32(1))])
    func zeroesTheRangeOnly(type: UInt32, flags: UInt32) throws {
        let (image, disk, d, q) = try setup()
        let r = try d.postBlock(type: type, sector: 0, out: [segment(sector: 8, count: 16, flags: flags)])
        #expect(try serve(q, disk) == 1)
        #expect(try d.status(r) == VirtioBlock.statusOK)
        #expect(try image.contents(at: 8 * 512, count: 16 * 512) == [UInt8](repeating: 0, count: 16 * 512))
        #expect(try image.contents(at: 0, count: 8 * 512) == [UInt8](repeating: 0x77, count: 8 * 512))
        #expect(try image.contents(at: 24 * 512, count: 40 * 512) == [UInt8](repeating: 0x77, count: 40 * 512))
        var st = stat()
        #expect(stat(image.path, &st) == 0 && st.st_size == 64 * 512) // size kept
        // And the guest reads zeros back.
        let back = try d.postBlock(type: VirtioBlock.requestIn, sector: 8, inLengths: [512])
        try serve(q, disk)
        #expect(try d.inData(back) == [UInt8](repeating: 0, count: 512))
    }

    @Test func segmentRules() throws {
        let (image, disk, d, q) = try setup()
        let cases: [(UInt32, [UInt8], UInt8)] = [
            (VirtioBlock.requestDiscard, segment(sector: 0, count: 1, flags: 1), VirtioBlock.statusUnsupported), // UNMAP on discard
            (VirtioBlock.requestWriteZeroes, segment(sector: 0, count: 1, flags: 2), VirtioBlock.statusUnsupported), // unknown flag
            (VirtioBlock.requestDiscard, segment(sector: 60, count: 5, flags: 0), VirtioBlock.statusIOError), // past the end
            (VirtioBlock.requestWriteZeroes, segment(sector: UInt64.max, count: 2, flags: 0), VirtioBlock.statusIOError), // overflow
            (VirtioBlock.requestWriteZeroes, segment(sector: 0, count: VirtioBlock.maxDiscardSectors + 1, flags: 0), VirtioBlock.statusIOError),
            (VirtioBlock.requestDiscard, Array(segment(sector: 0, count: 1, flags: 0)[0..<12]), VirtioBlock.statusIOError), // partial
            (VirtioBlock.requestDiscard, segment(sector: 0, count: 1, flags: 0) + segment(sector: 2, count: 1, flags: 0), VirtioBlock.statusIOError), // > max_discard_seg
            (VirtioBlock.requestDiscard, [], VirtioBlock.statusIOError), // no segment
        ]
        for (type, payload, expected) in cases {
            let r = try d.postBlock(type: type, sector: 0, out: payload.isEmpty ? [] : [payload])
            try serve(q, disk)
            #expect(try d.status(r) == expected)
        }
        #expect(try image.contents(at: 0, count: 64 * 512) == [UInt8](repeating: 0x77, count: 64 * 512))
        // Zero sectors is a no-op that succeeds.
        let r = try d.postBlock(type: VirtioBlock.requestWriteZeroes, sector: 0, out: [segment(sector: 64, count: 0, flags: 0)])
        try serve(q, disk)
        #expect(try d.status(r) == VirtioBlock.statusOK)
    }
}

struct BlockConfigTests {
    func config(_ disk: BlockDevice, offset: Int, count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0xcc, count: count)
        bytes.withUnsafeMutableBytes { disk.readConfig(offset: offset, into: $0) }
        return bytes
    }

    func le<T: FixedWidthInteger>(_ bytes: [UInt8], _ type: T.Type) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    @Test func configSpaceFields() throws {
        let image = try TempImage(sectors: 2048)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        #expect(le(config(disk, offset: 0, count: 8), UInt64.self) == 2048)
        #expect(le(config(disk, offset: 4, count: 4), UInt32.self) == 0) // high half of capacity
        #expect(le(config(disk, offset: 12, count: 4), UInt32.self) == UInt32(VirtioBlock.queueSize) - 2) // seg_max
        #expect(le(config(disk, offset: 20, count: 4), UInt32.self) == 512) // blk_size
        #expect(le(config(disk, offset: 36, count: 4), UInt32.self) == VirtioBlock.maxDiscardSectors)
        #expect(le(config(disk, offset: 40, count: 4), UInt32.self) == 1) // max_discard_seg
        #expect(le(config(disk, offset: 44, count: 4), UInt32.self) == VirtioBlock.discardSectorAlignment)
        #expect(le(config(disk, offset: 48, count: 4), UInt32.self) == VirtioBlock.maxDiscardSectors)
        #expect(le(config(disk, offset: 52, count: 4), UInt32.self) == 1) // max_write_zeroes_seg
        #expect(config(disk, offset: 56, count: 1) == [1]) // write_zeroes_may_unmap
        // Past the end, straddling it, and absurd offsets read zeros.
        #expect(config(disk, offset: 60, count: 8) == [UInt8](repeating: 0, count: 8))
        #expect(config(disk, offset: 4096, count: 4) == [0, 0, 0, 0])
        #expect(config(disk, offset: -2, count: 4) == [0, 0, 0, 8])
        #expect(config(disk, offset: Int.max - 1, count: 4) == [0, 0, 0, 0])
    }

    @Test func featuresFollowReadOnly() throws {
        let image = try TempImage(sectors: 8)
        let rw = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let base = VirtioFeature.version1 | VirtioBlock.featureFlush | VirtioBlock.featureBlkSize | VirtioBlock.featureSegMax
            | VirtioFeature.ringEventIdx | VirtioFeature.ringIndirectDesc
        #expect(rw.deviceFeatures == base | VirtioBlock.featureDiscard | VirtioBlock.featureWriteZeroes)
        #expect(VirtioFeature.version1 == 1 << 32 && VirtioBlock.featureRO == 1 << 5 && VirtioBlock.featureWriteZeroes == 1 << 14)
        let other = try TempImage(sectors: 8)
        let ro = try BlockDevice(path: other.path, readOnly: true, id: nil)
        #expect(ro.deviceFeatures == base | VirtioBlock.featureRO)
        #expect(config(ro, offset: 36, count: 24) == [UInt8](repeating: 0, count: 24))
    }
}

struct BlockImageErrorTests {
    @Test func missingImage() {
        #expect(throws: BlockError.notFound("/nonexistent/disk.img")) {
            try BlockDevice(path: "/nonexistent/disk.img", readOnly: false, id: nil)
        }
    }

    @Test func sizeNotAMultipleOf512() throws {
        let image = try TempImage(bytes: 1000)
        #expect(throws: BlockError.badSize(image.path, size: 1000)) {
            try BlockDevice(path: image.path, readOnly: true, id: nil)
        }
    }

    @Test func directoryIsNotAnImage() {
        #expect(throws: BlockError.notAnImage("/tmp")) { try BlockDevice(path: "/tmp", readOnly: true, id: nil) }
        #expect(throws: (any Error).self) { try BlockDevice(path: "/tmp", readOnly: false, id: nil) }
    }

    @Test func idLongerThan20Bytes() throws {
        let image = try TempImage(sectors: 1)
        #expect(throws: BlockError.invalidID("123456789012345678901")) {
            try BlockDevice(path: image.path, readOnly: false, id: "123456789012345678901")
        }
        _ = try BlockDevice(path: image.path, readOnly: false, id: "12345678901234567890")
    }

    @Test func writableImageIsExclusive() throws {
        let image = try TempImage(sectors: 8)
        do {
            let first = try BlockDevice(path: image.path, readOnly: false, id: nil)
            #expect(throws: BlockError.inUse(image.path)) { try BlockDevice(path: image.path, readOnly: false, id: nil) }
            #expect(throws: BlockError.inUse(image.path)) { try BlockDevice(path: image.path, readOnly: true, id: nil) }
            _ = first
        }
        // Released with the first backend; read-only opens share.
        let a = try BlockDevice(path: image.path, readOnly: true, id: nil)
        let b = try BlockDevice(path: image.path, readOnly: true, id: nil)
        #expect(throws: BlockError.inUse(image.path)) { try BlockDevice(path: image.path, readOnly: false, id: nil) }
        _ = (a, b)
    }

    @Test(.enabled(if: getuid() != 0, "root opens 0444 files for writing"))
    func readOnlyFileNeedsRO() throws {
        let image = try TempImage(sectors: 8)
        #expect(chmod(image.path, 0o444) == 0)
        #expect(throws: BlockError.readOnlyImage(image.path)) { try BlockDevice(path: image.path, readOnly: false, id: nil) }
        _ = try BlockDevice(path: image.path, readOnly: true, id: nil)
    }

    @Test func errorDescriptionsAreOneLine() {
        let errors: [BlockError] = [.notFound("a"), .readOnlyImage("a"), .inUse("a"), .badSize("a", size: 3), .notAnImage("a"),
                                    .invalidID("x"), .system(.init("open(a)", errno: EIO))]
        for e in errors { #expect(!e.description.contains("\n")) }
        #expect(BlockError.readOnlyImage("/d.img").description.hasSuffix("is read-only; add ,ro"))
        #expect(BlockError.inUse("/d.img").description.contains("already in use"))
    }
}

struct BlockQueueTests {
    @Test func manyRequestsThroughAFullRing() throws {
        let image = try TempImage(sectors: 1024)
        let disk = try BlockDevice(path: image.path, readOnly: false, id: nil)
        let d = try TestDriver(size: 256, startIndex: 0xff80)
        let q = try d.queue(eventIndex: true)
        var expected = [Int: [UInt8]]()
        // Rounds of 80 writes (240 descriptors), served in a batch, across the index wrap.
        for round in 0..<3 {
            try d.setUsedEvent(d.usedIdx) // interrupt on the first completion
            var posted: [PostedRequest] = []
            for i in 0..<80 {
                let sector = (round * 80 + i) * 4 % 1024
                let data = pattern(round * 80 + i, 2048)
                expected[sector] = data
                posted.append(try d.postBlock(type: VirtioBlock.requestOut, sector: UInt64(sector), out: [data]))
            }
            #expect(q.enableNotification())
            while let chain = try q.pop() {
                try q.pushUsed(head: chain.head, length: disk.handle(chain, memory: d.memory))
            }
            #expect(q.enableNotification() == false)
            #expect(q.needsInterrupt())
            for p in posted { #expect(try d.status(p) == VirtioBlock.statusOK) }
        }
        #expect(d.usedIdx == 0xff80 &+ 240)
        for (sector, data) in expected {
            #expect(try image.contents(at: sector * 512, count: 2048) == data)
        }
    }
}
