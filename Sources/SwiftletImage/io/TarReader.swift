// A streaming tar reader for image layers and rootfs tarballs: ustar, GNU
// (long names, base-256 numbers) and PAX (extended and global headers). It
// reads what Go's archive/tar reads (the reader behind docker and containerd),
// so that an image unpacks here as it does there; every field is checked, as
// the archive comes from the user.
import Glibc
import SwiftletSys

/// Why a tar archive could not be read.
public enum TarError: Error, Equatable, CustomStringConvertible {
    /// Reading the archive's bytes failed (`.truncated`: it ends inside a header or data).
    case stream(StreamError)
    /// A header that is not valid (checksum, a field that is not a number, a bad size, a bad PAX record).
    case badHeader(offset: UInt64, reason: String)
    /// A valid header this reader does not handle (GNU sparse files, multi-volume archives, vendor types).
    case unsupported(offset: UInt64, reason: String)
    /// A PAX header or GNU long name over its limit.
    case tooLarge(String)

    public var description: String {
        switch self {
        case .stream(let e): return "tar: \(e)"
        case .badHeader(let offset, let reason): return "tar: bad header at offset \(offset): \(reason)"
        case .unsupported(let offset, let reason): return "tar: unsupported entry at offset \(offset): \(reason)"
        case .tooLarge(let what): return "tar: too large: \(what)"
        }
    }
}

/// One entry of a tar archive, with its PAX and GNU extensions applied.
public struct TarEntry: Equatable, Sendable {
    public enum Kind: Equatable, Sendable {
        case file, hardLink, symlink, characterDevice, blockDevice, directory, fifo
    }

    /// An extended attribute (PAX `SCHILY.xattr.NAME` or `LIBARCHIVE.xattr.NAME`).
    public struct Xattr: Equatable, Sendable {
        public var name: String
        public var value: [UInt8]

        public init(name: String, value: [UInt8]) {
            self.name = name
            self.value = value
        }
    }

    /// The name as archived (ustar prefix and name, GNU long name, or PAX path), not normalized.
    public var path: String
    public var kind: Kind
    /// Permission bits with setuid, setgid and sticky (mode & 0o7777).
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    /// Data bytes: 0 for everything but `.file`.
    public var size: UInt64
    /// A symlink's target, or the path a hard link names.
    public var linkTarget: String
    public var deviceMajor: UInt32
    public var deviceMinor: UInt32
    /// Seconds since the epoch.
    public var modificationTime: Int64
    /// In archive order; a name given twice keeps its first place and its last value.
    public var xattrs: [Xattr]

    public init(path: String, kind: Kind, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0, size: UInt64 = 0,
                linkTarget: String = "", deviceMajor: UInt32 = 0, deviceMinor: UInt32 = 0, modificationTime: Int64 = 0,
                xattrs: [Xattr] = []) {
        self.path = path
        self.kind = kind
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.linkTarget = linkTarget
        self.deviceMajor = deviceMajor
        self.deviceMinor = deviceMinor
        self.modificationTime = modificationTime
        self.xattrs = xattrs
    }
}

/// Reads a tar archive entry by entry from a byte source.
///
/// `next()` returns each entry; `readData` reads the current entry's data.
/// PAX extended ('x') and global ('g') headers and GNU long names ('L', 'K')
/// are applied to the entry that follows and never returned. Global headers
/// apply their uid, gid, mtime, device numbers and xattrs to every later entry
/// (a path, link path or size in a global header would give every entry the
/// same one, and is ignored); a PAX record with an empty value removes what
/// a global one set. Limits: one PAX header, the global records together, and
/// a GNU long name at most 1 MiB; an entry at most 1024 xattrs and 1 MiB of
/// their names and values (`.tooLarge`). An error is final: every later call
/// throws it again. Copies share one reader (and its source).
public struct TarReader<Source: ByteSource> {
    /// The most bytes of one PAX header (or of all global records together) or GNU long name.
    public static var metadataLimit: Int { 1 << 20 }

    private let core: TarReaderCore<Source>

    public init(_ source: consuming Source) {
        core = TarReaderCore(source)
    }

    /// The next entry, or nil at the end of the archive (a zero block, followed by
    /// another or by the end of the input; or the end of the input where a header
    /// would start). Skips whatever was not read of the previous entry's data.
    public mutating func next() throws(TarError) -> TarEntry? {
        try core.guarded { () throws(TarError) in try core.next() }
    }

    /// Reads the current entry's data; returns 0 at its end. Input that ends
    /// inside the data is `.stream(.truncated)`.
    public mutating func readData(into buffer: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        try core.guarded { () throws(TarError) in try core.readData(into: buffer) }
    }

    /// Bytes of the archive consumed so far.
    public var position: UInt64 { core.position }
}

/// The reader's state: a class, for the read buffer's lifetime.
final class TarReaderCore<Source: ByteSource> {
    static var bufferSize: Int { 64 << 10 }
    static var limit: Int { TarReader<Source>.metadataLimit }

    var source: Source
    /// Bytes read from the source and not yet consumed: [start, end) of `buffer`.
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var sourceEnded = false
    /// Archive bytes consumed (the offset of buffer[start]).
    private(set) var position: UInt64 = 0
    /// Data of the current entry not yet read, and the padding after it.
    private var dataLeft: UInt64 = 0
    private var paddingLeft: UInt64 = 0
    private var finished = false
    private var failed: TarError?
    /// What the PAX global records in force set, applied in turn as they came.
    private var globals = PAX.Overrides()
    /// The size of each global record in force (keyword -> bytes), and their sum, for the limit.
    private var globalSizes: [String: Int] = [:]
    private var globalBytes = 0

    init(_ source: consuming Source) {
        self.source = source
        // SAFETY: owned by this object, freed in deinit.
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.bufferSize, alignment: 16)
    }

    deinit { buffer.deallocate() }

    func guarded<T>(_ body: () throws(TarError) -> T) throws(TarError) -> T {
        if let failed { throw failed }
        do throws(TarError) {
            return try body()
        } catch {
            failed = error
            throw error
        }
    }

    // MARK: Buffer

    private var available: Int { end - start }

    /// Makes at least `count` (<= the buffer size) bytes available unless the source ends first.
    private func fill(atLeast count: Int) throws(TarError) {
        if available >= count || sourceEnded { return }
        if start > 0 {
            if end > start, let base = buffer.baseAddress {
                // SAFETY: [start, end) is inside the buffer; memmove allows the overlap.
                memmove(base, base + start, end - start)
            }
            end -= start
            start = 0
        }
        while end < count && !sourceEnded {
            let n: Int
            // SAFETY: end < count <= buffer.count: the free tail of the buffer.
            do { n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...])) } catch { throw .stream(error) }
            guard n >= 0, n <= buffer.count - end else { throw .stream(.corrupt("a source returned more bytes than asked for")) }
            if n == 0 { sourceEnded = true } else { end += n }
        }
    }

    private func consume(_ count: Int) {
        start += count
        position &+= UInt64(count)  // cannot wrap: 2^64 bytes are never read
    }

    /// Discards `count` bytes of the archive; the input ending first is `.truncated`.
    private func skip(_ count: UInt64) throws(TarError) {
        var left = count
        while left > 0 {
            if available == 0 {
                start = 0
                end = 0
                try fill(atLeast: 1)
                if available == 0 { throw .stream(.truncated) }
            }
            let n = UInt64(available) < left ? available : Int(left)
            consume(n)
            left -= UInt64(n)
        }
    }

    /// Reads `count` (<= the metadata limit) bytes of the archive into an array.
    private func readBytes(_ count: Int) throws(TarError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            try fill(atLeast: 1)
            if available == 0 { throw .stream(.truncated) }
            let n = min(available, count - out.count)
            // SAFETY: [start, start + n) is inside the buffer's filled part.
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[start..<(start + n)]))
            consume(n)
        }
        return out
    }

    // MARK: Data

    func readData(into destination: UnsafeMutableRawBufferPointer) throws(TarError) -> Int {
        guard dataLeft > 0, destination.count > 0, let to = destination.baseAddress else { return 0 }
        let want = dataLeft < UInt64(destination.count) ? Int(dataLeft) : destination.count
        var n: Int
        if available > 0 || want < Self.bufferSize / 4 {
            // From the buffer (refilled for small reads).
            try fill(atLeast: 1)
            if available == 0 { throw .stream(.truncated) }
            n = min(available, want)
            if let from = buffer.baseAddress {
                // SAFETY: n <= want <= destination.count, and start + n <= end <= buffer.count.
                memcpy(to, from + start, n)
            }
            consume(n)
        } else {
            // Large reads go straight into the caller's buffer.
            // SAFETY: want <= destination.count.
            do { n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: destination[0..<want])) } catch { throw .stream(error) }
            guard n >= 0, n <= want else { throw .stream(.corrupt("a source returned more bytes than asked for")) }
            if n == 0 {
                sourceEnded = true
                throw .stream(.truncated)
            }
            position &+= UInt64(n)
        }
        dataLeft -= UInt64(n)
        return n
    }

    // MARK: Headers

    func next() throws(TarError) -> TarEntry? {
        if finished { return nil }
        try skip(dataLeft)
        dataLeft = 0
        try skip(paddingLeft)
        paddingLeft = 0

        // What the metadata headers before the entry set.
        var local: [(key: String, value: [UInt8])] = []
        var longName: [UInt8]?
        var longLink: [UInt8]?
        while true {
            let offset = position
            try fill(atLeast: 512)
            if available == 0 {
                // The input ends where a header would start: some writers omit the end blocks.
                finished = true
                return nil
            }
            if available < 512 { throw .stream(.truncated) }
            // SAFETY: 512 bytes are available at start; the view is dropped before the buffer changes.
            let block = UnsafeRawBufferPointer(rebasing: buffer[start..<(start + 512)])
            if Self.isZero(block) {
                consume(512)
                try fill(atLeast: 512)
                if available == 0 {
                    finished = true
                    return nil
                }
                if available < 512 { throw .stream(.truncated) }
                // SAFETY: 512 bytes are available at start (checked just above).
                guard Self.isZero(UnsafeRawBufferPointer(rebasing: buffer[start..<(start + 512)])) else {
                    throw .badHeader(offset: offset, reason: "a zero block followed by a header")
                }
                consume(512)
                finished = true
                return nil
            }
            let header = try Header(block, offset: offset)
            consume(512)
            let padding = header.size % 512 == 0 ? 0 : 512 - header.size % 512

            switch header.typeflag {
            case UInt8(ascii: "x"), UInt8(ascii: "g"), UInt8(ascii: "L"), UInt8(ascii: "K"):
                let what: String
                switch header.typeflag {
                case UInt8(ascii: "x"): what = "a PAX extended header"
                case UInt8(ascii: "g"): what = "a PAX global header"
                default: what = "a GNU long name"
                }
                guard header.size <= UInt64(Self.limit) else {
                    throw .tooLarge("\(what) of \(header.size) bytes at offset \(offset) (the limit is \(Self.limit))")
                }
                let data = try readBytes(Int(header.size))
                try skip(padding)
                switch header.typeflag {
                case UInt8(ascii: "x"):
                    let records = try PAX.parse(data, offset: offset)
                    // Check the values now, so that an error names this header.
                    var scratch = PAX.Overrides()
                    for r in records { try PAX.apply(r.key, r.value, global: false, to: &scratch, offset: offset) }
                    local = records  // the last one wins, as in Go
                case UInt8(ascii: "g"):
                    try mergeGlobals(PAX.parse(data, offset: offset), offset: offset)
                case UInt8(ascii: "L"):
                    longName = Array(data.prefix { $0 != 0 })
                default:
                    longLink = Array(data.prefix { $0 != 0 })
                }
                continue
            default:
                break
            }

            let kind: TarEntry.Kind
            switch header.typeflag {
            case UInt8(ascii: "0"), 0, UInt8(ascii: "7"): kind = .file
            case UInt8(ascii: "1"): kind = .hardLink
            case UInt8(ascii: "2"): kind = .symlink
            case UInt8(ascii: "3"): kind = .characterDevice
            case UInt8(ascii: "4"): kind = .blockDevice
            case UInt8(ascii: "5"): kind = .directory
            case UInt8(ascii: "6"): kind = .fifo
            case UInt8(ascii: "S"): throw .unsupported(offset: offset, reason: "a GNU sparse file")
            case UInt8(ascii: "M"): throw .unsupported(offset: offset, reason: "a GNU multi-volume continuation")
            case UInt8(ascii: "V"): throw .unsupported(offset: offset, reason: "a GNU volume label")
            case UInt8(ascii: "A")...UInt8(ascii: "Z"):
                throw .unsupported(offset: offset, reason: "the vendor typeflag '\(Character(Unicode.Scalar(header.typeflag)))'")
            default:
                throw .badHeader(offset: offset, reason: "unknown typeflag \(header.typeflag)")
            }

            // The header's fields, then GNU long names, then PAX global and extended records.
            var o = globals
            for record in local { try PAX.apply(record.key, record.value, global: false, to: &o, offset: offset) }
            let path = o.path ?? longName ?? header.path
            let link = o.link ?? longLink ?? header.linkName
            var entry = TarEntry(path: String(decoding: path, as: UTF8.self), kind: kind, mode: header.mode,
                                 uid: o.uid ?? header.uid, gid: o.gid ?? header.gid, size: o.size ?? header.size,
                                 linkTarget: String(decoding: link, as: UTF8.self),
                                 deviceMajor: o.deviceMajor ?? header.deviceMajor, deviceMinor: o.deviceMinor ?? header.deviceMinor,
                                 modificationTime: o.mtime ?? header.mtime, xattrs: o.xattrs.list)
            // A pre-POSIX regular file whose name ends in '/' is a directory (as in Go).
            if header.typeflag == 0 && path.last == UInt8(ascii: "/") { entry.kind = .directory }
            if entry.kind == .file {
                dataLeft = entry.size
                paddingLeft = entry.size % 512 == 0 ? 0 : 512 - entry.size % 512
            } else {
                // Only regular files have data in the archive (a hard link's size is ignored).
                entry.size = 0
            }
            return entry
        }
    }

    private static func isZero(_ block: UnsafeRawBufferPointer) -> Bool {
        var acc: UInt64 = 0
        var i = 0
        while i + 8 <= block.count {
            // SAFETY: i + 8 <= block.count.
            acc |= block.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            i += 8
        }
        return acc == 0
    }

    /// Applies a global header's records to those in force: each replaces an earlier one of its keyword.
    private func mergeGlobals(_ records: [(key: String, value: [UInt8])], offset: UInt64) throws(TarError) {
        for (key, value) in records {
            globalBytes += key.utf8.count + value.count - (globalSizes[key] ?? 0)
            globalSizes[key] = key.utf8.count + value.count
            guard globalBytes <= Self.limit else {
                throw .tooLarge("PAX global records over \(Self.limit) bytes at offset \(offset)")
            }
            try PAX.apply(key, value, global: true, to: &globals, offset: offset)
        }
    }
}

/// PAX extended header records.
enum PAX {

    /// Splits PAX extended header data into its "LEN KEY=VALUE\n" records.
    static func parse(_ data: [UInt8], offset: UInt64) throws(TarError) -> [(key: String, value: [UInt8])] {
        var records: [(key: String, value: [UInt8])] = []
        var i = 0
        while i < data.count {
            var length = 0
            var j = i
            while j < data.count, data[j] >= UInt8(ascii: "0"), data[j] <= UInt8(ascii: "9") {
                length = length * 10 + Int(data[j] - UInt8(ascii: "0"))
                guard length <= data.count else { throw .badHeader(offset: offset, reason: "a PAX record longer than its header") }
                j += 1
            }
            guard j > i, j < data.count, data[j] == UInt8(ascii: " ") else {
                throw .badHeader(offset: offset, reason: "a PAX record without its length")
            }
            // The length counts the whole record: digits, space, KEY=VALUE and newline.
            guard length > j + 1 - i, length <= data.count - i else {
                throw .badHeader(offset: offset, reason: "a PAX record length out of range")
            }
            let recordEnd = i + length
            guard data[recordEnd - 1] == UInt8(ascii: "\n") else {
                throw .badHeader(offset: offset, reason: "a PAX record not ended by a newline")
            }
            let body = data[(j + 1)..<(recordEnd - 1)]
            guard let eq = body.firstIndex(of: UInt8(ascii: "=")), eq > body.startIndex else {
                throw .badHeader(offset: offset, reason: "a PAX record without a keyword")
            }
            let key = body[body.startIndex..<eq]
            guard !key.contains(0) else { throw .badHeader(offset: offset, reason: "a PAX keyword with a NUL byte") }
            records.append((String(decoding: key, as: UTF8.self), Array(body[(eq + 1)...])))
            i = recordEnd
        }
        return records
    }

    /// The most xattrs of one entry, and the most bytes of their names and values.
    static let maxXattrs = 1024
    static var maxXattrBytes: Int { 1 << 20 }

    /// The xattrs of one entry: a name set twice keeps its first place and takes the last value.
    struct XattrList {
        var list: [TarEntry.Xattr] = []
        var index: [String: Int] = [:]
        var bytes = 0

        mutating func set(_ name: String, _ value: [UInt8], offset: UInt64) throws(TarError) {
            if let i = index[name] {
                bytes += value.count - list[i].value.count
                list[i].value = value
            } else {
                index[name] = list.count
                list.append(TarEntry.Xattr(name: name, value: value))
                bytes += name.utf8.count + value.count
            }
            guard list.count <= maxXattrs, bytes <= maxXattrBytes else {
                throw .tooLarge("xattrs of the entry at offset \(offset) over \(maxXattrs) or \(maxXattrBytes) bytes")
            }
        }
    }

    /// What PAX records set, over the header's fields (nil: the header's field stands).
    struct Overrides {
        var path: [UInt8]?
        var link: [UInt8]?
        var size: UInt64?
        var uid: UInt32?
        var gid: UInt32?
        var mtime: Int64?
        var deviceMajor: UInt32?
        var deviceMinor: UInt32?
        var xattrs = XattrList()
    }

    static let schilyXattr = "SCHILY.xattr."
    static let libarchiveXattr = "LIBARCHIVE.xattr."

    /// Applies one PAX record. An empty value removes an override, global or not (the
    /// header's field applies again); an xattr may have an empty value. A global path,
    /// link path or size is ignored: it would give every later entry the same one.
    static func apply(_ key: String, _ value: [UInt8], global: Bool, to o: inout Overrides, offset: UInt64) throws(TarError) {
        func number(_ what: String, max: Int64) throws(TarError) -> Int64? {
            if value.isEmpty { return nil }
            guard let n = parseDecimal(value), n <= max else {
                throw .badHeader(offset: offset, reason: "PAX \(what) '\(String(decoding: value.prefix(32), as: UTF8.self))' is not a valid number")
            }
            return n
        }
        switch key {
        case "path", "linkpath":
            guard !value.contains(0) else { throw .badHeader(offset: offset, reason: "a PAX \(key) with a NUL byte") }
            guard !global else { return }
            let v: [UInt8]? = value.isEmpty ? nil : value
            if key == "path" { o.path = v } else { o.link = v }
        case "size":
            let n = try number("size", max: Int64.max)
            if !global { o.size = n.map { UInt64($0) } }
        case "uid":
            o.uid = try number("uid", max: Int64(UInt32.max)).map { UInt32($0) }
        case "gid":
            o.gid = try number("gid", max: Int64(UInt32.max)).map { UInt32($0) }
        case "SCHILY.devmajor":
            o.deviceMajor = try number("devmajor", max: Int64(UInt32.max)).map { UInt32($0) }
        case "SCHILY.devminor":
            o.deviceMinor = try number("devminor", max: Int64(UInt32.max)).map { UInt32($0) }
        case "mtime":
            if value.isEmpty {
                o.mtime = nil
                return
            }
            guard let t = parsePAXTime(value) else {
                throw .badHeader(offset: offset, reason: "PAX mtime '\(String(decoding: value.prefix(32), as: UTF8.self))' is not a valid time")
            }
            o.mtime = t
        case "uname", "gname":
            guard !value.contains(0) else { throw .badHeader(offset: offset, reason: "a PAX \(key) with a NUL byte") }
        default:
            if key.hasPrefix(schilyXattr) {
                let name = String(decoding: key.utf8.dropFirst(schilyXattr.utf8.count), as: UTF8.self)
                guard !name.isEmpty else { throw .badHeader(offset: offset, reason: "an empty xattr name") }
                try o.xattrs.set(name, value, offset: offset)
            } else if key.hasPrefix(libarchiveXattr) {
                guard let nameBytes = percentDecoded(key.utf8.dropFirst(libarchiveXattr.utf8.count)), !nameBytes.isEmpty,
                      !nameBytes.contains(0) else {
                    throw .badHeader(offset: offset, reason: "a bad LIBARCHIVE.xattr name")
                }
                guard let decoded = base64Decode(value) else {
                    throw .badHeader(offset: offset, reason: "a LIBARCHIVE.xattr value that is not base64")
                }
                try o.xattrs.set(String(decoding: nameBytes, as: UTF8.self), decoded, offset: offset)
            } else if key.hasPrefix("GNU.sparse.") {
                throw .unsupported(offset: offset, reason: "a GNU sparse file (PAX)")
            }
            // Other keywords (atime, ctime, comment, charset...) change nothing we keep.
        }
    }

    /// A decimal integer ("-" allowed when asked), without overflow; nil when not one.
    static func parseDecimal<C: Collection<UInt8>>(_ bytes: C, allowNegative: Bool = false) -> Int64? {
        var digits = bytes[...]
        var negative = false
        if allowNegative, digits.first == UInt8(ascii: "-") {
            negative = true
            digits = digits.dropFirst()
        }
        guard !digits.isEmpty else { return nil }
        var n: Int64 = 0
        for c in digits {
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "9") else { return nil }
            let (m, o1) = n.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(Int64(c - UInt8(ascii: "0")))
            guard !o1, !o2 else { return nil }
            n = s
        }
        return negative ? -n : n
    }

    /// A PAX time, "[-]SECONDS[.FRACTION]", as whole seconds rounded down.
    static func parsePAXTime(_ value: [UInt8]) -> Int64? {
        let dot = value.firstIndex(of: UInt8(ascii: "."))
        let whole = value[..<(dot ?? value.endIndex)]
        guard let seconds = parseDecimal(whole, allowNegative: true) else { return nil }
        guard let dot else { return seconds }
        let fraction = value[(dot + 1)...]
        guard !fraction.isEmpty, fraction.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }) else { return nil }
        // -1.5 is 1.5 s before the epoch: second -2.
        if whole.first == UInt8(ascii: "-") && fraction.contains(where: { $0 != UInt8(ascii: "0") }) {
            let (r, o) = seconds.subtractingReportingOverflow(1)
            return o ? nil : r
        }
        return seconds
    }

    /// Standard base64, with or without "=" padding; nil when not valid.
    static func base64Decode(_ text: [UInt8]) -> [UInt8]? {
        var body = text[...]
        var pads = 0
        while body.last == UInt8(ascii: "="), pads < 2 {
            body = body.dropLast()
            pads += 1
        }
        if pads > 0 && (body.count + pads) % 4 != 0 { return nil }
        guard body.count % 4 != 1 else { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(body.count / 4 * 3 + 2)
        var acc: UInt32 = 0
        var bits = 0
        for c in body {
            let v: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - UInt8(ascii: "a")) + 26
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - UInt8(ascii: "0")) + 52
            case UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "/"): v = 63
            default: return nil
            }
            acc = (acc << 6 | v) & 0xffffff
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: acc >> UInt32(bits)))
            }
        }
        return out
    }
}

/// The fields of one 512-byte header block, checked.
struct Header {
    var path: [UInt8]
    var linkName: [UInt8]
    var typeflag: UInt8
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: UInt64
    var mtime: Int64
    var deviceMajor: UInt32
    var deviceMinor: UInt32

    init(_ block: UnsafeRawBufferPointer, offset: UInt64) throws(TarError) {
        func field(_ from: Int, _ count: Int) -> UnsafeRawBufferPointer {
            // SAFETY: every field below ends by byte 500 of the 512-byte block.
            UnsafeRawBufferPointer(rebasing: block[from..<(from + count)])
        }
        func number(_ from: Int, _ count: Int, _ what: String) throws(TarError) -> Int64 {
            guard let n = Self.parseNumeric(field(from, count)) else {
                throw .badHeader(offset: offset, reason: "the \(what) field is not a number")
            }
            return n
        }
        func unsigned32(_ from: Int, _ count: Int, _ what: String) throws(TarError) -> UInt32 {
            let n = try number(from, count, what)
            guard n >= 0, n <= Int64(UInt32.max) else { throw .badHeader(offset: offset, reason: "the \(what) is out of range") }
            return UInt32(n)
        }

        guard block.count == 512 else { throw .badHeader(offset: offset, reason: "a header of \(block.count) bytes") }
        // The checksum: the sum of the block's bytes with its own field read as spaces.
        // Some old writers summed signed bytes; accept either, as Go does.
        var unsignedSum = 0
        var signedSum = 0
        for i in 0..<512 {
            let b = (148..<156).contains(i) ? 0x20 : block[i]
            unsignedSum += Int(b)
            signedSum += Int(Int8(bitPattern: b))
        }
        guard let stored = Self.parseOctal(field(148, 8)) else {
            throw .badHeader(offset: offset, reason: "the checksum field is not a number")
        }
        guard stored == Int64(unsignedSum) || stored == Int64(signedSum) else {
            throw .badHeader(offset: offset, reason: "bad checksum")
        }

        let magic = field(257, 8)
        let ustar = magic.starts(with: "ustar\0".utf8)  // POSIX ustar and PAX: the prefix field holds more of the name
        let gnu = magic.elementsEqual("ustar  \0".utf8)

        typeflag = block[156]
        let size = try number(124, 12, "size")
        guard size >= 0 else { throw .badHeader(offset: offset, reason: "a negative size") }
        self.size = UInt64(size)
        mode = UInt32(truncatingIfNeeded: try number(100, 8, "mode") & 0o7777)
        uid = try unsigned32(108, 8, "uid")
        gid = try unsigned32(116, 8, "gid")
        mtime = try number(136, 12, "mtime")
        if ustar || gnu {
            deviceMajor = try unsigned32(329, 8, "device major")
            deviceMinor = try unsigned32(337, 8, "device minor")
        } else {
            // Pre-POSIX (V7) headers have no device fields.
            deviceMajor = 0
            deviceMinor = 0
        }
        let name = Self.string(field(0, 100))
        if ustar {
            let prefix = Self.string(field(345, 155))
            path = prefix.isEmpty ? name : prefix + [UInt8(ascii: "/")] + name
        } else {
            path = name
        }
        linkName = Self.string(field(157, 100))
    }

    /// A NUL-terminated (or full) string field.
    static func string(_ field: UnsafeRawBufferPointer) -> [UInt8] {
        Array(field.prefix { $0 != 0 })
    }

    /// A numeric field: octal text, or base-256 (two's complement, big-endian)
    /// when the first byte's high bit is set (GNU, for values octal cannot hold).
    static func parseNumeric(_ field: UnsafeRawBufferPointer) -> Int64? {
        guard let first = field.first else { return 0 }
        guard first & 0x80 != 0 else { return parseOctal(field) }
        let invert: UInt8 = first & 0x40 != 0 ? 0xff : 0  // negative: read the inverted bits
        var x: UInt64 = 0
        for (i, byte) in field.enumerated() {
            var c = byte ^ invert
            if i == 0 { c &= 0x7f }
            guard x >> 56 == 0 else { return nil }
            x = x << 8 | UInt64(c)
        }
        guard x >> 63 == 0 else { return nil }
        return invert == 0xff ? ~Int64(x) : Int64(x)
    }

    /// Octal text padded with spaces or NULs on either side (nothing: 0); nil when not octal.
    static func parseOctal(_ field: UnsafeRawBufferPointer) -> Int64? {
        var i = 0
        while i < field.count, field[i] == 0x20 || field[i] == 0 { i += 1 }
        var j = i
        while j < field.count, field[j] != 0 { j += 1 }
        while j > i, field[j - 1] == 0x20 { j -= 1 }
        var n: Int64 = 0
        for k in i..<j {
            let c = field[k]
            guard c >= UInt8(ascii: "0"), c <= UInt8(ascii: "7") else { return nil }
            guard n >> 60 == 0 else { return nil }  // 3 more bits would pass Int64.max
            n = n << 3 | Int64(c - UInt8(ascii: "0"))
        }
        return n
    }
}
