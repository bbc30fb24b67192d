import Glibc
import SwiftletSys
import Testing
@testable import SwiftletImage

/// Builds tar headers in Swift, for the cases no writer makes on purpose.
struct TarBuilder {
    enum Magic { case ustar, gnu, v7 }

    var bytes: [UInt8] = []

    /// One 512-byte header. `tweak` edits the block before the checksum is computed;
    /// `checksum` replaces the computed checksum field when given.
    static func header(_ name: String, type: Character = "0", size: UInt64 = 0, mode: UInt32 = 0o644,
                       uid: UInt32 = 0, gid: UInt32 = 0, mtime: Int64 = 0, link: String = "", prefix: String = "",
                       major: UInt32 = 0, minor: UInt32 = 0, magic: Magic = .ustar,
                       tweak: (inout [UInt8]) -> Void = { _ in }, checksum: [UInt8]? = nil) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 512)
        put(Array(name.utf8), at: 0, width: 100, in: &b)
        put(octal(UInt64(mode), 8), at: 100, width: 8, in: &b)
        put(octal(UInt64(uid), 8), at: 108, width: 8, in: &b)
        put(octal(UInt64(gid), 8), at: 116, width: 8, in: &b)
        put(octal(size, 12), at: 124, width: 12, in: &b)
        put(mtime >= 0 ? octal(UInt64(mtime), 12) : base256(mtime, 12), at: 136, width: 12, in: &b)
        b[156] = type.asciiValue ?? 0
        put(Array(link.utf8), at: 157, width: 100, in: &b)
        switch magic {
        case .ustar: put(Array("ustar\u{0}00".utf8), at: 257, width: 8, in: &b)
        case .gnu: put(Array("ustar  \u{0}".utf8), at: 257, width: 8, in: &b)
        case .v7: break
        }
        if magic != .v7 {
            put(Array("root".utf8), at: 265, width: 32, in: &b)
            put(Array("root".utf8), at: 297, width: 32, in: &b)
            put(octal(UInt64(major), 8), at: 329, width: 8, in: &b)
            put(octal(UInt64(minor), 8), at: 337, width: 8, in: &b)
        }
        put(Array(prefix.utf8), at: 345, width: 155, in: &b)
        tweak(&b)
        put(checksum ?? sumField(b), at: 148, width: 8, in: &b)
        return b
    }

    /// The checksum field for `block`: six octal digits, NUL, space.
    static func sumField(_ block: [UInt8]) -> [UInt8] {
        var sum = 0
        for (i, c) in block.enumerated() { sum += (148..<156).contains(i) ? 0x20 : Int(c) }
        return Array(octal(UInt64(sum), 7).prefix(6)) + [0, 0x20]
    }

    static func put(_ value: [UInt8], at offset: Int, width: Int, in block: inout [UInt8]) {
        for i in 0..<width { block[offset + i] = i < value.count ? value[i] : 0 }
    }

    /// `value` in `width - 1` octal digits and a NUL.
    static func octal(_ value: UInt64, _ width: Int) -> [UInt8] {
        let digits = String(value, radix: 8)
        let padded = String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits
        return Array(padded.utf8) + [0]
    }

    /// GNU base-256: the high bit of the first byte set, two's complement big-endian.
    static func base256(_ value: Int64, _ width: Int) -> [UInt8] {
        var out = [UInt8](repeating: value < 0 ? 0xff : 0, count: width)
        var v = value
        for i in stride(from: width - 1, to: 0, by: -1) {
            out[i] = UInt8(truncatingIfNeeded: v)
            v >>= 8
        }
        out[0] = value < 0 ? 0xff : 0x80
        return out
    }

    /// PAX records, "LEN KEY=VALUE\n" each, with LEN counting itself.
    static func pax(_ records: [(String, [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for (key, value) in records {
            let body = Array(" \(key)=".utf8) + value + [0x0a]
            var length = body.count + 1
            while String(length).count + body.count != length { length += 1 }
            out += Array(String(length).utf8) + body
        }
        return out
    }

    mutating func add(_ header: [UInt8], data: [UInt8] = []) {
        bytes += header + data
        if data.count % 512 != 0 { bytes += [UInt8](repeating: 0, count: 512 - data.count % 512) }
    }

    mutating func file(_ name: String, _ data: [UInt8], type: Character = "0") {
        add(Self.header(name, type: type, size: UInt64(data.count)), data: data)
    }

    mutating func paxHeader(_ records: [(String, [UInt8])], global: Bool = false) {
        let data = Self.pax(records)
        add(Self.header("PaxHeader", type: global ? "g" : "x", size: UInt64(data.count)), data: data)
    }

    mutating func end() { bytes += [UInt8](repeating: 0, count: 1024) }
}

/// Archives written by Python's tarfile, at test time.
enum PythonTar {
    static let script = #"""
import io, sys, tarfile
out, fmt, mode = sys.argv[1], sys.argv[2], sys.argv[3]
F = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[fmt]
with tarfile.open(out, mode, format=F) as t:
    def add(name, type=tarfile.REGTYPE, data=b"", mode=0o644, uid=1000, gid=1001, mtime=1700000000,
            link="", dev=(0, 0), pax=None):
        ti = tarfile.TarInfo(name)
        ti.type = type
        ti.size = len(data)
        ti.mode, ti.uid, ti.gid, ti.mtime = mode, uid, gid, mtime
        ti.uname, ti.gname = "user", "group"
        ti.linkname = link
        ti.devmajor, ti.devminor = dev
        if pax:
            ti.pax_headers = pax
        t.addfile(ti, io.BytesIO(data) if data else None)
    add("dir/", tarfile.DIRTYPE, mode=0o755)
    add("dir/file.txt", data=b"hello\n", mode=0o4755)
    add("dir/empty")
    add("dir/big.bin", data=bytes(range(256)) * 40 + b"x")
    add("dir/link", tarfile.SYMTYPE, link="file.txt", mode=0o777)
    add("dir/hard", tarfile.LNKTYPE, link="dir/file.txt")
    add("dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    add("dev/sda", tarfile.BLKTYPE, mode=0o660, dev=(8, 0))
    add("dir/fifo", tarfile.FIFOTYPE, mode=0o600)
    add("tmp", tarfile.DIRTYPE, mode=0o1777)
    add("contig", tarfile.CONTTYPE, data=b"contiguous")
    add("a/" + "p" * 140 + "/name", data=b"prefix")
    if fmt != "ustar":
        add("long/" + "n" * 250, data=b"long")
        add("long/link", tarfile.SYMTYPE, link="t" * 150)
        add("long/hard", tarfile.LNKTYPE, link="long/" + "n" * 250)
        add("big-ids", data=b"ids", uid=3000000, gid=4000000)
    if fmt == "gnu":
        add("negative-mtime", mtime=-100)
    if fmt == "pax":
        add("xattrs", data=b"x", pax={"SCHILY.xattr.user.a": "one",
                                      "SCHILY.xattr.security.capability": "\x01\x00\x00\x02\udcff\x00"})
        add("frac-mtime", mtime=-1.5)
        add("utf8-\u540d\u524d")
"""#

    /// Writes the archive in `format` ("ustar", "gnu", "pax") with tarfile `mode` ("w", "w:gz") into `dir`.
    static func write(_ format: String, mode: String = "w", in dir: String) -> String {
        let scriptPath = dir + "/make-tar.py"
        IO.writeFile(scriptPath, Array(script.utf8))
        let out = dir + "/\(format).tar"
        let rc = system("python3 '\(scriptPath)' '\(out)' \(format) '\(mode)'")
        precondition(rc == 0, "python3 tarfile failed: \(rc)")
        return out
    }

    struct Expected {
        var entry: TarEntry
        var data: [UInt8] = []
    }

    /// What the script writes, in order.
    static func expected(_ format: String) -> [Expected] {
        func e(_ path: String, _ kind: TarEntry.Kind, mode: UInt32 = 0o644, uid: UInt32 = 1000, gid: UInt32 = 1001,
               link: String = "", major: UInt32 = 0, minor: UInt32 = 0, mtime: Int64 = 1_700_000_000,
               xattrs: [TarEntry.Xattr] = [], data: [UInt8] = []) -> Expected {
            Expected(entry: TarEntry(path: path, kind: kind, mode: mode, uid: uid, gid: gid, size: UInt64(data.count),
                                     linkTarget: link, deviceMajor: major, deviceMinor: minor, modificationTime: mtime,
                                     xattrs: xattrs), data: data)
        }
        var list = [
            e("dir/", .directory, mode: 0o755),
            e("dir/file.txt", .file, mode: 0o4755, data: Array("hello\n".utf8)),
            e("dir/empty", .file),
            e("dir/big.bin", .file, data: Array((0..<40).flatMap { _ in (0...255).map { UInt8($0) } }) + [UInt8(ascii: "x")]),
            e("dir/link", .symlink, mode: 0o777, link: "file.txt"),
            e("dir/hard", .hardLink, link: "dir/file.txt"),
            e("dev/null", .characterDevice, mode: 0o666, major: 1, minor: 3),
            e("dev/sda", .blockDevice, mode: 0o660, major: 8, minor: 0),
            e("dir/fifo", .fifo, mode: 0o600),
            e("tmp/", .directory, mode: 0o1777),
            e("contig", .file, data: Array("contiguous".utf8)),
            e("a/" + String(repeating: "p", count: 140) + "/name", .file, data: Array("prefix".utf8)),
        ]
        if format != "ustar" {
            list += [
                e("long/" + String(repeating: "n", count: 250), .file, data: Array("long".utf8)),
                e("long/link", .symlink, link: String(repeating: "t", count: 150)),
                e("long/hard", .hardLink, link: "long/" + String(repeating: "n", count: 250)),
                e("big-ids", .file, uid: 3_000_000, gid: 4_000_000, data: Array("ids".utf8)),
            ]
        }
        if format == "gnu" { list.append(e("negative-mtime", .file, mtime: -100)) }
        if format == "pax" {
            list += [
                e("xattrs", .file, xattrs: [TarEntry.Xattr(name: "user.a", value: Array("one".utf8)),
                                            TarEntry.Xattr(name: "security.capability", value: [1, 0, 0, 2, 0xff, 0])],
                  data: [UInt8(ascii: "x")]),
                e("frac-mtime", .file, mtime: -2),
                e("utf8-\u{540D}\u{524D}", .file),
            ]
        }
        return list
    }
}

/// Reads every entry and its whole data, in pieces of `chunk` bytes.
func readArchive<S: ByteSource>(_ reader: inout TarReader<S>, chunk: Int = 4096) throws(TarError) -> [(TarEntry, [UInt8])] {
    var out: [(TarEntry, [UInt8])] = []
    while let entry = try reader.next() {
        out.append((entry, try readData(&reader, chunk: chunk)))
    }
    return out
}

func readData<S: ByteSource>(_ reader: inout TarReader<S>, chunk: Int = 4096, max: Int = Int.max) throws(TarError) -> [UInt8] {
    var data: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: chunk)
    while data.count < max {
        let want = min(chunk, max - data.count)
        let n = try buffer.withUnsafeMutableBytes { b in
            Result { () throws(TarError) in try reader.readData(into: UnsafeMutableRawBufferPointer(rebasing: b[0..<want])) }
        }.get()
        if n == 0 { break }
        data += buffer[0..<n]
    }
    return data
}

func entries(_ bytes: [UInt8], step: Int = Int.max) throws(TarError) -> [TarEntry] {
    var r = TarReader(DribbleSource(bytes, step: step))
    return try readArchive(&r).map { $0.0 }
}

@Suite struct TarReaderTests {
    func check(_ got: [(TarEntry, [UInt8])], _ expected: [PythonTar.Expected], _ label: String) {
        #expect(got.count == expected.count, "\(label): entry count")
        for (g, e) in zip(got, expected) {
            #expect(g.0 == e.entry, "\(label): \(e.entry.path)")
            #expect(g.1 == e.data, "\(label): data of \(e.entry.path)")
        }
    }

    @Test(arguments: ["ustar", "gnu", "pax"])
    func pythonArchivesReadBack(format: String) throws {
        let dir = IO.temporaryDirectory()
        defer { removeTree(dir) }
        let path = PythonTar.write(format, in: dir)
        let expected = PythonTar.expected(format)

        let fd = open(path, O_RDONLY | O_CLOEXEC)
        #expect(fd >= 0)
        defer { close(fd) }
        var r = TarReader(FileSource(fd: fd))
        check(try readArchive(&r), expected, format)
        #expect(try r.next() == nil)

        // The same bytes handed out a few at a time, and read in odd pieces.
        let bytes = try readFile(path)
        for (step, chunk) in [(1, 1), (7, 100), (513, 65536)] {
            var d = TarReader(DribbleSource(bytes, step: step))
            check(try readArchive(&d, chunk: chunk), expected, "\(format) step \(step)")
        }
    }

    @Test(arguments: ["ustar", "gnu", "pax"])
    func pythonArchivesThroughDecompressors(format: String) throws {
        let dir = IO.temporaryDirectory()
        defer { removeTree(dir) }
        let expected = PythonTar.expected(format)
        // gzip as tarfile writes it.
        let gz = try readFile(PythonTar.write(format, mode: "w:gz", in: dir))
        var g = TarReader(try DecompressingSource(BufferSource(gz)))
        check(try readArchive(&g), expected, "\(format).gz")
        // zstd, and gzip split into two members at an odd place.
        let plain = try readFile(PythonTar.write(format, in: dir))
        var z = TarReader(try DecompressingSource(DribbleSource(Packer.zstd(plain), step: 999)))
        check(try readArchive(&z), expected, "\(format).zst")
        let split = Packer.gzip(Array(plain[0..<1234])) + Packer.gzip(Array(plain[1234...]))
        var s = TarReader(try DecompressingSource(BufferSource(split)))
        check(try readArchive(&s), expected, "\(format) in two gzip members")
    }

    func readFile(_ path: String) throws -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        precondition(fd >= 0)
        defer { close(fd) }
        var s = FileSource(fd: fd)
        return try readAll(&s, maxBytes: 1 << 30)
    }

    @Test func unreadDataIsSkipped() throws {
        var t = TarBuilder()
        let a = IO.data(count: 100_000, seed: 1), b = IO.data(count: 1000, seed: 2), c = IO.data(count: 513, seed: 3)
        t.file("a", a)
        t.file("b", b)
        t.file("c", c)
        t.file("d", [1, 2, 3])
        t.end()
        for step in [1, 100, Int.max] {
            var r = TarReader(DribbleSource(t.bytes, step: step))
            #expect(try r.next()?.path == "a")
            #expect(try readData(&r, chunk: 333, max: 70_001) == Array(a[0..<70_001]))  // part of it
            #expect(try r.next()?.path == "b")                                          // none of it
            #expect(try r.next()?.path == "c")
            #expect(try readData(&r, chunk: 513) == c)                                   // all of it
            #expect(try r.next()?.path == "d")
            #expect(try readData(&r, chunk: 1) == [1, 2, 3])
            #expect(try readData(&r) == [])
            #expect(try r.next() == nil)
            #expect(try r.next() == nil)
            #expect(r.position == UInt64(t.bytes.count))
        }
    }

    @Test func theEndOfTheArchive() throws {
        var t = TarBuilder()
        t.file("a", [9])
        let one = t.bytes
        // No end blocks at all, one zero block, two, and two followed by anything.
        #expect(try entries(one).map(\.path) == ["a"])
        #expect(try entries(one + [UInt8](repeating: 0, count: 512)).map(\.path) == ["a"])
        #expect(try entries(one + [UInt8](repeating: 0, count: 1024)).map(\.path) == ["a"])
        #expect(try entries(one + [UInt8](repeating: 0, count: 1024) + Array("trailing junk".utf8)).map(\.path) == ["a"])
        // A header cut short, a zero block cut short, a zero block and then a header.
        #expect(throws: TarError.stream(.truncated)) { try entries(one + Array(one[0..<100])) }
        #expect(throws: TarError.stream(.truncated)) { try entries(one + [UInt8](repeating: 0, count: 600)) }
        #expect(throws: TarError.badHeader(offset: 1024, reason: "a zero block followed by a header")) {
            try entries(one + [UInt8](repeating: 0, count: 512) + one)
        }
        #expect(try entries([]) == [])
    }

    @Test func truncatedData() throws {
        var t = TarBuilder()
        t.file("a", IO.data(count: 5000))
        t.file("b", [1])
        let bytes = t.bytes
        // Cut inside a's data: reading it fails, and so does skipping it.
        let cut = Array(bytes[0..<3000])
        var r = TarReader(BufferSource(cut))
        #expect(try r.next()?.size == 5000)
        #expect(throws: TarError.stream(.truncated)) { try readData(&r) }
        #expect(throws: TarError.stream(.truncated)) { try r.next() }  // errors are final
        var s = TarReader(BufferSource(cut))
        _ = try s.next()
        #expect(throws: TarError.stream(.truncated)) { try s.next() }
        // Cut inside the padding after a's data.
        #expect(throws: TarError.stream(.truncated)) { try entries(Array(bytes[0..<(512 + 5000 + 10)])) }
        // A large read straight into the caller's buffer.
        var big = TarReader(BufferSource(cut))
        _ = try big.next()
        #expect(throws: TarError.stream(.truncated)) { try readData(&big, chunk: 1 << 20) }
    }

    @Test func badChecksumsAndNumbers() throws {
        let good = TarBuilder.header("f", size: 1)
        var bad = good
        bad[0] ^= 1  // the name changes after the checksum was computed
        #expect(throws: TarError.badHeader(offset: 0, reason: "bad checksum")) { try entries(bad + [1] + [UInt8](repeating: 0, count: 511)) }
        // A checksum summed over signed bytes (old writers) is accepted.
        let high = "f\u{00E9}"  // a byte over 0x7f in the name
        var signedSum = 0
        var h = TarBuilder.header(high)
        for (i, c) in h.enumerated() { signedSum += (148..<156).contains(i) ? 0x20 : Int(Int8(bitPattern: c)) }
        TarBuilder.put(Array(TarBuilder.octal(UInt64(signedSum), 7).prefix(6)) + [0, 0x20], at: 148, width: 8, in: &h)
        #expect(try entries(h).map(\.path) == [high])
        // Checksum fields that are not numbers.
        #expect(throws: TarError.badHeader(offset: 0, reason: "the checksum field is not a number")) {
            try entries(TarBuilder.header("f", checksum: Array("12x4567\0".utf8)))
        }
        // Sizes: not octal, negative in base 256, and base 256 overflowing 63 bits.
        #expect(throws: TarError.badHeader(offset: 0, reason: "the size field is not a number")) {
            try entries(TarBuilder.header("f", tweak: { TarBuilder.put(Array("0000000009\0".utf8), at: 124, width: 12, in: &$0) }))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "a negative size")) {
            try entries(TarBuilder.header("f", tweak: { TarBuilder.put(TarBuilder.base256(-5, 12), at: 124, width: 12, in: &$0) }))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "the size field is not a number")) {
            try entries(TarBuilder.header("f", tweak: { TarBuilder.put([0x80] + [UInt8](repeating: 0xff, count: 11), at: 124, width: 12, in: &$0) }))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "the uid is out of range")) {
            try entries(TarBuilder.header("f", tweak: { TarBuilder.put(TarBuilder.base256(1 << 32, 8), at: 108, width: 8, in: &$0) }))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "the mode field is not a number")) {
            try entries(TarBuilder.header("f", tweak: { TarBuilder.put(Array("06 44\0".utf8), at: 100, width: 8, in: &$0) }))
        }
        // Fields padded with spaces (old writers) and left empty are numbers.
        let spaced = TarBuilder.header("f", tweak: {
            TarBuilder.put(Array("   644 \0".utf8), at: 100, width: 8, in: &$0)
            TarBuilder.put([UInt8](repeating: 0, count: 8), at: 108, width: 8, in: &$0)
            TarBuilder.put(Array("  12  \0 ".utf8), at: 116, width: 8, in: &$0)
        })
        let e = try entries(spaced)
        #expect(e.first?.mode == 0o644 && e.first?.uid == 0 && e.first?.gid == 0o12)
    }

    @Test func base256Numbers() throws {
        let data = IO.data(count: 700)
        var t = TarBuilder()
        t.add(TarBuilder.header("b", tweak: {
            TarBuilder.put(TarBuilder.base256(700, 12), at: 124, width: 12, in: &$0)
            TarBuilder.put(TarBuilder.base256(4_000_000_000, 8), at: 108, width: 8, in: &$0)
            TarBuilder.put(TarBuilder.base256(77, 8), at: 116, width: 8, in: &$0)
            TarBuilder.put(TarBuilder.base256(-1_000_000_000_000, 12), at: 136, width: 12, in: &$0)
        }), data: data)
        t.end()
        var r = TarReader(BufferSource(t.bytes))
        let got = try readArchive(&r)
        #expect(got.count == 1)
        #expect(got.first?.0 == TarEntry(path: "b", kind: .file, mode: 0o644, uid: 4_000_000_000, gid: 77, size: 700,
                                        modificationTime: -1_000_000_000_000))
        #expect(got.first?.1 == data)
    }

    @Test func paxOverridesAndXattrs() throws {
        var t = TarBuilder()
        let data = IO.data(count: 2000)
        // The header says 10 bytes and a short name; PAX says otherwise, and PAX wins.
        t.paxHeader([
            ("path", Array("pax/path/\u{00E9}".utf8)), ("size", Array("2000".utf8)), ("uid", Array("4294967295".utf8)),
            ("gid", Array("65536".utf8)), ("mtime", Array("1234567890.999999999".utf8)), ("atime", Array("1.5".utf8)),
            ("SCHILY.xattr.user.b", [0, 1, 2]), ("SCHILY.xattr.user.a", Array("first".utf8)),
            ("LIBARCHIVE.xattr.user.%61%62", Array("aGVsbG8=".utf8)), ("LIBARCHIVE.xattr.user.nopad", Array("aGk".utf8)),
            ("SCHILY.xattr.user.a", Array("last".utf8)), ("SCHILY.xattr.user.empty", []), ("comment", Array("ignored".utf8)),
        ])
        t.add(TarBuilder.header("short", size: 10, uid: 5, gid: 6, mtime: 7, tweak: { _ in }), data: data)
        // Empty values take the header's fields back.
        t.paxHeader([("path", []), ("uid", [])])
        t.file("plain", [1])
        // linkpath, and the last of several PAX headers wins.
        t.paxHeader([("linkpath", Array("ignored".utf8))])
        t.paxHeader([("linkpath", Array(String(repeating: "l", count: 300).utf8))])
        t.add(TarBuilder.header("sym", type: "2", link: "short"))
        t.end()
        var r = TarReader(BufferSource(t.bytes))
        let got = try readArchive(&r)
        #expect(got.count == 3)
        #expect(got[0].0 == TarEntry(path: "pax/path/\u{00E9}", kind: .file, mode: 0o644, uid: UInt32.max, gid: 65536, size: 2000,
                                    modificationTime: 1_234_567_890, xattrs: [
                                        .init(name: "user.b", value: [0, 1, 2]), .init(name: "user.a", value: Array("last".utf8)),
                                        .init(name: "user.ab", value: Array("hello".utf8)), .init(name: "user.nopad", value: Array("hi".utf8)),
                                        .init(name: "user.empty", value: []),
                                    ]))
        #expect(got[0].1 == data)
        #expect(got[1].0 == TarEntry(path: "plain", kind: .file, size: 1))
        #expect(got[2].0.linkTarget == String(repeating: "l", count: 300))
        #expect(got[2].0.path == "sym")
    }

    @Test func paxGlobalHeadersApplyToLaterEntries() throws {
        var t = TarBuilder()
        t.file("before", [])
        t.paxHeader([("uid", Array("42".utf8)), ("path", Array("not/for/everyone".utf8)), ("size", Array("99".utf8)),
                     ("SCHILY.xattr.user.g", Array("global".utf8)), ("mtime", Array("100".utf8))], global: true)
        t.file("one", [1, 2])
        t.paxHeader([("uid", Array("7".utf8)), ("SCHILY.xattr.user.g", Array("local".utf8))])
        t.file("two", [])
        t.paxHeader([("uid", Array("43".utf8))], global: true)
        t.file("three", [])
        // An empty value removes the global one, for one entry or from then on.
        t.paxHeader([("mtime", [])])
        t.add(TarBuilder.header("four", mtime: 5))
        t.paxHeader([("mtime", [])], global: true)
        t.add(TarBuilder.header("five", mtime: 6))
        t.end()
        let e = try entries(t.bytes)
        #expect(e.map(\.path) == ["before", "one", "two", "three", "four", "five"])
        #expect(e.map(\.uid) == [0, 42, 7, 43, 43, 43])
        #expect(e.map(\.size) == [0, 2, 0, 0, 0, 0])
        #expect(e.map(\.modificationTime) == [0, 100, 100, 100, 5, 6])
        #expect(e[1].xattrs == [.init(name: "user.g", value: Array("global".utf8))])
        #expect(e[2].xattrs == [.init(name: "user.g", value: Array("local".utf8))])
    }

    @Test func paxTimes() throws {
        for (text, seconds) in [("0", Int64(0)), ("-1.5", -2), ("-1.0", -1), ("-7", -7), ("12.000001", 12), ("9223372036854775807", Int64.max)] {
            var t = TarBuilder()
            t.paxHeader([("mtime", Array(text.utf8))])
            t.file("f", [])
            #expect(try entries(t.bytes).first?.modificationTime == seconds, "\(text)")
        }
        for text in ["1e5", "1.", ".5", "--1", "1.5.5", "9223372036854775808", "x"] {
            var t = TarBuilder()
            t.paxHeader([("mtime", Array(text.utf8))])
            t.file("f", [])
            #expect(throws: TarError.self, "\(text)") { try entries(t.bytes) }
        }
    }

    @Test func badPAXRecords() {
        func archive(_ paxData: [UInt8]) -> [UInt8] {
            var t = TarBuilder()
            t.add(TarBuilder.header("PaxHeader", type: "x", size: UInt64(paxData.count)), data: paxData)
            t.file("f", [])
            return t.bytes
        }
        // Framing: no newline, a zero length, no length, lengths past the data, no space, no keyword.
        for bad in ["5 a=b", "0 a=b\n", "x a=b\n", "7 =b\n\n", "6 ab\n", "99 a=b\n", "18446744073709551617 a=b\n", "6a=bc\n",
                    "6 a=b\n5 =b\n", "6 a=b\n "] {
            #expect(throws: TarError.self, "\(bad)") { try entries(archive(Array(bad.utf8))) }
        }
        #expect((try? entries(archive(Array("6 a=b\n".utf8))))?.count == 1)
        // Values: numbers that are not, or out of range.
        for (key, value) in [("uid", "x"), ("uid", "4294967296"), ("gid", "1 2"), ("size", "-1"), ("size", "9223372036854775808"),
                             ("SCHILY.devmajor", "+1"), ("uid", "0x10")] {
            #expect(throws: TarError.self, "\(key)=\(value)") { try entries(archive(TarBuilder.pax([(key, Array(value.utf8))]))) }
        }
        // A NUL in a path, or in a keyword.
        #expect(throws: TarError.badHeader(offset: 0, reason: "a PAX path with a NUL byte")) {
            try entries(archive(TarBuilder.pax([("path", Array("a\0b".utf8))])))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "a PAX linkpath with a NUL byte")) {
            try entries(archive(TarBuilder.pax([("linkpath", Array("a\0b".utf8))])))
        }
        #expect(throws: TarError.badHeader(offset: 0, reason: "a PAX keyword with a NUL byte")) {
            try entries(archive(TarBuilder.pax([("SCHILY.xattr.a\0b", [1])])))
        }
        #expect(throws: TarError.self) { try entries(archive(TarBuilder.pax([("LIBARCHIVE.xattr.user.x", Array("a!!=".utf8))]))) }
        #expect(throws: TarError.self) { try entries(archive(TarBuilder.pax([("LIBARCHIVE.xattr.user.%zz", Array("aGk=".utf8))]))) }
        #expect(throws: TarError.unsupported(offset: 0, reason: "a GNU sparse file (PAX)")) {
            try entries(archive(TarBuilder.pax([("GNU.sparse.major", Array("1".utf8))])))
        }
        // An empty PAX header is fine.
        #expect((try? entries(archive([])))?.map(\.path) == ["f"])
    }

    @Test func hugeMetadataIsRefusedBeforeReading() throws {
        // A PAX header that declares 1 TiB (base 256), with no data behind it.
        let huge = TarBuilder.header("PaxHeader", type: "x", tweak: {
            TarBuilder.put(TarBuilder.base256(1 << 40, 12), at: 124, width: 12, in: &$0)
        })
        #expect(throws: TarError.tooLarge("a PAX extended header of 1099511627776 bytes at offset 0 (the limit is 1048576)")) {
            try entries(huge)
        }
        for type: Character in ["g", "L", "K"] {
            #expect(throws: TarError.self) { try entries(TarBuilder.header("x", type: type, size: (1 << 20) + 1)) }
        }
        // Exactly the limit is read.
        var t = TarBuilder()
        let name = [UInt8](repeating: UInt8(ascii: "n"), count: 1 << 20)
        t.add(TarBuilder.header("././@LongLink", type: "L", size: UInt64(name.count)), data: name)
        t.file("short", [])
        #expect(try entries(t.bytes).first?.path.utf8.count == 1 << 20)
        // Global records that add up past the limit.
        var g = TarBuilder()
        for i in 0..<3 { g.paxHeader([("k\(i)", [UInt8](repeating: 1, count: 400_000))], global: true) }
        g.file("f", [])
        #expect(throws: TarError.tooLarge("PAX global records over 1048576 bytes at offset 801792")) { try entries(g.bytes) }
    }

    @Test func xattrLimits() throws {
        func archive(_ count: Int, global: Bool = false, valueSize: Int = 1) -> [UInt8] {
            var t = TarBuilder()
            t.paxHeader((0..<count).map { ("SCHILY.xattr.user.\($0)", [UInt8](repeating: 7, count: valueSize)) }, global: global)
            t.file("f", [])
            return t.bytes
        }
        #expect(try entries(archive(1024)).first?.xattrs.count == 1024)
        #expect(throws: TarError.self) { try entries(archive(1025)) }
        #expect(throws: TarError.self) { try entries(archive(1025, global: true)) }
        // Global and local xattrs together.
        var t = TarBuilder()
        t.paxHeader((0..<1000).map { ("SCHILY.xattr.g\($0)", [1]) }, global: true)
        t.paxHeader((0..<24).map { ("SCHILY.xattr.l\($0)", [1]) })
        t.file("ok", [])
        t.paxHeader((0..<25).map { ("SCHILY.xattr.m\($0)", [1]) })
        t.file("over", [])
        var r = TarReader(BufferSource(t.bytes))
        #expect(try r.next()?.xattrs.count == 1024)
        #expect(throws: TarError.self) { try r.next() }
    }

    @Test func gnuLongNamesAndV7() throws {
        var t = TarBuilder()
        let long = String(repeating: "d/", count: 100) + "file"
        // GNU long name and long link, cut at the first NUL.
        t.add(TarBuilder.header("././@LongLink", type: "L", size: UInt64(long.utf8.count + 1), magic: .gnu), data: Array(long.utf8) + [0])
        t.add(TarBuilder.header("././@LongLink", type: "K", size: 9, magic: .gnu), data: Array("target\0xy".utf8))
        t.add(TarBuilder.header("trunc", type: "1", size: 100, link: "short", magic: .gnu))  // a hard link's size has no data
        // Pre-POSIX: no magic, a directory told by its trailing slash; no device fields.
        t.add(TarBuilder.header("olddir/", type: "\0", magic: .v7, tweak: { TarBuilder.put(Array("junk".utf8), at: 329, width: 8, in: &$0) }))
        t.add(TarBuilder.header("oldfile", type: "\0", size: 3, magic: .v7), data: [1, 2, 3])
        // ustar prefix; GNU headers have no prefix field.
        t.add(TarBuilder.header("name", prefix: "the/prefix"))
        t.add(TarBuilder.header("name", magic: .gnu, tweak: { TarBuilder.put(Array("notaprefix".utf8), at: 345, width: 10, in: &$0) }))
        t.end()
        var r = TarReader(BufferSource(t.bytes))
        let got = try readArchive(&r)
        #expect(got.map(\.0.path) == [long, "olddir/", "oldfile", "the/prefix/name", "name"])
        #expect(got[0].0.kind == .hardLink && got[0].0.linkTarget == "target" && got[0].0.size == 0)
        #expect(got[1].0.kind == .directory)
        #expect(got[2].0.kind == .file && got[2].1 == [1, 2, 3])
    }

    @Test func typeflags() {
        for (type, reason) in [("S", "a GNU sparse file"), ("M", "a GNU multi-volume continuation"), ("V", "a GNU volume label"),
                               ("A", "the vendor typeflag 'A'"), ("D", "the vendor typeflag 'D'")] {
            #expect(throws: TarError.unsupported(offset: 512, reason: reason)) {
                var t = TarBuilder()
                t.file("ok", [])
                t.add(TarBuilder.header("x", type: Character(type)))
                return try entries(t.bytes)
            }
        }
        for type: Character in ["8", "9", "a", "z", "~"] {
            #expect(throws: TarError.badHeader(offset: 0, reason: "unknown typeflag \(type.asciiValue ?? 0)")) {
                try entries(TarBuilder.header("x", type: type))
            }
        }
    }

    @Test func pathsThatAreNotUTF8AreDecodedWithReplacement() throws {
        let h = TarBuilder.header("", tweak: { $0[0] = UInt8(ascii: "a"); $0[1] = 0xff; $0[2] = UInt8(ascii: "c") })
        #expect(try entries(h).first?.path == "a\u{FFFD}c")
        var t = TarBuilder()
        t.paxHeader([("path", [0xc3, 0x28]), ("SCHILY.xattr.user.\u{00FF}", [1])])
        t.file("f", [])
        let e = try entries(t.bytes)
        #expect(e.first?.path == "\u{FFFD}(")
        #expect(e.first?.xattrs.first?.name == "user.\u{00FF}")
    }

    @Test func sourceErrorsAreStreamErrors() {
        var t = TarBuilder()
        t.file("a", IO.data(count: 10_000))
        var r = TarReader(FailingSource(inner: BufferSource(t.bytes), left: 5000))
        #expect(throws: TarError.stream(.io(call: "read", errno: EIO))) { try readArchive(&r) }
        #expect(throws: TarError.stream(.io(call: "read", errno: EIO))) { try r.next() }
    }

    @Test func copiesShareOneReader() throws {
        // The unpacker hands a copy to a byte source over one member's data.
        var t = TarBuilder()
        t.file("a", [1, 2, 3, 4])
        t.file("b", [5])
        var r = TarReader(BufferSource(t.bytes))
        _ = try r.next()
        var copy = r
        #expect(try readData(&copy, chunk: 2) == [1, 2, 3, 4])
        #expect(try r.next()?.path == "b")
    }
}
